// The SIMD layer compiled for AVX2 + FMA + F16C (run only where the CPU has them).
#include "simd_checks.hpp"
#include "transmla/cpu/dispatch.hpp"

TEST_CASE("cpu::simd at AVX2+FMA+F16C: conversions, tails, fmadd, reductions") {
    if (!transmla::cpu::detail::cpu_features().avx2) {
        MESSAGE("skipped: this CPU has no AVX2");
        return;
    }
    transmla::test::check_simd_layer<xsimd::fma3<xsimd::avx2>>();
}
