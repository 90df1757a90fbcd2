// transmla/cpu/isa/sse2.cpp — instantiation of the CPU attention kernels for sse2 (run-time
// dispatch, see cpu/dispatch.hpp). Compiled by transmla_cpu_kernels() with: the x86-64 baseline flags (SSE2, no -mavx).
#define TRANSMLA_CPU_KERNEL_NS k_sse2
#include "transmla/cpu/core.hpp"

#if !defined(__SSE2__)
#error "transmla/cpu/isa/sse2.cpp must be compiled with the x86-64 baseline flags (SSE2, no -mavx)"
#endif

namespace transmla::cpu::detail::k_sse2 {

using kernel_arch = xsimd::sse2;

#include "transmla/cpu/isa/entries.inc"

}  // namespace transmla::cpu::detail::k_sse2
