// transmla/reference/attention.hpp — plain scalar GQA attention accumulating in double: the
// ground truth every kernel is tested against. Clarity over speed.
//
// Causality: query token t sits at position `q_offset + t` and sees keys [0, q_offset + t]
// (clipped to [kv_begin, kv_end), which lets tests build split-KV partial states).
#pragma once

#include "transmla/error.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/softmax.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace transmla::reference {

/// Key range and causality of one attention call.
struct Causal {
    std::int64_t q_offset = 0;  ///< position of query token 0
    std::int64_t kv_begin = 0;  ///< first key considered
    std::int64_t kv_end = -1;   ///< one past the last key considered; −1 = the sequence length
    bool causal = true;         ///< false: every query sees the whole [kv_begin, kv_end)
};

namespace detail {

/// Softmax-weighted sum for one query row: keys and values are given by callables returning
/// pointers (or nullptr for none). Writes out[0..dv) and returns the natural-log lse.
///
/// Non-finite inputs: when any logit the row sees is not finite (NaN or ±inf, i.e. a NaN or Inf in
/// the query or in a key it attends to, or Inf·0), the output row and the lse are NaN — the
/// kernels must not turn such a row into "no keys" (output 0, lse −inf), which only a row that
/// sees no key at all gives. A NaN or Inf in a value reaches the output through p·v as usual.
/// Keys the row does not see never affect it.
template <class Tq, class KeyAt, class ValAt>
double attend_row(const Tq* q, int dqk, KeyAt&& key_at, ValAt&& val_at, int dv, std::int64_t begin,
                  std::int64_t end, double scale, double* out) {
    std::vector<double> s;
    s.reserve(std::size_t(end > begin ? end - begin : 0));
    double m = -std::numeric_limits<double>::infinity();
    bool finite = true;
    for (std::int64_t j = begin; j < end; ++j) {
        const auto* k = key_at(j);
        double dot = 0;
        for (int e = 0; e < dqk; ++e) dot += to_double((q[e])) * to_double((k[e]));
        s.push_back(dot * scale);
        finite = finite && std::isfinite(s.back());
        m = std::max(m, s.back());
    }
    for (int e = 0; e < dv; ++e) out[e] = 0;
    if (s.empty()) return -std::numeric_limits<double>::infinity();
    if (!finite) {
        for (int e = 0; e < dv; ++e) out[e] = std::numeric_limits<double>::quiet_NaN();
        return std::numeric_limits<double>::quiet_NaN();
    }
    double l = 0;
    for (std::int64_t j = begin; j < end; ++j) {
        const double p = std::exp(s[j - begin] - m);
        l += p;
        const auto* v = val_at(j);
        for (int e = 0; e < dv; ++e) out[e] += p * to_double((v[e]));
    }
    for (int e = 0; e < dv; ++e) out[e] /= l;
    return m + std::log(l);
}

inline std::int64_t row_end(const Causal& c, std::int64_t t, std::int64_t len) {
    const std::int64_t end = c.kv_end < 0 ? len : std::min(c.kv_end, len);
    return c.causal ? std::min(end, c.q_offset + t + 1) : end;
}

}  // namespace detail

/// GQA attention of queries `q [tokens][n_q][d]` against one sequence's K/V.
/// Writes `out [tokens][n_q][d]` and the natural-log `lse [tokens][n_q]` (−inf where a row sees
/// no key; its output is then 0; NaN, with a NaN output row, where a logit it sees is not finite).
template <class Tq, class Tkv>
void gqa_attention(View3<const Tq> q, const GqaSeqView<Tkv>& kv, double scale, const Causal& c, View3<double> out,
                   View2<double> lse) {
    const std::int64_t T = q.size(0);
    const int nq = int(q.size(1)), d = int(q.size(2));
    require(kv.n_kv > 0 && nq % kv.n_kv == 0, "reference::gqa_attention: n_q (", nq,
            ") must be a multiple of n_kv (", kv.n_kv, ")");
    require(kv.head_dim == d, "reference::gqa_attention: query head dim ", d, " != cache head dim ", kv.head_dim);
    transmla::detail::check_extents(out, {T, nq, d}, "reference::gqa_attention", "out");
    require(lse.size(0) == T && lse.size(1) == nq, "reference::gqa_attention: lse must be [", T, "][", nq, "]");
    const int g = nq / kv.n_kv;
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < nq; ++i) {
            const int h = i / g;
            lse(t, i) = detail::attend_row(
                q.row(t, i), d, [&](std::int64_t j) { return kv.k_at(j, h); },
                [&](std::int64_t j) { return kv.v_at(j, h); }, d, c.kv_begin, detail::row_end(c, t, kv.length),
                scale, out.row(t, i));
        }
}

/// Causal prefill: `q [T][n_q][d]`, `k`, `v` `[S][n_kv][d]`; query t is at position q_offset + t.
template <class Tq, class Tkv>
void gqa_prefill(View3<const Tq> q, View3<const Tkv> k, View3<const Tkv> v, std::int64_t q_offset, double scale,
                 View3<double> out, View2<double> lse) {
    require(k.size(0) == v.size(0) && k.size(1) == v.size(1) && k.size(2) == v.size(2),
            "reference::gqa_prefill: k and v extents differ");
    require(k.stride == v.stride, "reference::gqa_prefill: k and v must have the same strides");
    const GqaSeqView<Tkv> kv{k.data, v.data, int(k.size(1)), int(k.size(2)), k.size(0), k.stride[0], k.stride[1], {}};
    gqa_attention(q, kv, scale, Causal{q_offset}, out, lse);
}

/// Decode: the `T` query tokens are the last T tokens of the sequence (already in the cache), so
/// query t sits at position length − T + t.
template <class Tq, class Tkv>
void gqa_decode(View3<const Tq> q, const GqaSeqView<Tkv>& kv, double scale, View3<double> out, View2<double> lse) {
    require(kv.length >= q.size(0), "reference::gqa_decode: ", q.size(0), " query tokens but only ", kv.length,
            " cached tokens (append the new tokens first)");
    gqa_attention(q, kv, scale, Causal{kv.length - q.size(0)}, out, lse);
}

}  // namespace transmla::reference
