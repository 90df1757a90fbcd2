// transmla/model/model.hpp — an fp32 decoder-only transformer of the Llama family whose attention
// layers may each be the original GQA, the TransMLA partial-RoPE intermediate, a DeepSeek-style
// MLA layer (naive prefill, absorbed decode) or an MHA2MLA layer, with a per-layer KV cache that
// holds exactly what each form caches, and batched prompt processing.
//
// Layer ℓ: h = x + Attn(RMSNorm(x)); x' = h + W_down(SiLU(W_gate RMSNorm(h)) ⊙ W_up RMSNorm(h)).
// Logits: RMSNorm(x) · E_outᵀ (E_out = the embedding matrix when tied). Weights are fp32,
// nn.Linear layout [out][in], row-major; projections are Eigen GEMMs (parallel with OpenMP).
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/cpu/cpu.hpp"
#include "transmla/error.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/model/attention.hpp"
#include "transmla/rope.hpp"
#include "transmla/shape.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

namespace transmla::model {

using Eigen::VectorXf;

/// Hyper-parameters of a Llama-family model (what GGUF `llama.*` keys / HF config.json give).
struct ModelConfig {
    std::string name;
    int vocab = 0;
    int hidden = 0;        ///< D
    int layers = 0;
    int n_q = 0;           ///< query heads
    int n_kv = 0;          ///< KV heads
    int head_dim = 0;      ///< d
    int intermediate = 0;  ///< MLP width
    double rms_eps = 1e-5;
    RopeSpec rope{};        ///< the pairing here is that of the loaded Q/K rows
    std::int64_t max_positions = 8192;
    bool tied_embeddings = true;
    int bos_token = -1, eos_token = -1;

    void validate() const {
        require(vocab > 0 && hidden > 0 && layers > 0 && intermediate > 0, "ModelConfig: bad sizes vocab=", vocab,
                " hidden=", hidden, " layers=", layers, " intermediate=", intermediate);
        DynamicGqaShape(n_q, n_kv, head_dim);
        const std::int64_t q_width = std::int64_t(n_q) * head_dim;  // (int product: may overflow)
        require(q_width == hidden, "ModelConfig: n_q·head_dim = ", q_width, " != hidden ", hidden);
        rope.validate(head_dim);
        require(rms_eps > 0 && max_positions > 0, "ModelConfig: bad rms_eps or max_positions");
    }
};

// ------------------------------------------------------------------------------------------------
// Attention forms (fp32, ready to run)
// ------------------------------------------------------------------------------------------------

/// Original grouped-query attention. Cache row per token: [k (n_kv·d, rotated) | v (n_kv·d)].
struct GqaAttention {
    int n_q = 0, n_kv = 0, head_dim = 0;
    RopePairing pairing = RopePairing::half_split;
    std::vector<double> inv_freq;  ///< d/2
    double rope_attention_factor = 1.0;
    RowMatrixXf wqkv;  ///< [(n_q + 2 n_kv)·d][D]: W_Q, then W_K, then W_V
    VectorXf bqkv;     ///< empty or [(n_q + 2 n_kv)·d]
    RowMatrixXf wo;    ///< [D][n_q·d]
    int cache_width() const noexcept { return 2 * n_kv * head_dim; }
};

/// TransMLA's partial-RoPE intermediate (docs/conversion.md, steps 2–3; convert::PartialRopeLayer).
/// Per head the query is q̂_i = S̃_iᵀ q_i (L wide), one shared key k̃ (L wide, RoPE on its first
/// rope_dim dims as interleaved pairs), values per KV head. Cache row: [k̃ (L) | v (n_kv·d)].
struct PartialRopeAttention {
    int n_q = 0, n_kv = 0, head_dim = 0, rope_dim = 0;
    std::vector<double> inv_freq;  ///< rope_dim/2
    double rope_attention_factor = 1.0;
    RowMatrixXf w;   ///< [n_q·L + L + n_kv·d][D]: q̂ of every head, k̃, v
    VectorXf b;      ///< empty or matching
    RowMatrixXf wo;  ///< [D][n_q·d]
    int kv_width() const noexcept { return n_kv * head_dim; }
    int cache_width() const noexcept { return 2 * kv_width(); }
};

/// DeepSeek-V3-layout MLA (convert::MlaLayer). Cache row: [c (r) | RoPE(k_pe) (d_r)].
struct MlaAttention {
    int n_heads = 0, rank = 0, rope_dim = 0, nope_dim = 0, v_dim = 0;
    std::vector<double> inv_freq;  ///< rope_dim/2, interleaved pairs
    double rope_attention_factor = 1.0;
    float softmax_scale = 0.f;
    int q_lora_rank = 0;
    RowMatrixXf wq;    ///< [H·(dn+dr)][D], or q_a_proj [q_lora_rank][D] when q_lora_rank > 0
    VectorXf bq;
    RowMatrixXf wq_b;  ///< q_b_proj [H·(dn+dr)][q_lora_rank] (q_lora_rank > 0)
    VectorXf bq_b;
    RowMatrixXf kv_a;  ///< [r + dr][D]
    VectorXf bkv_a;
    RowMatrixXf kv_b;  ///< [H·(dn+dv)][r]: per head W_UK^i (dn rows) then W_UV^i (dv rows)
    RowMatrixXf wo;    ///< [D][H·dv]
    /// Optional RMSNorms of stock DeepSeek code (empty: none, as the converters produce): on the
    /// latent c before it is cached (kv_a_layernorm) and on the low-rank query (q_a_layernorm),
    /// each y = w ⊙ x / sqrt(mean(x²) + eps). The loaders of DeepSeek checkpoints fill them.
    VectorXf kv_norm;
    double kv_norm_eps = 1e-6;
    VectorXf q_norm;
    double q_norm_eps = 1e-6;
    /// kv_b (and wo, when fusing W_O·W_UV pays or is forced) prepared once for the absorbed
    /// decode (cpu::MlaWeights): built by prepare(), which to_runtime() calls. Immutable, so
    /// copies of the layer share it; call prepare() again after changing kv_b or wo. Without it
    /// the absorbed order prepares the weights on every call.
    std::shared_ptr<const cpu::MlaWeights> prepared;
    int q_width() const noexcept { return n_heads * (nope_dim + rope_dim); }
    int cache_width() const noexcept { return rank + rope_dim; }
    /// Builds `prepared` from kv_b and wo; `fusion` as in cpu::MlaWeights (automatic: by the cost
    /// model cpu::mla_output_cost).
    void prepare(cpu::MlaFusion fusion = cpu::MlaFusion::automatic) { prepared = make_prepared(fusion); }
    std::shared_ptr<const cpu::MlaWeights> make_prepared(cpu::MlaFusion fusion = cpu::MlaFusion::automatic) const {
        const View2<const float> kvb(kv_b.data(), {kv_b.rows(), kv_b.cols()});
        const bool fuse = fusion == cpu::MlaFusion::fused ||
                          (fusion == cpu::MlaFusion::automatic &&
                           cpu::mla_output_cost(n_heads, rank, v_dim, wo.rows()).fused_pays());
        if (!fuse) return std::make_shared<const cpu::MlaWeights>(kvb, n_heads, nope_dim, v_dim);
        return std::make_shared<const cpu::MlaWeights>(kvb, n_heads, nope_dim, v_dim,
                                                       View2<const float>(wo.data(), {wo.rows(), wo.cols()}),
                                                       cpu::MlaFusion::fused);
    }
};

/// MHA2MLA (convert::Mha2MlaLayer). Cache row: [RoPE'd kept key dims of each KV head (n_kv·r_m) |
/// the shared latent c (ρ = latent_width)].
struct Mha2MlaAttention {
    int n_q = 0, n_kv = 0, head_dim = 0, rope_dims = 0, latent_width = 0;
    RopePairing pairing = RopePairing::half_split;
    std::vector<double> inv_freq;  ///< d/2, the original table
    double rope_attention_factor = 1.0;
    std::vector<std::vector<int>> rope_pairs;  ///< per KV head, ascending
    std::vector<std::vector<int>> kept_dims;   ///< per KV head: dims of the kept pairs (r_m)
    std::vector<std::vector<int>> nope_dims;   ///< per KV head: the other d − r_m dims
    RowMatrixXf wq;  ///< [n_q·d][D]
    VectorXf bq;
    RowMatrixXf wc;  ///< [n_kv·r_m + ρ][D]: every KV head's kept key rows, then W_down
    VectorXf bc;
    std::vector<RowMatrixXf> up_k;  ///< per KV head [d − r_m][ρ]
    std::vector<VectorXf> bup_k;
    std::vector<RowMatrixXf> up_v;  ///< per KV head [d][ρ]
    std::vector<VectorXf> bup_v;
    RowMatrixXf wo;  ///< [D][n_q·d]
    int cache_width() const noexcept { return n_kv * rope_dims + latent_width; }
};

using Attention = std::variant<GqaAttention, PartialRopeAttention, MlaAttention, Mha2MlaAttention>;

/// Name of an attention form ("gqa", "partial_rope", "mla", "mha2mla").
inline const char* attention_kind(const Attention& a) noexcept {
    switch (a.index()) {
        case 0: return "gqa";
        case 1: return "partial_rope";
        case 2: return "mla";
        default: return "mha2mla";
    }
}
/// Values cached per token by one attention layer.
inline int cache_width(const Attention& a) noexcept {
    return std::visit([](const auto& x) { return x.cache_width(); }, a);
}

struct Mlp {
    RowMatrixXf gate_up;  ///< [2·I][D]: W_gate then W_up
    RowMatrixXf down;     ///< [D][I]
};

struct Layer {
    VectorXf attn_norm, ffn_norm;
    Attention attn;
    Mlp mlp;
};

// ------------------------------------------------------------------------------------------------
// KV cache
// ------------------------------------------------------------------------------------------------

/// One layer's cache: `capacity` token rows of `width` floats, the first `size` in use.
struct LayerCache {
    std::vector<float> rows;
    int width = 0;
    std::int64_t capacity = 0;
    std::int64_t size = 0;
    float* row(std::int64_t t) noexcept { return rows.data() + t * width; }
    const float* row(std::int64_t t) const noexcept { return rows.data() + t * width; }
};

/// The cache of one sequence: one LayerCache per layer, sized for the layer's attention form.
struct KvCache {
    std::vector<LayerCache> layers;
    std::int64_t size() const noexcept { return layers.empty() ? 0 : layers.front().size; }
    void clear() noexcept {
        for (auto& l : layers) l.size = 0;
    }
    /// Values per token over all layers (multiply by sizeof(float) for bytes).
    std::int64_t values_per_token() const noexcept {
        std::int64_t n = 0;
        for (const auto& l : layers) n += l.width;
        return n;
    }
};

/// How MLA layers run: automatic (naive for prompts of more than one token, absorbed for single-
/// token decode steps), or forced to one order (tests compare them).
enum class MlaOrder { automatic, naive, absorbed };

/// What forward() returns: logits for every token, only for the last, or none.
enum class Logits { all, last, none };

/// Called with each layer's attention input (after the input RMSNorm): layer, rows [T][D], T.
using AttentionInputHook = std::function<void(int, const float*, std::int64_t)>;

// ------------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------------

class Model {
public:
    ModelConfig config;
    RowMatrixXf embed;    ///< [vocab][D]
    RowMatrixXf lm_head;  ///< [vocab][D], empty when tied
    VectorXf out_norm;
    std::vector<Layer> layers;
    MlaOrder mla_order = MlaOrder::automatic;
    /// Run GQA attention (all forms that reduce to it) and absorbed MLA through the library's
    /// cpu/ kernels; false: the plain Eigen attention of model/attention.hpp everywhere.
    bool use_cpu_kernels = true;
    cpu::Options cpu_options{};

    const RowMatrixXf& output_matrix() const noexcept { return lm_head.size() ? lm_head : embed; }

    void validate() const {
        config.validate();
        require(embed.rows() == config.vocab && embed.cols() == config.hidden, "Model: embedding is ", embed.rows(),
                "x", embed.cols(), ", expected ", config.vocab, "x", config.hidden);
        require(lm_head.size() == 0 || (lm_head.rows() == config.vocab && lm_head.cols() == config.hidden),
                "Model: lm_head has the wrong shape");
        require(out_norm.size() == config.hidden, "Model: output norm has ", out_norm.size(), " entries");
        require(int(layers.size()) == config.layers, "Model: ", layers.size(), " layers, config says ", config.layers);
        for (std::size_t l = 0; l < layers.size(); ++l) {
            const auto& L = layers[l];
            require(L.attn_norm.size() == config.hidden && L.ffn_norm.size() == config.hidden, "Model: layer ", l,
                    ": norm weights have the wrong size");
            require(L.mlp.gate_up.rows() == 2 * std::int64_t(config.intermediate) &&
                        L.mlp.gate_up.cols() == config.hidden && L.mlp.down.rows() == config.hidden &&
                        L.mlp.down.cols() == config.intermediate,
                    "Model: layer ", l, ": MLP weights have the wrong shape");
        }
    }

    /// A cache for one sequence of up to `capacity` tokens.
    KvCache make_cache(std::int64_t capacity) const {
        require(capacity > 0 && capacity <= config.max_positions, "Model::make_cache: capacity ", capacity,
                " outside (0, ", config.max_positions, "]");
        KvCache c;
        c.layers.resize(layers.size());
        for (std::size_t l = 0; l < layers.size(); ++l) {
            c.layers[l].width = cache_width(layers[l].attn);
            c.layers[l].capacity = capacity;
            c.layers[l].rows.assign(std::size_t(capacity) * c.layers[l].width, 0.f);
        }
        return c;
    }

    /// Runs `tokens` (one sequence, continuing at position cache.size()) through the model,
    /// appending to the cache. Returns logits [T][vocab] (Logits::all), [1][vocab] (last) or an
    /// empty matrix (none). `hook` sees every layer's attention input.
    RowMatrixXf forward(std::span<const std::int32_t> tokens, KvCache& cache, Logits want = Logits::all,
                        const AttentionInputHook& hook = {}) const {
        const std::int64_t T = std::int64_t(tokens.size());
        const int D = config.hidden;
        require(T > 0, "Model::forward: no tokens");
        require(cache.layers.size() == layers.size(), "Model::forward: the cache has ", cache.layers.size(),
                " layers, the model ", layers.size(), " (make it with make_cache)");
        const std::int64_t p0 = cache.size();
        require(p0 + T <= cache.layers.front().capacity, "Model::forward: ", T, " tokens at position ", p0,
                " overflow the cache capacity ", cache.layers.front().capacity);
        for (std::size_t l = 0; l < layers.size(); ++l)
            require(cache.layers[l].width == cache_width(layers[l].attn) && cache.layers[l].size == p0,
                    "Model::forward: cache layer ", l, " does not match the model (width ", cache.layers[l].width,
                    ", ", cache.layers[l].size, " tokens)");
        RowMatrixXf x(T, D), h(T, D), a(T, D);
        for (std::int64_t t = 0; t < T; ++t) {
            const std::int32_t id = tokens[std::size_t(t)];
            require(id >= 0 && id < config.vocab, "Model::forward: token ", id, " at ", t, " outside the vocabulary of ",
                    config.vocab);
            x.row(t) = embed.row(id);
        }
        RowMatrixXf gu(T, 2 * config.intermediate), act(T, config.intermediate);
        for (std::size_t l = 0; l < layers.size(); ++l) {
            const Layer& L = layers[l];
            rms_norm(x.data(), T, D, L.attn_norm.data(), config.rms_eps, h.data());
            if (hook) hook(int(l), h.data(), T);
            std::visit([&](const auto& at) { run_attention(at, h, T, cache.layers[l], a); }, L.attn);
            x += a;
            rms_norm(x.data(), T, D, L.ffn_norm.data(), config.rms_eps, h.data());
            gu.noalias() = h * L.mlp.gate_up.transpose();
            const int I = config.intermediate;
            for (std::int64_t t = 0; t < T; ++t) {
                const float* g = gu.row(t).data();
                const float* u = g + I;
                float* o = act.row(t).data();
                for (int e = 0; e < I; ++e) o[e] = g[e] / (1.f + std::exp(-g[e])) * u[e];
            }
            x.noalias() += act * L.mlp.down.transpose();
        }
        if (want == Logits::none) return {};
        const std::int64_t first = want == Logits::last ? T - 1 : 0;
        const std::int64_t n = T - first;
        rms_norm(x.row(first).data(), n, D, out_norm.data(), config.rms_eps, h.data());
        RowMatrixXf logits(n, config.vocab);
        logits.noalias() = h.topRows(n) * output_matrix().transpose();
        return logits;
    }

    /// One attention layer on its own: `xn` [T][D] (already normalised) continuing the sequence in
    /// `c` (appended to). Returns the layer output [T][D] (before the residual add).
    RowMatrixXf attention(const Attention& at, const RowMatrixXf& xn, LayerCache& c) const {
        const std::int64_t T = xn.rows();
        require(xn.cols() == config.hidden, "Model::attention: input has ", xn.cols(), " columns, expected ",
                config.hidden);
        require(c.width == cache_width(at) && c.size + T <= c.capacity, "Model::attention: cache of width ", c.width,
                " with ", c.size, "/", c.capacity, " tokens cannot take ", T, " tokens of a ", attention_kind(at),
                " layer (width ", cache_width(at), ")");
        RowMatrixXf out(T, config.hidden);
        std::visit([&](const auto& a) { run_attention(a, xn, T, c, out); }, at);
        return out;
    }
    /// An empty cache of `capacity` tokens for one layer of form `at`.
    static LayerCache make_layer_cache(const Attention& at, std::int64_t capacity) {
        LayerCache c;
        c.width = cache_width(at);
        c.capacity = capacity;
        c.rows.assign(std::size_t(capacity) * c.width, 0.f);
        return c;
    }

    /// Values cached per token per layer, summed over layers (÷ layers for the per-layer mean).
    std::int64_t cache_values_per_token() const {
        std::int64_t n = 0;
        for (const auto& L : layers) n += cache_width(L.attn);
        return n;
    }

private:
    static void append_rows(LayerCache& c, const float* src, std::int64_t src_stride, std::int64_t T) {
        for (std::int64_t t = 0; t < T; ++t) std::copy_n(src + t * src_stride, c.width, c.row(c.size + t));
        c.size += T;
    }
    static void add_bias(RowMatrixXf& m, const VectorXf& b) {
        if (b.size()) m.rowwise() += b.transpose();
    }
    /// In place: the first n values of each of T rows (stride `stride`) RMS-normalised, times w.
    static void rms_norm_rows(float* x, std::int64_t T, int n, int stride, const VectorXf& w, double eps) {
        for (std::int64_t t = 0; t < T; ++t) rms_norm(x + t * stride, 1, n, w.data(), eps, x + t * stride);
    }

    void run_attention(const GqaAttention& at, const RowMatrixXf& xn, std::int64_t T, LayerCache& c,
                       RowMatrixXf& out) const {
        const int d = at.head_dim, nq = at.n_q, nkv = at.n_kv, W = int(at.wqkv.rows());
        RowMatrixXf qkv(T, W);
        qkv.noalias() = xn * at.wqkv.transpose();
        add_bias(qkv, at.bqkv);
        const std::int64_t p0 = c.size;
        const RopeRun rr(at.inv_freq, p0, T, at.rope_attention_factor);
        for (std::int64_t t = 0; t < T; ++t)
            for (int i = 0; i < nq + nkv; ++i) rr.rotate(qkv.row(t).data() + i * d, t, at.pairing);
        append_rows(c, qkv.data() + nq * d, W, T);  // [k | v] is contiguous in qkv
        RowMatrixXf o(T, nq * d);
        const std::int64_t cw = c.width;
        const float scale = float(1.0 / std::sqrt(double(d)));
        if (use_cpu_kernels) {
            const GqaSeqView<float> kv{c.rows.data(), c.rows.data() + nkv * d, nkv, d, c.size, cw, d, PageMap{}};
            cpu::gqa_decode(View3<const float>(qkv.data(), {T, nq, d}, {W, d, 1}), kv, scale,
                            View3<float>(o.data(), {T, nq, d}), {}, cpu_options);
        } else {
            attend({qkv.data(), W, d, nq, d}, T, {c.rows.data(), cw, d, nkv, d},
                   {c.rows.data() + nkv * d, cw, d, nkv, d}, c.size, p0, scale, o.data(), nq * d);
        }
        out.noalias() = o * at.wo.transpose();
    }

    void run_attention(const PartialRopeAttention& at, const RowMatrixXf& xn, std::int64_t T, LayerCache& c,
                       RowMatrixXf& out) const {
        const int d = at.head_dim, nq = at.n_q, nkv = at.n_kv, L = at.kv_width(), W = int(at.w.rows());
        RowMatrixXf p(T, W);
        p.noalias() = xn * at.w.transpose();
        add_bias(p, at.b);
        const std::int64_t p0 = c.size;
        const RopeRun rr(at.inv_freq, p0, T, at.rope_attention_factor);
        for (std::int64_t t = 0; t < T; ++t)
            for (int i = 0; i <= nq; ++i) rr.rotate(p.row(t).data() + i * L, t, RopePairing::interleaved);
        append_rows(c, p.data() + std::int64_t(nq) * L, W, T);  // [k̃ | v]
        RowMatrixXf o(T, nq * d);
        const std::int64_t cw = c.width;
        attend({p.data(), W, L, nq, L}, T, {c.rows.data(), cw, 0, 1, L}, {c.rows.data() + L, cw, d, nkv, d}, c.size,
               p0, float(1.0 / std::sqrt(double(d))), o.data(), nq * d);
        out.noalias() = o * at.wo.transpose();
    }

    void run_attention(const MlaAttention& at, const RowMatrixXf& xn, std::int64_t T, LayerCache& c,
                       RowMatrixXf& out) const {
        const int H = at.n_heads, r = at.rank, dr = at.rope_dim, dn = at.nope_dim, dv = at.v_dim;
        const int qw = dn + dr;
        RowMatrixXf q(T, at.q_width());
        if (at.q_lora_rank > 0) {
            RowMatrixXf qa(T, at.q_lora_rank);
            qa.noalias() = xn * at.wq.transpose();
            add_bias(qa, at.bq);
            if (at.q_norm.size()) rms_norm_rows(qa.data(), T, at.q_lora_rank, at.q_lora_rank, at.q_norm, at.q_norm_eps);
            q.noalias() = qa * at.wq_b.transpose();
            add_bias(q, at.bq_b);
        } else {
            q.noalias() = xn * at.wq.transpose();
            add_bias(q, at.bq);
        }
        RowMatrixXf kva(T, r + dr);
        kva.noalias() = xn * at.kv_a.transpose();
        add_bias(kva, at.bkv_a);
        if (at.kv_norm.size()) rms_norm_rows(kva.data(), T, r, r + dr, at.kv_norm, at.kv_norm_eps);
        const std::int64_t p0 = c.size;
        const RopeRun rr(at.inv_freq, p0, T, at.rope_attention_factor);
        for (std::int64_t t = 0; t < T; ++t) {
            for (int i = 0; i < H; ++i) rr.rotate(q.row(t).data() + i * qw + dn, t, RopePairing::interleaved);
            rr.rotate(kva.row(t).data() + r, t, RopePairing::interleaved);
        }
        append_rows(c, kva.data(), r + dr, T);
        const std::int64_t S = c.size, cw = c.width;
        const bool absorbed = mla_order == MlaOrder::absorbed || (mla_order == MlaOrder::automatic && T == 1);
        RowMatrixXf o(T, H * dv);
        if (!absorbed) {
            // Naive: decompress k_nope and v of every cached token and head.
            using CMap = Eigen::Map<const RowMatrixXf, 0, Eigen::OuterStride<>>;
            CMap C(c.rows.data(), S, r, Eigen::OuterStride<>(cw));
            RowMatrixXf kvb(S, H * (dn + dv));
            kvb.noalias() = C * at.kv_b.transpose();
            RowMatrixXf K(S, H * qw);
            for (std::int64_t s = 0; s < S; ++s)
                for (int i = 0; i < H; ++i) {
                    std::copy_n(kvb.row(s).data() + i * (dn + dv), dn, K.row(s).data() + i * qw);
                    std::copy_n(c.row(s) + r, dr, K.row(s).data() + i * qw + dn);
                }
            attend({q.data(), H * qw, qw, H, qw}, T, {K.data(), H * qw, qw, H, qw},
                   {kvb.data() + dn, H * (dn + dv), dn + dv, H, dv}, S, p0, at.softmax_scale, o.data(), H * dv);
        } else {
            // Absorbed: q̃_i = W_UK^iᵀ q_nope_i, attention in the latent space, then W_UV^i (and
            // W_O), with the weights prepared once per layer (MlaAttention::prepared).
            std::shared_ptr<const cpu::MlaWeights> local;
            const cpu::MlaWeights* pw = at.prepared.get();
            if (pw == nullptr) {
                local = at.make_prepared();
                pw = local.get();
            }
            require(pw->heads() == H && pw->rank() == r && pw->nope_dim() == dn && pw->v_dim() == dv &&
                        (!pw->has_output() || pw->model_dim() == at.wo.rows()),
                    "Model: MLA layer with ", H, " heads, r ", r, ", d_nope ", dn, ", d_v ", dv,
                    " has prepared weights of another shape (call MlaAttention::prepare() after changing it)");
            const int aw = r + dr;
            RowMatrixXf qa(T, H * aw);
            pw->absorb(View3<const float>(q.data(), {T, H, dn}, {H * qw, qw, 1}),
                       View3<const float>(q.data() + dn, {T, H, dr}, {H * qw, qw, 1}),
                       View3<float>(qa.data(), {T, H, aw}));
            RowMatrixXf lat(T, H * r);
            if (use_cpu_kernels) {
                const MlaSeqView<float> mv{c.rows.data(), r, dr, S, cw, PageMap{}};
                cpu::mla_decode(View3<const float>(qa.data(), {T, H, aw}), mv, at.softmax_scale,
                                View3<float>(lat.data(), {T, H, r}), {}, cpu_options);
            } else {
                attend({qa.data(), H * aw, aw, H, aw}, T, {c.rows.data(), cw, 0, 1, aw}, {c.rows.data(), cw, 0, 1, r},
                       S, p0, at.softmax_scale, lat.data(), H * r);
            }
            const View3<const float> latv(lat.data(), {T, H, r});
            if (pw->fused()) {  // y = W_F · latent, W_F = [W_O^{:,i} W_UV^i]_i
                auto ws = pw->make_workspace(T);
                pw->up_project(latv, View2<float>(out.data(), {T, out.cols()}), ws);
                return;
            }
            pw->up_project(latv, View3<float>(o.data(), {T, H, dv}));
        }
        out.noalias() = o * at.wo.transpose();
    }

    void run_attention(const Mha2MlaAttention& at, const RowMatrixXf& xn, std::int64_t T, LayerCache& c,
                       RowMatrixXf& out) const {
        const int d = at.head_dim, nq = at.n_q, nkv = at.n_kv, rm = at.rope_dims, rho = at.latent_width;
        const int g = nq / nkv, cw = at.cache_width();
        RowMatrixXf q(T, nq * d);
        q.noalias() = xn * at.wq.transpose();
        add_bias(q, at.bq);
        RowMatrixXf cr(T, cw);
        cr.noalias() = xn * at.wc.transpose();
        add_bias(cr, at.bc);
        const std::int64_t p0 = c.size;
        const RopeRun rr(at.inv_freq, p0, T, at.rope_attention_factor);
        for (std::int64_t t = 0; t < T; ++t) {
            for (int i = 0; i < nq; ++i) rr.rotate_pairs(q.row(t).data() + i * d, t, at.pairing, d, at.rope_pairs[i / g]);
            // Cached kept dims are stored pair by pair (first dim, second dim): rotate each pair.
            for (int h = 0; h < nkv; ++h) {
                float* kr = cr.row(t).data() + h * rm;
                const auto& pr = at.rope_pairs[h];
                for (std::size_t k = 0; k < pr.size(); ++k) rr.rotate_pair(kr[2 * k], kr[2 * k + 1], t, pr[k]);
            }
        }
        append_rows(c, cr.data(), cw, T);
        const std::int64_t S = c.size;
        // Decompress keys and values [S][n_kv][d] from the shared latent.
        RowMatrixXf K(S, nkv * d), V(S, nkv * d);
        using Stride = Eigen::OuterStride<>;
        using CMap = Eigen::Map<const RowMatrixXf, 0, Stride>;
        const CMap C(c.rows.data() + nkv * rm, S, rho, Stride(c.width));
        for (int h = 0; h < nkv; ++h) {
            RowMatrixXf kn = C * at.up_k[h].transpose();
            if (at.bup_k[h].size()) kn.rowwise() += at.bup_k[h].transpose();
            Eigen::Map<RowMatrixXf, 0, Stride> Vh(V.data() + h * d, S, d, Stride(nkv * d));
            Vh.noalias() = C * at.up_v[h].transpose();
            if (at.bup_v[h].size()) Vh.rowwise() += at.bup_v[h].transpose();
            const auto& kd = at.kept_dims[h];
            const auto& nd = at.nope_dims[h];
            for (std::int64_t s = 0; s < S; ++s) {
                float* kr = K.row(s).data() + h * d;
                const float* src = c.row(s) + h * rm;
                for (int e = 0; e < rm; ++e) kr[kd[std::size_t(e)]] = src[e];
                for (std::size_t e = 0; e < nd.size(); ++e) kr[nd[e]] = kn(s, Eigen::Index(e));
            }
        }
        RowMatrixXf o(T, nq * d);
        const float scale = float(1.0 / std::sqrt(double(d)));
        if (use_cpu_kernels) {
            cpu::gqa_prefill(View3<const float>(q.data(), {T, nq, d}), View3<const float>(K.data(), {S, nkv, d}),
                             View3<const float>(V.data(), {S, nkv, d}), scale, View3<float>(o.data(), {T, nq, d}), {},
                             p0, cpu_options);
        } else {
            attend({q.data(), nq * d, d, nq, d}, T, {K.data(), nkv * d, d, nkv, d}, {V.data(), nkv * d, d, nkv, d}, S,
                   p0, scale, o.data(), nq * d);
        }
        out.noalias() = o * at.wo.transpose();
    }
};

}  // namespace transmla::model
