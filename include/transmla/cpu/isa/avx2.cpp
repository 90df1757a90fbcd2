// transmla/cpu/isa/avx2.cpp — instantiation of the CPU attention kernels for avx2 (run-time
// dispatch, see cpu/dispatch.hpp). Compiled by transmla_cpu_kernels() with: -mavx2 -mfma -mf16c.
#define TRANSMLA_CPU_KERNEL_NS k_avx2
#include "transmla/cpu/core.hpp"

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "transmla/cpu/isa/avx2.cpp must be compiled with -mavx2 -mfma -mf16c"
#endif

namespace transmla::cpu::detail::k_avx2 {

using kernel_arch = xsimd::fma3<xsimd::avx2>;

#include "transmla/cpu/isa/entries.inc"

}  // namespace transmla::cpu::detail::k_avx2
