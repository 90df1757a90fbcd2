// transmla/convert/forward.hpp — fp64 reference forwards of one attention layer for every layer
// type of convert/layer.hpp (their semantics are documented on the types), the MLA cache rows
// and incremental (cached) absorbed decode.
//
// All forwards take the attention input X [T][D] (one token per row) and the token positions
// (T entries, used for RoPE only) and are causal over the rows: row t attends to rows s <= t.
// They return the attention output [T][D] (after the output projection).
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/convert/layer.hpp"
#include "transmla/rope.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace transmla::convert {

/// Row-major fp64 matrix: activations and cache rows ([token][feature]).
using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {

inline void check_input(const char* where, Eigen::Index x_cols, Eigen::Index x_rows, int hidden,
                        std::span<const std::int64_t> positions) {
    require(x_cols == hidden, where, ": X has ", x_cols, " features, the layer's hidden size is ", hidden);
    require(std::int64_t(positions.size()) == std::int64_t(x_rows), where, ": ", positions.size(),
            " positions for ", x_rows, " tokens");
}

/// y = X Wᵀ + b (b may be empty), row-major.
inline RowMatrix linear(const Eigen::Ref<const MatrixXd>& x, const MatrixXd& w, const VectorXd& b) {
    RowMatrix y = x * w.transpose();
    if (b.size()) y.rowwise() += b.transpose();
    return y;
}

/// Rotates columns [col, col + dim) of every row as one rotary block (pairing, inv_freq).
inline void rope_block(RowMatrix& y, Eigen::Index col, int dim, RopePairing pairing, std::span<const double> inv_freq,
                       std::span<const std::int64_t> positions, double attention_factor) {
    for (Eigen::Index t = 0; t < y.rows(); ++t)
        apply_rope(y.row(t).data() + col, dim, pairing, inv_freq, double(positions[std::size_t(t)]), attention_factor);
}

/// Rotates only the pairs `pairs` (indices into inv_freq) of the head at column col, width d.
inline void rope_subset(RowMatrix& y, Eigen::Index col, int d, RopePairing pairing, std::span<const double> inv_freq,
                        const std::vector<int>& pairs, std::span<const std::int64_t> positions, double af) {
    for (Eigen::Index t = 0; t < y.rows(); ++t) {
        double* x = y.row(t).data() + col;
        const double pos = double(positions[std::size_t(t)]);
        for (int j : pairs) {
            const auto [a, b] = rope_pair(pairing, d, j);
            const double cs = std::cos(pos * inv_freq[std::size_t(j)]) * af;
            const double sn = std::sin(pos * inv_freq[std::size_t(j)]) * af;
            const double u = x[a], w = x[b];
            x[a] = u * cs - w * sn;
            x[b] = u * sn + w * cs;
        }
    }
}

/// Causal softmax attention of one head: row t of Q attends to rows s <= q_offset + t of K
/// (all rows when q_offset + t >= K.rows() − 1). Returns [T][dv].
template <class QM, class KM, class VM>
RowMatrix attend(const QM& q, const KM& k, const VM& v, double scale, Eigen::Index q_offset = 0) {
    const Eigen::Index T = q.rows(), S = k.rows();
    RowMatrix s = (q * k.transpose()) * scale;
    RowMatrix o(T, v.cols());
    for (Eigen::Index t = 0; t < T; ++t) {
        const Eigen::Index n = std::min<Eigen::Index>(S, q_offset + t + 1);
        require(n > 0, "attend: query row ", t, " sees no key");
        auto row = s.row(t).head(n);
        const double m = row.maxCoeff();
        Eigen::RowVectorXd p = (row.array() - m).exp().matrix();
        p /= p.sum();
        o.row(t) = p * v.topRows(n);
    }
    return o;
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// GQA and its equivalent latent form
// ------------------------------------------------------------------------------------------------

/// GQA layer forward (see GqaLayer).
inline RowMatrix forward(const GqaLayer& l, const Eigen::Ref<const MatrixXd>& x,
                         std::span<const std::int64_t> positions) {
    l.validate();
    detail::check_input("forward(GqaLayer)", x.cols(), x.rows(), l.hidden, positions);
    const int d = l.head_dim, g = l.group();
    const auto f = l.inv_freq();
    const double af = rope_attention_factor(l.rope);
    RowMatrix q = detail::linear(x, l.wq, l.bq), k = detail::linear(x, l.wk, l.bk), v = detail::linear(x, l.wv, l.bv);
    for (int i = 0; i < l.n_q; ++i) detail::rope_block(q, Eigen::Index(i) * d, d, l.rope.pairing, f, positions, af);
    for (int h = 0; h < l.n_kv; ++h) detail::rope_block(k, Eigen::Index(h) * d, d, l.rope.pairing, f, positions, af);
    RowMatrix o(x.rows(), Eigen::Index(l.n_q) * d);
    for (int i = 0; i < l.n_q; ++i)
        o.middleCols(Eigen::Index(i) * d, d) =
            detail::attend(q.middleCols(Eigen::Index(i) * d, d), k.middleCols(Eigen::Index(i / g) * d, d),
                           v.middleCols(Eigen::Index(i / g) * d, d), l.softmax_scale());
    return o * l.wo.transpose();
}

/// Equivalent latent form forward (step 1): keys and values of head i are S_i k̂, S_i v̂.
inline RowMatrix forward(const EquivalentLayer& e, const Eigen::Ref<const MatrixXd>& x,
                         std::span<const std::int64_t> positions) {
    const GqaLayer& l = e.base;
    l.validate();
    detail::check_input("forward(EquivalentLayer)", x.cols(), x.rows(), l.hidden, positions);
    require(int(e.selectors.size()) == l.n_q, "forward(EquivalentLayer): ", e.selectors.size(),
            " selectors for ", l.n_q, " query heads");
    const int d = l.head_dim;
    const auto f = l.inv_freq();
    const double af = rope_attention_factor(l.rope);
    RowMatrix q = detail::linear(x, l.wq, l.bq);
    const RowMatrix kh = detail::linear(x, l.wk, l.bk), vh = detail::linear(x, l.wv, l.bv);
    for (int i = 0; i < l.n_q; ++i) detail::rope_block(q, Eigen::Index(i) * d, d, l.rope.pairing, f, positions, af);
    RowMatrix o(x.rows(), Eigen::Index(l.n_q) * d);
    for (int i = 0; i < l.n_q; ++i) {
        const MatrixXd& s = e.selectors[std::size_t(i)];
        detail::check_matrix(s, d, l.kv_width(), "forward(EquivalentLayer)", "selector");
        RowMatrix ki = kh * s.transpose();
        const RowMatrix vi = vh * s.transpose();
        detail::rope_block(ki, 0, d, l.rope.pairing, f, positions, af);
        o.middleCols(Eigen::Index(i) * d, d) =
            detail::attend(q.middleCols(Eigen::Index(i) * d, d), ki, vi, l.softmax_scale());
    }
    return o * l.wo.transpose();
}

// ------------------------------------------------------------------------------------------------
// Partial RoPE
// ------------------------------------------------------------------------------------------------

/// Partial-RoPE layer forward (see PartialRopeLayer).
inline RowMatrix forward(const PartialRopeLayer& l, const Eigen::Ref<const MatrixXd>& x,
                         std::span<const std::int64_t> positions) {
    l.validate();
    detail::check_input("forward(PartialRopeLayer)", x.cols(), x.rows(), l.hidden, positions);
    const int d = l.head_dim, g = l.group();
    const RowMatrix q = detail::linear(x, l.wq, l.bq), v = detail::linear(x, l.wv, l.bv);
    RowMatrix k = detail::linear(x, l.wk, l.bk);
    detail::rope_block(k, 0, l.rope_dim, RopePairing::interleaved, l.rope_inv_freq, positions, l.rope_attention_factor);
    RowMatrix o(x.rows(), Eigen::Index(l.n_q) * d);
    for (int i = 0; i < l.n_q; ++i) {
        RowMatrix qh = q.middleCols(Eigen::Index(i) * d, d) * l.selector(i);  // rows q̂_iᵀ = q_iᵀ S̃_i
        detail::rope_block(qh, 0, l.rope_dim, RopePairing::interleaved, l.rope_inv_freq, positions,
                           l.rope_attention_factor);
        o.middleCols(Eigen::Index(i) * d, d) =
            detail::attend(qh, k, v.middleCols(Eigen::Index(i / g) * d, d), l.softmax_scale());
    }
    return o * l.wo.transpose();
}

// ------------------------------------------------------------------------------------------------
// MLA
// ------------------------------------------------------------------------------------------------

/// The query rows of every token, [T][H·(dn+dr)] (before RoPE).
inline RowMatrix mla_query(const MlaLayer& l, const Eigen::Ref<const MatrixXd>& x) {
    if (l.q_lora_rank == 0) return detail::linear(x, l.q_proj, l.q_bias);
    const RowMatrix a = detail::linear(x, l.q_a_proj, l.q_a_bias);
    return detail::linear(a, l.q_b_proj, l.q_b_bias);
}

/// The cache rows `[c (r) | RoPE(k_pe) (d_r)]` of the tokens X at `positions`: r + d_r values
/// per token, the whole state an MLA decoder keeps for this layer.
inline RowMatrix mla_cache_rows(const MlaLayer& l, const Eigen::Ref<const MatrixXd>& x,
                                std::span<const std::int64_t> positions) {
    l.validate();
    detail::check_input("mla_cache_rows", x.cols(), x.rows(), l.hidden, positions);
    RowMatrix kv = detail::linear(x, l.kv_a_proj_with_mqa, l.kv_a_bias);
    detail::rope_block(kv, l.kv_lora_rank, l.qk_rope_head_dim, RopePairing::interleaved, l.rope_inv_freq, positions,
                       l.rope_attention_factor);
    return kv;
}

/// MLA layer forward in the naive (decompressed) order (see MlaLayer).
inline RowMatrix forward(const MlaLayer& l, const Eigen::Ref<const MatrixXd>& x,
                         std::span<const std::int64_t> positions) {
    const RowMatrix cache = mla_cache_rows(l, x, positions);
    const int r = l.kv_lora_rank, dn = l.qk_nope_head_dim, dr = l.qk_rope_head_dim, dv = l.v_head_dim;
    RowMatrix q = mla_query(l, x);
    for (int i = 0; i < l.n_heads; ++i)
        detail::rope_block(q, Eigen::Index(i) * (dn + dr) + dn, dr, RopePairing::interleaved, l.rope_inv_freq,
                           positions, l.rope_attention_factor);
    const auto c = cache.leftCols(r);
    RowMatrix o(x.rows(), Eigen::Index(l.n_heads) * dv);
    RowMatrix kh(x.rows(), dn + dr);
    kh.rightCols(dr) = cache.rightCols(dr);
    for (int i = 0; i < l.n_heads; ++i) {
        const Eigen::Index row0 = Eigen::Index(i) * (dn + dv);
        kh.leftCols(dn) = c * l.kv_b_proj.middleRows(row0, dn).transpose();
        const RowMatrix vh = c * l.kv_b_proj.middleRows(row0 + dn, dv).transpose();
        o.middleCols(Eigen::Index(i) * dv, dv) =
            detail::attend(q.middleCols(Eigen::Index(i) * (dn + dr), dn + dr), kh, vh, l.softmax_scale);
    }
    return o * l.o_proj.transpose();
}

/// Absorbed MLA attention of the query tokens X (at `positions`) against cache rows: query t
/// sees cache rows [0, cache.rows() − T + t] (the query tokens are the last T cached rows).
/// Returns [T][D]. This is incremental decode when T is 1 and the cache grows token by token.
inline RowMatrix decode(const AbsorbedMlaLayer& a, const Eigen::Ref<const MatrixXd>& x,
                        std::span<const std::int64_t> positions, const RowMatrix& cache) {
    const MlaLayer& l = a.mla;
    l.validate();
    detail::check_input("decode(AbsorbedMlaLayer)", x.cols(), x.rows(), l.hidden, positions);
    const int r = l.kv_lora_rank, dn = l.qk_nope_head_dim, dr = l.qk_rope_head_dim;
    require(cache.cols() == r + dr, "decode(AbsorbedMlaLayer): cache rows have ", cache.cols(),
            " values, expected r + d_r = ", r + dr);
    require(cache.rows() >= x.rows(), "decode(AbsorbedMlaLayer): ", x.rows(), " query tokens but only ", cache.rows(),
            " cached rows (append the new tokens first)");
    require(int(a.q_abs.size()) == l.n_heads && int(a.o_abs.size()) == l.n_heads,
            "decode(AbsorbedMlaLayer): q_abs/o_abs need one matrix per head (", l.n_heads, ")");
    const RowMatrix qa = l.q_lora_rank ? detail::linear(x, l.q_a_proj, l.q_a_bias) : RowMatrix(x);
    RowMatrix q = mla_query(l, x);
    RowMatrix out = RowMatrix::Zero(x.rows(), l.hidden);
    RowMatrix qh(x.rows(), r + dr);
    for (int i = 0; i < l.n_heads; ++i) {
        qh.leftCols(r) = qa * a.q_abs[std::size_t(i)].transpose();
        if (!a.q_abs_bias.empty() && a.q_abs_bias[std::size_t(i)].size())
            qh.leftCols(r).rowwise() += a.q_abs_bias[std::size_t(i)].transpose();
        qh.rightCols(dr) = q.middleCols(Eigen::Index(i) * (dn + dr) + dn, dr);
        detail::rope_block(qh, r, dr, RopePairing::interleaved, l.rope_inv_freq, positions, l.rope_attention_factor);
        const RowMatrix lat = detail::attend(qh, cache, cache.leftCols(r), l.softmax_scale, cache.rows() - x.rows());
        out += lat * a.o_abs[std::size_t(i)].transpose();
    }
    return out;
}

/// Absorbed MLA forward over a whole sequence (prefill in the absorbed order).
inline RowMatrix forward(const AbsorbedMlaLayer& a, const Eigen::Ref<const MatrixXd>& x,
                         std::span<const std::int64_t> positions) {
    return decode(a, x, positions, mla_cache_rows(a.mla, x, positions));
}

// ------------------------------------------------------------------------------------------------
// Logits (all T×T pairs, scaled, no mask): what the conversion invariants are stated on
// ------------------------------------------------------------------------------------------------

/// GQA logits of query head i: entry (t, s) = d^−½ ⟨R_t q_i(t), R_s k_{i/g}(s)⟩.
inline RowMatrix attention_logits(const GqaLayer& l, const Eigen::Ref<const MatrixXd>& x,
                                  std::span<const std::int64_t> positions, int head) {
    l.validate();
    detail::check_input("attention_logits(GqaLayer)", x.cols(), x.rows(), l.hidden, positions);
    require(head >= 0 && head < l.n_q, "attention_logits: head ", head, " outside [0, ", l.n_q, ")");
    const int d = l.head_dim, h = head / l.group();
    const auto f = l.inv_freq();
    const double af = rope_attention_factor(l.rope);
    RowMatrix q = detail::linear(x, l.wq.middleRows(Eigen::Index(head) * d, d),
                                 l.bq.size() ? VectorXd(l.bq.segment(Eigen::Index(head) * d, d)) : VectorXd());
    RowMatrix k = detail::linear(x, l.wk.middleRows(Eigen::Index(h) * d, d),
                                 l.bk.size() ? VectorXd(l.bk.segment(Eigen::Index(h) * d, d)) : VectorXd());
    detail::rope_block(q, 0, d, l.rope.pairing, f, positions, af);
    detail::rope_block(k, 0, d, l.rope.pairing, f, positions, af);
    return (q * k.transpose()) * l.softmax_scale();
}

/// Partial-RoPE logits of query head i (see PartialRopeLayer).
inline RowMatrix attention_logits(const PartialRopeLayer& l, const Eigen::Ref<const MatrixXd>& x,
                                  std::span<const std::int64_t> positions, int head) {
    l.validate();
    detail::check_input("attention_logits(PartialRopeLayer)", x.cols(), x.rows(), l.hidden, positions);
    const int d = l.head_dim;
    const RowMatrix q = detail::linear(x, l.wq, l.bq);
    RowMatrix k = detail::linear(x, l.wk, l.bk);
    RowMatrix qh = q.middleCols(Eigen::Index(head) * d, d) * l.selector(head);
    detail::rope_block(k, 0, l.rope_dim, RopePairing::interleaved, l.rope_inv_freq, positions, l.rope_attention_factor);
    detail::rope_block(qh, 0, l.rope_dim, RopePairing::interleaved, l.rope_inv_freq, positions,
                       l.rope_attention_factor);
    return (qh * k.transpose()) * l.softmax_scale();
}

/// MLA logits of head i (naive order, see MlaLayer).
inline RowMatrix attention_logits(const MlaLayer& l, const Eigen::Ref<const MatrixXd>& x,
                                  std::span<const std::int64_t> positions, int head) {
    const RowMatrix cache = mla_cache_rows(l, x, positions);
    require(head >= 0 && head < l.n_heads, "attention_logits: head ", head, " outside [0, ", l.n_heads, ")");
    const int r = l.kv_lora_rank, dn = l.qk_nope_head_dim, dr = l.qk_rope_head_dim, dv = l.v_head_dim;
    RowMatrix q = mla_query(l, x).middleCols(Eigen::Index(head) * (dn + dr), dn + dr);
    detail::rope_block(q, dn, dr, RopePairing::interleaved, l.rope_inv_freq, positions, l.rope_attention_factor);
    RowMatrix k(x.rows(), dn + dr);
    k.leftCols(dn) = cache.leftCols(r) * l.kv_b_proj.middleRows(Eigen::Index(head) * (dn + dv), dn).transpose();
    k.rightCols(dr) = cache.rightCols(dr);
    return (q * k.transpose()) * l.softmax_scale;
}

// ------------------------------------------------------------------------------------------------
// MHA2MLA
// ------------------------------------------------------------------------------------------------

/// The dims of a head that keep RoPE in MHA2MLA (ascending pair index, first then second dim)
/// and the others (ascending).
inline void mha2mla_dims(int d, RopePairing pairing, const std::vector<int>& pairs, std::vector<int>& kept,
                         std::vector<int>& nope) {
    std::vector<char> is_kept(std::size_t(d), 0);
    kept.clear();
    nope.clear();
    for (int j : pairs) {
        require(j >= 0 && j < d / 2, "mha2mla_dims: pair index ", j, " outside [0, ", d / 2, ")");
        const auto [a, b] = rope_pair(pairing, d, j);
        require(!is_kept[std::size_t(a)], "mha2mla_dims: pair ", j, " listed twice");
        kept.push_back(a);
        kept.push_back(b);
        is_kept[std::size_t(a)] = is_kept[std::size_t(b)] = 1;
    }
    for (int e = 0; e < d; ++e)
        if (!is_kept[std::size_t(e)]) nope.push_back(e);
}

/// The cache rows of an MHA2MLA layer: per token [k_rope_0 | … | k_rope_{n_kv−1} (r_m each, not
/// yet rotated) | c (ρ)]; n_kv·r_m + ρ values.
inline RowMatrix mha2mla_cache_rows(const Mha2MlaLayer& l, const Eigen::Ref<const MatrixXd>& x) {
    const int rm = l.rope_dims;
    const Eigen::Index nr = Eigen::Index(l.n_kv) * rm;
    require(l.w_down.rows() == l.latent_width && l.w_down.cols() == l.hidden, "mha2mla_cache_rows: w_down is ",
            l.w_down.rows(), " x ", l.w_down.cols(), ", expected latent_width x D = ", l.latent_width, " x ", l.hidden);
    RowMatrix rows(x.rows(), nr + l.latent_width);
    for (int h = 0; h < l.n_kv; ++h)
        rows.middleCols(Eigen::Index(h) * rm, rm) =
            detail::linear(x, l.w_k_rope[std::size_t(h)], l.b_k_rope[std::size_t(h)]);
    rows.rightCols(l.latent_width) = x * l.w_down.transpose();
    return rows;
}

/// MHA2MLA layer forward (see Mha2MlaLayer).
inline RowMatrix forward(const Mha2MlaLayer& l, const Eigen::Ref<const MatrixXd>& x,
                         std::span<const std::int64_t> positions) {
    detail::check_input("forward(Mha2MlaLayer)", x.cols(), x.rows(), l.hidden, positions);
    const int d = l.head_dim, g = l.group(), rm = l.rope_dims;
    require(int(l.rope_pairs.size()) == l.n_kv && int(l.w_up_k.size()) == l.n_kv && int(l.w_up_v.size()) == l.n_kv &&
                int(l.w_k_rope.size()) == l.n_kv,
            "forward(Mha2MlaLayer): per-KV-head vectors must have n_kv = ", l.n_kv, " entries");
    const RowMatrix cache = mha2mla_cache_rows(l, x);
    const auto c = cache.rightCols(l.latent_width);
    RowMatrix q = detail::linear(x, l.wq, l.bq);
    RowMatrix o(x.rows(), Eigen::Index(l.n_q) * d);
    std::vector<int> kept, nope;
    for (int h = 0; h < l.n_kv; ++h) {
        const auto& pairs = l.rope_pairs[std::size_t(h)];
        mha2mla_dims(d, l.pairing, pairs, kept, nope);
        require(int(kept.size()) == rm, "forward(Mha2MlaLayer): KV head ", h, " keeps ", kept.size(),
                " dims, rope_dims is ", rm);
        const RowMatrix kn = detail::linear(c, l.w_up_k[std::size_t(h)], l.b_up_k[std::size_t(h)]);
        const RowMatrix vh = detail::linear(c, l.w_up_v[std::size_t(h)], l.b_up_v[std::size_t(h)]);
        RowMatrix kh(x.rows(), d);
        for (int e = 0; e < rm; ++e) kh.col(kept[std::size_t(e)]) = cache.col(Eigen::Index(h) * rm + e);
        for (std::size_t e = 0; e < nope.size(); ++e) kh.col(nope[e]) = kn.col(Eigen::Index(e));
        detail::rope_subset(kh, 0, d, l.pairing, l.inv_freq, pairs, positions, l.rope_attention_factor);
        for (int i = h * g; i < (h + 1) * g; ++i) {
            RowMatrix qi = q.middleCols(Eigen::Index(i) * d, d);
            detail::rope_subset(qi, 0, d, l.pairing, l.inv_freq, pairs, positions, l.rope_attention_factor);
            o.middleCols(Eigen::Index(i) * d, d) = detail::attend(qi, kh, vh, l.softmax_scale());
        }
    }
    return o * l.wo.transpose();
}

}  // namespace transmla::convert
