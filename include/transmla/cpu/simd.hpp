// transmla/cpu/simd.hpp — the thin SIMD layer the CPU kernels are written in: xsimd 8.1 batches
// plus what 8.1 lacks or gets wrong for us.
//
//  * fmadd(a, b, c) = a·b + c, really fused on FMA3 and AVX-512 (xsimd 8.1's avx512 fma is a
//    multiply then an add);
//  * hsum / hmax (horizontal reductions), hsum_rows (W vectors → one vector of their sums);
//  * load_f32(p) / load_f32_partial(p, n): f32, f16 or bf16 storage widened to an f32 batch
//    (F16C / AVX-512 conversion instructions, an exact integer bit trick on SSE2);
//  * store_f32 / store_f32_partial: f32 batch rounded (to nearest even) into storage;
//  * has_bf16_dot: whether the TU can use the AVX-512-BF16 pair dot product (vdpbf16ps).
//
// Everything is a template on the xsimd architecture `A`, so a translation unit compiled with
// -mavx2 instantiates different symbols from one compiled for SSE2 and the two can be linked into
// one binary (run-time ISA selection, see cpu/dispatch.hpp). Only the architecture a TU is
// compiled for may be instantiated in it (xsimd 8 decides which batch types exist from the
// compiler's target macros).
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/types.hpp"

#include <xsimd/xsimd.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace transmla::cpu::simd {

template <class A>
using vf = xsimd::batch<float, A>;

/// Number of floats in one batch of architecture A.
template <class A>
inline constexpr int width = int(xsimd::batch<float, A>::size);

/// a·b + c, fused where the instruction set has FMA.
template <class A>
inline vf<A> fmadd(vf<A> a, vf<A> b, vf<A> c) noexcept {
#if defined(__AVX512F__)
    if constexpr (width<A> == 16) return vf<A>(_mm512_fmadd_ps(a, b, c));
#endif
#if defined(__FMA__) && defined(__AVX__)
    if constexpr (width<A> == 8) return vf<A>(_mm256_fmadd_ps(a, b, c));
#endif
#if defined(__FMA__)
    if constexpr (width<A> == 4) return vf<A>(_mm_fmadd_ps(a, b, c));
#endif
    return a * b + c;
}

/// Sum of the lanes.
template <class A>
inline float hsum(vf<A> v) noexcept {
    return xsimd::hadd(v);
}

/// Maximum of the lanes.
template <class A>
inline float hmax(vf<A> v) noexcept {
    alignas(64) float t[width<A>];
    v.store_aligned(t);
    float m = t[0];
    for (int i = 1; i < width<A>; ++i) m = t[i] > m ? t[i] : m;
    return m;
}

/// W = width<A> vectors → one vector whose lane i is the sum of rows[i]'s lanes.
#if defined(__AVX__)
/// Eight 8-lane rows → their eight sums (hadd tree, then one cross-lane add). A template on A
/// only so that each ISA's translation unit owns its copy.
template <class A>
inline __m256 hsum_rows8(const __m256* r) noexcept {
    const __m256 t0 = _mm256_hadd_ps(r[0], r[1]), t1 = _mm256_hadd_ps(r[2], r[3]);
    const __m256 t2 = _mm256_hadd_ps(r[4], r[5]), t3 = _mm256_hadd_ps(r[6], r[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

template <class A>
inline vf<A> hsum_rows(const vf<A>* rows) noexcept {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if constexpr (width<A> == 16) {
        __m256 h[16];
        for (int i = 0; i < 16; ++i) {
            const __m512 v = rows[i];
            h[i] = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
        }
        const __m256 lo = hsum_rows8<A>(h), hi = hsum_rows8<A>(h + 8);
        return vf<A>(_mm512_insertf32x8(_mm512_insertf32x8(_mm512_setzero_ps(), lo, 0), hi, 1));
    }
#endif
#if defined(__AVX__)
    if constexpr (width<A> == 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = rows[i];
        return vf<A>(hsum_rows8<A>(r));
    }
#endif
    return xsimd::haddp(rows);
}

// ---- scalar conversions (bit-exact, templated on A so each ISA TU owns its copy) -------------

template <class A>
inline float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t em = h & 0x7fffu;
    std::uint32_t bits;
    if (em >= 0x7c00u) {
        bits = (em << 13) | 0x7f800000u;  // inf / NaN (payload kept)
    } else {
        float f;
        const std::uint32_t t = em << 13;
        std::memcpy(&f, &t, 4);
        f *= 0x1p112f;  // rebias; exact for normals and subnormals
        std::memcpy(&bits, &f, 4);
    }
    bits |= sign;
    float r;
    std::memcpy(&r, &bits, 4);
    return r;
}

template <class A>
inline float bf16_to_float(std::uint16_t b) noexcept {
    const std::uint32_t bits = std::uint32_t(b) << 16;
    float r;
    std::memcpy(&r, &bits, 4);
    return r;
}

template <class A, class T>
inline float elem_to_float(const T* p) noexcept {
    if constexpr (std::is_same_v<T, float>) {
        return *p;
    } else {
        std::uint16_t u;
        std::memcpy(&u, static_cast<const void*>(p), 2);
        if constexpr (std::is_same_v<T, half>) return half_to_float<A>(u);
        else return bf16_to_float<A>(u);
    }
}

/// Float rounded to nearest even into a bfloat16 bit pattern (NaN stays NaN).
template <class A>
inline std::uint16_t float_to_bf16_bits(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return std::uint16_t(u >> 16);
}

/// Float rounded to nearest even into a binary16 bit pattern (overflow → inf, NaN stays NaN).
template <class A>
inline std::uint16_t float_to_half_bits(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to ≥ 65520 → inf
    if (a < 0x38800000u) {                                        // subnormal or zero in f16
        float x;
        std::memcpy(&x, &a, 4);
        x += 0.5f;  // the f32 adder rounds to a multiple of 2^-24 (ties to even)
        std::uint32_t b;
        std::memcpy(&b, &x, 4);
        return std::uint16_t(sign | (b - 0x3f000000u));
    }
    const std::uint32_t mant_odd = (a >> 13) & 1u;
    const std::uint32_t r = a + 0xc8000fffu + mant_odd;  // rebias (−112 << 23) and round
    return std::uint16_t(sign | (r >> 13));
}

template <class A, class T>
inline void float_to_elem(T* p, float f) noexcept {
    if constexpr (std::is_same_v<T, float>) {
        *p = f;
    } else {
        const std::uint16_t u = std::is_same_v<T, half> ? float_to_half_bits<A>(f) : float_to_bf16_bits<A>(f);
        std::memcpy(static_cast<void*>(p), &u, 2);
    }
}

// ---- vector conversions ------------------------------------------------------------------------

/// width<A> consecutive elements of storage type T widened to f32.
template <class A, class T>
inline vf<A> load_f32(const T* p) noexcept {
    constexpr int W = width<A>;
    if constexpr (std::is_same_v<T, float>) {
        return vf<A>::load_unaligned(p);
    } else if constexpr (std::is_same_v<T, half>) {
#if defined(__AVX512F__)
        if constexpr (W == 16) return vf<A>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#endif
#if defined(__F16C__) && defined(__AVX__)
        if constexpr (W == 8) return vf<A>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
#if defined(__SSE2__)
        if constexpr (W == 4) {
#if defined(__F16C__)
            return vf<A>(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
            const __m128i h = _mm_unpacklo_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128());
            const __m128i sign = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x8000)), 16);
            const __m128i em = _mm_and_si128(h, _mm_set1_epi32(0x7fff));
            const __m128i sh = _mm_slli_epi32(em, 13);
            const __m128 fin = _mm_mul_ps(_mm_castsi128_ps(sh), _mm_set1_ps(0x1p112f));
            const __m128i infnan = _mm_or_si128(sh, _mm_set1_epi32(0x7f800000));
            const __m128i big = _mm_cmpgt_epi32(em, _mm_set1_epi32(0x7bff));
            const __m128i sel = _mm_or_si128(_mm_and_si128(big, infnan), _mm_andnot_si128(big, _mm_castps_si128(fin)));
            return vf<A>(_mm_castsi128_ps(_mm_or_si128(sel, sign)));
#endif
        }
#endif
        alignas(64) float t[W];
        for (int i = 0; i < W; ++i) t[i] = elem_to_float<A>(p + i);
        return vf<A>::load_aligned(t);
    } else {
        static_assert(std::is_same_v<T, bfloat16>, "transmla::cpu::simd: storage must be float, half or bfloat16");
#if defined(__AVX512F__)
        if constexpr (W == 16)
            return vf<A>(_mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16)));
#endif
#if defined(__AVX2__)
        if constexpr (W == 8)
            return vf<A>(_mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16)));
#endif
#if defined(__SSE2__)
        if constexpr (W == 4)
            return vf<A>(_mm_castsi128_ps(
                _mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#endif
        alignas(64) float t[W];
        for (int i = 0; i < W; ++i) t[i] = elem_to_float<A>(p + i);
        return vf<A>::load_aligned(t);
    }
}

/// The first n (< width) elements widened to f32, the other lanes zero.
template <class A, class T>
inline vf<A> load_f32_partial(const T* p, int n) noexcept {
    alignas(64) float t[width<A>] = {};
    for (int i = 0; i < n; ++i) t[i] = elem_to_float<A>(p + i);
    return vf<A>::load_aligned(t);
}

/// Converts n elements of storage type T into f32 at dst (dst may be unaligned).
template <class A, class T>
inline void convert_row(float* dst, const T* src, int n) noexcept {
    constexpr int W = width<A>;
    int i = 0;
    for (; i + W <= n; i += W) load_f32<A>(src + i).store_unaligned(dst + i);
    if (i < n) {
        for (; i < n; ++i) dst[i] = elem_to_float<A>(src + i);
    }
}

// ---- bf16 dot product ------------------------------------------------------------------------

/// True when this TU can use vdpbf16ps (AVX-512-BF16) for batches of A.
template <class A>
inline constexpr bool has_bf16_dot =
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    width<A> == 16;
#else
    false;
#endif

}  // namespace transmla::cpu::simd
