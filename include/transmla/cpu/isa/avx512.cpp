// transmla/cpu/isa/avx512.cpp — instantiation of the CPU attention kernels for avx512 (run-time
// dispatch, see cpu/dispatch.hpp). Compiled by transmla_cpu_kernels() with: -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c.
// GCC 12 reports its own _mm512_undefined_* intrinsics as "maybe uninitialized" (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define TRANSMLA_CPU_KERNEL_NS k_avx512
#include "transmla/cpu/core.hpp"

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__) || !defined(__FMA__) || !defined(__F16C__)
#error "transmla/cpu/isa/avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c"
#endif

namespace transmla::cpu::detail::k_avx512 {

using kernel_arch = xsimd::avx512bw;

#include "transmla/cpu/isa/entries.inc"

}  // namespace transmla::cpu::detail::k_avx512
