// transmla/cuda/mla_prefill.cuh — naive-order MLA prefill on CUDA: decompress every cached token
// per head on tensor cores (`[k_nope_i | v_i] = W_UKV^i c`, a GEMM of the cache rows with kv_b),
// append the shared RoPE key to every head's key, then run attention_prefill with qk width
// nope_dim + rope_dim and v width v_dim. Semantics: transmla::reference::mla_naive; arguments:
// MlaPrefillParams in transmla/cuda/api.hpp. The decompressed keys and values are rounded to the
// storage type (they live in the workspace).
#pragma once

#include "transmla/cuda/prefill.cuh"

#include <cstdint>

namespace transmla::cuda {
namespace detail {

/// out = cache[:, :rank] · kv_bᵀ, scattered per head into K [S][H][dn + dr] (columns < dn) and
/// V [S][H][dv]. Block: 64 tokens × 64 output columns, 4 warps × 16 tokens, k-steps of 32.
template <class T>
__global__ void __launch_bounds__(128)
    mla_decompress_kernel(const T* __restrict__ cache, std::int64_t cache_stride, const T* __restrict__ kv_b, int S,
                          int H, int r, int dn, int dr, int dv, T* __restrict__ K, T* __restrict__ V) {
    constexpr int BM = 64, BN = 64, BK = 32, P = BK + 8;
    __shared__ __align__(16) T a_s[BM][P];
    __shared__ __align__(16) T b_s[BN][P];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t4 = lane % 4;
    const std::int64_t s0 = std::int64_t(blockIdx.x) * BM;
    const int o0 = blockIdx.y * BN, O = H * (dn + dv);
    float c[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;

    for (int k0 = 0; k0 < r; k0 += BK) {
        __syncthreads();
        for (int i = tid; i < BM * (BK / 8); i += blockDim.x) {
            const int row = i / (BK / 8), col = (i % (BK / 8)) * 8;
            uint4 x = make_uint4(0, 0, 0, 0), y = x;
            if (s0 + row < S && k0 + col < r) x = *reinterpret_cast<const uint4*>(cache + (s0 + row) * cache_stride + k0 + col);
            if (o0 + row < O && k0 + col < r) y = *reinterpret_cast<const uint4*>(kv_b + std::int64_t(o0 + row) * r + k0 + col);
            *reinterpret_cast<uint4*>(&a_s[row][col]) = x;
            *reinterpret_cast<uint4*>(&b_s[row][col]) = y;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            const int ar = warp * 16 + g;
            const std::uint32_t a[4] = {*reinterpret_cast<const std::uint32_t*>(&a_s[ar][kk + 2 * t4]),
                                        *reinterpret_cast<const std::uint32_t*>(&a_s[ar + 8][kk + 2 * t4]),
                                        *reinterpret_cast<const std::uint32_t*>(&a_s[ar][kk + 2 * t4 + 8]),
                                        *reinterpret_cast<const std::uint32_t*>(&a_s[ar + 8][kk + 2 * t4 + 8])};
#pragma unroll
            for (int n = 0; n < BN / 8; ++n) {
                const std::uint32_t b[2] = {*reinterpret_cast<const std::uint32_t*>(&b_s[n * 8 + g][kk + 2 * t4]),
                                            *reinterpret_cast<const std::uint32_t*>(&b_s[n * 8 + g][kk + 2 * t4 + 8])};
                mma_16816<T>(c[n], a, b);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const std::int64_t s = s0 + warp * 16 + g + 8 * (e / 2);
            const int o = o0 + n * 8 + 2 * t4 + (e % 2);
            if (s >= S || o >= O) continue;
            const int head = o / (dn + dv), j = o % (dn + dv);
            if (j < dn) K[(s * H + head) * (dn + dr) + j] = from_f32<T>(c[n][e]);
            else V[(s * H + head) * dv + (j - dn)] = from_f32<T>(c[n][e]);
        }
}

/// K[s][h][dn + e] = cache[s][r + e]: the shared RoPE key appended to every head's key.
template <class T>
__global__ void mla_rope_key_kernel(const T* __restrict__ cache, std::int64_t cache_stride, int S, int H, int r, int dn,
                                    int dr, T* __restrict__ K) {
    const std::int64_t n = std::int64_t(S) * H * dr;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t e = i % dr, sh = i / dr, s = sh / H;
        K[sh * (dn + dr) + dn + e] = cache[s * cache_stride + r + e];
    }
}

}  // namespace detail

template <class T>
void mla_naive_prefill(const MlaPrefillParams<T>& p, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
    static_assert(is_cuda_storage_v<T>, "transmla::cuda::mla_naive_prefill: T must be __half or __nv_bfloat16");
    constexpr const char* where = "cuda::mla_naive_prefill";
    require(p.q_len >= 0 && p.kv_len >= 0 && p.heads >= 1 && p.rank > 0 && p.rope_dim >= 0 && p.nope_dim > 0 &&
                p.v_dim > 0,
            where, ": bad shape q_len=", p.q_len, " kv_len=", p.kv_len, " heads=", p.heads, " rank=", p.rank,
            " rope_dim=", p.rope_dim, " nope_dim=", p.nope_dim, " v_dim=", p.v_dim);
    const int qk = p.nope_dim + p.rope_dim;
    bool supported = false;
    for (const auto& d : prefill_dims) supported = supported || (d[0] == qk && d[1] == p.v_dim);
    require(supported, where, ": unsupported (nope_dim + rope_dim, v_dim) = (", qk, ", ", p.v_dim,
            "); compiled: ", detail::describe_dims(prefill_dims), " (prefill_dims in transmla/cuda/api.hpp)");
    require(p.rank % 8 == 0, where, ": rank (", p.rank, ") must be a multiple of 8");
    require(workspace_bytes >= mla_prefill_workspace_bytes(p) && (p.kv_len == 0 || workspace), where, ": workspace of ",
            workspace_bytes, " bytes given, ", mla_prefill_workspace_bytes(p), " needed (mla_prefill_workspace_bytes)");
    if (p.q_len == 0) return;
    T* K = static_cast<T*>(workspace);
    T* V = reinterpret_cast<T*>(static_cast<unsigned char*>(workspace) +
                                (std::size_t(p.kv_len) * p.heads * qk * sizeof(T) + 255) / 256 * 256);
    if (p.kv_len > 0) {
        require(p.cache && p.kv_b, where, ": cache and kv_b must be device pointers");
        require(detail::aligned(p.cache, 16) && detail::aligned(p.kv_b, 16) && p.cache_stride_t % 8 == 0 &&
                    detail::aligned(workspace, 16),
                where, ": cache, kv_b and workspace must be 16-byte aligned and cache_stride_t a multiple of 8");
        const int O = p.heads * (p.nope_dim + p.v_dim);
        const dim3 grid(unsigned((p.kv_len + 63) / 64), unsigned((O + 63) / 64));
        auto* decompress = detail::mla_decompress_kernel<T>;
        TRANSMLA_CUDA_LAUNCH(decompress, grid, 128, 0, stream, p.cache, p.cache_stride_t, p.kv_b, p.kv_len, p.heads,
                             p.rank, p.nope_dim, p.rope_dim, p.v_dim, K, V);
        detail::check_launch("mla_decompress_kernel");
        if (p.rope_dim > 0) {
            const std::int64_t n = std::int64_t(p.kv_len) * p.heads * p.rope_dim;
            const unsigned blocks = unsigned(std::min<std::int64_t>((n + 255) / 256, 4096));
            auto* rope_key = detail::mla_rope_key_kernel<T>;
            TRANSMLA_CUDA_LAUNCH(rope_key, blocks, 256, 0, stream, p.cache, p.cache_stride_t, p.kv_len, p.heads, p.rank,
                                 p.nope_dim, p.rope_dim, K);
            detail::check_launch("mla_rope_key_kernel");
        }
    }
    PrefillParams<T> a;
    a.q = p.q;
    a.q_stride_t = p.q_stride_t, a.q_stride_h = p.q_stride_h;
    a.k = K;
    a.k_stride_t = std::int64_t(p.heads) * qk, a.k_stride_h = qk;
    a.v = V;
    a.v_stride_t = std::int64_t(p.heads) * p.v_dim, a.v_stride_h = p.v_dim;
    a.out = p.out;
    a.out_stride_t = p.out_stride_t, a.out_stride_h = p.out_stride_h;
    a.lse = p.lse;
    a.q_len = p.q_len, a.kv_len = p.kv_len, a.n_q = p.heads, a.n_kv = p.heads, a.qk_dim = qk, a.v_dim = p.v_dim;
    a.q_offset = p.q_offset;
    a.causal = p.causal;
    a.scale = p.scale;
    attention_prefill<T>(a, stream);
}

}  // namespace transmla::cuda
