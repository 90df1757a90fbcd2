// Shared test helpers: fresh random inputs per run (seed printed on failure, TRANSMLA_SEED to
// reproduce), tolerances per storage type and NaN-proof comparisons against double references.
#pragma once

#include "transmla/types.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace transmla::test {

/// The run's base seed: $TRANSMLA_SEED if set, else fresh from std::random_device.
inline std::uint64_t base_seed() {
    static const std::uint64_t s = [] {
        if (const char* e = std::getenv("TRANSMLA_SEED")) return std::uint64_t(std::strtoull(e, nullptr, 10));
        std::random_device rd;
        return (std::uint64_t(rd()) << 32) ^ rd();
    }();
    return s;
}

namespace detail {
inline std::mt19937_64& engine() {
    static thread_local std::mt19937_64 g(base_seed());
    return g;
}
/// Called at each test case start: the stream depends on the base seed and the test name only.
inline void reseed(const char* name) {
    std::uint64_t h = 1469598103934665603ull;
    for (const char* p = name; *p; ++p) h = (h ^ std::uint64_t(static_cast<unsigned char>(*p))) * 1099511628211ull;
    engine().seed(base_seed() ^ h);
}
}  // namespace detail

/// The current test case's random engine.
inline std::mt19937_64& rng() { return detail::engine(); }

inline double normal(double sd = 1.0) { return std::normal_distribution<double>(0.0, sd)(rng()); }
inline double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng()); }
inline std::int64_t uniform_int(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng());
}

/// n normal samples (never all zero), rounded to T.
template <class T>
std::vector<T> random_vector(std::size_t n, double sd = 1.0) {
    std::vector<T> v(n);
    for (auto& x : v) {
        if constexpr (std::is_same_v<T, double>) x = normal(sd);
        else x = from_double<T>(normal(sd));
    }
    return v;
}

/// Relative tolerance of a kernel whose inputs are stored as T and that accumulates in f32.
template <class T>
constexpr double tolerance() {
    if constexpr (std::is_same_v<T, float>) return 2e-5;
    else if constexpr (std::is_same_v<T, half>) return 2e-3;
    else if constexpr (std::is_same_v<T, bfloat16>) return 1.6e-2;
    else return 1e-12;
}

/// Normwise relative error max|a − e| / max|e|; +inf when any a is NaN or infinite where e is
/// finite, so NaN never passes.
template <class A, class E>
double rel_error(std::span<const A> a, std::span<const E> e) {
    if (a.size() != e.size()) return std::numeric_limits<double>::infinity();
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double ai = to_double(a[i]), ei = to_double(e[i]);
        if (!std::isfinite(ai) && std::isfinite(ei)) return std::numeric_limits<double>::infinity();
        if (std::isnan(ai) || std::isnan(ei)) return std::numeric_limits<double>::infinity();
        if (std::isinf(ei)) {
            if (ai != ei) return std::numeric_limits<double>::infinity();
            continue;
        }
        num = std::max(num, std::abs(ai - ei));
        den = std::max(den, std::abs(ei));
    }
    return den > 0 ? num / den : num;
}
template <class A, class E>
double rel_error(const std::vector<A>& a, const std::vector<E>& e) {
    return rel_error(std::span<const A>(a), std::span<const E>(e));
}

}  // namespace transmla::test

/// CHECK that the relative error of `actual` against `expected` is at most `tol`, printing it.
#define TRANSMLA_CHECK_CLOSE(actual, expected, tol)                                        \
    do {                                                                                   \
        const double transmla_err_ = ::transmla::test::rel_error((actual), (expected));    \
        INFO("relative error " << transmla_err_ << " (tolerance " << (tol) << ")");       \
        CHECK(transmla_err_ <= (tol));                                                     \
    } while (0)
