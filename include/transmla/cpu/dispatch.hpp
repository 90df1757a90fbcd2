// transmla/cpu/dispatch.hpp — run-time instruction-set selection for the CPU kernels.
//
// How one binary runs on any x86-64 while the library stays header-only:
//  * The kernel (cpu/core.hpp) is a template on the xsimd architecture. xsimd 8 only defines the
//    batch types of the architectures the compiler targets, so an AVX-512 kernel can only be
//    instantiated in a translation unit compiled with -mavx512f (etc.).
//  * With run-time dispatch (the consumer calls `transmla_cpu_kernels(<lib>)` from
//    cpu/transmla_cpu.cmake and links <lib>; that defines TRANSMLA_CPU_DISPATCH=1), four small
//    instantiation files cpu/isa/{sse2,avx2,avx512,avx512bf16}.cpp are compiled with the matching
//    flags (none; -mavx2 -mfma -mf16c; -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c;
//    the same + -mavx512bf16), each into its own namespace (k_sse2, k_avx2, ...), and this header
//    picks the best level the CPU (cpuid) and the OS (xgetbv) support at run time.
//  * Without it, the kernels are compiled inline for the including TU's own architecture
//    (xsimd::default_arch: SSE2 by default, AVX2 with -march=haswell, ...): Isa::native.
// A call can force a level (cpu::Options::isa); forcing one the CPU lacks throws transmla::error.
// One rule: within one program, either every translation unit that includes transmla/cpu headers
// is built with dispatch (links the transmla_cpu_kernels() library, which defines
// TRANSMLA_CPU_DISPATCH=1 for it) or none is; mixing both modes gives inline functions two
// definitions (an ODR violation).
// ODR between ISA levels: each cpu/isa/*.cpp puts the kernels in its own namespace (k_sse2,
// k_avx2, ...) and every helper the kernels use is a template on the xsimd architecture, so no
// AVX-512-compiled copy of a shared inline function can be picked by the linker for an SSE2 path.
#pragma once

#include "transmla/cpu/kernel_abi.hpp"
#include "transmla/error.hpp"

#include <string_view>

#if !(defined(TRANSMLA_CPU_DISPATCH) && TRANSMLA_CPU_DISPATCH)
#include "transmla/cpu/core.hpp"
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define TRANSMLA_CPU_X86 1
#endif

namespace transmla::cpu {

/// Name of an ISA level, for messages and benchmark labels.
constexpr std::string_view isa_name(Isa i) noexcept {
    switch (i) {
        case Isa::native: return "native";
        case Isa::sse2: return "sse2";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
        case Isa::avx512bf16: return "avx512bf16";
        case Isa::best: return "best";
    }
    return "unknown";
}

/// True when this build has run-time dispatch (cpu/isa/*.cpp linked in).
constexpr bool dispatch_enabled() noexcept {
#if defined(TRANSMLA_CPU_DISPATCH) && TRANSMLA_CPU_DISPATCH
    return true;
#else
    return false;
#endif
}

namespace detail {

/// What the CPU and the OS support (cpuid + xgetbv), computed on each call (cheap, no state).
struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512 = false;  ///< F + BW + DQ + VL and the OS saves ZMM state
    bool avx512bf16 = false;
};

inline CpuFeatures cpu_features() noexcept {
    CpuFeatures f;
#if defined(TRANSMLA_CPU_X86)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
    const unsigned max_leaf = a;
    __cpuid(1, a, b, c, d);
    const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    f.fma = (c >> 12) & 1;
    f.f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    unsigned xlo = 0, xhi = 0;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    const bool os_ymm = (xlo & 0x6) == 0x6;
    const bool os_zmm = (xlo & 0xe6) == 0xe6;
    if (!os_ymm || max_leaf < 7) {
        f.fma = f.f16c = false;
        return f;
    }
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    const bool f512 = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    f.avx512 = os_zmm && f512 && dq && bw && vl && f.fma && f.f16c;
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = f.avx512 && ((a >> 5) & 1);
#endif
    return f;
}

}  // namespace detail

/// True when `i` can run on this machine in this build.
inline bool isa_supported(Isa i) noexcept {
    if constexpr (!dispatch_enabled()) return i == Isa::native || i == Isa::best;
    const auto f = detail::cpu_features();
    switch (i) {
        case Isa::native: return false;  // with dispatch, name the level
        case Isa::sse2: return true;
        case Isa::avx2: return f.avx2 && f.fma && f.f16c;
        case Isa::avx512: return f.avx512;
        case Isa::avx512bf16: return f.avx512bf16;
        case Isa::best: return true;
    }
    return false;
}

/// The level `Isa::best` resolves to.
inline Isa best_isa() noexcept {
    if constexpr (!dispatch_enabled()) return Isa::native;
    for (Isa i : {Isa::avx512bf16, Isa::avx512, Isa::avx2})
        if (isa_supported(i)) return i;
    return Isa::sse2;
}

/// Resolves `best` and checks a forced level; throws transmla::error when it cannot run here.
inline Isa resolve_isa(Isa i) {
    if (i == Isa::best) return best_isa();
    require(isa_supported(i), "transmla::cpu: instruction set '", isa_name(i), "' is not available (",
            dispatch_enabled() ? "this CPU lacks it" : "run-time dispatch is not enabled in this build: link the "
                                                       "library made by transmla_cpu_kernels()",
            "); the best here is '", isa_name(best_isa()), "'");
    return i;
}

namespace detail {

#if defined(TRANSMLA_CPU_DISPATCH) && TRANSMLA_CPU_DISPATCH
#define TRANSMLA_CPU_DECLARE_ISA(ns)                                   \
    namespace ns {                                                     \
    void attend_entry(const KvSource<float>&, const AttendJob&);       \
    void attend_entry(const KvSource<half>&, const AttendJob&);        \
    void attend_entry(const KvSource<bfloat16>&, const AttendJob&);    \
    }
TRANSMLA_CPU_DECLARE_ISA(k_sse2)
TRANSMLA_CPU_DECLARE_ISA(k_avx2)
TRANSMLA_CPU_DECLARE_ISA(k_avx512)
TRANSMLA_CPU_DECLARE_ISA(k_avx512bf16)
#undef TRANSMLA_CPU_DECLARE_ISA
#endif

/// Runs the attention kernel at the resolved level `isa`.
template <class T>
void attend(Isa isa, const KvSource<T>& src, const AttendJob& job) {
#if defined(TRANSMLA_CPU_DISPATCH) && TRANSMLA_CPU_DISPATCH
    switch (isa) {
        case Isa::avx512bf16: k_avx512bf16::attend_entry(src, job); return;
        case Isa::avx512: k_avx512::attend_entry(src, job); return;
        case Isa::avx2: k_avx2::attend_entry(src, job); return;
        case Isa::sse2: k_sse2::attend_entry(src, job); return;
        default: fail("transmla::cpu: unresolved instruction set '", isa_name(isa), "'");
    }
#else
    require(isa == Isa::native, "transmla::cpu: unresolved instruction set '", isa_name(isa), "'");
    TRANSMLA_CPU_KERNEL_NS::attend_any<xsimd::default_arch, T>(src, job);
#endif
}

}  // namespace detail
}  // namespace transmla::cpu
