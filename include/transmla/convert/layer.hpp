// transmla/convert/layer.hpp — the data types of the GQA → MLA conversion (docs/conversion.md):
// the layers before, during and after conversion, the calibration statistics, the options and
// the per-layer report. fp64 (Eigen::MatrixXd) throughout; weights are nn.Linear `[out, in]`.
//
// Every layer type below has an fp64 reference forward in convert/forward.hpp with the same
// signature shape: `forward(layer, X [T][D], positions (T)) -> [T][D]`, causal over the T rows
// (row t attends to rows s <= t), RoPE at `positions[t]`. The doc comment of each type states
// exactly what that forward computes, so that an engine can run the converted layer itself.
//
// Where the functions live:
//   convert/layer.hpp        also CalibrationStats (input moment), KvStats (key/value moment),
//                            PairNormStats (accumulators)
//   convert/forward.hpp      forward(GqaLayer / EquivalentLayer / PartialRopeLayer / MlaLayer /
//                            AbsorbedMlaLayer / Mha2MlaLayer, X, positions); MLA cache + decode
//   convert/transmla.hpp     the TransMLA steps, in order: equivalence, rorope (+ freqfold index
//                            map), bkv_alpha / balance_kv, joint_pca, build_query, assemble,
//                            absorb; finish_transmla (steps 3–6 in one call); partial_as_mla
//   convert/mha2mla.hpp      select_rope_pairs, mha2mla
//   convert/output_aware.hpp RotationFitStats, fold_rotation_fit, output_aware_weight,
//                            weighted_rrr, output_aware_finish (Method::output_aware)
//   convert/convert.hpp      convert_layer (one call, all methods) and the LayerReport
//   convert/shape_link.hpp   compile-time MLA shape of a GQA shape, static_asserts + run-time twins
//
// Two-phase use (what a whole-model converter does, since steps 3–4 need statistics of the
// model *after* step 2):
//   1. for each layer: stats_orig[l] = statistics of the attention input of the ORIGINAL model;
//      partial[l] = rorope(gqa[l], stats_orig[l], {d_r, F});
//   2. run the partial-RoPE model (every layer replaced by partial[l], forward below; or by the
//      exactly equivalent MLA layer partial_as_mla(partial[l]), so an MLA engine can run it) on
//      the calibration text and gather stats_after[l] of each layer's attention input;
//   3. mla[l] = finish_transmla(partial[l], stats_after[l], options).
// convert_layer(gqa, stats_orig, &stats_after, options) does 1 + 3 for one layer (with
// stats_after = nullptr it reuses stats_orig for steps 3–4).
// The statistics are either CalibrationStats (the input moment, (D+1)², everything) or, cheaper
// for GQA layers, KvStats (the key/value moment, (2L)²: in pass 1 the original layer's pre-RoPE
// keys and values, in pass 2 the partial layer's own rotated keys and values; no MHA2MLA, no
// low-rank query). Pass std::move(layer) to rorope and std::move(partial) to finish_transmla
// to hand the weights over instead of copying them.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/error.hpp"
#include "transmla/rope.hpp"
#include "transmla/shape.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace transmla::convert {

using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace detail {
inline void check_matrix(const MatrixXd& m, Eigen::Index rows, Eigen::Index cols, const char* where,
                         const char* what) {
    require(m.rows() == rows && m.cols() == cols, where, ": ", what, " is ", m.rows(), "x", m.cols(),
            ", expected ", rows, "x", cols);
}
/// An optional bias: empty (no bias) or exactly `n` entries.
inline void check_bias(const VectorXd& b, Eigen::Index n, const char* where, const char* what) {
    require(b.size() == 0 || b.size() == n, where, ": bias ", what, " has ", b.size(),
            " entries, expected 0 (none) or ", n);
}
inline void check_freqs(const std::vector<double>& f, int rope_dim, const char* where) {
    require(rope_dim >= 0 && rope_dim % 2 == 0 && int(f.size()) * 2 == rope_dim, where, ": ", f.size(),
            " RoPE inverse frequencies for a RoPE dim of ", rope_dim, " (need rope_dim/2)");
}
}  // namespace detail

// ------------------------------------------------------------------------------------------------
// The original layer
// ------------------------------------------------------------------------------------------------

/// One GQA attention layer (Llama / Mistral / Qwen2 style), fp64.
///
/// Forward (convert/forward.hpp `forward(const GqaLayer&, X, positions)`), for each token t with
/// input row x_t (the attention input, i.e. after the layer's input RMSNorm):
///   q_i = W_Q[i·d:(i+1)·d] x_t + b_Q[..]      (query head i, i < n_q)
///   k_h = W_K[h·d:(h+1)·d] x_t + b_K[..]      (KV head h, h < n_kv), v_h likewise with W_V
///   RoPE(q_i), RoPE(k_h) at position positions[t] with `rope` (pairing, frequencies
///   rope_inv_freq(rope, d), attention factor rope_attention_factor(rope))
///   o_i = softmax_s(d^−½ · ⟨q_i(t), k_{i/g}(s)⟩, s ≤ t) · v_{i/g}(s)
///   out_t = W_O [o_1; …; o_{n_q}]             (no output bias)
/// Biases are optional: an empty VectorXd means none.
struct GqaLayer {
    int hidden = 0;    ///< D
    int n_q = 0;       ///< query heads
    int n_kv = 0;      ///< KV heads
    int head_dim = 0;  ///< d
    RopeSpec rope{};   ///< pairing of the head dims and frequency table
    MatrixXd wq;       ///< [n_q·d][D]
    MatrixXd wk;       ///< [n_kv·d][D]
    MatrixXd wv;       ///< [n_kv·d][D]
    MatrixXd wo;       ///< [D][n_q·d]
    VectorXd bq, bk, bv;  ///< optional (Qwen2): [n_q·d], [n_kv·d], [n_kv·d]

    int group() const noexcept { return n_q / n_kv; }
    int kv_width() const noexcept { return n_kv * head_dim; }  ///< L
    double softmax_scale() const { return 1.0 / std::sqrt(double(head_dim)); }
    std::vector<double> inv_freq() const { return rope_inv_freq(rope, head_dim); }
    std::int64_t cache_per_token() const noexcept { return 2LL * kv_width(); }

    /// Throws transmla::error naming the first inconsistent field.
    void validate() const {
        const char* w = "GqaLayer";
        require(hidden > 0, w, ": hidden must be positive, got ", hidden);
        DynamicGqaShape(n_q, n_kv, head_dim);  // heads and head dim
        rope.validate(head_dim);
        detail::check_matrix(wq, Eigen::Index(n_q) * head_dim, hidden, w, "wq");
        detail::check_matrix(wk, kv_width(), hidden, w, "wk");
        detail::check_matrix(wv, kv_width(), hidden, w, "wv");
        detail::check_matrix(wo, hidden, Eigen::Index(n_q) * head_dim, w, "wo");
        detail::check_bias(bq, Eigen::Index(n_q) * head_dim, w, "bq");
        detail::check_bias(bk, kv_width(), w, "bk");
        detail::check_bias(bv, kv_width(), w, "bv");
    }
};

// ------------------------------------------------------------------------------------------------
// Step 1: the equivalent latent form
// ------------------------------------------------------------------------------------------------

/// Step 1 (docs/conversion.md): the GQA layer read as one latent key k̂ = W_K x + b_K ∈ R^L and value
/// v̂ = W_V x + b_V ∈ R^L per token (the same cache, 2L), with selectors S_i ∈ R^{d×L}
/// (S_i picks block i/g). Forward: k_i = S_i k̂, v_i = S_i v̂, then exactly the GQA forward
/// (RoPE on q_i and k_i in the original pairing). Exact.
struct EquivalentLayer {
    GqaLayer base;                    ///< the original weights (W_K, W_V produce k̂, v̂)
    std::vector<MatrixXd> selectors;  ///< S_i, n_q matrices [d][L]
};

// ------------------------------------------------------------------------------------------------
// Steps 2–3: the partial-RoPE layer
// ------------------------------------------------------------------------------------------------

/// The layer after RoRoPE (step 2) and, optionally, balanced KV (step 3): a GQA layer whose
/// keys were rotated by an orthogonal M (L×L) and that keeps RoPE on the first `rope_dim`
/// latent key dims only.
///
/// Forward (`forward(const PartialRopeLayer&, X, positions)`), per token:
///   q_i  = W_Q^i x + b_Q^i                          (the original query, d dims)
///   q̂_i  = S̃_iᵀ q_i ∈ R^L, with S̃_i = S_i Mᵀ Λ_α   (= selector(i)); Λ_α = diag(1 (first
///          rope_dim), α (the rest)), i.e. q̂_i = Λ_α · M[:, (i/g)·d : (i/g+1)·d] · q_i
///   k̃    = wk x + bk ∈ R^L                          (wk = Λ_α⁻¹ M W_K, bk = Λ_α⁻¹ M b_K)
///   v_h  = W_V^h x + b_V^h                          (values unchanged)
///   logit_i(t,s) = d^−½ · ( ⟨R_t(q̂_i[:d_r]), R_s(k̃[:d_r])⟩ + ⟨q̂_i[d_r:], k̃[d_r:]⟩ )
///   where R_t rotates the INTERLEAVED pairs (2p, 2p+1), p < d_r/2, of the first d_r = rope_dim
///   dims by angle positions[t]·rope_inv_freq[p] (times rope_attention_factor on cos/sin);
///   o_i = softmax · v_{i/g};  out = W_O [o_1; …; o_{n_q}].
/// With rope_dim = L ("keep RoPE everywhere", F = 1) this equals the GQA layer exactly.
struct PartialRopeLayer {
    int hidden = 0, n_q = 0, n_kv = 0, head_dim = 0;
    int rope_dim = 0;                   ///< d_r (or L when RoPE is kept on every latent dim)
    int freqfold = 1;                   ///< F used to build M
    int c = 1;                          ///< d / d_r of the index map (1 when d_r = d or L)
    std::vector<double> rope_inv_freq;  ///< rope_dim/2 entries: pair p of the latent key
    double rope_attention_factor = 1.0;
    MatrixXd wq;                        ///< [n_q·d][D] original W_Q
    VectorXd bq;                        ///< optional
    MatrixXd rotation;                  ///< M [L][L], orthogonal: k̃ (before balancing) = M k̂
    MatrixXd wk;                        ///< [L][D] = Λ_α⁻¹ M W_K
    VectorXd bk;                        ///< optional, Λ_α⁻¹ M b_K
    MatrixXd wv;                        ///< [L][D] original W_V
    VectorXd bv;                        ///< optional
    MatrixXd wo;                        ///< [D][n_q·d] original W_O
    double alpha = 1.0;                 ///< balanced-KV factor (1 = not balanced yet)
    /// Energy (eigenvalue) fraction of the pre-RoPE keys that the rope_dim RoPE dims hold on the
    /// statistics RoRoPE was computed from (report; 1 when rope_dim = L).
    double rope_energy = 1.0;

    int group() const noexcept { return n_q / n_kv; }
    int kv_width() const noexcept { return n_kv * head_dim; }
    double softmax_scale() const { return 1.0 / std::sqrt(double(head_dim)); }

    /// S̃_i = S_i Mᵀ Λ_α ∈ R^{d×L}: q̂_i = S̃_iᵀ q_i and the head's key is S̃_i k̃.
    MatrixXd selector(int i) const {
        require(i >= 0 && i < n_q, "PartialRopeLayer::selector: head ", i, " outside [0, ", n_q, ")");
        const int L = kv_width(), h = i / group();
        MatrixXd s = rotation.middleCols(Eigen::Index(h) * head_dim, head_dim).transpose();  // d×L
        if (L > rope_dim) s.rightCols(L - rope_dim) *= alpha;
        return s;
    }

    void validate() const {
        const char* w = "PartialRopeLayer";
        require(hidden > 0, w, ": hidden must be positive, got ", hidden);
        DynamicGqaShape(n_q, n_kv, head_dim);
        const int L = kv_width();
        require(rope_dim > 0 && rope_dim <= L && rope_dim % 2 == 0, w, ": rope_dim ", rope_dim,
                " must be even and in (0, L = ", L, "]");
        detail::check_freqs(rope_inv_freq, rope_dim, w);
        require(alpha > 0 && std::isfinite(alpha), w, ": alpha must be positive and finite, got ", alpha);
        detail::check_matrix(wq, Eigen::Index(n_q) * head_dim, hidden, w, "wq");
        detail::check_matrix(rotation, L, L, w, "rotation");
        detail::check_matrix(wk, L, hidden, w, "wk");
        detail::check_matrix(wv, L, hidden, w, "wv");
        detail::check_matrix(wo, hidden, Eigen::Index(n_q) * head_dim, w, "wo");
        detail::check_bias(bq, Eigen::Index(n_q) * head_dim, w, "bq");
        detail::check_bias(bk, L, w, "bk");
        detail::check_bias(bv, L, w, "bv");
    }
};

// ------------------------------------------------------------------------------------------------
// The MLA layer (DeepSeek-V3 layout) and its absorbed form
// ------------------------------------------------------------------------------------------------

/// One MLA attention layer in the DeepSeek-V3 layout, as TransMLA produces it (NO RMSNorm on the
/// latent, none between q_a_proj and q_b_proj).
///
/// Forward (`forward(const MlaLayer&, X, positions)`, naive order; the absorbed order and
/// incremental decode give the same result), per token x:
///   query  q = q_proj x + q_bias                        (q_lora_rank == 0), or
///          q = q_b_proj (q_a_proj x + q_a_bias) + q_b_bias   (q_lora_rank > 0);
///          head i: q[i·(dn+dr) : i·(dn+dr)+dn] = q_nope_i, the next dr rows = q_pe_i
///   kv_a = kv_a_proj_with_mqa x + kv_a_bias ∈ R^{r+dr}: c = kv_a[:r] (latent), k_pe = kv_a[r:]
///   cache row [c | RoPE_t(k_pe)]: r + dr values per token
///   head i: kv_b_proj rows [i·(dn+dv), i·(dn+dv)+dn) = W_UK^i, the next dv rows = W_UV^i;
///          k_nope_i = W_UK^i c, v_i = W_UV^i c (no bias)
///   logit_i(t,s) = softmax_scale · (⟨q_nope_i(t), k_nope_i(s)⟩ + ⟨R_t q_pe_i(t), R_s k_pe(s)⟩),
///   R_t rotating interleaved pairs (2p, 2p+1) by positions[t]·rope_inv_freq[p] (cos/sin times
///   rope_attention_factor); o_i = softmax · v_i;  out = o_proj [o_1; …; o_H].
/// TransMLA output: dn = dv = d, dr = d_r, H = n_q, softmax_scale = (d + d_r)^−½, and
/// rope_inv_freq[p] = θ_{c·p} of the original table (c = d/d_r).
struct MlaLayer {
    int hidden = 0;       ///< D
    int n_heads = 0;      ///< H (= n_q of the source)
    int q_lora_rank = 0;  ///< 0: q_proj; > 0: q_a_proj / q_b_proj
    int kv_lora_rank = 0; ///< r
    int qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
    MatrixXd q_proj;            ///< [H·(dn+dr)][D]            (q_lora_rank == 0)
    VectorXd q_bias;            ///< optional [H·(dn+dr)]
    MatrixXd q_a_proj;          ///< [q_lora_rank][D]          (q_lora_rank > 0)
    VectorXd q_a_bias;          ///< optional [q_lora_rank]
    MatrixXd q_b_proj;          ///< [H·(dn+dr)][q_lora_rank]
    VectorXd q_b_bias;          ///< optional [H·(dn+dr)]
    MatrixXd kv_a_proj_with_mqa;  ///< [r+dr][D]: latent rows, then the RoPE key (interleaved pairs)
    VectorXd kv_a_bias;           ///< optional [r+dr]
    MatrixXd kv_b_proj;           ///< [H·(dn+dv)][r]
    MatrixXd o_proj;              ///< [D][H·dv]
    std::vector<double> rope_inv_freq;  ///< dr/2 entries
    double rope_attention_factor = 1.0;
    double softmax_scale = 0.0;

    int qk_head_dim() const noexcept { return qk_nope_head_dim + qk_rope_head_dim; }
    std::int64_t cache_per_token() const noexcept { return std::int64_t(kv_lora_rank) + qk_rope_head_dim; }
    DynamicMlaShape shape() const {
        return DynamicMlaShape(n_heads, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim);
    }

    void validate() const {
        const char* w = "MlaLayer";
        require(hidden > 0 && n_heads > 0 && kv_lora_rank > 0 && qk_rope_head_dim > 0 && v_head_dim > 0 &&
                    qk_nope_head_dim >= 0 && q_lora_rank >= 0,
                w, ": bad extents hidden=", hidden, " n_heads=", n_heads, " kv_lora_rank=", kv_lora_rank,
                " qk_nope_head_dim=", qk_nope_head_dim, " qk_rope_head_dim=", qk_rope_head_dim,
                " v_head_dim=", v_head_dim, " q_lora_rank=", q_lora_rank);
        require(qk_rope_head_dim % 2 == 0, w, ": qk_rope_head_dim must be even, got ", qk_rope_head_dim);
        require(softmax_scale > 0, w, ": softmax_scale must be positive, got ", softmax_scale);
        detail::check_freqs(rope_inv_freq, qk_rope_head_dim, w);
        const Eigen::Index qrows = Eigen::Index(n_heads) * qk_head_dim();
        if (q_lora_rank == 0) {
            detail::check_matrix(q_proj, qrows, hidden, w, "q_proj");
            detail::check_bias(q_bias, qrows, w, "q_bias");
        } else {
            detail::check_matrix(q_a_proj, q_lora_rank, hidden, w, "q_a_proj");
            detail::check_bias(q_a_bias, q_lora_rank, w, "q_a_bias");
            detail::check_matrix(q_b_proj, qrows, q_lora_rank, w, "q_b_proj");
            detail::check_bias(q_b_bias, qrows, w, "q_b_bias");
        }
        detail::check_matrix(kv_a_proj_with_mqa, kv_lora_rank + qk_rope_head_dim, hidden, w, "kv_a_proj_with_mqa");
        detail::check_bias(kv_a_bias, kv_lora_rank + qk_rope_head_dim, w, "kv_a_bias");
        detail::check_matrix(kv_b_proj, Eigen::Index(n_heads) * (qk_nope_head_dim + v_head_dim), kv_lora_rank, w,
                             "kv_b_proj");
        detail::check_matrix(o_proj, hidden, Eigen::Index(n_heads) * v_head_dim, w, "o_proj");
    }
};

/// Step 7 (docs/conversion.md): an MLA layer with W_UK folded into the query and W_UV into the output.
///
/// Forward (`forward(const AbsorbedMlaLayer&, X, positions)`): the cache row [c | R_s k_pe] is
/// produced by kv_a exactly as in MlaLayer; per head i
///   q̃_i = q_abs[i] x + q_abs_bias[i] ∈ R^r  (= W_UK^iᵀ q_nope_i),  q_pe_i as in MlaLayer
///   logit_i(t,s) = softmax_scale · (⟨q̃_i(t), c(s)⟩ + ⟨R_t q_pe_i(t), R_s k_pe(s)⟩)
///   ō_i = Σ_s p_s c(s) ∈ R^r;   out = Σ_i o_abs[i] ō_i   (o_abs[i] = o_proj^i W_UV^i, [D][r])
/// Multi-query attention of H heads against one r + dr wide cache row.
struct AbsorbedMlaLayer {
    MlaLayer mla;                     ///< query RoPE rows and kv_a are read from here
    std::vector<MatrixXd> q_abs;      ///< H × [r][D]  (or [r][q_lora_rank] when q_lora_rank > 0)
    std::vector<VectorXd> q_abs_bias; ///< H × [r] (empty when the query has no bias)
    std::vector<MatrixXd> o_abs;      ///< H × [D][r]
};

// ------------------------------------------------------------------------------------------------
// MHA2MLA
// ------------------------------------------------------------------------------------------------

/// Which frequencies keep RoPE in MHA2MLA's partial RoPE.
enum class RopeSelection {
    high,     ///< j < r_m/2 (highest frequencies)
    low,      ///< the last r_m/2 frequencies
    uniform,  ///< j = start + k·Δ, Δ = d/r_m, k < r_m/2
    two_norm, ///< per KV head: top r_m/2 by Σ_{i∈group(h)} E‖q_{i,j}‖·E‖k_{h,j}‖
};
/// MHA2MLA's low-rank factorisation of the no-RoPE key and the value (d_kv = mha2mla_latent_dim,
/// the paper's and the official code's `low_rank`, per KV head).
enum class SvdMode {
    joint,     ///< one SVD of all KV heads' [W_K,nope ; W_V] at rank n_kv·d_kv: one latent shared by all
               ///< heads (the official code's "joint")
    split,     ///< one SVD of all heads' W_K,nope and one of all heads' W_V, rank n_kv·d_kv each: a latent
               ///< of 2·n_kv·d_kv (the official code's "split")
    per_head,  ///< one SVD of [W_K,nope^h ; W_V^h] per KV head at rank d_kv: n_kv separate latents of the
               ///< joint cache size (block-diagonal joint: never a smaller weight error than joint)
};

inline const char* to_string(RopeSelection s) noexcept {
    switch (s) {
        case RopeSelection::high: return "high";
        case RopeSelection::low: return "low";
        case RopeSelection::uniform: return "uniform";
        case RopeSelection::two_norm: return "two_norm";
    }
    return "?";
}
inline const char* to_string(SvdMode s) noexcept {
    return s == SvdMode::joint ? "joint" : s == SvdMode::split ? "split" : "per_head";
}

/// An MHA2MLA layer: per-KV-head partial RoPE with the kept dims' ORIGINAL frequencies, and one
/// low-rank latent c (width ρ = latent_width) from which every KV head's no-RoPE key dims and
/// value are reconstructed. Scale d^−½ (original).
///
/// Forward (`forward(const Mha2MlaLayer&, X, positions)`), per token x and KV head h:
///   kept dims K_h = the two dims rope_pair(pairing, d, j) of every j in rope_pairs[h] (ascending
///   j, first dim then second), nope dims N_h = the other d − r_m dims ascending;
///   k_rope_h = w_k_rope[h] x + b_k_rope[h] ∈ R^{r_m}  (= the original key dims K_h)
///   c        = w_down x ∈ R^ρ                          (cached: n_kv·r_m + ρ per token)
///   k_h[N_h] = w_up_k[h] c + b_up_k[h];  k_h[K_h] = k_rope_h;  v_h = w_up_v[h] c + b_up_v[h]
///   RoPE: in the ORIGINAL head layout, only the pairs j ∈ rope_pairs[h] of q_i (i/g = h) and k_h
///   rotate (frequency inv_freq[j], pairing `pairing`); the other dims are not rotated.
///   q_i = W_Q^i x + b_Q^i (unchanged); logits d^−½ ⟨q_i, k_h⟩; out = W_O [o_1; …].
/// ρ by SvdMode (d_kv = latent_dim): joint n_kv·d_kv; split 2·n_kv·d_kv, c = [c_k | c_v] and the
/// key up projections read only c_k, the value ones only c_v; per_head n_kv·d_kv, c = [c_0 | … ]
/// and head h's up projections read only c_h (zero columns elsewhere).
struct Mha2MlaLayer {
    int hidden = 0, n_q = 0, n_kv = 0, head_dim = 0;
    int rope_dims = 0;     ///< r_m per head (even)
    int latent_dim = 0;    ///< d_kv per KV head (the option)
    int latent_width = 0;  ///< ρ: the cached latent of all heads together
    SvdMode svd = SvdMode::joint;
    RopeSelection selection = RopeSelection::high;
    RopePairing pairing = RopePairing::half_split;
    std::vector<double> inv_freq;  ///< original table, d/2 entries
    double rope_attention_factor = 1.0;
    MatrixXd wq;  ///< [n_q·d][D]
    VectorXd bq;  ///< optional
    MatrixXd wo;  ///< [D][n_q·d]
    std::vector<std::vector<int>> rope_pairs;  ///< per KV head: r_m/2 ascending frequency indices
    std::vector<MatrixXd> w_k_rope;            ///< per KV head [r_m][D]
    std::vector<VectorXd> b_k_rope;            ///< per KV head [r_m] or empty
    MatrixXd w_down;                           ///< [ρ][D]
    std::vector<MatrixXd> w_up_k;              ///< per KV head [d − r_m][ρ]
    std::vector<VectorXd> b_up_k;              ///< per KV head [d − r_m] or empty
    std::vector<MatrixXd> w_up_v;              ///< per KV head [d][ρ]
    std::vector<VectorXd> b_up_v;              ///< per KV head [d] or empty

    int group() const noexcept { return n_q / n_kv; }
    double softmax_scale() const { return 1.0 / std::sqrt(double(head_dim)); }
    std::int64_t cache_per_token() const noexcept { return std::int64_t(n_kv) * rope_dims + latent_width; }
};

// ------------------------------------------------------------------------------------------------
// Calibration statistics
// ------------------------------------------------------------------------------------------------

namespace detail {
/// Σ_t z_t z_tᵀ over the unmasked rows t, z_t the concatenation of row t of every block (and a
/// trailing 1 when append_one). mask: empty = every row, else one entry per row, 0 = padding.
/// Throws on mismatched row counts, a mask of the wrong length, or a non-finite value.
inline MatrixXd masked_moment(std::initializer_list<const Eigen::Ref<const MatrixXd>*> blocks,
                              std::span<const std::uint8_t> mask, bool append_one, const char* where) {
    const Eigen::Index rows = (*blocks.begin())->rows();
    Eigen::Index width = append_one ? 1 : 0;
    for (const auto* b : blocks) {
        require(b->rows() == rows, where, ": the blocks have different row counts (", b->rows(), " vs ", rows, ")");
        width += b->cols();
    }
    require(mask.empty() || std::int64_t(mask.size()) == std::int64_t(rows), where, ": mask has ", mask.size(),
            " entries for ", rows, " rows");
    Eigen::Index n = 0;
    for (Eigen::Index t = 0; t < rows; ++t) n += (mask.empty() || mask[std::size_t(t)]) ? 1 : 0;
    MatrixXd z(n, width);
    for (Eigen::Index t = 0, o = 0; t < rows; ++t) {
        if (!(mask.empty() || mask[std::size_t(t)])) continue;
        Eigen::Index c = 0;
        for (const auto* b : blocks) {
            z.row(o).segment(c, b->cols()) = b->row(t);
            c += b->cols();
        }
        if (append_one) z(o, c) = 1.0;
        ++o;
    }
    for (Eigen::Index i = 0; i < z.size(); ++i) require(std::isfinite(z.data()[i]), where, ": non-finite input value");
    MatrixXd part = MatrixXd::Zero(width, width);
    part.selfadjointView<Eigen::Lower>().rankUpdate(z.transpose());
    part.triangularView<Eigen::StrictlyUpper>() = part.transpose();
    return part;
}
/// [T][W] row-major floats as an fp64 matrix.
inline MatrixXd float_rows(std::span<const float> rows, std::int64_t tokens, std::int64_t width) {
    return Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
               rows.data(), Eigen::Index(tokens), Eigen::Index(width))
        .cast<double>();
}
}  // namespace detail

/// fp64 uncentred second moment of the augmented attention input [x; 1] of one layer:
/// H = Σ_t [x_t; 1][x_t; 1]ᵀ ((D+1)×(D+1); H[D][D] = token count, H[:D][D] = Σ x). Every
/// statistic of docs/conversion.md (pre-RoPE keys, values, queries, rotated keys, column norms) is
/// A H Aᵀ for A = [W | b]. Padding rows are excluded with a mask. add() and merge() may be
/// called concurrently from several threads (the products are computed outside the lock).
class CalibrationStats {
public:
    CalibrationStats() = default;
    explicit CalibrationStats(int hidden) : hidden_(hidden), h_(MatrixXd::Zero(hidden + 1, hidden + 1)) {
        require(hidden > 0, "CalibrationStats: hidden must be positive, got ", hidden);
    }
    CalibrationStats(const CalibrationStats& o) {
        std::lock_guard<std::mutex> lk(o.m_);
        hidden_ = o.hidden_;
        h_ = o.h_;
    }
    CalibrationStats& operator=(const CalibrationStats& o) {
        if (this == &o) return *this;
        MatrixXd h;
        int hid;
        {
            std::lock_guard<std::mutex> lk(o.m_);
            h = o.h_;
            hid = o.hidden_;
        }
        std::lock_guard<std::mutex> lk(m_);
        hidden_ = hid;
        h_ = std::move(h);
        return *this;
    }

    int hidden() const noexcept { return hidden_; }

    /// Adds the rows of `x` ([T][D], one token per row); `mask` (empty = all tokens) has T
    /// entries, nonzero = a real token, 0 = padding (skipped).
    void add(const Eigen::Ref<const MatrixXd>& x, std::span<const std::uint8_t> mask = {}) {
        require(hidden_ > 0, "CalibrationStats::add: default-constructed statistics (no hidden size)");
        require(x.cols() == hidden_, "CalibrationStats::add: rows have ", x.cols(), " features, expected ",
                hidden_);
        const MatrixXd part = detail::masked_moment({&x}, mask, /*append_one=*/true, "CalibrationStats::add");
        std::lock_guard<std::mutex> lk(m_);
        h_ += part;
    }
    /// Float rows ([T][D] row-major, e.g. activations of an fp32 forward pass).
    void add(std::span<const float> rows, std::int64_t tokens, std::span<const std::uint8_t> mask = {}) {
        require(std::int64_t(rows.size()) == tokens * hidden_, "CalibrationStats::add: ", rows.size(),
                " floats for ", tokens, " tokens of width ", hidden_);
        add(detail::float_rows(rows, tokens, hidden_), mask);
    }
    /// Adds another accumulator's statistics (e.g. one per thread).
    void merge(const CalibrationStats& other) {
        require(&other != this, "CalibrationStats::merge: cannot merge into itself");
        MatrixXd h;
        {
            std::lock_guard<std::mutex> lk(other.m_);
            require(other.hidden_ == hidden_, "CalibrationStats::merge: hidden sizes differ (", other.hidden_,
                    " vs ", hidden_, ")");
            h = other.h_;
        }
        std::lock_guard<std::mutex> lk(m_);
        h_ += h;
    }
    /// Number of (non-padding) tokens accumulated.
    std::int64_t tokens() const {
        std::lock_guard<std::mutex> lk(m_);
        return hidden_ > 0 ? std::int64_t(std::llround(h_(hidden_, hidden_))) : 0;
    }
    /// H, (D+1)×(D+1).
    MatrixXd moment() const {
        std::lock_guard<std::mutex> lk(m_);
        return h_;
    }
    /// Set H directly (synthetic statistics, deserialisation). Must be symmetric (D+1)×(D+1).
    void set_moment(MatrixXd h) {
        require(h.rows() == h.cols() && h.rows() >= 2, "CalibrationStats::set_moment: H must be square (D+1)x(D+1)");
        std::lock_guard<std::mutex> lk(m_);
        hidden_ = int(h.rows()) - 1;
        h_ = std::move(h);
    }
    /// Second moment of y = W x + b over the calibration tokens: [W | b] H [W | b]ᵀ
    /// (b empty = no bias). Rows × rows.
    MatrixXd project(const MatrixXd& w, const VectorXd& b = VectorXd()) const {
        std::lock_guard<std::mutex> lk(m_);
        require(w.cols() == hidden_, "CalibrationStats::project: W has ", w.cols(), " columns, expected ", hidden_);
        require(b.size() == 0 || b.size() == w.rows(), "CalibrationStats::project: bias has ", b.size(),
                " entries, expected ", w.rows());
        MatrixXd a(w.rows(), hidden_ + 1);
        a.leftCols(hidden_) = w;
        if (b.size()) a.col(hidden_) = b;
        else a.col(hidden_).setZero();
        MatrixXd ah = a * h_;
        MatrixXd out(w.rows(), w.rows());
        out.triangularView<Eigen::Lower>() = ah * a.transpose();
        out.triangularView<Eigen::StrictlyUpper>() = out.transpose();
        return out;
    }

    /// diag([W | b] H [W | b]ᵀ): Σ_t y_t[j]², the squared column norms of the activations y = W x + b.
    VectorXd project_diag(const MatrixXd& w, const VectorXd& b = VectorXd()) const {
        std::lock_guard<std::mutex> lk(m_);
        require(w.cols() == hidden_, "CalibrationStats::project_diag: W has ", w.cols(), " columns, expected ",
                hidden_);
        require(b.size() == 0 || b.size() == w.rows(), "CalibrationStats::project_diag: bias has ", b.size(),
                " entries, expected ", w.rows());
        MatrixXd a(w.rows(), hidden_ + 1);
        a.leftCols(hidden_) = w;
        if (b.size()) a.col(hidden_) = b;
        else a.col(hidden_).setZero();
        return (a * h_).cwiseProduct(a).rowwise().sum();
    }

private:
    int hidden_ = 0;
    MatrixXd h_;
    mutable std::mutex m_;
};

/// fp64 uncentred second moment of one layer's pre-RoPE keys and values, S = Σ_t [k_t; v_t]
/// [k_t; v_t]ᵀ (2L×2L, L = n_kv·d; k_t = W_K x_t + b_K and v_t = W_V x_t + b_V as the layer
/// computes them, biases included), padding excluded. Every statistic TransMLA needs of a GQA
/// layer is a block of it: the RoRoPE key moment (step 2) is S[:L, :L] of the original model's
/// keys, and the joint moment of steps 3–4 is S[d_r:, d_r:] of the partial-RoPE layer's rotated
/// keys k̃ = W̃_K x + b̃_K and values. For GQA (2L < D + 1) it is smaller and much cheaper to
/// convert from than the input moment (CalibrationStats): no (D+1)² projection is needed. It
/// cannot give the query moment (low-rank query) or the MHA2MLA errors; those need the input
/// moment. add() and merge() may be called concurrently from several threads.
class KvStats {
public:
    KvStats() = default;
    explicit KvStats(int kv_width) : width_(kv_width), s_(MatrixXd::Zero(2 * kv_width, 2 * kv_width)) {
        require(kv_width > 0, "KvStats: kv_width (L = n_kv·d) must be positive, got ", kv_width);
    }
    KvStats(const KvStats& o) {
        std::lock_guard<std::mutex> lk(o.m_);
        width_ = o.width_, s_ = o.s_, tokens_ = o.tokens_;
    }
    KvStats& operator=(const KvStats& o) {
        if (this == &o) return *this;
        const KvStats copy(o);
        std::lock_guard<std::mutex> lk(m_);
        width_ = copy.width_, s_ = copy.s_, tokens_ = copy.tokens_;
        return *this;
    }

    /// The statistics a layer's input moment implies: S = [W_K b_K; W_V b_V] H [W_K b_K; W_V b_V]ᵀ.
    static KvStats from_input(const CalibrationStats& in, const MatrixXd& wk, const VectorXd& bk, const MatrixXd& wv,
                              const VectorXd& bv) {
        require(wk.rows() == wv.rows() && wk.cols() == wv.cols(), "KvStats::from_input: W_K is ", wk.rows(), "x",
                wk.cols(), " but W_V is ", wv.rows(), "x", wv.cols());
        const Eigen::Index L = wk.rows();
        MatrixXd w(2 * L, wk.cols());
        w << wk, wv;
        VectorXd b;
        if (bk.size() || bv.size()) {
            require((bk.size() == 0 || bk.size() == L) && (bv.size() == 0 || bv.size() == L),
                    "KvStats::from_input: biases must have L = ", L, " entries");
            b = VectorXd::Zero(2 * L);
            if (bk.size()) b.head(L) = bk;
            if (bv.size()) b.tail(L) = bv;
        }
        KvStats out{static_cast<int>(L)};
        out.s_ = in.project(w, b);
        out.tokens_ = in.tokens();
        return out;
    }

    int kv_width() const noexcept { return width_; }

    /// Adds the rows of k and v ([T][L] each, one token per row; mask as in CalibrationStats::add).
    void add(const Eigen::Ref<const MatrixXd>& k, const Eigen::Ref<const MatrixXd>& v,
             std::span<const std::uint8_t> mask = {}) {
        require(width_ > 0, "KvStats::add: default-constructed statistics (no kv_width)");
        require(k.cols() == width_ && v.cols() == width_, "KvStats::add: k and v rows must have L = ", width_,
                " features, got ", k.cols(), " and ", v.cols());
        const MatrixXd part = detail::masked_moment({&k, &v}, mask, /*append_one=*/false, "KvStats::add");
        std::int64_t n = 0;
        for (Eigen::Index t = 0; t < k.rows(); ++t) n += (mask.empty() || mask[std::size_t(t)]) ? 1 : 0;
        std::lock_guard<std::mutex> lk(m_);
        s_ += part;
        tokens_ += n;
    }
    /// Float rows ([T][L] row-major each, e.g. the key/value projections of an fp32 forward).
    void add(std::span<const float> k, std::span<const float> v, std::int64_t tokens,
             std::span<const std::uint8_t> mask = {}) {
        require(std::int64_t(k.size()) == tokens * width_ && std::int64_t(v.size()) == tokens * width_,
                "KvStats::add: ", k.size(), " and ", v.size(), " floats for ", tokens, " tokens of width ", width_);
        add(detail::float_rows(k, tokens, width_), detail::float_rows(v, tokens, width_), mask);
    }
    /// Adds another accumulator's statistics (e.g. one per thread).
    void merge(const KvStats& other) {
        require(&other != this, "KvStats::merge: cannot merge into itself");
        const KvStats copy(other);
        require(copy.width_ == width_, "KvStats::merge: kv widths differ (", copy.width_, " vs ", width_, ")");
        std::lock_guard<std::mutex> lk(m_);
        s_ += copy.s_;
        tokens_ += copy.tokens_;
    }
    /// Number of (non-padding) tokens accumulated.
    std::int64_t tokens() const {
        std::lock_guard<std::mutex> lk(m_);
        return tokens_;
    }
    /// S, 2L×2L: keys first, then values.
    MatrixXd moment() const {
        std::lock_guard<std::mutex> lk(m_);
        return s_;
    }
    /// The trailing principal block S[first:, first:] (first = 0: all of S; first = L: the values').
    MatrixXd trailing_block(int first) const {
        std::lock_guard<std::mutex> lk(m_);
        require(first >= 0 && first < s_.rows(), "KvStats::trailing_block: first = ", first, " outside [0, ",
                s_.rows(), ")");
        return s_.bottomRightCorner(s_.rows() - first, s_.rows() - first);
    }
    /// The leading principal block S[:n, :n] (n = L: the keys').
    MatrixXd leading_block(int n) const {
        std::lock_guard<std::mutex> lk(m_);
        require(n > 0 && n <= s_.rows(), "KvStats::leading_block: n = ", n, " outside [1, ", s_.rows(), "]");
        return s_.topLeftCorner(n, n);
    }
    /// Set S directly (deserialisation, synthetic statistics): symmetric 2L×2L, finite.
    void set_moment(MatrixXd s, std::int64_t tokens) {
        require(s.rows() == s.cols() && s.rows() >= 2 && s.rows() % 2 == 0,
                "KvStats::set_moment: S must be square 2L×2L, got ", s.rows(), "x", s.cols());
        require(tokens > 0, "KvStats::set_moment: tokens must be positive, got ", tokens);
        for (Eigen::Index i = 0; i < s.size(); ++i)
            require(std::isfinite(s.data()[i]), "KvStats::set_moment: non-finite entry");
        require((s - s.transpose()).cwiseAbs().maxCoeff() <= 1e-12 * s.cwiseAbs().maxCoeff(),
                "KvStats::set_moment: S is not symmetric");
        std::lock_guard<std::mutex> lk(m_);
        width_ = int(s.rows() / 2);
        s_ = std::move(s);
        tokens_ = tokens;
    }

private:
    int width_ = 0;
    MatrixXd s_;
    std::int64_t tokens_ = 0;
    mutable std::mutex m_;
};

/// Per-pair mean norms for MHA2MLA's 2-norm selection: E‖q_{i,j}‖ and E‖k_{h,j}‖ over the
/// calibration tokens, ‖x_j‖ = sqrt(x_a² + x_b²) for the pair (a, b) = rope_pair(pairing, d, j)
/// of the pre-RoPE query/key. (E‖·‖ is not a function of the second moment, hence its own
/// accumulator.) add()/merge() are thread-safe.
class PairNormStats {
public:
    PairNormStats() = default;
    PairNormStats(int n_q, int n_kv, int head_dim, RopePairing pairing)
        : nq_(n_q), nkv_(n_kv), d_(head_dim), pairing_(pairing), q_(MatrixXd::Zero(n_q, head_dim / 2)),
          k_(MatrixXd::Zero(n_kv, head_dim / 2)) {
        DynamicGqaShape(n_q, n_kv, head_dim);
    }
    PairNormStats(const PairNormStats& o) {
        std::lock_guard<std::mutex> lk(o.m_);
        nq_ = o.nq_, nkv_ = o.nkv_, d_ = o.d_, pairing_ = o.pairing_, q_ = o.q_, k_ = o.k_, n_ = o.n_;
    }

    /// q: [T][n_q·d], k: [T][n_kv·d] pre-RoPE rows; mask as in CalibrationStats::add.
    void add(const Eigen::Ref<const MatrixXd>& q, const Eigen::Ref<const MatrixXd>& k,
             std::span<const std::uint8_t> mask = {}) {
        require(d_ > 0, "PairNormStats::add: default-constructed statistics");
        require(q.cols() == Eigen::Index(nq_) * d_ && k.cols() == Eigen::Index(nkv_) * d_ && q.rows() == k.rows(),
                "PairNormStats::add: q must be [T][", nq_ * d_, "] and k [T][", nkv_ * d_, "], got [", q.rows(), "][",
                q.cols(), "] and [", k.rows(), "][", k.cols(), "]");
        require(mask.empty() || std::int64_t(mask.size()) == std::int64_t(q.rows()), "PairNormStats::add: mask has ",
                mask.size(), " entries for ", q.rows(), " rows");
        MatrixXd qs = MatrixXd::Zero(nq_, d_ / 2), ks = MatrixXd::Zero(nkv_, d_ / 2);
        std::int64_t n = 0;
        for (Eigen::Index t = 0; t < q.rows(); ++t) {
            if (!(mask.empty() || mask[std::size_t(t)])) continue;
            ++n;
            for (int j = 0; j < d_ / 2; ++j) {
                const auto [a, b] = rope_pair(pairing_, d_, j);
                for (int i = 0; i < nq_; ++i) qs(i, j) += std::hypot(q(t, i * d_ + a), q(t, i * d_ + b));
                for (int h = 0; h < nkv_; ++h) ks(h, j) += std::hypot(k(t, h * d_ + a), k(t, h * d_ + b));
            }
        }
        std::lock_guard<std::mutex> lk(m_);
        q_ += qs;
        k_ += ks;
        n_ += n;
    }
    void merge(const PairNormStats& o) {
        require(&o != this, "PairNormStats::merge: cannot merge into itself");
        PairNormStats copy(o);
        require(copy.nq_ == nq_ && copy.nkv_ == nkv_ && copy.d_ == d_, "PairNormStats::merge: shapes differ");
        std::lock_guard<std::mutex> lk(m_);
        q_ += copy.q_;
        k_ += copy.k_;
        n_ += copy.n_;
    }
    std::int64_t tokens() const {
        std::lock_guard<std::mutex> lk(m_);
        return n_;
    }
    /// E‖q_{i,j}‖, [n_q][d/2].
    MatrixXd q_mean_norms() const {
        std::lock_guard<std::mutex> lk(m_);
        require(n_ > 0, "PairNormStats: no tokens accumulated");
        return q_ / double(n_);
    }
    /// E‖k_{h,j}‖, [n_kv][d/2].
    MatrixXd k_mean_norms() const {
        std::lock_guard<std::mutex> lk(m_);
        require(n_ > 0, "PairNormStats: no tokens accumulated");
        return k_ / double(n_);
    }
    int n_q() const noexcept { return nq_; }
    int n_kv() const noexcept { return nkv_; }
    int head_dim() const noexcept { return d_; }
    RopePairing pairing() const noexcept { return pairing_; }

private:
    int nq_ = 0, nkv_ = 0, d_ = 0;
    RopePairing pairing_ = RopePairing::half_split;
    MatrixXd q_, k_;
    std::int64_t n_ = 0;
    mutable std::mutex m_;
};

// ------------------------------------------------------------------------------------------------
// Options, report, result
// ------------------------------------------------------------------------------------------------

enum class Method {
    transmla,  ///< RoRoPE + FreqFold + (balanced) joint PCA → MlaLayer
    mha2mla,   ///< partial RoPE + SVD → Mha2MlaLayer
    exact,     ///< F = 1, RoPE kept on all L latent dims, full rank: reproduces the GQA layer
    /// RoRoPE + FreqFold, the no-RoPE pairs' expected rotation folded into the keys, and the
    /// output-weighted reduced-rank latent (convert/output_aware.hpp) → MlaLayer
    output_aware,
};
inline const char* to_string(Method m) noexcept {
    switch (m) {
        case Method::transmla: return "transmla";
        case Method::mha2mla: return "mha2mla";
        case Method::exact: return "exact";
        case Method::output_aware: return "output_aware";
    }
    return "unknown";
}

/// Options of convert_layer (and of the individual steps that take them).
struct ConvertOptions {
    Method method = Method::transmla;
    // --- TransMLA ---
    int rope_dim = 64;          ///< d_r: d % d_r == 0, even
    int rank = 0;               ///< r (kv_lora_rank); 0 = derive from cache_budget
    double cache_budget = 0.0;  ///< ρ in (0, 1]: r = ρ·2·n_kv·d − d_r (used when rank == 0)
    int freqfold = 1;           ///< F: F % (d/d_r) == 0 and (d/2) % F == 0
    bool balance = true;        ///< balanced KV (step 3)
    int q_lora_rank = 0;        ///< r_q > 0: low-rank query (PCA of the query activations)
    // --- output-aware (also uses rope_dim, rank / cache_budget, freqfold) ---
    double logit_weight = 1.0;  ///< κ: weight of the logit error against the value error
    // --- MHA2MLA ---
    RopeSelection selection = RopeSelection::high;
    SvdMode svd = SvdMode::joint;
    int mha2mla_rope_dims = 0;   ///< r_m per head; 0 = d/8
    int mha2mla_latent_dim = 0;  ///< d_kv per KV head; 0 = d/2
    int uniform_start = 0;       ///< first frequency of the uniform selection
};

/// What convert_layer measured for one layer (NaN where a quantity does not apply).
struct LayerReport {
    Method method = Method::transmla;
    int rope_dim = 0, rank = 0, freqfold = 0;
    double rope_energy = std::numeric_limits<double>::quiet_NaN();  ///< key energy kept by RoPE dims
    double pca_energy = std::numeric_limits<double>::quiet_NaN();   ///< energy of z kept by rank r
    double alpha = std::numeric_limits<double>::quiet_NaN();
    /// Calibration reconstruction error (relative, on the statistic): E‖k − k_rec‖² / E‖k‖² for
    /// the no-RoPE keys and E‖v − v_rec‖² / E‖v‖² for the values.
    double key_error = std::numeric_limits<double>::quiet_NaN();
    double value_error = std::numeric_limits<double>::quiet_NaN();
    /// Output-aware only: the weighted latent error E eᵀWe / E zᵀWz (convert/output_aware.hpp).
    double weighted_error = std::numeric_limits<double>::quiet_NaN();
    /// Logit error on held-out tokens: ‖ℓ_conv − ℓ_gqa‖ / ‖ℓ_gqa‖ over the causal pairs of every
    /// head, each query row centred first (the softmax ignores a per-row shift). NaN if none given.
    double logit_error = std::numeric_limits<double>::quiet_NaN();
    /// ‖out_converted − out_gqa‖_F / ‖out_gqa‖_F on held-out tokens (NaN if none were given).
    double attn_output_error = std::numeric_limits<double>::quiet_NaN();
    std::int64_t cache_original = 0, cache_converted = 0;  ///< values per token
};

}  // namespace transmla::convert
