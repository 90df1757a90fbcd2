// The SIMD layer at the test's own (baseline) architecture: on x86-64 that is SSE2, whose f16
// widening is the integer bit trick (no F16C).
#include "simd_checks.hpp"

TEST_CASE("cpu::simd at the baseline architecture: conversions, tails, fmadd, reductions") {
    INFO("arch " << xsimd::default_arch::name());
    transmla::test::check_simd_layer<xsimd::default_arch>();
}
