// A host emulator of the CUDA execution model, for testing the transmla CUDA kernels where no GPU
// is present. It is included (with TRANSMLA_CUDA_HOST_EMULATION defined) before the kernel
// headers, which are then compiled by the host compiler:
//
// - every CUDA thread of a block is a fiber (ucontext stacks, _setjmp/_longjmp switches; the file
//   that includes this header must not be built with _FORTIFY_SOURCE, whose longjmp check rejects
//   switching stacks); blocks run one after the other; the
//   fibers of a block are scheduled cooperatively, switching only at __syncthreads, at warp
//   shuffles and at mma, so shared memory needs no locking;
// - __syncthreads is a block barrier (__syncthreads_or also ORs a value over the block); a barrier that can never complete (threads waiting at
//   different barriers, or some finished while others wait) is reported as an error, as is a
//   block barrier reached inside divergent code;
// - __shfl_sync / __shfl_xor_sync exchange values through a warp buffer between two warp barriers;
// - mma.sync.m16n8k16 (f16 / bf16 inputs, f32 accumulation) is computed from the 32 lanes'
//   fragments following the PTX ISA fragment layout, in f32;
// - dynamic shared memory is filled with NaN bytes before each launch (a kernel that reads
//   shared memory it did not write sees NaN); "device" pointers are host pointers.
//
// It checks the kernels' indexing, tiling, masking, online softmax, split-KV merge and fragment
// bookkeeping. It does not model timing, memory ordering beyond the barriers, or the hardware's
// own behaviour: running the tests on a GPU remains the verification.
#pragma once

#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// CUDA qualifiers for the host compiler (defined before the CUDA headers, which then keep them).
#define __host__
#define __device__
#define __global__
#define __shared__ static
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#undef __launch_bounds__
#define __launch_bounds__(...)

#ifndef TRANSMLA_CUDA_HOST_EMULATION
#error "cuda_emulator.hpp: compile with TRANSMLA_CUDA_HOST_EMULATION defined (for every file of the program)"
#endif

// Built-in variables: set by the scheduler before it resumes a fiber.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};

using std::max;
using std::min;

[[noreturn]] inline void __trap() {
    std::fprintf(stderr, "cuda emulator: __trap() reached\n");
    std::abort();
}

namespace transmla_emu {

struct Fiber {
    ucontext_t ctx{};  // the first entry (on the fiber's own stack)
    jmp_buf jb{};      // later switches: _setjmp/_longjmp, no system call (swapcontext saves the signal mask)
    bool started = false, done = false;
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;
    jmp_buf main_jb{};
    int cur = -1, nthreads = 0;
    long progress = 0;  // barrier releases and finished fibers: a scheduler pass without any is a deadlock
    // block barrier
    int bar_count = 0;
    long bar_gen = 0;
    int bar_or = 0, bar_or_result = 0;  // __syncthreads_or: this generation's OR, the last result
    // warp barriers and exchange buffers
    std::vector<int> wcount;
    std::vector<long> wgen;
    std::vector<float> xfer;
    std::vector<std::uint32_t> frag;  // 6 registers per thread (mma a[4], b[2])
    std::vector<float> mma_ab;        // per warp: A (16 × 16) and B (16 × 8) as floats
    std::vector<unsigned char> dyn_smem;
    void* body = nullptr;  // the kernel call of the current launch
    void (*run_body)(void*) = nullptr;
    std::string error;
};

inline Block& block() {
    static Block b;
    return b;
}

inline unsigned char* dynamic_smem() { return block().dyn_smem.data(); }

/// From a fiber: back to the scheduler, resuming here when the scheduler switches to it again.
[[gnu::noinline]] inline void yield() {
    Block& b = block();
    if (_setjmp(b.fibers[std::size_t(b.cur)].jb) == 0) _longjmp(b.main_jb, 1);
}

inline int tid() { return int(threadIdx.x); }

inline void block_barrier() {
    Block& b = block();
    const long gen = b.bar_gen;
    if (++b.bar_count == b.nthreads) {
        b.bar_count = 0;
        ++b.bar_gen;
        ++b.progress;
        return;
    }
    while (b.bar_gen == gen) yield();
}

/// __syncthreads_or: a block barrier that returns whether any thread passed a non-zero value. The
/// result stays valid until the next barrier completes, which needs every fiber, so every fiber
/// has read it by then.
inline int block_barrier_or(int v) {
    Block& b = block();
    b.bar_or |= v != 0;
    const long gen = b.bar_gen;
    if (++b.bar_count == b.nthreads) {
        b.bar_or_result = b.bar_or;
        b.bar_or = 0;
        b.bar_count = 0;
        ++b.bar_gen;
        ++b.progress;
        return b.bar_or_result;
    }
    while (b.bar_gen == gen) yield();
    return b.bar_or_result;
}

inline void warp_barrier() {
    Block& b = block();
    const int w = tid() / 32;
    const long gen = b.wgen[std::size_t(w)];
    if (++b.wcount[std::size_t(w)] == 32) {
        b.wcount[std::size_t(w)] = 0;
        ++b.wgen[std::size_t(w)];
        ++b.progress;
        return;
    }
    while (b.wgen[std::size_t(w)] == gen) yield();
}

inline float shfl_from(float v, int src_lane) {
    Block& b = block();
    const int w = tid() / 32;
    b.xfer[std::size_t(tid())] = v;
    warp_barrier();
    const float r = b.xfer[std::size_t(w * 32 + (src_lane & 31))];
    warp_barrier();
    return r;
}

inline float bits_to_float(std::uint16_t u, const __half*) { return __half2float(__ushort_as_half(u)); }
inline float bits_to_float(std::uint16_t u, const __nv_bfloat16*) { return __bfloat162float(__ushort_as_bfloat16(u)); }

/// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 from the 32 lanes' fragments.
template <class T>
void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&bb)[2]) {
    Block& b = block();
    const int t = tid(), w = t / 32, lane = t % 32;
    std::uint32_t* mine = &b.frag[std::size_t(t) * 6];
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = bb[0];
    mine[5] = bb[1];
    warp_barrier();
    // Lane 0 assembles A (16 × 16) and B (16 × 8) of the warp from the 32 lanes' fragments.
    float* A = &b.mma_ab[std::size_t(w) * (16 * 16 + 16 * 8)];
    float* B = A + 16 * 16;
    if (lane == 0) {
        auto lo = [](std::uint32_t r) { return bits_to_float(std::uint16_t(r & 0xFFFFu), static_cast<const T*>(nullptr)); };
        auto hi = [](std::uint32_t r) { return bits_to_float(std::uint16_t(r >> 16), static_cast<const T*>(nullptr)); };
        for (int L = 0; L < 32; ++L) {
            const std::uint32_t* f = &b.frag[std::size_t(w * 32 + L) * 6];
            const int g = L / 4, q = L % 4;
            A[g * 16 + 2 * q] = lo(f[0]), A[g * 16 + 2 * q + 1] = hi(f[0]);
            A[(g + 8) * 16 + 2 * q] = lo(f[1]), A[(g + 8) * 16 + 2 * q + 1] = hi(f[1]);
            A[g * 16 + 2 * q + 8] = lo(f[2]), A[g * 16 + 2 * q + 9] = hi(f[2]);
            A[(g + 8) * 16 + 2 * q + 8] = lo(f[3]), A[(g + 8) * 16 + 2 * q + 9] = hi(f[3]);
            B[(2 * q) * 8 + g] = lo(f[4]), B[(2 * q + 1) * 8 + g] = hi(f[4]);
            B[(2 * q + 8) * 8 + g] = lo(f[5]), B[(2 * q + 9) * 8 + g] = hi(f[5]);
        }
    }
    warp_barrier();
    // Each lane's accumulators: rows g, g, g+8, g+8 and columns 2q, 2q+1, 2q, 2q+1.
    const int g = lane / 4, q = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    for (int e = 0; e < 4; ++e) {
        float s = c[e];
        for (int k = 0; k < 16; ++k) s = std::fma(A[rows[e] * 16 + k], B[k * 8 + cols[e]], s);
        c[e] = s;
    }
    warp_barrier();  // A and B of this warp may be overwritten by its next mma only after every lane read them
}

inline void fiber_entry() {
    Block& b = block();
    b.run_body(b.body);
    b.fibers[std::size_t(b.cur)].done = true;
    ++b.progress;
    _longjmp(b.main_jb, 1);  // never resumed
}

/// From the scheduler: runs fiber i until it yields or finishes.
[[gnu::noinline]] inline void resume(int i) {
    Block& b = block();
    Fiber& f = b.fibers[std::size_t(i)];
    if (_setjmp(b.main_jb) == 0) {
        if (!f.started) {
            f.started = true;
            setcontext(&f.ctx);
        }
        _longjmp(f.jb, 1);
    }
}

/// Runs kernel(args...) over the grid, block after block, its threads as fibers.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 blk, std::size_t smem, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "emulated launch: wrong number of kernel arguments");
    if (blk.y != 1 || blk.z != 1 || blk.x % 32 != 0 || blk.x > 1024)
        throw std::runtime_error("cuda emulator: blocks must be 1-D with a multiple of 32 threads");
    std::tuple<std::decay_t<P>...> params(static_cast<P>(std::forward<A>(args))...);
    struct Call {
        void (*k)(P...);
        std::tuple<std::decay_t<P>...>* params;
    } call{kernel, &params};
    Block& b = block();
    b.body = &call;
    b.run_body = [](void* c) {
        auto* cl = static_cast<Call*>(c);
        std::apply(cl->k, *cl->params);
    };
    const int n = int(blk.x);
    constexpr std::size_t stack_bytes = 256 * 1024;
    b.nthreads = n;
    b.fibers.assign(std::size_t(n), Fiber{});
    if (b.stacks.size() < std::size_t(n)) b.stacks.resize(std::size_t(n));
    for (auto& s : b.stacks)
        if (!s) s.reset(new char[stack_bytes]);
    b.wcount.assign(std::size_t(n / 32), 0);
    b.wgen.assign(std::size_t(n / 32), 0);
    b.xfer.assign(std::size_t(n), 0.f);
    b.frag.assign(std::size_t(n) * 6, 0u);
    b.mma_ab.assign(std::size_t(n / 32) * (16 * 16 + 16 * 8), 0.f);
    gridDim = grid;
    blockDim = blk;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = uint3{x, y, z};
                b.dyn_smem.assign(smem + 16, 0xFF);  // NaN bytes: reading unwritten shared memory shows
                b.bar_count = 0;
                b.bar_or = 0;
                for (int i = 0; i < n; ++i) {
                    Fiber& f = b.fibers[std::size_t(i)];
                    f.done = false;
                    f.started = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = b.stacks[std::size_t(i)].get();
                    f.ctx.uc_stack.ss_size = stack_bytes;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_entry, 0);
                }
                int live = n;
                while (live > 0) {
                    const long before = b.progress;
                    for (int i = 0; i < n; ++i) {
                        if (b.fibers[std::size_t(i)].done) continue;
                        b.cur = i;
                        threadIdx = uint3{unsigned(i), 0, 0};
                        resume(i);
                        if (b.fibers[std::size_t(i)].done) --live;
                    }
                    if (live > 0 && b.progress == before)
                        throw std::runtime_error("cuda emulator: deadlock in block (" + std::to_string(x) + ", " +
                                                 std::to_string(y) + ", " + std::to_string(z) +
                                                 "): threads wait at barriers that cannot complete");
                    if (live > 0 && live < n && b.bar_count > 0)
                        throw std::runtime_error("cuda emulator: __syncthreads reached while some threads of the "
                                                 "block had already exited");
                }
            }
    b.cur = -1;
}

}  // namespace transmla_emu

inline void __syncthreads() { transmla_emu::block_barrier(); }
inline int __syncthreads_or(int v) { return transmla_emu::block_barrier_or(v); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    return transmla_emu::shfl_from(v, transmla_emu::tid() % 32 ^ lane_mask);
}
inline float __shfl_sync(unsigned, float v, int src_lane) { return transmla_emu::shfl_from(v, src_lane); }
