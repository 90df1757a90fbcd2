// transmla/model/deepseek.hpp — a model in the parametrisation of stock DeepSeek-V2/V3 code
// (llama.cpp's `deepseek2`, transformers' `DeepseekV3ForCausalLM`, vLLM, SGLang), and back.
//
// Stock code computes, per layer,
//     q   = W_q x                          (or W_qb · RMSNorm_q(W_qa x) with a low-rank query)
//     c   = RMSNorm_ε(W_a^lat x) ⊙ w_kv,   k_pe = RoPE(W_a^pe x)
//     a_i = softmax((q_i,nope · W_UK^i c + RoPE(q_i,pe) · k_pe) / sqrt(d_nope + d_rope)) ...
// with no biases, one RoPE key shared by all heads and geometric RoPE frequencies
// θ_j = base^(−2j/d_rope). The converters of this library produce the same layer without the
// latent RMSNorm and with their own softmax scale. to_deepseek() rewrites such a model so that
// the stock computation gives the same function (docs/export.md derives it):
//   * softmax scale: the query rows are multiplied by softmax_scale · sqrt(d_nope + d_rope);
//   * latent norm: RMSNorm_ε(y) = y / sqrt(mean(y²) + ε) is linear in y while mean(y²) ≪ ε. The
//     latent rows of W_a are scaled by s and the norm weight set to sqrt(ε)/s, so the norm's
//     output is c · (1 + s²·mean(c²)/ε)^(−1/2). s is chosen from a bound on mean(c²) that holds for
//     EVERY input (the input of W_a is an RMS-normalised vector: ‖h‖² < D · max(w_attn²)), so the
//     relative deviation is at most `max_rel_dev` (1e-9 by default) for any token, with no
//     calibration data; the same construction handles the low-rank query norm;
//   * d_nope = 0 (exact conversions of MQA models) is padded to one zero dimension (llama.cpp
//     requires at least one), and the latent rank to a multiple of 32 with zero dimensions
//     (DeepseekExportOptions::latent_multiple; exact, and much faster in llama.cpp).
// It refuses what stock code cannot express, before any work: attention biases (Qwen2), layers
// that are not MLA, RoPE frequencies that are not geometric, YaRN attention factors.
//
// from_deepseek() is the inverse direction: a model::Model whose MLA layers carry the stock
// norms (MlaAttention::kv_norm / q_norm), used by the loaders of exported and genuine (dense)
// DeepSeek checkpoints.
#pragma once

#include "transmla/error.hpp"
#include "transmla/model/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace transmla::model {

/// Hyper-parameters of a dense DeepSeek-V3-layout model.
struct DeepseekConfig {
    std::string name;
    int vocab = 0, hidden = 0, layers = 0, heads = 0, intermediate = 0;
    int q_lora_rank = 0;  ///< 0: q_proj
    int kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
    double rms_eps = 1e-6;
    double rope_base = 10000.0;
    double rope_linear_factor = 1.0;  ///< position interpolation factor (1: none)
    std::int64_t max_positions = 4096;
    bool tied_embeddings = false;
    int bos_token = -1, eos_token = -1;
    int qk_head_dim() const noexcept { return qk_nope_head_dim + qk_rope_head_dim; }
};

/// One layer, tensors named and laid out as in transformers ([out][in], row-major).
struct DeepseekLayer {
    VectorXf input_layernorm, post_attention_layernorm;
    RowMatrixXf q_proj;             ///< [H·(dn+dr)][D] (q_lora_rank == 0)
    RowMatrixXf q_a_proj;           ///< [q_lora_rank][D]
    VectorXf q_a_layernorm;         ///< [q_lora_rank]
    RowMatrixXf q_b_proj;           ///< [H·(dn+dr)][q_lora_rank]
    RowMatrixXf kv_a_proj_with_mqa; ///< [r + dr][D]
    VectorXf kv_a_layernorm;        ///< [r]
    RowMatrixXf kv_b_proj;          ///< [H·(dn+dv)][r]: per head dn rows of W_UK, then dv of W_UV
    RowMatrixXf o_proj;             ///< [D][H·dv]
    RowMatrixXf gate_proj, up_proj; ///< [I][D]
    RowMatrixXf down_proj;          ///< [D][I]
};

struct DeepseekCheckpoint {
    DeepseekConfig config;
    RowMatrixXf embed_tokens;  ///< [vocab][D]
    RowMatrixXf lm_head;       ///< [vocab][D]; empty when tied
    VectorXf norm;             ///< [D]
    std::vector<DeepseekLayer> layers;
    /// The ε the stock code applies to the latent and low-rank-query norms that the norm weights
    /// were computed for (engines differ: llama.cpp uses rms_eps, transformers a fixed 1e-6).
    double latent_norm_eps = 1e-6;
};

struct DeepseekExportOptions {
    /// ε of the engine's latent norm (llama.cpp: the model's rms_eps; transformers: 1e-6).
    double latent_norm_eps = 1e-6;
    /// Largest relative deviation s²·mean(c²)/(2ε) allowed for any input.
    double max_rel_dev = 1e-9;
    /// The latent rank is padded with zero dimensions to a multiple of this (1: none). Exact under
    /// the linearised norm (zeros add nothing to mean(y²)'s ≪ ε regime, nothing to c). llama.cpp's
    /// CPU attention is much faster on rows of whole 32-value blocks: SmolLM2 at 31.25 %, r 88 → 96,
    /// decodes 58 % faster at 4K context (bench/RESULTS.md, "Export") for 7 % more cache.
    int latent_multiple = 32;
};

namespace detail {

/// An upper bound of mean(y²) over every y = W h with h = w ⊙ x/sqrt(mean(x²)+eps):
/// ‖y‖² ≤ ‖W‖_F² ‖h‖², ‖h‖² < D·max(w²).
inline double latent_energy_bound(const RowMatrixXf& W, const VectorXf& in_norm, Eigen::Index rows) {
    const double fro2 = W.topRows(rows).cast<double>().squaredNorm();
    const double wmax = in_norm.cwiseAbs().maxCoeff();
    return fro2 * double(in_norm.size()) * wmax * wmax / double(rows);
}

/// The scale s for rows whose mean square is at most `bound`, and the norm weight sqrt(ε)/s.
/// s is a power of two, so the scaled weights carry exactly the original digits.
inline std::pair<float, float> linear_norm_scale(double bound, double eps, double max_rel_dev, const char* what) {
    require(bound > 0 && std::isfinite(bound), "to_deepseek: the ", what, " weights are zero or not finite");
    const double s_max = std::sqrt(2.0 * max_rel_dev * eps / bound);
    const double s = std::exp2(std::floor(std::log2(s_max)));
    const double w = std::sqrt(eps) / s;
    require(s > 1e-30 && w < 1e30, "to_deepseek: the ", what, " needs a scale of ", s,
            " that fp32 cannot hold with its norm weight ", w, " (weights too large?)");
    return {float(s), float(w)};
}

}  // namespace detail

/// The stock-DeepSeek parametrisation of `m` (every layer MLA, no biases). Throws
/// transmla::error naming the first layer and reason when stock code cannot express it.
inline DeepseekCheckpoint to_deepseek(const Model& m, const DeepseekExportOptions& opt = {}) {
    m.validate();
    require(opt.latent_norm_eps > 0 && opt.max_rel_dev > 0 && opt.max_rel_dev < 1e-3 && opt.latent_multiple >= 1,
            "to_deepseek: latent_norm_eps must be positive, max_rel_dev in (0, 1e-3), latent_multiple >= 1");
    const auto& mc = m.config;
    DeepseekCheckpoint ck;
    ck.latent_norm_eps = opt.latent_norm_eps;
    DeepseekConfig& c = ck.config;
    c.name = mc.name + "-mla";
    c.vocab = mc.vocab, c.hidden = mc.hidden, c.layers = mc.layers, c.intermediate = mc.intermediate;
    c.rms_eps = mc.rms_eps, c.max_positions = mc.max_positions, c.tied_embeddings = mc.tied_embeddings;
    c.bos_token = mc.bos_token, c.eos_token = mc.eos_token;
    // every layer first, so that a model stock code cannot run fails before any copy is made
    const MlaAttention* first = nullptr;
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
        const auto* a = std::get_if<MlaAttention>(&m.layers[l].attn);
        require(a != nullptr, "to_deepseek: layer ", l, " is a '", attention_kind(m.layers[l].attn),
                "' layer; stock DeepSeek code runs only MLA layers (convert with --method transmla or exact)");
        require(a->bq.size() == 0 && a->bq_b.size() == 0 && a->bkv_a.size() == 0, "to_deepseek: layer ", l,
                " has attention biases (a Qwen2-style model); stock DeepSeek code has no attention biases, so this "
                "model cannot be exported to it without changing its function");
        require(a->kv_norm.size() == 0 && a->q_norm.size() == 0, "to_deepseek: layer ", l,
                " already carries DeepSeek norms (it was loaded from a DeepSeek checkpoint); export the converted "
                "model instead");
        require(a->rope_attention_factor == 1.0, "to_deepseek: layer ", l, " uses a RoPE attention factor ",
                a->rope_attention_factor, " (YaRN), which the export does not map");
        if (!first) {
            first = a;
        } else {
            require(a->n_heads == first->n_heads && a->rank == first->rank && a->rope_dim == first->rope_dim &&
                        a->nope_dim == first->nope_dim && a->v_dim == first->v_dim &&
                        a->q_lora_rank == first->q_lora_rank && a->inv_freq == first->inv_freq,
                    "to_deepseek: layer ", l, " has another MLA shape or RoPE table than layer 0; DeepSeek "
                    "checkpoints have one shape for all layers");
        }
    }
    const MlaAttention& a0 = *first;
    // RoPE: geometric frequencies θ_j = θ_0 · ratio^j with θ_0 = 1/linear factor.
    const int dr = a0.rope_dim, half = dr / 2;
    const auto& f = a0.inv_freq;
    c.rope_linear_factor = 1.0 / f[0];
    c.rope_base = half > 1 ? std::pow(f[0] / f[1], double(dr) / 2.0) : 10000.0;
    for (int j = 0; j < half; ++j) {
        const double want = f[0] * std::pow(c.rope_base, -2.0 * j / dr);
        require(std::abs(f[std::size_t(j)] - want) <= 1e-9 * want, "to_deepseek: the RoPE frequencies are not "
                "geometric (frequency ", j, " is ", f[std::size_t(j)], ", a base of ", c.rope_base, " gives ", want,
                "); stock DeepSeek code has no per-frequency table. Exact conversions of models with more than one "
                "KV head repeat every frequency once per head and cannot be expressed; convert with --method transmla");
    }
    require(std::abs(c.rope_linear_factor - 1.0) < 1e-12 || c.rope_linear_factor > 1.0,
            "to_deepseek: RoPE frequency 0 is ", f[0], " (> 1): not a linear position interpolation");
    const int rp = (a0.rank + opt.latent_multiple - 1) / opt.latent_multiple * opt.latent_multiple;
    c.heads = a0.n_heads, c.q_lora_rank = a0.q_lora_rank, c.kv_lora_rank = rp;
    c.qk_rope_head_dim = dr, c.v_head_dim = a0.v_dim;
    const int dn0 = a0.nope_dim, dn = std::max(dn0, 1), dv = a0.v_dim, H = a0.n_heads, r = a0.rank;
    c.qk_nope_head_dim = dn;
    const int D = mc.hidden;
    const float qscale = float(double(a0.softmax_scale) * std::sqrt(double(dn + dr)));

    // Per head [dn0 | dr] → [dn | dr] rows: zero rows where dn > dn0.
    auto widen_q = [&](const RowMatrixXf& w) {
        RowMatrixXf o = RowMatrixXf::Zero(Eigen::Index(H) * (dn + dr), w.cols());
        for (int i = 0; i < H; ++i) {
            if (dn0) o.middleRows(Eigen::Index(i) * (dn + dr), dn0) = w.middleRows(Eigen::Index(i) * (dn0 + dr), dn0);
            o.middleRows(Eigen::Index(i) * (dn + dr) + dn, dr) = w.middleRows(Eigen::Index(i) * (dn0 + dr) + dn0, dr);
        }
        return o;
    };

    ck.embed_tokens = m.embed;
    ck.lm_head = m.lm_head;
    ck.norm = m.out_norm;
    ck.layers.resize(m.layers.size());
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
        const Layer& L = m.layers[l];
        const auto& a = std::get<MlaAttention>(L.attn);
        DeepseekLayer& o = ck.layers[l];
        o.input_layernorm = L.attn_norm;
        o.post_attention_layernorm = L.ffn_norm;
        const std::string where = "layer " + std::to_string(l) + " ";
        // latent norm: scale the latent rows of W_a by s, the norm weight is sqrt(ε)/s
        {
            const double bound = detail::latent_energy_bound(a.kv_a, L.attn_norm, r);
            const auto [s, w] = detail::linear_norm_scale(bound, opt.latent_norm_eps, opt.max_rel_dev,
                                                          (where + "latent").c_str());
            // [s·latent rows | zero rows up to rp | RoPE rows]
            o.kv_a_proj_with_mqa = RowMatrixXf::Zero(rp + dr, D);
            o.kv_a_proj_with_mqa.topRows(r) = a.kv_a.topRows(r) * s;
            o.kv_a_proj_with_mqa.bottomRows(dr) = a.kv_a.bottomRows(dr);
            o.kv_a_layernorm = VectorXf::Constant(rp, w);
        }
        if (a.q_lora_rank > 0) {
            // q_a's input is the same normalised h; its norm is linearised the same way
            const double bound = detail::latent_energy_bound(a.wq, L.attn_norm, a.q_lora_rank);
            const auto [s, w] = detail::linear_norm_scale(bound, opt.latent_norm_eps, opt.max_rel_dev,
                                                          (where + "low-rank query").c_str());
            o.q_a_proj = a.wq * s;
            o.q_a_layernorm = VectorXf::Constant(a.q_lora_rank, w);
            o.q_b_proj = widen_q(a.wq_b) * qscale;
        } else {
            o.q_proj = widen_q(a.wq) * qscale;
        }
        o.kv_b_proj = RowMatrixXf::Zero(Eigen::Index(H) * (dn + dv), rp);  // zero columns past r
        for (int i = 0; i < H; ++i) {
            if (dn0)
                o.kv_b_proj.block(Eigen::Index(i) * (dn + dv), 0, dn0, r) = a.kv_b.middleRows(Eigen::Index(i) * (dn0 + dv), dn0);
            o.kv_b_proj.block(Eigen::Index(i) * (dn + dv) + dn, 0, dv, r) =
                a.kv_b.middleRows(Eigen::Index(i) * (dn0 + dv) + dn0, dv);
        }
        o.o_proj = a.wo;
        const int I = mc.intermediate;
        o.gate_proj = L.mlp.gate_up.topRows(I);
        o.up_proj = L.mlp.gate_up.bottomRows(I);
        o.down_proj = L.mlp.down;
        require(o.o_proj.rows() == D, "to_deepseek: layer ", l, ": o_proj has ", o.o_proj.rows(), " rows");
    }
    return ck;
}

/// RoPE inverse frequencies of a DeepSeek config (dr/2 entries).
inline std::vector<double> deepseek_inv_freq(const DeepseekConfig& c) {
    std::vector<double> f(std::size_t(c.qk_rope_head_dim / 2));
    for (std::size_t j = 0; j < f.size(); ++j)
        f[j] = std::pow(c.rope_base, -2.0 * double(j) / c.qk_rope_head_dim) / c.rope_linear_factor;
    return f;
}

/// Checks every extent of a checkpoint against its config; throws naming `where` and the tensor.
inline void validate(const DeepseekCheckpoint& ck, const std::string& where) {
    const auto& c = ck.config;
    const Eigen::Index H = c.heads, D = c.hidden, I = c.intermediate, r = c.kv_lora_rank, dn = c.qk_nope_head_dim,
                       dr = c.qk_rope_head_dim, dv = c.v_head_dim, ql = c.q_lora_rank;
    require(c.vocab > 0 && D > 0 && c.layers > 0 && H > 0 && I > 0 && r > 0 && dn >= 0 && dr > 0 && dr % 2 == 0 &&
                dv > 0 && ql >= 0 && c.rms_eps > 0 && c.rope_base > 0 && c.rope_linear_factor > 0 &&
                c.max_positions > 0,
            where, ": bad DeepSeek hyper-parameters (vocab ", c.vocab, ", hidden ", D, ", layers ", c.layers,
            ", heads ", H, ", intermediate ", I, ", kv_lora_rank ", r, ", qk_nope ", dn, ", qk_rope ", dr, ", v ", dv,
            ", q_lora_rank ", ql, ")");
    auto mat = [&](const RowMatrixXf& m, Eigen::Index rows, Eigen::Index cols, const std::string& name) {
        require(m.rows() == rows && m.cols() == cols, where, ": ", name, " is ", m.rows(), "x", m.cols(), ", expected ",
                rows, "x", cols);
    };
    auto vec = [&](const VectorXf& v, Eigen::Index n, const std::string& name) {
        require(v.size() == n, where, ": ", name, " has ", v.size(), " entries, expected ", n);
    };
    mat(ck.embed_tokens, c.vocab, D, "embed_tokens");
    if (!c.tied_embeddings) mat(ck.lm_head, c.vocab, D, "lm_head");
    vec(ck.norm, D, "norm");
    require(int(ck.layers.size()) == c.layers, where, ": ", ck.layers.size(), " layers, config says ", c.layers);
    for (std::size_t l = 0; l < ck.layers.size(); ++l) {
        const auto& L = ck.layers[l];
        const std::string p = "layer " + std::to_string(l) + " ";
        vec(L.input_layernorm, D, p + "input_layernorm");
        vec(L.post_attention_layernorm, D, p + "post_attention_layernorm");
        if (ql == 0) {
            mat(L.q_proj, H * (dn + dr), D, p + "q_proj");
        } else {
            mat(L.q_a_proj, ql, D, p + "q_a_proj");
            vec(L.q_a_layernorm, ql, p + "q_a_layernorm");
            mat(L.q_b_proj, H * (dn + dr), ql, p + "q_b_proj");
        }
        mat(L.kv_a_proj_with_mqa, r + dr, D, p + "kv_a_proj_with_mqa");
        vec(L.kv_a_layernorm, r, p + "kv_a_layernorm");
        mat(L.kv_b_proj, H * (dn + dv), r, p + "kv_b_proj");
        mat(L.o_proj, D, H * dv, p + "o_proj");
        mat(L.gate_proj, I, D, p + "gate_proj");
        mat(L.up_proj, I, D, p + "up_proj");
        mat(L.down_proj, D, I, p + "down_proj");
    }
}

/// A model::Model computing what stock DeepSeek code computes on `ck` (MLA layers with the
/// stock norms at ε = ck.latent_norm_eps).
inline Model from_deepseek(const DeepseekCheckpoint& ck, const std::string& where = "DeepSeek checkpoint") {
    validate(ck, where);
    const auto& c = ck.config;
    Model m;
    ModelConfig& mc = m.config;
    mc.name = c.name, mc.vocab = c.vocab, mc.hidden = c.hidden, mc.layers = c.layers, mc.intermediate = c.intermediate;
    mc.rms_eps = c.rms_eps, mc.max_positions = c.max_positions, mc.tied_embeddings = c.tied_embeddings;
    mc.bos_token = c.bos_token, mc.eos_token = c.eos_token;
    // ModelConfig describes the GQA shape the layers came from; for a DeepSeek model its hidden
    // size is split into `heads` query heads (used by nothing but validate()).
    require(c.hidden % c.heads == 0 && (c.hidden / c.heads) % 2 == 0, where, ": hidden ", c.hidden,
            " is not a multiple of 2·heads (", c.heads, "); not supported by model::Model");
    mc.n_q = mc.n_kv = c.heads, mc.head_dim = c.hidden / c.heads;
    mc.rope.base = c.rope_base;
    m.embed = ck.embed_tokens;
    m.lm_head = c.tied_embeddings ? RowMatrixXf() : ck.lm_head;
    m.out_norm = ck.norm;
    const auto inv_freq = deepseek_inv_freq(c);
    m.layers.resize(ck.layers.size());
    for (std::size_t l = 0; l < ck.layers.size(); ++l) {
        const auto& S = ck.layers[l];
        Layer& L = m.layers[l];
        L.attn_norm = S.input_layernorm;
        L.ffn_norm = S.post_attention_layernorm;
        MlaAttention a;
        a.n_heads = c.heads, a.rank = c.kv_lora_rank, a.rope_dim = c.qk_rope_head_dim;
        a.nope_dim = c.qk_nope_head_dim, a.v_dim = c.v_head_dim, a.q_lora_rank = c.q_lora_rank;
        a.inv_freq = inv_freq;
        a.softmax_scale = float(1.0 / std::sqrt(double(c.qk_head_dim())));
        if (c.q_lora_rank > 0) {
            a.wq = S.q_a_proj, a.wq_b = S.q_b_proj, a.q_norm = S.q_a_layernorm, a.q_norm_eps = ck.latent_norm_eps;
        } else {
            a.wq = S.q_proj;
        }
        a.kv_a = S.kv_a_proj_with_mqa;
        a.kv_norm = S.kv_a_layernorm, a.kv_norm_eps = ck.latent_norm_eps;
        a.kv_b = S.kv_b_proj;
        a.wo = S.o_proj;
        a.prepare();
        L.attn = std::move(a);
        L.mlp.gate_up.resize(2 * Eigen::Index(c.intermediate), c.hidden);
        L.mlp.gate_up.topRows(c.intermediate) = S.gate_proj;
        L.mlp.gate_up.bottomRows(c.intermediate) = S.up_proj;
        L.mlp.down = S.down_proj;
    }
    m.validate();
    return m;
}

}  // namespace transmla::model
