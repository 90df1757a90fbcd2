// NaN and Inf in attention inputs, shared by the CPU and CUDA kernel tests: where a bad value goes
// (Spot), and the comparison of a kernel result with reference/ that requires the same NaN rows
// (lse) and NaN elements and is within tolerance elsewhere; lse_error compares lse vectors.
#pragma once

#include "test_util.hpp"

#include <cmath>
#include <cstddef>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace transmla::test {

/// Max |a − e| over entries, treating matching infinities as equal; +inf on NaN.
inline double lse_error(const std::vector<float>& a, const std::vector<double>& e) {
    if (a.size() != e.size()) return std::numeric_limits<double>::infinity();
    double err = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) || std::isnan(e[i])) return std::numeric_limits<double>::infinity();
        if (std::isinf(e[i]) || std::isinf(a[i])) {
            if (double(a[i]) != e[i]) return std::numeric_limits<double>::infinity();
            continue;
        }
        err = std::max(err, std::abs(double(a[i]) - e[i]));
    }
    return err;
}

inline constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
inline constexpr double inf_v = std::numeric_limits<double>::infinity();

/// Where the bad value goes.
enum class Spot { q_nan, q_inf, k_nan, k_neg_inf, k_rope_inf, inf_times_zero, v_nan };

inline const char* spot_name(Spot s) {
    switch (s) {
        case Spot::q_nan: return "NaN in a query";
        case Spot::q_inf: return "+Inf in a query";
        case Spot::k_nan: return "NaN in a key";
        case Spot::k_neg_inf: return "-Inf in a key";
        case Spot::k_rope_inf: return "+Inf in a key's RoPE part";
        case Spot::inf_times_zero: return "Inf in a key times a zero query element";
        case Spot::v_nan: return "NaN in a value";
    }
    return "?";
}

template <class T>
void put(const T* p, double x) {
    *const_cast<T*>(p) = from_double<T>(x);  // the caches' storage is not const, only the views
}

/// Compares a kernel result with the reference, row by row: the same NaN rows (lse) and NaN
/// elements, and within tolerance elsewhere.
template <class To>
void check_like_reference(const std::vector<To>& out, const std::vector<float>& lse, const std::vector<double>& ref,
                          const std::vector<double>& ref_lse, double tol, const std::string& what) {
    INFO(what);
    const std::size_t rows = lse.size(), width = out.size() / rows;
    REQUIRE(ref.size() == out.size());
    std::vector<double> got_f, ref_f;
    std::vector<float> got_l;
    std::vector<double> ref_l;
    std::size_t bad_rows = 0, mismatches = 0;
    std::ostringstream first;
    for (std::size_t r = 0; r < rows; ++r) {
        const bool ref_nan = std::isnan(ref_lse[r]);
        bool row_bad = false, ref_row_nan = ref_nan;
        if (std::isnan(lse[r]) != ref_nan) row_bad = true;
        for (std::size_t e = 0; e < width; ++e) {
            const double a = to_double(out[r * width + e]), x = ref[r * width + e];
            if (std::isnan(a) != std::isnan(x)) row_bad = true;
            if (std::isnan(x)) {
                ref_row_nan = true;  // (a NaN value leaves the lse finite)
                continue;
            }
            got_f.push_back(a);
            ref_f.push_back(x);
        }
        bad_rows += ref_row_nan;
        if (!ref_nan) {
            got_l.push_back(lse[r]);
            ref_l.push_back(ref_lse[r]);
        }
        if (row_bad && mismatches++ == 0)
            first << "row " << r << ": lse " << lse[r] << " (reference " << ref_lse[r] << "), out[0] "
                  << to_double(out[r * width]) << " (reference " << ref[r * width] << ")";
    }
    INFO("first NaN-pattern mismatch: " << first.str());
    CHECK(mismatches == 0);
    CHECK(bad_rows > 0);  // the bad value reached some row (else the case tests nothing)
    TRANSMLA_CHECK_CLOSE(got_f, ref_f, tol);
    const double le = lse_error(got_l, ref_l);
    INFO("lse error " << le);
    CHECK(le <= 20 * tol);
}

}  // namespace transmla::test
