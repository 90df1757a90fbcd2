// transmla/reference/mla.hpp — DeepSeek-style MLA in double: the naive (decompressed) order, the
// absorbed order, and the latent-space multi-query core that absorbed decode kernels implement.
//
// Weights: `kv_b [heads·(d_nope + d_v)][r]` (DeepSeek's kv_b_proj, per head the d_nope rows of
// W_UK then the d_v rows of W_UV). Queries are split into `q_nope [T][H][d_nope]` and the
// already-rotated `q_pe [T][H][d_r]`; cache rows hold `[c (r) | rotated k_pe (d_r)]`.
#pragma once

#include "transmla/reference/attention.hpp"

#include <vector>

namespace transmla::reference {

/// Latent-space core: multi-query attention of `q_abs [T][H][r + d_r]` against the cache rows;
/// value = first r columns of each row. Writes `out [T][H][r]`, `lse [T][H]`.
template <class Tq, class Tc>
void mla_latent_attention(View3<const Tq> q_abs, const MlaSeqView<Tc>& cache, double scale, const Causal& c,
                          View3<double> out, View2<double> lse) {
    const std::int64_t T = q_abs.size(0);
    const int H = int(q_abs.size(1)), w = cache.row_width(), r = cache.rank;
    require(q_abs.size(2) == w, "reference::mla_latent_attention: query width ", q_abs.size(2),
            " != cache row width ", w);
    transmla::detail::check_extents(out, {T, H, r}, "reference::mla_latent_attention", "out");
    require(lse.size(0) == T && lse.size(1) == H, "reference::mla_latent_attention: lse must be [", T, "][", H, "]");
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < H; ++i) {
            auto row = [&](std::int64_t j) { return cache.row_at(j); };
            lse(t, i) = detail::attend_row(q_abs.row(t, i), w, row, row, r, c.kv_begin,
                                           detail::row_end(c, t, cache.length), scale, out.row(t, i));
        }
}

/// Absorbed query: `q_abs[t][i] = [W_UK^iᵀ q_nope[t][i] | q_pe[t][i]]`, shape `[T][H][r + d_r]`.
template <class Tq, class Tw>
std::vector<double> absorb_query(View3<const Tq> q_nope, View3<const Tq> q_pe, View2<const Tw> kv_b, int d_v) {
    const std::int64_t T = q_nope.size(0);
    const int H = int(q_nope.size(1)), dn = int(q_nope.size(2)), dr = int(q_pe.size(2)), r = int(kv_b.size(1));
    require(q_pe.size(0) == T && q_pe.size(1) == H, "reference::absorb_query: q_pe must be [", T, "][", H, "][d_r]");
    require(kv_b.size(0) == std::int64_t(H) * (dn + d_v), "reference::absorb_query: kv_b has ", kv_b.size(0),
            " rows, expected heads·(d_nope + d_v) = ", std::int64_t(H) * (dn + d_v));
    std::vector<double> qa(std::size_t(T) * H * (r + dr), 0.0);
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < H; ++i) {
            double* o = &qa[(std::size_t(t) * H + i) * (r + dr)];
            for (int e = 0; e < dn; ++e) {
                const double qe = to_double(q_nope(t, i, e));
                const std::int64_t wr = std::int64_t(i) * (dn + d_v) + e;
                for (int a = 0; a < r; ++a) o[a] += qe * to_double((kv_b(wr, a)));
            }
            for (int e = 0; e < dr; ++e) o[r + e] = to_double(q_pe(t, i, e));
        }
    return qa;
}

/// Applies W_UV per head: `out[t][i] = W_UV^i · latent[t][i]`, latent `[T][H][r]`, out `[T][H][d_v]`.
template <class Tw>
void apply_uv(View3<const double> latent, View2<const Tw> kv_b, int d_nope, View3<double> out) {
    const std::int64_t T = latent.size(0);
    const int H = int(latent.size(1)), r = int(latent.size(2)), dv = int(out.size(2));
    require(kv_b.size(1) == r && kv_b.size(0) == std::int64_t(H) * (d_nope + dv),
            "reference::apply_uv: kv_b must be [heads·(d_nope + d_v)][r]");
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < H; ++i)
            for (int e = 0; e < dv; ++e) {
                const std::int64_t wr = std::int64_t(i) * (d_nope + dv) + d_nope + e;
                double s = 0;
                for (int a = 0; a < r; ++a) s += to_double((kv_b(wr, a))) * latent(t, i, a);
                out(t, i, e) = s;
            }
}

/// Naive order: decompress `k_nope_i = W_UK^i c`, `v_i = W_UV^i c` for every cached token and
/// head, then ordinary attention with qk width d_nope + d_r. `out [T][H][d_v]`, `lse [T][H]`.
template <class Tq, class Tc, class Tw>
void mla_naive(View3<const Tq> q_nope, View3<const Tq> q_pe, const MlaSeqView<Tc>& cache, View2<const Tw> kv_b,
               double scale, const Causal& c, View3<double> out, View2<double> lse) {
    const std::int64_t T = q_nope.size(0), S = cache.length;
    const int H = int(q_nope.size(1)), dn = int(q_nope.size(2)), dr = cache.rope_dim, r = cache.rank;
    const int dv = int(out.size(2));
    require(q_pe.size(2) == dr, "reference::mla_naive: q_pe width ", q_pe.size(2), " != rope dim ", dr);
    require(kv_b.size(1) == r && kv_b.size(0) == std::int64_t(H) * (dn + dv),
            "reference::mla_naive: kv_b must be [heads·(d_nope + d_v)][r]");
    // Decompressed keys [S][H][dn + dr] and values [S][H][dv].
    std::vector<double> K(std::size_t(S) * H * (dn + dr)), V(std::size_t(S) * H * dv);
    for (std::int64_t s = 0; s < S; ++s) {
        const Tc* row = cache.row_at(s);
        for (int i = 0; i < H; ++i) {
            double* k = &K[(std::size_t(s) * H + i) * (dn + dr)];
            double* v = &V[(std::size_t(s) * H + i) * dv];
            for (int e = 0; e < dn + dv; ++e) {
                double acc = 0;
                const std::int64_t wr = std::int64_t(i) * (dn + dv) + e;
                for (int a = 0; a < r; ++a) acc += to_double((kv_b(wr, a))) * to_double((row[a]));
                if (e < dn) k[e] = acc;
                else v[e - dn] = acc;
            }
            for (int e = 0; e < dr; ++e) k[dn + e] = to_double(row[r + e]);
        }
    }
    std::vector<double> q(std::size_t(dn + dr));
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < H; ++i) {
            for (int e = 0; e < dn; ++e) q[e] = to_double(q_nope(t, i, e));
            for (int e = 0; e < dr; ++e) q[dn + e] = to_double(q_pe(t, i, e));
            lse(t, i) = detail::attend_row(
                q.data(), dn + dr, [&](std::int64_t j) { return &K[(std::size_t(j) * H + i) * (dn + dr)]; },
                [&](std::int64_t j) { return &V[(std::size_t(j) * H + i) * dv]; }, dv, c.kv_begin,
                detail::row_end(c, t, S), scale, out.row(t, i));
        }
}

/// Absorbed order: absorb W_UK into the query, run the latent core, apply W_UV. Same result as
/// mla_naive to rounding.
template <class Tq, class Tc, class Tw>
void mla_absorbed(View3<const Tq> q_nope, View3<const Tq> q_pe, const MlaSeqView<Tc>& cache, View2<const Tw> kv_b,
                  double scale, const Causal& c, View3<double> out, View2<double> lse) {
    const std::int64_t T = q_nope.size(0);
    const int H = int(q_nope.size(1)), dn = int(q_nope.size(2)), dv = int(out.size(2)), r = cache.rank;
    const auto qa = absorb_query(q_nope, q_pe, kv_b, dv);
    std::vector<double> lat(std::size_t(T) * H * r);
    View3<double> latv(lat.data(), {T, H, r});
    mla_latent_attention(View3<const double>(qa.data(), {T, H, r + cache.rope_dim}), cache, scale, c, latv, lse);
    apply_uv(View3<const double>(latv), kv_b, dn, out);
}

}  // namespace transmla::reference
