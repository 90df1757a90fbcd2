// transmla/cpu/isa/sse2.cpp — instantiation of the CPU attention kernels for sse2 (run-time
// dispatch, see cpu/dispatch.hpp). Compiled by transmla_cpu_kernels() with: the x86-64 baseline flags (SSE2, no -mavx).
#define TRANSMLA_CPU_KERNEL_NS k_sse2
#include "transmla/cpu/core.hpp"

#if !defined(__SSE2__)
#error "transmla/cpu/isa/sse2.cpp must be compiled with the x86-64 baseline flags (SSE2, no -mavx)"
#endif

namespace transmla::cpu::detail::k_sse2 {

using kernel_arch = xsimd::sse2;

void attend_entry(const KvSource<float>&, const AttendJob&);
void attend_entry(const KvSource<half>&, const AttendJob&);
void attend_entry(const KvSource<bfloat16>&, const AttendJob&);

void attend_entry(const KvSource<float>& s, const AttendJob& j) { attend_any<kernel_arch, float>(s, j); }
void attend_entry(const KvSource<half>& s, const AttendJob& j) { attend_any<kernel_arch, half>(s, j); }
void attend_entry(const KvSource<bfloat16>& s, const AttendJob& j) { attend_any<kernel_arch, bfloat16>(s, j); }

}  // namespace transmla::cpu::detail::k_sse2
