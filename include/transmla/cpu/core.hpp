// transmla/cpu/core.hpp — the attention kernel (see kernel_abi.hpp for its contract), written once
// against the SIMD layer and compiled per instruction set.
//
// Structure of one job (rows = all query rows that share the KV source: the g query heads of a KV
// group × the query tokens for GQA, all heads × tokens for MLA; a GQA decode job may read several
// KV heads at once so that each token's rows are read as one contiguous block):
//   for each tile of `tile` keys:
//     K tile → f32 scratch (converted once, zero-padded to a multiple of the SIMD width);
//     S = Q·Kᵀ by a register-blocked micro-kernel: R rows × (W/R) keys, W accumulators reduced by
//       one transposing horizontal add, every K vector loaded once per R rows;
//     online softmax on S (base 2), P = exp2(S − m);
//     V tile → f32 scratch (skipped for MLA: V is the first dv columns of the K tile);
//     O = α·O + P·V by a micro-kernel with R rows × C vectors of accumulators in registers.
// Row blocks whose rows all end before the tile (causal prefill) skip the tile.
//
// The namespace is set by TRANSMLA_CPU_KERNEL_NS so that every ISA's translation unit has its own
// copy of every non-template helper (one binary, several ISAs, no ODR clash).
#pragma once

#include "transmla/cpu/kernel_abi.hpp"
#include "transmla/cpu/simd.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#ifndef TRANSMLA_CPU_KERNEL_NS
#define TRANSMLA_CPU_KERNEL_NS k_native
#endif

namespace transmla::cpu::detail::TRANSMLA_CPU_KERNEL_NS {

using simd::vf;
using simd::width;

template <class A, int R>
inline void qk_rows(const float* q, std::int64_t qs, const float* K, std::int64_t ks, int dkp, int tile, float* S,
                    std::int64_t ss) {
    constexpr int W = width<A>;
    constexpr int NT = W / R;
    for (int j0 = 0; j0 < tile; j0 += NT) {
        vf<A> acc[W];
        for (int i = 0; i < W; ++i) acc[i] = vf<A>(0.f);
        const float* kp = K + std::int64_t(j0) * ks;
        for (int c = 0; c < dkp; c += W) {
            vf<A> kv[NT];
            for (int n = 0; n < NT; ++n) kv[n] = vf<A>::load_unaligned(kp + n * ks + c);
            for (int r = 0; r < R; ++r) {
                const vf<A> qv = vf<A>::load_unaligned(q + r * qs + c);
                for (int n = 0; n < NT; ++n) acc[r * NT + n] = simd::fmadd<A>(qv, kv[n], acc[r * NT + n]);
            }
        }
        alignas(64) float sums[W];
        simd::hsum_rows<A>(acc).store_aligned(sums);
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < NT; ++n) S[r * ss + j0 + n] = sums[r * NT + n];
    }
}

/// Same with a compile-time padded key width (unrolled chunk loop).
template <class A, int R, int DKP>
inline void qk_rows_fixed(const float* q, std::int64_t qs, const float* K, std::int64_t ks, int tile, float* S,
                          std::int64_t ss) {
    constexpr int W = width<A>;
    constexpr int NT = W / R;
    for (int j0 = 0; j0 < tile; j0 += NT) {
        vf<A> acc[W];
        for (int i = 0; i < W; ++i) acc[i] = vf<A>(0.f);
        const float* kp = K + std::int64_t(j0) * ks;
#pragma GCC unroll 4
        for (int c = 0; c < DKP; c += W) {
            vf<A> kv[NT];
            for (int n = 0; n < NT; ++n) kv[n] = vf<A>::load_unaligned(kp + n * ks + c);
            for (int r = 0; r < R; ++r) {
                const vf<A> qv = vf<A>::load_unaligned(q + r * qs + c);
                for (int n = 0; n < NT; ++n) acc[r * NT + n] = simd::fmadd<A>(qv, kv[n], acc[r * NT + n]);
            }
        }
        alignas(64) float sums[W];
        simd::hsum_rows<A>(acc).store_aligned(sums);
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < NT; ++n) S[r * ss + j0 + n] = sums[r * NT + n];
    }
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
/// QK with the AVX-512-BF16 pair dot product (vdpbf16ps) for R rows × NJ vectors of 16 keys:
/// Kp is the key tile in pair-transposed form, Kp[c2][j] = (k_j[2·c2], k_j[2·c2 + 1]) as one
/// 32-bit word, so each accumulator lane is one key and no horizontal sum is needed; the query
/// pair (q[2·c2], q[2·c2 + 1]) is broadcast. The query is split into bf16 hi + lo parts
/// (q = hi + lo to 16 bits of mantissa); with LO the lo part is dotted too, so a query that is not
/// exactly a bf16 loses nothing that f32 would keep. The products of two bf16 are exact in f32.
/// Scores are scaled once at the end: S = scale·(q·k).
///
/// Register budget (32 zmm): R·NJ accumulators (12 × 2 = 24), NJ key vectors, one broadcast.
/// Per pair step: NJ key loads, R (2R with LO) broadcast loads, R·NJ (2·R·NJ) dot products.
template <class A, int R, int NJ, bool LO>
inline void qk_pairs(const std::uint32_t* qh, const std::uint32_t* ql, std::int64_t qs2, const std::uint32_t* Kp,
                     int tile, int dk2, int j0, float scale, float* S, std::int64_t ss) {
    __m512 acc[R][NJ];
    for (int r = 0; r < R; ++r)
        for (int n = 0; n < NJ; ++n) acc[r][n] = _mm512_setzero_ps();
    const std::uint32_t* kp = Kp + j0;
#pragma GCC unroll 2
    for (int c2 = 0; c2 < dk2; ++c2) {
        __m512i kv[NJ];
        for (int n = 0; n < NJ; ++n)
            kv[n] = _mm512_load_si512(static_cast<const void*>(kp + std::int64_t(c2) * tile + n * 16));
        for (int r = 0; r < R; ++r) {
            const __m512i b = _mm512_set1_epi32(int(qh[r * qs2 + c2]));
            for (int n = 0; n < NJ; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], (__m512bh)b, (__m512bh)kv[n]);
            if constexpr (LO) {
                const __m512i bl = _mm512_set1_epi32(int(ql[r * qs2 + c2]));
                for (int n = 0; n < NJ; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], (__m512bh)bl, (__m512bh)kv[n]);
            }
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
    for (int r = 0; r < R; ++r)
        for (int n = 0; n < NJ; ++n) _mm512_storeu_ps(S + r * ss + j0 + n * 16, _mm512_mul_ps(acc[r][n], sc));
}

template <class A, int NJ, bool LO, int... Rs>
inline void qk_pairs_n(int R, std::integer_sequence<int, Rs...>, const std::uint32_t* qh, const std::uint32_t* ql,
                       std::int64_t qs2, const std::uint32_t* Kp, int tile, int dk2, int j0, float scale, float* S,
                       std::int64_t ss) {
    ((R == Rs + 1 ? (qk_pairs<A, Rs + 1, NJ, LO>(qh, ql, qs2, Kp, tile, dk2, j0, scale, S, ss), 0) : 0), ...);
}

/// S for rows [0, nr) of one head against a pair-transposed tile (see qk_pairs).
template <class A, bool LO>
inline void qk_pairs_block(const std::uint32_t* qh, const std::uint32_t* ql, std::int64_t qs2, int nr,
                           const std::uint32_t* Kp, int tile, int dk2, float scale, float* S, std::int64_t ss) {
    constexpr int RT = 12;  // rows per register block, 2 key vectors each
    for (int r0 = 0; r0 < nr; r0 += RT) {
        const int R = nr - r0 < RT ? nr - r0 : RT;
        const std::uint32_t* qa = qh + std::int64_t(r0) * qs2;
        const std::uint32_t* qb = ql + std::int64_t(r0) * qs2;
        int j0 = 0;
        for (; j0 + 32 <= tile; j0 += 32)
            qk_pairs_n<A, 2, LO>(R, std::make_integer_sequence<int, RT>{}, qa, qb, qs2, Kp, tile, dk2, j0, scale,
                                 S + std::int64_t(r0) * ss, ss);
        for (; j0 < tile; j0 += 16)
            qk_pairs_n<A, 1, LO>(R, std::make_integer_sequence<int, RT>{}, qa, qb, qs2, Kp, tile, dk2, j0, scale,
                                 S + std::int64_t(r0) * ss, ss);
    }
}

/// 16 × 16 transpose of 32-bit words: rows r[0..15] in, columns out (r[i] becomes column i).
template <class A>
inline void transpose16(__m512i* r) noexcept {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {  // u[g + k], lane L: rows g..g+3 at column 4L + k
        u[g + 0] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int k = 0; k < 4; ++k) {
        const __m512i x0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x44), x1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xee);
        const __m512i y0 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x44),
                      y1 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xee);
        r[k] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        r[4 + k] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        r[8 + k] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[12 + k] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
}

/// The pair-transposed key tile Kp [dk2][tile] of 16 keys j0 .. j0 + 15 (rows k[0..15], dk bf16
/// each): 16 × 16 word transposes, the last (dk/2 mod 16) pairs and an odd last element word by
/// word.
template <class A>
inline void pair_columns16(std::uint32_t* Kp, int tile, int j0, const bfloat16* const* k, int dk) {
    const int full = dk / 2, vec = full / 16 * 16;
    for (int c2 = 0; c2 < vec; c2 += 16) {
        __m512i r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(static_cast<const void*>(k[i] + 2 * c2));
        transpose16<A>(r);
        for (int i = 0; i < 16; ++i)
            _mm512_store_si512(static_cast<void*>(Kp + std::int64_t(c2 + i) * tile + j0), r[i]);
    }
    for (int i = 0; i < 16; ++i) {
        for (int c2 = vec; c2 < full; ++c2) {
            std::uint32_t w;
            std::memcpy(&w, static_cast<const void*>(k[i] + 2 * c2), 4);
            Kp[std::int64_t(c2) * tile + j0 + i] = w;
        }
        if (dk % 2) {
            std::uint16_t u;
            std::memcpy(&u, static_cast<const void*>(k[i] + dk - 1), 2);
            Kp[std::int64_t(full) * tile + j0 + i] = u;  // the pair's second element is zero
        }
    }
}

/// Pair row of two value rows a, b (dv bf16 each): dst[c] = (a[c], b[c]) as one 32-bit word, the
/// layout the P·V pair dot product reads (lanes are value columns, pairs are keys).
template <class A>
inline void pair_values(std::uint32_t* dst, const bfloat16* a, const bfloat16* b, int dv) {
    alignas(64) static constexpr std::uint16_t lo_idx[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                                              37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                                              11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i il = _mm512_load_si512(static_cast<const void*>(lo_idx));
    const __m512i ih = _mm512_add_epi16(il, _mm512_set1_epi16(16));
    int c = 0;
    for (; c + 32 <= dv; c += 32) {
        const __m512i va = _mm512_loadu_si512(static_cast<const void*>(a + c));
        const __m512i vb = _mm512_loadu_si512(static_cast<const void*>(b + c));
        _mm512_storeu_si512(static_cast<void*>(dst + c), _mm512_permutex2var_epi16(va, il, vb));
        _mm512_storeu_si512(static_cast<void*>(dst + c + 16), _mm512_permutex2var_epi16(va, ih, vb));
    }
    for (; c < dv; ++c) {
        std::uint16_t ua, ub;
        std::memcpy(&ua, static_cast<const void*>(a + c), 2);
        std::memcpy(&ub, static_cast<const void*>(b + c), 2);
        dst[c] = std::uint32_t(ua) | (std::uint32_t(ub) << 16);
    }
}

/// f32 → the bf16 bit patterns of 16 lanes (round to nearest even), widened back to f32.
template <class A>
inline __m512 bf16_round(__m512 x) noexcept {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/// The P row of one query row as bf16 pairs of keys: hi[jp] = (p[2jp], p[2jp+1]) and lo the
/// rest (p − hi), exact for a row rounded by round_p16. tile: a multiple of 16.
template <class A>
inline void p_pairs(const float* s, int tile, std::uint32_t* hi, std::uint32_t* lo) noexcept {
    for (int j = 0; j < tile; j += 16) {
        const __m512 p = _mm512_loadu_ps(s + j);
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(p);
        const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        const __m256i l = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(p, hf));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + j / 2), h);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + j / 2), l);
    }
}

/// O[r][c0 .. c0 + 16·C) = α_r·O + Σ_jp (hi + lo)[r][jp] · Vp[jp][...] for R rows over key pairs
/// [0, npairs): two pair dot products per pair of keys and vector of 16 value columns (the same
/// count as one FMA per key, at the dot unit's rate).
template <class A, int R, int C>
inline void pv_pairs(const std::uint32_t* ph, const std::uint32_t* pl, std::int64_t pstride, const float* alpha,
                     const std::uint32_t* Vp, std::int64_t vps, int npairs, float* O, std::int64_t os, int c0) {
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r) {
        const __m512 a = _mm512_set1_ps(alpha[r]);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(O + r * os + c0 + c * 16), a);
    }
    for (int jp = 0; jp < npairs; ++jp) {
        __m512i vv[C];
        for (int c = 0; c < C; ++c) vv[c] = _mm512_loadu_si512(static_cast<const void*>(Vp + jp * vps + c0 + c * 16));
        for (int r = 0; r < R; ++r) {
            const __m512i bh = _mm512_set1_epi32(int(ph[r * pstride + jp]));
            const __m512i bl = _mm512_set1_epi32(int(pl[r * pstride + jp]));
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)bh, (__m512bh)vv[c]);
            for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)bl, (__m512bh)vv[c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(O + r * os + c0 + c * 16, acc[r][c]);
}

template <class A, int R, int... Cs>
inline void pv_pairs_n(int C, std::integer_sequence<int, Cs...>, const std::uint32_t* ph, const std::uint32_t* pl,
                       std::int64_t pstride, const float* alpha, const std::uint32_t* Vp, std::int64_t vps, int npairs,
                       float* O, std::int64_t os, int c0) {
    ((C == Cs + 1 ? (pv_pairs<A, R, Cs + 1>(ph, pl, pstride, alpha, Vp, vps, npairs, O, os, c0), 0) : 0), ...);
}

/// pv_pairs over all dvp (a multiple of 16) columns in passes of at most 4 vectors (R·4
/// accumulators: 16 of 32 registers for R = 4).
template <class A, int R>
inline void pv_pairs_block(const std::uint32_t* ph, const std::uint32_t* pl, std::int64_t pstride, const float* alpha,
                           const std::uint32_t* Vp, std::int64_t vps, int npairs, float* O, std::int64_t os, int dvp) {
    constexpr int MAXC = 4;
    const int nch = dvp / 16;
    for (int c = 0; c < nch; c += MAXC) {
        const int cc = nch - c < MAXC ? nch - c : MAXC;
        pv_pairs_n<A, R>(cc, std::make_integer_sequence<int, MAXC>{}, ph, pl, pstride, alpha, Vp, vps, npairs, O, os,
                         c * 16);
    }
}
#endif

/// The keys of a tile the P·V micro-kernels read for R rows: row r sees keys j < lim[r]; all rows
/// see j < lo, none sees j ≥ hi. Keys a row does not see are skipped, not multiplied by a zero
/// weight: their values may be NaN or Inf (0·NaN would poison the row).
struct RowKeys {
    const int* lim;
    int lo, hi;
    int first = 0;  ///< keys below it were done elsewhere (the bf16 pair path)
};

/// The P·V key range of R ≥ 1 rows whose key counts are lim[0..R).
inline RowKeys row_keys(const int* lim, int R) {
    RowKeys k{lim, lim[0], lim[0]};
    for (int r = 1; r < R; ++r) {
        k.lo = lim[r] < k.lo ? lim[r] : k.lo;
        k.hi = lim[r] > k.hi ? lim[r] : k.hi;
    }
    return k;
}

/// O[r][c0 .. c0 + C·W) = α_r·O + Σ_j P[r][j]·V[j][...] for R rows.
template <class A, int R, int C>
inline void pv_rows(const float* P, std::int64_t ps, const float* alpha, const float* V, std::int64_t vs, RowKeys keys,
                    float* O, std::int64_t os, int c0) {
    constexpr int W = width<A>;
    vf<A> acc[R][C];
    for (int r = 0; r < R; ++r) {
        const vf<A> a(alpha[r]);
        for (int c = 0; c < C; ++c) acc[r][c] = vf<A>::load_unaligned(O + r * os + c0 + c * W) * a;
    }
    for (int j = keys.first; j < keys.lo; ++j) {
        vf<A> vv[C];
        for (int c = 0; c < C; ++c) vv[c] = vf<A>::load_unaligned(V + std::int64_t(j) * vs + c0 + c * W);
        for (int r = 0; r < R; ++r) {
            const vf<A> p(P[r * ps + j]);
            for (int c = 0; c < C; ++c) acc[r][c] = simd::fmadd<A>(p, vv[c], acc[r][c]);
        }
    }
    for (int j = keys.lo > keys.first ? keys.lo : keys.first; j < keys.hi; ++j) {  // the causal diagonal
        vf<A> vv[C];
        for (int c = 0; c < C; ++c) vv[c] = vf<A>::load_unaligned(V + std::int64_t(j) * vs + c0 + c * W);
        for (int r = 0; r < R; ++r) {
            if (j >= keys.lim[r]) continue;
            const vf<A> p(P[r * ps + j]);
            for (int c = 0; c < C; ++c) acc[r][c] = simd::fmadd<A>(p, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c].store_unaligned(O + r * os + c0 + c * W);
}

template <class A, int R, int... Cs>
inline void pv_rows_n(int C, std::integer_sequence<int, Cs...>, const float* P, std::int64_t ps, const float* alpha,
                      const float* V, std::int64_t vs, RowKeys keys, float* O, std::int64_t os, int c0) {
    ((C == Cs + 1 ? (pv_rows<A, R, Cs + 1>(P, ps, alpha, V, vs, keys, O, os, c0), 0) : 0), ...);
}

/// P·V for R rows over all dvp columns, in passes of balanced width (accumulators in registers:
/// up to 12 of 16 vector registers on SSE/AVX2, 24 of 32 on AVX-512).
template <class A, int R>
inline void pv_block(const float* P, std::int64_t ps, const float* alpha, const float* V, std::int64_t vs, RowKeys keys,
                     float* O, std::int64_t os, int dvp) {
    constexpr int W = width<A>;
    constexpr int MAXC = (W == 16 ? 24 : 12) / R;
    const int nch = dvp / W;
    const int passes = (nch + MAXC - 1) / MAXC;
    const int C = (nch + passes - 1) / passes;
    for (int c = 0; c < nch; c += C) {
        const int cc = nch - c < C ? nch - c : C;
        pv_rows_n<A, R>(cc, std::make_integer_sequence<int, MAXC>{}, P, ps, alpha, V, vs, keys, O, os, c * W);
    }
}

/// QK against a transposed key tile Kt [dkp][tile]: R rows × NJ vectors of keys accumulate in
/// registers with the query element broadcast, no horizontal sums (the many-row case: MLA heads,
/// prefill tiles). Scores go to S[r][j0 ...].
template <class A, int R, int NJ>
inline void qk_rows_t(const float* q, std::int64_t qs, const float* Kt, int tile, int dk, int j0, float* S,
                      std::int64_t ss) {
    constexpr int W = width<A>;
    vf<A> acc[R][NJ];
    for (int r = 0; r < R; ++r)
        for (int n = 0; n < NJ; ++n) acc[r][n] = vf<A>(0.f);
    const float* kp = Kt + j0;
#pragma GCC unroll 2
    for (int c = 0; c < dk; ++c) {
        vf<A> kv[NJ];
        for (int n = 0; n < NJ; ++n) kv[n] = vf<A>::load_unaligned(kp + std::int64_t(c) * tile + n * W);
        for (int r = 0; r < R; ++r) {
            const vf<A> qb(q[r * qs + c]);
            for (int n = 0; n < NJ; ++n) acc[r][n] = simd::fmadd<A>(qb, kv[n], acc[r][n]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int n = 0; n < NJ; ++n) acc[r][n].store_unaligned(S + r * ss + j0 + n * W);
}

template <class A, int NJ, int... Rs>
inline void qk_rows_t_n(int R, std::integer_sequence<int, Rs...>, const float* q, std::int64_t qs, const float* Kt,
                        int tile, int dk, int j0, float* S, std::int64_t ss) {
    ((R == Rs + 1 ? (qk_rows_t<A, Rs + 1, NJ>(q, qs, Kt, tile, dk, j0, S, ss), 0) : 0), ...);
}

/// All rows [0, nr) of one head against a transposed tile.
template <class A>
inline void qk_block_t(const float* q, std::int64_t qs, int nr, const float* Kt, int tile, int dk, float* S,
                       std::int64_t ss) {
    constexpr int W = width<A>;
    constexpr int RT = W == 16 ? 12 : 6;  // rows per register block (2 key vectors each)
    for (int r0 = 0; r0 < nr; r0 += RT) {
        const int R = nr - r0 < RT ? nr - r0 : RT;
        int j0 = 0;
        for (; j0 + 2 * W <= tile; j0 += 2 * W)
            qk_rows_t_n<A, 2>(R, std::make_integer_sequence<int, RT>{}, q + r0 * qs, qs, Kt, tile, dk, j0,
                              S + std::int64_t(r0) * ss, ss);
        for (; j0 < tile; j0 += W)
            qk_rows_t_n<A, 1>(R, std::make_integer_sequence<int, RT>{}, q + r0 * qs, qs, Kt, tile, dk, j0,
                              S + std::int64_t(r0) * ss, ss);
    }
}

/// QK reading the key rows straight from the cache (storage T widened in registers), for jobs
/// with at most 4 rows per head: every key element is then loaded and converted exactly once, and
/// the loads are spread through the FMA stream so memory and arithmetic overlap.
template <class A, int R, class T, int DK>
inline void qk_rows_direct(const float* q, std::int64_t qs, const T* const* krow, int dk_rt, int tile, float* S,
                           std::int64_t ss) {
    constexpr int W = width<A>;
    constexpr int NT = W / R;
    const int dk = DK > 0 ? DK : dk_rt;
    for (int j0 = 0; j0 < tile; j0 += NT) {
        vf<A> acc[W];
        for (int i = 0; i < W; ++i) acc[i] = vf<A>(0.f);
#pragma GCC unroll 4
        for (int c = 0; c < dk; c += W) {
            vf<A> kv[NT];
            for (int n = 0; n < NT; ++n) kv[n] = simd::load_f32<A>(krow[j0 + n] + c);
            for (int r = 0; r < R; ++r) {
                const vf<A> qv = vf<A>::load_unaligned(q + r * qs + c);
                for (int n = 0; n < NT; ++n) acc[r * NT + n] = simd::fmadd<A>(qv, kv[n], acc[r * NT + n]);
            }
        }
        alignas(64) float sums[W];
        simd::hsum_rows<A>(acc).store_aligned(sums);
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < NT; ++n) S[r * ss + j0 + n] = sums[r * NT + n];
    }
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
/// qk_rows_direct for a bf16 cache on AVX-512-BF16: the key rows go straight from the cache into
/// the pair dot product (no widening), against the query's bf16 hi (and, with LO, lo) rows; the
/// sums are scaled once: S = scale·(q·k). dk: a multiple of 32.
template <class A, int R, bool LO, int DK>
inline void qk_rows_direct_bf16(const bfloat16* qh, const bfloat16* ql, std::int64_t qs, const bfloat16* const* krow,
                                int dk_rt, int tile, float scale, float* S, std::int64_t ss) {
    constexpr int W = width<A>;
    constexpr int NT = W / R;
    const int dk = DK > 0 ? DK : dk_rt;
    for (int j0 = 0; j0 < tile; j0 += NT) {
        vf<A> acc[W];
        for (int i = 0; i < W; ++i) acc[i] = vf<A>(0.f);
#pragma GCC unroll 4
        for (int c = 0; c < dk; c += 32) {
            __m512i kv[NT];
            for (int n = 0; n < NT; ++n) kv[n] = _mm512_loadu_si512(static_cast<const void*>(krow[j0 + n] + c));
            for (int r = 0; r < R; ++r) {
                const __m512i qv = _mm512_loadu_si512(static_cast<const void*>(qh + r * qs + c));
                for (int n = 0; n < NT; ++n)
                    acc[r * NT + n] = vf<A>(_mm512_dpbf16_ps(acc[r * NT + n], (__m512bh)qv, (__m512bh)kv[n]));
                if constexpr (LO) {
                    const __m512i lv = _mm512_loadu_si512(static_cast<const void*>(ql + r * qs + c));
                    for (int n = 0; n < NT; ++n)
                        acc[r * NT + n] = vf<A>(_mm512_dpbf16_ps(acc[r * NT + n], (__m512bh)lv, (__m512bh)kv[n]));
                }
            }
        }
        alignas(64) float sums[W];
        (simd::hsum_rows<A>(acc) * vf<A>(scale)).store_aligned(sums);
        for (int r = 0; r < R; ++r)
            for (int n = 0; n < NT; ++n) S[r * ss + j0 + n] = sums[r * NT + n];
    }
}
#endif

template <class A, int R, int C, class T>
inline void pv_rows_direct(const float* P, std::int64_t ps, const float* alpha, const T* const* vrow, RowKeys keys,
                           float* O, std::int64_t os, int c0) {
    constexpr int W = width<A>;
    vf<A> acc[R][C];
    for (int r = 0; r < R; ++r) {
        const vf<A> a(alpha[r]);
        for (int c = 0; c < C; ++c) acc[r][c] = vf<A>::load_unaligned(O + r * os + c0 + c * W) * a;
    }
    for (int j = 0; j < keys.lo; ++j) {
        vf<A> vv[C];
        for (int c = 0; c < C; ++c) vv[c] = simd::load_f32<A>(vrow[j] + c0 + c * W);
        for (int r = 0; r < R; ++r) {
            const vf<A> p(P[r * ps + j]);
            for (int c = 0; c < C; ++c) acc[r][c] = simd::fmadd<A>(p, vv[c], acc[r][c]);
        }
    }
    for (int j = keys.lo; j < keys.hi; ++j) {  // rows of different query tokens end at different keys
        vf<A> vv[C];
        for (int c = 0; c < C; ++c) vv[c] = simd::load_f32<A>(vrow[j] + c0 + c * W);
        for (int r = 0; r < R; ++r) {
            if (j >= keys.lim[r]) continue;
            const vf<A> p(P[r * ps + j]);
            for (int c = 0; c < C; ++c) acc[r][c] = simd::fmadd<A>(p, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c].store_unaligned(O + r * os + c0 + c * W);
}

template <class A, int R, class T, int... Cs>
inline void pv_rows_direct_n(int C, std::integer_sequence<int, Cs...>, const float* P, std::int64_t ps,
                             const float* alpha, const T* const* vrow, RowKeys keys, float* O, std::int64_t os, int c0) {
    ((C == Cs + 1 ? (pv_rows_direct<A, R, Cs + 1, T>(P, ps, alpha, vrow, keys, O, os, c0), 0) : 0), ...);
}

template <class A, int R, class T, int DV>
inline void pv_block_direct(const float* P, std::int64_t ps, const float* alpha, const T* const* vrow, RowKeys keys,
                            float* O, std::int64_t os, int dv_rt) {
    constexpr int W = width<A>;
    constexpr int MAXC = (W == 16 ? 24 : 12) / R;
    const int nch = (DV > 0 ? DV : dv_rt) / W;
    const int passes = (nch + MAXC - 1) / MAXC;
    const int C = (nch + passes - 1) / passes;
    for (int c = 0; c < nch; c += C) {
        const int cc = nch - c < C ? nch - c : C;
        pv_rows_direct_n<A, R, T>(cc, std::make_integer_sequence<int, MAXC>{}, P, ps, alpha, vrow, keys, O, os, c * W);
    }
}

/// p rounded to hi + lo bf16 parts (16 bits of mantissa): what the pair P·V path multiplies.
template <class A>
inline vf<A> round_p16_vec(vf<A> p) noexcept {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    if constexpr (width<A> == 16) {
        const __m512 hi = bf16_round<A>(p);
        return vf<A>(_mm512_add_ps(hi, bf16_round<A>(_mm512_sub_ps(p, hi))));
    }
#endif
    return p;  // no pair path on this ISA
}

/// Online-softmax update of rows [r0, r0 + R) on their score rows (see attend). Writes the number
/// of keys of the tile each row sees to lim[0..R) and returns them as the P·V key range.
///
/// A row any of whose visible logits is not finite (NaN or ±inf: NaN/Inf in q or k, Inf·0) is
/// poisoned: m = l = α = NaN, so its accumulators become NaN now and stay NaN through every later
/// tile (exp2 of anything minus NaN is NaN), and the finish gives NaN (plan.hpp), as the reference
/// does. The test is x − x summed over the visible logits (0 for finite x, NaN otherwise): one
/// subtraction and one addition per vector of logits, next to the dk FMAs per logit of Q·Kᵀ.
///
/// With P16 (the bf16 pair P·V path) the probabilities are rounded to hi + lo bf16 parts before
/// they are summed, so the denominator sums exactly the weights the numerator multiplies.
template <class A, bool P16 = false>
inline RowKeys softmax_rows(const AttendJob& job, float* S, int tile, int r0, int R, std::int64_t t0, int n, float* alpha,
                            int* lim_out) {
    constexpr int W = width<A>;
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    constexpr float nan = std::numeric_limits<float>::quiet_NaN();
    // The key range is kept here rather than read back from lim_out (row_keys): GCC 12 at
    // -march=x86-64-v4 takes the read-back for a use of uninitialised memory.
    RowKeys keys{lim_out, n, 0};
    for (int r = r0; r < r0 + R; ++r) {
        float* s = S + std::int64_t(r) * tile;
        std::int64_t lim64 = job.row_end[r] - t0;
        const int lim = int(lim64 < 0 ? 0 : (lim64 > n ? n : lim64));
        lim_out[r - r0] = lim;
        keys.lo = lim < keys.lo ? lim : keys.lo;
        keys.hi = lim > keys.hi ? lim : keys.hi;
        // One pass over the visible logits gives their maximum and the finiteness test.
        vf<A> mx(ninf), chk(0.f);
        int j = 0;
        for (; j + W <= lim; j += W) {
            const vf<A> x = vf<A>::load_unaligned(s + j);
            mx = xsimd::max(mx, x);
            chk += x - x;
        }
        float tmax = simd::hmax<A>(mx);
        float finite = simd::hsum<A>(chk);  // 0, or NaN
        for (; j < lim; ++j) {
            tmax = s[j] > tmax ? s[j] : tmax;
            finite += s[j] - s[j];
        }
        if (finite != 0.f) {
            job.m[r] = job.l[r] = alpha[r - r0] = nan;
            for (j = 0; j < tile; ++j) s[j] = 0.f;
            continue;
        }
        for (j = lim; j < tile; ++j) s[j] = ninf;
        const float mnew = tmax > job.m[r] ? tmax : job.m[r];
        if (mnew == ninf) {
            alpha[r - r0] = 1.f;
            for (j = 0; j < tile; ++j) s[j] = 0.f;
            continue;
        }
        const float a = std::exp2(job.m[r] - mnew);
        const vf<A> mv(mnew);
        vf<A> sum(0.f);
        for (j = 0; j < tile; j += W) {
            vf<A> p = xsimd::exp2(vf<A>::load_unaligned(s + j) - mv);
            if constexpr (P16) p = round_p16_vec<A>(p);
            p.store_unaligned(s + j);
            sum += p;
        }
        job.l[r] = job.l[r] * a + simd::hsum<A>(sum);
        job.m[r] = mnew;
        alpha[r - r0] = a;
    }
    return keys;
}

/// Splits n f32 query values into bf16 hi + lo bit patterns (x = hi + lo to 16 bits of mantissa),
/// stored as consecutive 2-byte values at hi and lo. Returns whether some lo part is non-zero
/// (the query is not already bf16; its lo dot products can be skipped otherwise).
template <class A>
inline bool split_bf16(const float* x, int n, void* hi, void* lo) noexcept {
    bool any_lo = false;
    for (int e = 0; e < n; ++e) {
        const std::uint16_t h = simd::float_to_bf16_bits<A>(x[e]);
        const float rest = x[e] - simd::bf16_to_float<A>(h);
        const std::uint16_t l = simd::float_to_bf16_bits<A>(rest);
        std::memcpy(static_cast<char*>(hi) + 2 * e, &h, 2);
        std::memcpy(static_cast<char*>(lo) + 2 * e, &l, 2);
        any_lo = any_lo || rest != 0.f;
    }
    return any_lo;
}

/// Multiplies the job's query rows by qk_scale in place (the f32 paths: the same rounding as
/// scaling them while filling).
inline void scale_rows(const AttendJob& job, int dk) {
    for (int r = 0; r < job.n_rows; ++r)
        for (int e = 0; e < dk; ++e) job.q[r * job.q_stride + e] *= job.qk_scale;
}

/// The streaming variant of attend for ≤ 4 rows per head (GQA decode): no f32 tiles, K and V are
/// read from the cache inside the micro-kernels. Needs dk, dv multiples of the SIMD width.
///
/// Walk: the tile's tokens × the job's KV heads, head by head. A token-major cache holds a
/// token's heads side by side, so one head's pass touches dk·sizeof(T) bytes of K (and of V) in
/// every token's span, at a stride: the hardware prefetchers do not follow it, and lines of many
/// tokens that share their low address bits thrash L1 sets. So while head h of tile t is
/// computed, whole spans (all heads, contiguous) of a 1/n_heads share of tile t + 1's tokens are
/// prefetched into L2 (locality hint 1: prefetcht2), in address order; L2 → L1 is left to the
/// demand loads. Measured on a Zen 4 (32/8/128, f16, 16K keys, 1 thread, busy machine): 2× the
/// bandwidth of an L1 prefetch of each head's lines (7–10 vs 4.5–5 GB/s).
template <class A, class T, int DK, int DV>
void attend_direct(const KvSource<T>& src, const AttendJob& job) {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    const int dk = DK > 0 ? DK : src.dk, dv = DV > 0 ? DV : src.dv;
    const int tile = job.tile;
    const int nr = job.n_rows;
    const int nh = src.n_heads > 0 ? src.n_heads : 1;
    const int rph = nr / nh;

    // Scratch: key and value row pointers [nh][tile] each, a zero row for padding keys, scores, α.
    const std::int64_t np = std::int64_t(nh) * tile;
    const T** kptr = reinterpret_cast<const T**>(job.scratch);
    const T** vptr = kptr + np;
    T* zero = reinterpret_cast<T*>(vptr + np);
    const std::int64_t zero_floats = (std::int64_t(sizeof(T)) * (dk > dv ? dk : dv) + 3) / 4;
    float* S = job.scratch + round_up(4 * np + zero_floats + 16, 16);
    float* alpha = S + std::int64_t(nr) * tile;
    std::memset(static_cast<void*>(zero), 0, sizeof(T) * std::size_t(dk > dv ? dk : dv));
    // A bf16 cache on AVX-512-BF16 (dk a multiple of 32): QK by the pair dot product on the
    // query's bf16 hi + lo rows [nr][dk] (lo only if the query is not already bf16).
    constexpr bool bf16_dot = std::is_same_v<T, bfloat16> && simd::has_bf16_dot<A>;
    const bool use_dot = bf16_dot && dk % 32 == 0;
    [[maybe_unused]] bfloat16* qh = reinterpret_cast<bfloat16*>(alpha + round_up(nr, 16));
    [[maybe_unused]] bfloat16* ql = qh + std::int64_t(nr) * dk;
    [[maybe_unused]] bool q_lo = false;
    if (use_dot) {
        for (int r = 0; r < nr; ++r)
            q_lo = split_bf16<A>(job.q + r * job.q_stride, dk, qh + std::int64_t(r) * dk, ql + std::int64_t(r) * dk) ||
                   q_lo;
    } else {
        scale_rows(job, dk);
    }

    std::int64_t kend = job.kb;
    for (int r = 0; r < nr; ++r) {
        job.m[r] = ninf;
        job.l[r] = 0.f;
        for (int c = 0; c < dv; ++c) job.o[r * job.o_stride + c] = 0.f;
        kend = job.row_end[r] > kend ? job.row_end[r] : kend;
    }
    if (kend > job.ke) kend = job.ke;

    const std::size_t k_bytes = sizeof(T) * std::size_t(dk), v_bytes = sizeof(T) * std::size_t(dv);
    const int share = (tile + nh - 1) / nh;  // tokens of the next tile prefetched per head step
    for (std::int64_t t0 = job.kb; t0 < kend; t0 += tile) {
        const int n = int(kend - t0 < tile ? kend - t0 : tile);
        for (int j = 0; j < tile; ++j) {
            if (j < n) {
                const std::int64_t off = src.map.token_offset(t0 + j, src.token_stride);
                const std::int64_t voff =
                    src.v_token_stride == 0 ? off : src.map.token_offset(t0 + j, src.v_token_stride);
                for (int hh = 0; hh < nh; ++hh) {
                    kptr[hh * tile + j] = src.k + off + hh * src.head_stride;
                    vptr[hh * tile + j] = src.v + voff + hh * src.head_stride;
                }
            } else {
                for (int hh = 0; hh < nh; ++hh) kptr[hh * tile + j] = vptr[hh * tile + j] = zero;
            }
        }
        for (int hh = 0; hh < nh; ++hh) {
            if (job.prefetch) {
                const std::int64_t first = t0 + tile + std::int64_t(hh) * share;
                for (std::int64_t t = first; t < first + share && t < kend; ++t) {
                    const std::int64_t off = src.map.token_offset(t, src.token_stride);
                    const std::int64_t voff = src.v_token_stride == 0 ? off : src.map.token_offset(t, src.v_token_stride);
                    for (int h2 = 0; h2 < nh; ++h2) {  // in address order when the heads are contiguous
                        const char* a = reinterpret_cast<const char*>(src.k + off + h2 * src.head_stride);
                        for (std::size_t o = 0; o < k_bytes; o += 64) __builtin_prefetch(a + o, 0, 1);
                    }
                    for (int h2 = 0; h2 < nh; ++h2) {
                        const char* b = reinterpret_cast<const char*>(src.v + voff + h2 * src.head_stride);
                        for (std::size_t o = 0; o < v_bytes; o += 64) __builtin_prefetch(b + o, 0, 1);
                    }
                }
            }
            const int r0 = hh * rph, R = rph;
            std::int64_t blk_end = job.row_end[r0];
            for (int r = 1; r < R; ++r) blk_end = job.row_end[r0 + r] > blk_end ? job.row_end[r0 + r] : blk_end;
            if (blk_end <= t0) continue;
            const float* q = job.q + r0 * job.q_stride;
            float* Sr = S + std::int64_t(r0) * tile;
            const T* const* kp = kptr + hh * tile;
            const T* const* vp = vptr + hh * tile;
            float* O = job.o + r0 * job.o_stride;
            if (use_dot) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
                if constexpr (bf16_dot) {
                    const bfloat16* a = qh + std::int64_t(r0) * dk;
                    const bfloat16* b = ql + std::int64_t(r0) * dk;
                    const float sc = job.qk_scale;
                    auto qk = [&](auto lo) {
                        constexpr bool L = decltype(lo)::value;
                        if (R == 4) qk_rows_direct_bf16<A, 4, L, DK>(a, b, dk, kp, dk, tile, sc, Sr, tile);
                        else if (R >= 2) qk_rows_direct_bf16<A, 2, L, DK>(a, b, dk, kp, dk, tile, sc, Sr, tile);
                        else qk_rows_direct_bf16<A, 1, L, DK>(a, b, dk, kp, dk, tile, sc, Sr, tile);
                        if (R == 3)
                            qk_rows_direct_bf16<A, 1, L, DK>(a + 2 * dk, b + 2 * dk, dk, kp, dk, tile, sc, Sr + 2 * tile,
                                                             tile);
                    };
                    if (q_lo) qk(std::true_type{});
                    else qk(std::false_type{});
                }
#endif
            } else {
                if (R == 4) qk_rows_direct<A, 4, T, DK>(q, job.q_stride, kp, dk, tile, Sr, tile);
                else if (R >= 2) qk_rows_direct<A, 2, T, DK>(q, job.q_stride, kp, dk, tile, Sr, tile);
                else qk_rows_direct<A, 1, T, DK>(q, job.q_stride, kp, dk, tile, Sr, tile);
                if (R == 3)
                    qk_rows_direct<A, 1, T, DK>(q + 2 * job.q_stride, job.q_stride, kp, dk, tile, Sr + 2 * tile, tile);
            }
            int lim[4] = {0, 0, 0, 0};  // set by softmax_rows (initialised: GCC cannot see R >= 1)
            const RowKeys keys = softmax_rows<A>(job, S, tile, r0, R, t0, n, alpha, lim);
            if (R == 4) pv_block_direct<A, 4, T, DV>(Sr, tile, alpha, vp, keys, O, job.o_stride, dv);
            else if (R == 3) {
                pv_block_direct<A, 2, T, DV>(Sr, tile, alpha, vp, row_keys(lim, 2), O, job.o_stride, dv);
                pv_block_direct<A, 1, T, DV>(Sr + 2 * tile, tile, alpha + 2, vp, row_keys(lim + 2, 1),
                                             O + 2 * job.o_stride, job.o_stride, dv);
            } else if (R == 2) pv_block_direct<A, 2, T, DV>(Sr, tile, alpha, vp, keys, O, job.o_stride, dv);
            else pv_block_direct<A, 1, T, DV>(Sr, tile, alpha, vp, keys, O, job.o_stride, dv);
        }
    }
}

/// The kernel of kernel_abi.hpp. DK, DV: compile-time key/value widths or 0 (run time).
template <class A, class T, int DK, int DV>
void attend(const KvSource<T>& src, const AttendJob& job) {
    constexpr int W = width<A>;
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    const int dk = DK > 0 ? DK : src.dk;
    const int dv = DV > 0 ? DV : src.dv;
    const int dkp = int(round_up(dk, W));
    const int dvp = int(round_up(dv, W));
    const bool v_is_k = src.v == src.k;
    const int tile = job.tile;
    const int nr = job.n_rows;
    const int nh = src.n_heads > 0 ? src.n_heads : 1;
    const int rph = nr / nh;  // rows per head
    if (!v_is_k && rph <= 4 && dk % W == 0 && dv % W == 0 && dk >= 16 && job.direct) {
        attend_direct<A, T, DK, DV>(src, job);
        return;
    }

    // Scratch: K tile [tile][nh][dkp], V tile [tile][nh][dvp] (MLA: V = K tile), scores, α.
    const std::int64_t kts = std::int64_t(nh) * dkp;
    const std::int64_t vts = v_is_k ? kts : std::int64_t(nh) * dvp;
    constexpr bool use_bf16_dot = std::is_same_v<T, bfloat16> && simd::has_bf16_dot<A>;
    float* Kb = job.scratch;
    float* Vb = v_is_k ? Kb : Kb + tile * kts;
    float* S = Kb + tile * kts + (v_is_k ? 0 : tile * vts);
    float* Kt = S;  // transposed K tile [dkp][tile] (one head), when used
    // Measured (bench_cpu_attention): a win for GQA prefill tiles, a loss for MLA's 576-wide rows.
    const bool transposed = job.transposed && nh == 1 && rph >= 8 && !use_bf16_dot && !v_is_k;
    if (transposed) S = Kt + std::int64_t(dkp) * tile;
    float* alpha = S + std::int64_t(nr) * tile;
    float* tail = alpha + round_up(nr, 16);

    // bf16 pair-dot path: the pair-transposed key tile Kp [nh][dk2][tile], the query split into
    // bf16 hi and lo pairs [nr][dk2] each (see qk_pairs), f32 scores scaled after the dot.
    [[maybe_unused]] const int dk2 = (dk + 1) / 2;
    [[maybe_unused]] const std::int64_t kp_head = std::int64_t(dk2) * tile;
    [[maybe_unused]] std::uint32_t* Kp = reinterpret_cast<std::uint32_t*>(tail);
    [[maybe_unused]] std::uint32_t* Qhi = Kp + round_up(std::int64_t(nh) * kp_head, 16);
    [[maybe_unused]] std::uint32_t* Qlo = Qhi + round_up(std::int64_t(nr) * dk2, 16);
    // ... the value tile as pairs of keys Vp [nh][tile/2][dvp] (see pair_values), a zero row for
    // padding keys.
    [[maybe_unused]] const std::int64_t vp_head = std::int64_t(tile / 2) * dvp;
    [[maybe_unused]] std::uint32_t* Vp = Qlo + round_up(std::int64_t(nr) * dk2, 16);
    [[maybe_unused]] const bfloat16* zrow = reinterpret_cast<const bfloat16*>(Vp + round_up(nh * vp_head, 16));
    [[maybe_unused]] bool q_lo = false;
    if constexpr (use_bf16_dot) {
        std::memset(static_cast<void*>(Kp), 0, 4 * std::size_t(nh * kp_head));
        std::memset(static_cast<void*>(Vp), 0, 4 * std::size_t(nh * vp_head));
        std::memset(static_cast<void*>(const_cast<bfloat16*>(zrow)), 0,
                    sizeof(bfloat16) * std::size_t(round_up(dk > dv ? dk : dv, 32)));
        for (int r = 0; r < nr; ++r) {  // a row of pairs is the bf16 row read as words (x86)
            std::uint32_t* hi = Qhi + std::int64_t(r) * dk2;
            std::uint32_t* lo = Qlo + std::int64_t(r) * dk2;
            hi[dk2 - 1] = lo[dk2 - 1] = 0;  // an odd dk's last pair ends in a zero
            q_lo = split_bf16<A>(job.q + r * job.q_stride, dk, hi, lo) || q_lo;
        }
    } else {
        scale_rows(job, dk);
    }

    std::int64_t kend = job.kb;
    for (int r = 0; r < nr; ++r) {
        job.m[r] = ninf;
        job.l[r] = 0.f;
        for (int c = 0; c < dvp; ++c) job.o[r * job.o_stride + c] = 0.f;
        kend = job.row_end[r] > kend ? job.row_end[r] : kend;
    }
    if (kend > job.ke) kend = job.ke;
    // Zero the K/V scratch once: padding columns and rows past the last key stay zero (finite).
    std::memset(static_cast<void*>(Kb), 0, sizeof(float) * std::size_t(tile * kts));
    if (!v_is_k) std::memset(static_cast<void*>(Vb), 0, sizeof(float) * std::size_t(tile * vts));
    // Bytes of one token's rows of all heads (what the prefetch covers).
    const std::size_t k_span = sizeof(T) * std::size_t((nh - 1) * src.head_stride + dk);
    const std::size_t v_span = sizeof(T) * std::size_t((nh - 1) * src.head_stride + dv);

    for (std::int64_t t0 = job.kb; t0 < kend; t0 += tile) {
        const int n = int(kend - t0 < tile ? kend - t0 : tile);
        const std::int64_t next = t0 + tile;
        for (int j = 0; j < n; ++j) {
            // Prefetch the next tile's rows: strided and page-crossing reads defeat the hardware
            // prefetchers.
            if (job.prefetch && next + j < kend) {
                const std::int64_t po = src.map.token_offset(next + j, src.token_stride);
                const char* pk = reinterpret_cast<const char*>(src.k + po);
                for (std::size_t b = 0; b < k_span; b += 64) __builtin_prefetch(pk + b, 0, 3);
                if (!v_is_k) {
                    const std::int64_t pvo =
                        src.v_token_stride == 0 ? po : src.map.token_offset(next + j, src.v_token_stride);
                    const char* pv = reinterpret_cast<const char*>(src.v + pvo);
                    for (std::size_t b = 0; b < v_span; b += 64) __builtin_prefetch(pv + b, 0, 3);
                }
            }
            const std::int64_t off = src.map.token_offset(t0 + j, src.token_stride);
            const std::int64_t voff = src.v_token_stride == 0 ? off : src.map.token_offset(t0 + j, src.v_token_stride);
            for (int hh = 0; hh < nh; ++hh) {
                const T* kr = src.k + off + hh * src.head_stride;
                simd::convert_row<A>(Kb + j * kts + hh * dkp, kr, dk);
                if (!v_is_k) simd::convert_row<A>(Vb + j * vts + hh * dvp, src.v + voff + hh * src.head_stride, dv);
            }
        }
        if (n < tile) {
            std::memset(static_cast<void*>(Kb + n * kts), 0, sizeof(float) * std::size_t((tile - n) * kts));
            if (!v_is_k) std::memset(static_cast<void*>(Vb + n * vts), 0, sizeof(float) * std::size_t((tile - n) * vts));
        }
#if defined(__AVX512BF16__) && defined(__AVX512F__)
        if constexpr (use_bf16_dot) {  // the pair layouts of K and V, padding keys from the zero row
            const bfloat16* krows[1024];
            const bfloat16* vrows[1024];
            for (int hh = 0; hh < nh; ++hh) {
                for (int j = 0; j < tile; ++j) {
                    if (j < n) {
                        const std::int64_t off = src.map.token_offset(t0 + j, src.token_stride);
                        const std::int64_t voff =
                            src.v_token_stride == 0 ? off : src.map.token_offset(t0 + j, src.v_token_stride);
                        krows[j] = src.k + off + hh * src.head_stride;
                        vrows[j] = src.v + voff + hh * src.head_stride;
                    } else {
                        krows[j] = vrows[j] = zrow;
                    }
                }
                for (int j = 0; j < tile; j += 16) pair_columns16<A>(Kp + hh * kp_head, tile, j, krows + j, dk);
                for (int j = 0; j < tile; j += 2)
                    pair_values<A>(Vp + hh * vp_head + std::int64_t(j / 2) * dvp, vrows[j], vrows[j + 1], dv);
            }
        }
#endif

        if (transposed)
            for (int j = 0; j < tile; ++j)
                for (int c = 0; c < dk; ++c) Kt[std::int64_t(c) * tile + j] = Kb[j * kts + c];

        for (int hh = 0; hh < nh; ++hh) {
            const float* Kh0 = Kb + hh * dkp;
            const float* Vt = Vb + hh * (v_is_k ? dkp : dvp);
            const int rend = (hh + 1) * rph;
            if (transposed) {  // S for all rows of the head from the first one that sees this tile
                int ra = hh * rph;
                while (ra < rend && job.row_end[ra] <= t0) ++ra;
                if (ra < rend)
                    qk_block_t<A>(job.q + ra * job.q_stride, job.q_stride, rend - ra, Kt, tile, dk,
                                  S + std::int64_t(ra) * tile, tile);
            }
#if defined(__AVX512BF16__) && defined(__AVX512F__)
            if constexpr (use_bf16_dot) {  // the same, with the pair dot product
                int ra = hh * rph;
                while (ra < rend && job.row_end[ra] <= t0) ++ra;
                const std::int64_t qo = std::int64_t(ra) * dk2;
                if (ra < rend && q_lo)
                    qk_pairs_block<A, true>(Qhi + qo, Qlo + qo, dk2, rend - ra, Kp + hh * kp_head, tile, dk2,
                                            job.qk_scale, S + std::int64_t(ra) * tile, tile);
                else if (ra < rend)
                    qk_pairs_block<A, false>(Qhi + qo, Qlo + qo, dk2, rend - ra, Kp + hh * kp_head, tile, dk2,
                                             job.qk_scale, S + std::int64_t(ra) * tile, tile);
            }
#endif
            for (int r0 = hh * rph; r0 < rend;) {
                const int R = rend - r0 >= 4 ? 4 : (rend - r0 >= 2 ? 2 : 1);
                std::int64_t blk_end = job.row_end[r0];
                for (int r = 1; r < R; ++r) blk_end = job.row_end[r0 + r] > blk_end ? job.row_end[r0 + r] : blk_end;
                if (blk_end <= t0) {  // every row of the block ends before this tile
                    r0 += R;
                    continue;
                }
                const float* q = job.q + r0 * job.q_stride;
                float* Sr = S + std::int64_t(r0) * tile;
                // ---- S = Q Kᵀ
                if (transposed) {
                    // computed above for the whole head
                } else if constexpr (use_bf16_dot) {
                    // computed above for the whole head
                } else if constexpr (DK > 0) {
                    constexpr int DKP = int((DK + W - 1) / W * W);
                    if (R == 4) qk_rows_fixed<A, 4, DKP>(q, job.q_stride, Kh0, kts, tile, Sr, tile);
                    else if (R == 2) qk_rows_fixed<A, 2, DKP>(q, job.q_stride, Kh0, kts, tile, Sr, tile);
                    else qk_rows_fixed<A, 1, DKP>(q, job.q_stride, Kh0, kts, tile, Sr, tile);
                } else {
                    if (R == 4) qk_rows<A, 4>(q, job.q_stride, Kh0, kts, dkp, tile, Sr, tile);
                    else if (R == 2) qk_rows<A, 2>(q, job.q_stride, Kh0, kts, dkp, tile, Sr, tile);
                    else qk_rows<A, 1>(q, job.q_stride, Kh0, kts, dkp, tile, Sr, tile);
                }
                // ---- online softmax
                int lim[4] = {0, 0, 0, 0};  // set by softmax_rows (initialised: GCC cannot see R >= 1)
                const RowKeys keys = softmax_rows<A, use_bf16_dot>(job, S, tile, r0, R, t0, n, alpha, lim);
                // ---- O = α O + P V
                float* O = job.o + r0 * job.o_stride;
                RowKeys rest = keys;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
                if constexpr (use_bf16_dot) {
                    // Key pairs every row of the block sees: pair dot products; the rest (the
                    // causal diagonal, an odd last key) below with FMAs, α already applied.
                    const int pe = keys.lo & ~1, tp = tile / 2;
                    alignas(64) std::uint32_t ph[4 * 512], pl[4 * 512];
                    for (int r = 0; r < R; ++r) p_pairs<A>(Sr + std::int64_t(r) * tile, tile, ph + r * tp, pl + r * tp);
                    const std::uint32_t* vp = Vp + hh * vp_head;
                    if (R == 4) pv_pairs_block<A, 4>(ph, pl, tp, alpha, vp, dvp, pe / 2, O, job.o_stride, dvp);
                    else if (R == 2) pv_pairs_block<A, 2>(ph, pl, tp, alpha, vp, dvp, pe / 2, O, job.o_stride, dvp);
                    else pv_pairs_block<A, 1>(ph, pl, tp, alpha, vp, dvp, pe / 2, O, job.o_stride, dvp);
                    rest.first = pe;
                    for (int r = 0; r < R; ++r) alpha[r] = 1.f;
                }
#endif
                if (!use_bf16_dot || rest.first < rest.hi) {  // (the f32 path also applies α here)
                    if (R == 4) pv_block<A, 4>(Sr, tile, alpha, Vt, vts, rest, O, job.o_stride, dvp);
                    else if (R == 2) pv_block<A, 2>(Sr, tile, alpha, Vt, vts, rest, O, job.o_stride, dvp);
                    else pv_block<A, 1>(Sr, tile, alpha, Vt, vts, rest, O, job.o_stride, dvp);
                }
                r0 += R;
            }
        }
    }
}

/// Entry with the static-width dispatch: (64, 64), (128, 128), (576, 512), else run-time widths.
template <class A, class T>
void attend_any(const KvSource<T>& src, const AttendJob& job) {
    if (src.dk == 128 && src.dv == 128) attend<A, T, 128, 128>(src, job);
    else if (src.dk == 64 && src.dv == 64) attend<A, T, 64, 64>(src, job);
    else if (src.dk == 576 && src.dv == 512) attend<A, T, 576, 512>(src, job);
    else attend<A, T, 0, 0>(src, job);
}

}  // namespace transmla::cpu::detail::TRANSMLA_CPU_KERNEL_NS
