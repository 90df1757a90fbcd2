// Helpers of the CPU backend tests: random caches (contiguous or paged), reference runs in double,
// comparisons with NaN-proof errors, and the list of ISA levels this machine can run.
#pragma once

#include "nonfinite_check.hpp"
#include "test_util.hpp"
#include "transmla/cpu/cpu.hpp"
#include "transmla/reference/reference.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace transmla::test {

/// Every ISA level this build and CPU can run (forced one by one by the tests).
inline std::vector<cpu::Isa> runnable_isas() {
    std::vector<cpu::Isa> v;
    if (!cpu::dispatch_enabled()) return {cpu::Isa::native};
    for (auto i : {cpu::Isa::sse2, cpu::Isa::avx2, cpu::Isa::avx512, cpu::Isa::avx512bf16})
        if (cpu::isa_supported(i)) v.push_back(i);
    return v;
}

/// Tolerance of a kernel result whose inputs are exactly representable (the reference reads the
/// same stored values): f32 accumulation and the output rounding of To. The same on every ISA
/// level: the AVX-512-BF16 pair dot product keeps the query exact (bf16 hi + lo parts), so it
/// gets no allowance of its own (test_accuracy.cpp holds the tighter per-kernel table).
template <class To, class Tkv>
double kernel_tolerance(cpu::Isa) {
    const double t = 3e-5;
    return std::max(t, std::is_same_v<To, float> ? 0.0 : tolerance<To>());
}

/// A GQA cache of one sequence in either layout; owns its storage.
template <class T>
struct TestGqaCache {
    std::vector<T> k, v;                   // contiguous [S][n_kv][d] (the values)
    std::unique_ptr<PagedGqaCache<T>> paged;
    std::int64_t seq = 0;
    GqaSeqView<T> view;

    TestGqaCache(int n_kv, int d, std::int64_t S, bool use_pages, std::int64_t page_size) {
        k = random_vector<T>(std::size_t(S) * n_kv * d);
        v = random_vector<T>(std::size_t(S) * n_kv * d);
        if (!use_pages) {
            const std::int64_t ts = std::int64_t(n_kv) * d;
            view = {k.data(), v.data(), n_kv, d, S, ts, d, PageMap{}};
            return;
        }
        // A pool with spare pages, appended in two steps so pages are not in order.
        const std::int64_t pages = (S + page_size - 1) / page_size + 3;
        paged = std::make_unique<PagedGqaCache<T>>(n_kv, d, pages, page_size);
        const std::int64_t dummy = paged->add_sequence();
        seq = paged->add_sequence();
        const std::int64_t half_len = S / 2;
        auto app = [&](std::int64_t s, std::int64_t t0, std::int64_t n) {
            if (n <= 0) return;
            View3<const T> kk(k.data() + t0 * n_kv * d, {n, n_kv, d});
            View3<const T> vv(v.data() + t0 * n_kv * d, {n, n_kv, d});
            paged->append(s, kk, vv);
        };
        app(seq, 0, half_len);
        app(dummy, 0, std::min<std::int64_t>(S, page_size));  // interleave another sequence's page
        app(seq, half_len, S - half_len);
        view = paged->view(seq);
    }
};

/// An MLA cache of one sequence in either layout.
template <class T>
struct TestMlaCache {
    std::vector<T> rows;
    std::unique_ptr<PagedMlaCache<T>> paged;
    MlaSeqView<T> view;

    TestMlaCache(int r, int dr, std::int64_t S, bool use_pages, std::int64_t page_size) {
        rows = random_vector<T>(std::size_t(S) * (r + dr));
        if (!use_pages) {
            view = {rows.data(), r, dr, S, r + dr, PageMap{}};
            return;
        }
        const std::int64_t pages = (S + page_size - 1) / page_size + 2;
        paged = std::make_unique<PagedMlaCache<T>>(r, dr, pages, page_size);
        const std::int64_t dummy = paged->add_sequence();
        const std::int64_t seq = paged->add_sequence();
        auto app = [&](std::int64_t s, std::int64_t t0, std::int64_t n) {
            if (n <= 0) return;
            paged->append(s, View2<const T>(rows.data() + t0 * (r + dr), {n, r + dr}));
        };
        app(seq, 0, S / 3);
        app(dummy, 0, 1);
        app(seq, S / 3, S - S / 3);
        view = paged->view(seq);
    }
};

}  // namespace transmla::test
