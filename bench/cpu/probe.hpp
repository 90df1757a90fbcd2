// Machine ceilings measured in the benchmark binary itself: read bandwidth, fp32 FMA peak and bf16
// dot-product peak, for a given number of threads (OpenMP). The inner loops are written with
// GCC/Clang target attributes so one binary probes the best level the CPU has.
#pragma once

#include "transmla/cpu/dispatch.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace transmla::bench {

struct Ceilings {
    double read_gbs = 0;       ///< GB/s (1e9 bytes)
    double fma_gflops = 0;     ///< fp32 FMA GFLOP/s (2 FLOP per lane)
    double bf16_gflops = 0;    ///< bf16 pair dot GFLOP/s (4 FLOP per f32 lane); = fma_gflops without AVX-512-BF16
    bool has_bf16_dot = false;
};

namespace detail {

inline double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"))) inline float fma_loop_avx2(std::int64_t iters, float seed) {
    __m256 a[12];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(seed + float(i));
    for (std::int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], x, y);
    __m256 s = a[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
    alignas(32) float t[8];
    _mm256_store_ps(t, s);
    return t[0];
}
__attribute__((target("avx512f"))) inline float fma_loop_avx512(std::int64_t iters, float seed) {
    __m512 a[16];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps(seed + float(i));
    for (std::int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 16; ++i) a[i] = _mm512_fmadd_ps(a[i], x, y);
    __m512 s = a[0];
    for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, a[i]);
    alignas(64) float t[16];
    _mm512_store_ps(t, s);
    return t[0] + t[15];
}
#if defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
__attribute__((target("avx512f,avx512bf16"))) inline float bf16_loop_avx512(std::int64_t iters, float seed) {
    __m512 a[16];
    const __m512i x = _mm512_set1_epi16(0x3f80), y = _mm512_set1_epi16(0x3380);
    for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps(seed + float(i));
    for (std::int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)x, (__m512bh)y);
    __m512 s = a[0];
    for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, a[i]);
    alignas(64) float t[16];
    _mm512_store_ps(t, s);
    return t[0] + t[15];
}
#define TRANSMLA_BENCH_HAVE_BF16_PROBE 1
#endif
__attribute__((target("avx2"))) inline float read_loop_avx2(const float* p, std::int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (std::int64_t i = 0; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    return t[0] + t[7];
}
#endif

inline float fma_loop_scalar(std::int64_t iters, float seed) {
    float a[16];
    for (int i = 0; i < 16; ++i) a[i] = seed + float(i);
    for (std::int64_t it = 0; it < iters; ++it)
        for (int i = 0; i < 16; ++i) a[i] = a[i] * 0.999999f + 1e-7f;
    float s = 0;
    for (float v : a) s += v;
    return s;
}
inline float read_loop_scalar(const float* p, std::int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (std::int64_t i = 0; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    return s0 + s1 + s2 + s3;
}

/// Runs f(thread index) on `threads` threads, returns the wall time of the slowest.
template <class F>
double timed_parallel(int threads, F&& f) {
    const double t0 = now_s();
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
    f(omp_get_thread_num());
#else
    (void)threads;
    f(0);
#endif
    return now_s() - t0;
}

}  // namespace detail

/// Measures the ceilings with `threads` threads (best of several runs).
inline Ceilings measure_ceilings(int threads) {
    Ceilings c;
    const auto f = transmla::cpu::detail::cpu_features();
    volatile float sink = 0;
    // ---- fp32 FMA peak
    {
        const std::int64_t iters = 20'000'000;
        double best = 1e30;
        const bool avx512 = f.avx512, avx2 = f.avx2 && f.fma;
        const int lanes_x_acc = avx512 ? 16 * 16 : (avx2 ? 8 * 12 : 16);
        for (int rep = 0; rep < 5; ++rep) {
            const double t = detail::timed_parallel(threads, [&](int id) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
                if (avx512) sink = detail::fma_loop_avx512(iters, float(id));
                else if (avx2) sink = detail::fma_loop_avx2(iters, float(id));
                else sink = detail::fma_loop_scalar(iters, float(id));
#else
                sink = detail::fma_loop_scalar(iters, float(id));
#endif
            });
            best = std::min(best, t);
        }
        c.fma_gflops = 2.0 * lanes_x_acc * double(iters) * threads / best * 1e-9;
    }
    // ---- bf16 dot peak
    c.bf16_gflops = c.fma_gflops;
#if defined(TRANSMLA_BENCH_HAVE_BF16_PROBE)
    if (f.avx512bf16) {
        const std::int64_t iters = 20'000'000;
        double best = 1e30;
        for (int rep = 0; rep < 3; ++rep)
            best = std::min(best, detail::timed_parallel(threads, [&](int id) { sink = detail::bf16_loop_avx512(iters, float(id)); }));
        c.bf16_gflops = 4.0 * 16 * 16 * double(iters) * threads / best * 1e-9;
        c.has_bf16_dot = true;
    }
#endif
    // ---- read bandwidth: 512 MiB, each thread sums its share
    {
        const std::int64_t n = (std::int64_t(512) << 20) / 4;
        std::unique_ptr<float[]> raw(new float[std::size_t(n + 16)]);
        float* p = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(raw.get()) + 63) & ~std::uintptr_t(63));
        detail::timed_parallel(threads, [&](int id) {  // first touch by the reading thread
            const std::int64_t a = n / threads * id, b = id == threads - 1 ? n : n / threads * (id + 1);
            for (std::int64_t i = a; i < b; ++i) p[i] = float(i & 255) * 0.5f;
        });
        double best = 1e30;
        for (int rep = 0; rep < 5; ++rep) {
            const double t = detail::timed_parallel(threads, [&](int id) {
                const std::int64_t a = n / threads * id, b = id == threads - 1 ? n : n / threads * (id + 1);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
                if (f.avx2) sink = detail::read_loop_avx2(p + a, b - a);
                else sink = detail::read_loop_scalar(p + a, b - a);
#else
                sink = detail::read_loop_scalar(p + a, b - a);
#endif
            });
            best = std::min(best, t);
        }
        c.read_gbs = double(n) * 4 / best * 1e-9;
    }
    (void)sink;
    return c;
}

}  // namespace transmla::bench
