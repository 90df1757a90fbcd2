// transmla/cuda/common.cuh — device helpers every CUDA kernel of transmla shares: conversions of
// the 16-bit storage types (__half, __nv_bfloat16: the bits of transmla::half / transmla::bfloat16),
// warp reductions, the tensor-core mma.sync wrapper and the merge of split-KV partial results.
// Device code never includes Eigen or xsimd.
#pragma once

#include "transmla/cuda/api.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

// Kernel launches and dynamic shared memory go through these macros so that the tests can also
// run every kernel on a host emulator of the CUDA execution model (tests/cuda/emulation, built
// with TRANSMLA_CUDA_HOST_EMULATION defined; never defined in a real build).
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
#define TRANSMLA_CUDA_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ((void)(stream), ::transmla_emu::launch(kernel, grid, block, smem, __VA_ARGS__))
#define TRANSMLA_CUDA_DYNAMIC_SMEM(name) unsigned char* name = ::transmla_emu::dynamic_smem()
#else
#define TRANSMLA_CUDA_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define TRANSMLA_CUDA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace transmla::cuda::detail {

constexpr int warp_size = 32;

/// Shared memory one block of the current device may use (with the opt-in attribute), in bytes.
inline std::size_t max_smem_optin() {
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
    return std::size_t(1) << 20;
#else
    int dev = 0, n = 0;
    TRANSMLA_CUDA_CHECK(cudaGetDevice(&dev));
    TRANSMLA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return std::size_t(n);
#endif
}

/// Raises a kernel's dynamic shared memory limit when it needs more than the default 48 KiB.
template <class Kernel>
void set_smem(Kernel* k, std::size_t bytes, const char* name) {
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
    (void)k, (void)bytes, (void)name;
#else
    if (bytes <= 48 * 1024) return;
    const cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        fail("transmla::cuda: ", name, " needs ", bytes, " bytes of shared memory per block, more than this device ",
             "allows (", cudaGetErrorString(e), ")");
    }
#endif
}
constexpr float neg_inf = -__builtin_huge_valf();

__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(float x) { return x; }

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }

/// Two consecutive storage elements (at an even, 4-byte aligned address) as floats.
__device__ __forceinline__ float2 load2_f32(const __half* p) {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ float2 load2_f32(const __nv_bfloat16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

/// Packs two floats into one 32-bit register of two storage elements (lo in the low half).
template <class T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ std::uint32_t pack2<__half>(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
}
template <>
__device__ __forceinline__ std::uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&h);
}

/// Packs two storage elements (lo in the low half) into one register without conversion.
__device__ __forceinline__ std::uint32_t pack_raw(__half lo, __half hi) {
    return std::uint32_t(__half_as_ushort(lo)) | (std::uint32_t(__half_as_ushort(hi)) << 16);
}
__device__ __forceinline__ std::uint32_t pack_raw(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return std::uint32_t(__bfloat16_as_ushort(lo)) | (std::uint32_t(__bfloat16_as_ushort(hi)) << 16);
}

/// Maximum that keeps NaN (fmaxf drops it: a NaN logit would vanish from its row's maximum and
/// the row would come out finite, or as a row without keys, where reference/ gives NaN).
__device__ __forceinline__ float max_nan(float a, float b) { return a != a ? a : b != b ? b : fmaxf(a, b); }

/// A logit its row sees: itself when finite, else NaN. −inf marks a masked key in the kernels, so
/// a visible −inf (from −Inf in q or k) must not pass for one; ±Inf and NaN poison the row (out
/// and lse NaN), as in reference/.
__device__ __forceinline__ float visible_logit(float s) { return fabsf(s) < -neg_inf ? s : s - s; }

/// Whether any of the 8 storage elements in x is ±Inf or NaN (all exponent bits set).
template <class T>
__device__ __forceinline__ bool has_nonfinite(uint4 x) {
    constexpr std::uint32_t e = std::is_same_v<T, __half> ? 0x7C00u : 0x7F80u;
    const std::uint32_t w[4] = {x.x, x.y, x.z, x.w};
    bool bad = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) bad = bad || (w[i] & e) == e || ((w[i] >> 16) & e) == e;
    return bad;
}

/// The exact P·V of a tile on CUDA cores, for one of a lane's two fragment rows (hr): acc[n][2hr],
/// acc[n][2hr + 1] += Σ_{j < nvis} p_row[j] · v[j·v_stride + col0 + 8n + {0, 1}]. Used where the
/// tensor cores would meet 0·NaN: keys past the row's end (j ≥ nvis) are never read.
template <int N, class T>
__device__ __forceinline__ void pv_exact(float (&acc)[N][4], int hr, const T* p_row, const T* v, int v_stride,
                                         int col0, int nvis) {
    for (int j = 0; j < nvis; ++j) {
        const float pj = to_f32(p_row[j]);
        const T* vj = v + std::int64_t(j) * v_stride + col0;
#pragma unroll
        for (int n = 0; n < N; ++n) {
            acc[n][2 * hr] = fmaf(pj, to_f32(vj[n * 8]), acc[n][2 * hr]);
            acc[n][2 * hr + 1] = fmaf(pj, to_f32(vj[n * 8 + 1]), acc[n][2 * hr + 1]);
        }
    }
}

/// 1/l of a finished row: 0 for a row without keys (l = 0), NaN stays NaN.
__device__ __forceinline__ float row_inv(float l) { return l == 0.f ? 0.f : 1.f / l; }

/// Natural-log lse of a finished row from its base-2 maximum and sum: −inf without keys.
__device__ __forceinline__ float row_lse(float m2, float l) {
    return l == 0.f ? neg_inf : (m2 + log2f(l)) * 0.6931471805599453f;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = max_nan(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/// exp2(s − m) that is 0 for a masked logit s = −inf (also when m = −inf).
__device__ __forceinline__ float exp2_masked(float s, float m) { return s == neg_inf ? 0.f : exp2f(s - m); }

/// D = A·B + C on tensor cores, one m16n8k16 tile with f32 accumulation (sm_80+).
/// Fragment layout (PTX ISA, per lane: g = lane / 4, t = lane % 4):
///   a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
///   b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]      (B is k × n)
///   c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1]
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same_v<T, __half>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#elif defined(TRANSMLA_CUDA_HOST_EMULATION)
    ::transmla_emu::mma_16816<T>(c, a, b);
#else
    // Only sm_80 and newer are supported (the build targets sm_80 and sm_90a): never reached there.
    (void)c;
    (void)a;
    (void)b;
    __trap();
#endif
}

/// Where the rows of a decode output live: row `(b, t, h)` (flattened as `(b·q_len + t)·heads + h`)
/// starts at `ptr + b·stride_b + t·stride_t + h·stride_h`; the innermost dim is unit-stride.
template <class T>
struct RowOut {
    T* ptr = nullptr;
    std::int64_t stride_b = 0, stride_t = 0, stride_h = 0;
    int q_len = 1, heads = 1;

    __host__ __device__ T* row(std::int64_t flat) const {
        const std::int64_t h = flat % heads, bt = flat / heads;
        return ptr + (bt / q_len) * stride_b + (bt % q_len) * stride_t + h * stride_h;
    }
};

/// Merges `splits` finished partial results per row: partial o `[rows][splits][dv]` (f32) and
/// lse `[rows][splits]` (natural log, −inf for an empty partial) into `out` and `lse_out [rows]`
/// (may be null). One block per row; NaN-safe on empty partials (a row with no key gets 0, −inf);
/// a NaN partial (a non-finite logit in its split) makes the whole row NaN.
template <class To>
__global__ void merge_partials_kernel(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                                      int splits, int dv, RowOut<To> out, float* __restrict__ lse_out) {
    const std::int64_t row = blockIdx.x;
    const float* pl = part_lse + row * splits;
    float m = neg_inf;
    for (int s = 0; s < splits; ++s) m = max_nan(m, pl[s]);
    float wsum = 0.f;
    for (int s = 0; s < splits; ++s) wsum += (pl[s] == neg_inf) ? 0.f : expf(pl[s] - m);
    const float inv = row_inv(wsum);
    To* o = out.row(row);
    const float* po = part_o + row * splits * dv;
    for (int e = threadIdx.x; e < dv; e += blockDim.x) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s)
            if (pl[s] != neg_inf) acc += expf(pl[s] - m) * po[std::int64_t(s) * dv + e];
        o[e] = from_f32<To>(acc * inv);
    }
    if (threadIdx.x == 0 && lse_out) lse_out[row] = wsum == 0.f ? neg_inf : m + logf(wsum);
}

/// Launches merge_partials_kernel over `rows` rows.
template <class To>
void merge_partials(const float* part_o, const float* part_lse, std::int64_t rows, int splits, int dv,
                    const RowOut<To>& out, float* lse_out, cudaStream_t stream) {
    if (rows == 0) return;
    auto* kernel = merge_partials_kernel<To>;
    TRANSMLA_CUDA_LAUNCH(kernel, unsigned(rows), 128, 0, stream, part_o, part_lse, splits, dv, out, lse_out);
    check_launch("merge_partials_kernel");
}

}  // namespace transmla::cuda::detail
