// transmla/cuda/mla_decode.cuh — absorbed MLA decode on CUDA (the latent-space core): all heads ×
// query tokens of a sequence form the M dimension of one tensor-core tile, and one shared-memory
// load of a tile of cache rows `[c | k_pe]` serves both S = Q·Kᵀ (over all r + d_r columns) and
// O += P·V (V = the first r columns of the same rows). Split-KV with the log-sum-exp merge.
//
// Semantics: transmla::reference::mla_latent_attention; the arguments are described with
// MlaDecodeParams in transmla/cuda/api.hpp.
//
// Block: 16 query rows (row = t·heads + head) and 4 warps when heads × tokens ≤ 16, else 64 rows
// and 16 warps; 32 keys per tile, mma.sync m16n8k16. For each 16-row tile, 4 warps:
//   1. warp w computes S[:, 8w .. 8w+8) over the whole row width;
//   2. the block turns S into P with the online softmax (row statistics in shared memory);
//   3. warp w accumulates O[:, w·r/4 .. (w+1)·r/4) += P · V in registers.
#pragma once

#include "transmla/cuda/cache.cuh"

#include <cstdint>

namespace transmla::cuda {
namespace detail {

/// Shared memory of a block with RT tiles of 16 query rows.
template <int R, int DR, int RT>
struct MlaDecodeSmem {
    static constexpr int W = R + DR, WP = W + 8;  // padded rows: conflict-free fragment loads
    static constexpr int M = 16 * RT, TILE = 32, SP = TILE + 4, PP = TILE + 8;
    static constexpr std::size_t q_off = 0;
    static constexpr std::size_t kv_off = q_off + std::size_t(M) * WP * 2;
    static constexpr std::size_t s_off = kv_off + std::size_t(TILE) * WP * 2;
    static constexpr std::size_t p_off = s_off + std::size_t(M) * SP * 4;
    static constexpr std::size_t stat_off = p_off + std::size_t(M) * PP * 2;
    static constexpr std::size_t bytes = stat_off + 3 * M * 4;
};

/// RT tiles of 16 query rows per block (M = 16·RT rows), 4·RT warps: warp w works on row tile
/// w / 4; in step 1 on keys 8·(w % 4) .. + 8 of the tile, in step 3 on output dims
/// (w % 4)·r/4 .. + r/4.
template <class T, int R, int DR, int RT>
__global__ void __launch_bounds__(128 * RT)
    mla_decode_kernel(MlaDecodeParams<T> p, std::int64_t chunk, int splits, float* __restrict__ part_o,
                      float* __restrict__ part_lse) {
    using L = MlaDecodeSmem<R, DR, RT>;
    constexpr int W = L::W, WP = L::WP, TILE = L::TILE, SP = L::SP, PP = L::PP, M = L::M;
    constexpr int DW = R / 4, NT = DW / 8;  // output dims per warp, n-tiles per warp
    static_assert(W % 16 == 0 && R % 32 == 0, "mla_decode_kernel: rank must be a multiple of 32, rank + rope of 16");
    TRANSMLA_CUDA_DYNAMIC_SMEM(smem);
    T(*q_s)[WP] = reinterpret_cast<T(*)[WP]>(smem + L::q_off);
    T(*kv_s)[WP] = reinterpret_cast<T(*)[WP]>(smem + L::kv_off);
    float(*s_s)[SP] = reinterpret_cast<float(*)[SP]>(smem + L::s_off);
    T(*p_s)[PP] = reinterpret_cast<T(*)[PP]>(smem + L::p_off);
    float* m_s = reinterpret_cast<float*>(smem + L::stat_off);
    float* l_s = m_s + M;
    float* f_s = l_s + M;

    const int b = blockIdx.z, rt = blockIdx.y, split = blockIdx.x;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t4 = lane % 4;
    const int wr = (warp / 4) * 16, wq = warp % 4;  // this warp's row tile (first row) and quarter
    const int H = p.heads, rows_seq = p.q_len * H, row0 = rt * M;
    const std::int64_t len = cache_length(p.layout, b);
    std::int64_t begin, end;
    split_range(len, chunk, split, splits, begin, end);
    const float qscale = p.scale * 1.4426950408889634f;

    // Queries of the M rows (zeros past the last row), as stored.
    for (int i = tid; i < M * W / 2; i += blockDim.x) {
        const int r = i / (W / 2), c = (i % (W / 2)) * 2, lr = row0 + r;
        std::uint32_t x = 0;
        if (lr < rows_seq)
            x = *reinterpret_cast<const std::uint32_t*>(p.q + b * p.q_stride_b + (lr / H) * p.q_stride_t +
                                                         (lr % H) * p.q_stride_h + c);
        *reinterpret_cast<std::uint32_t*>(&q_s[r][c]) = x;
    }
    if (tid < M) {
        m_s[tid] = neg_inf;
        l_s[tid] = 0.f;
        f_s[tid] = 0.f;
    }
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (std::int64_t tile0 = begin; tile0 < end; tile0 += TILE) {
        const int ntok = end - tile0 < TILE ? int(end - tile0) : TILE;
        __syncthreads();  // the previous tile is consumed (and q_s, m_s, l_s are written)
        // With several query tokens, keys [seen_by_all, ntok) are past the causal end of the
        // block's first token. A non-finite value (first R columns) there would meet that row's
        // P = 0 in the tensor-core P·V (0·NaN = NaN): such a tile takes the exact path of step 3.
        const std::int64_t seen_by_all = len - p.q_len + row0 / H + 1 - tile0;
        int risky = 0;
        for (int i = tid; i < TILE * (W / 8); i += blockDim.x) {
            const int j = i / (W / 8), c = (i % (W / 8)) * 8;
            uint4 x = make_uint4(0, 0, 0, 0);  // rows past the end are zeros: P = 0 must not meet NaN
            if (j < ntok) x = *reinterpret_cast<const uint4*>(p.cache + cache_token_offset(p.layout, b, tile0 + j) + c);
            if (j >= seen_by_all && j < ntok && c < R) risky |= int(has_nonfinite<T>(x));
            *reinterpret_cast<uint4*>(&kv_s[j][c]) = x;
        }
        const bool exact_pv = __syncthreads_or(risky) != 0;  // block-uniform

        // 1. S[wr .. wr + 16, 8·wq .. 8·wq + 8) = Q · K_tileᵀ over all W columns.
        {
            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
            for (int kk = 0; kk < W; kk += 16) {
                const std::uint32_t a[4] = {*reinterpret_cast<const std::uint32_t*>(&q_s[wr + g][kk + 2 * t4]),
                                            *reinterpret_cast<const std::uint32_t*>(&q_s[wr + g + 8][kk + 2 * t4]),
                                            *reinterpret_cast<const std::uint32_t*>(&q_s[wr + g][kk + 2 * t4 + 8]),
                                            *reinterpret_cast<const std::uint32_t*>(&q_s[wr + g + 8][kk + 2 * t4 + 8])};
                const std::uint32_t bf[2] = {*reinterpret_cast<const std::uint32_t*>(&kv_s[8 * wq + g][kk + 2 * t4]),
                                             *reinterpret_cast<const std::uint32_t*>(&kv_s[8 * wq + g][kk + 2 * t4 + 8])};
                mma_16816<T>(c, a, bf);
            }
            s_s[wr + g][8 * wq + 2 * t4] = c[0];
            s_s[wr + g][8 * wq + 2 * t4 + 1] = c[1];
            s_s[wr + g + 8][8 * wq + 2 * t4] = c[2];
            s_s[wr + g + 8][8 * wq + 2 * t4 + 1] = c[3];
        }
        __syncthreads();

        // 2. Online softmax: 8 threads per row, 4 keys each.
        {
            const int r = tid / 8, c0 = (tid % 8) * 4, lr = row0 + r;
            std::int64_t key_end = 0;
            if (lr < rows_seq) {
                const std::int64_t t = lr / H, lim = len - p.q_len + t + 1;  // causal within the new tokens
                key_end = end < lim ? end : lim;
            }
            float s[4], mx = neg_inf;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[j] = (tile0 + c0 + j < key_end) ? visible_logit(s_s[r][c0 + j] * qscale) : neg_inf;
                mx = max_nan(mx, s[j]);
            }
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_old = m_s[r], m_new = max_nan(m_old, mx);
            const float f = (m_old == neg_inf) ? 0.f : exp2f(m_old - m_new);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[j] = exp2_masked(s[j], m_new);
                sum += s[j];
            }
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            *reinterpret_cast<std::uint32_t*>(&p_s[r][c0]) = pack2<T>(s[0], s[1]);
            *reinterpret_cast<std::uint32_t*>(&p_s[r][c0 + 2]) = pack2<T>(s[2], s[3]);
            if (tid % 8 == 0) {
                m_s[r] = m_new;
                l_s[r] = l_s[r] * f + sum;
                f_s[r] = f;
            }
        }
        __syncthreads();

        // 3. O[wr .. wr + 16, warp's dims] = O · f + P · V_tile.
        {
            const float f0 = f_s[wr + g], f1 = f_s[wr + g + 8];
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                acc[n][0] *= f0;
                acc[n][1] *= f0;
                acc[n][2] *= f1;
                acc[n][3] *= f1;
            }
            if (exact_pv) {
                // Rare: each lane sums its outputs over the keys its two rows see.
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int r = wr + g + 8 * hr, lr = row0 + r;
                    if (lr >= rows_seq) continue;
                    const std::int64_t lim = len - p.q_len + lr / H + 1, row_end = end < lim ? end : lim;
                    const int nvis = row_end - tile0 < ntok ? int(row_end - tile0) : ntok;
                    pv_exact(acc, hr, p_s[r], &kv_s[0][0], WP, wq * DW + 2 * t4, nvis);
                }
                continue;
            }
#pragma unroll
            for (int kk = 0; kk < TILE; kk += 16) {
                const std::uint32_t a[4] = {*reinterpret_cast<const std::uint32_t*>(&p_s[wr + g][kk + 2 * t4]),
                                            *reinterpret_cast<const std::uint32_t*>(&p_s[wr + g + 8][kk + 2 * t4]),
                                            *reinterpret_cast<const std::uint32_t*>(&p_s[wr + g][kk + 2 * t4 + 8]),
                                            *reinterpret_cast<const std::uint32_t*>(&p_s[wr + g + 8][kk + 2 * t4 + 8])};
                const int k0 = kk + 2 * t4;
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    const int col = wq * DW + n * 8 + g;
                    const std::uint32_t bf[2] = {pack_raw(kv_s[k0][col], kv_s[k0 + 1][col]),
                                                 pack_raw(kv_s[k0 + 8][col], kv_s[k0 + 9][col])};
                    mma_16816<T>(acc[n], a, bf);
                }
            }
        }
    }
    __syncthreads();  // m_s, l_s final (also when this split saw no tile at all)

    // Results: rows wr + g and wr + g + 8 of this lane, dims wq·DW + 8n + 2·t4 (+1).
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int r = wr + g + 8 * hr, lr = row0 + r;
        if (lr >= rows_seq) continue;
        const float l = l_s[r];
        const float inv = row_inv(l);
        const int t = lr / H, head = lr % H;
        const std::int64_t flat = (std::int64_t(b) * p.q_len + t) * H + head;
        if (splits == 1) {
            T* o = p.out + b * p.out_stride_b + t * p.out_stride_t + head * p.out_stride_h + wq * DW + 2 * t4;
#pragma unroll
            for (int n = 0; n < NT; ++n)
                *reinterpret_cast<std::uint32_t*>(o + n * 8) =
                    pack2<T>(acc[n][2 * hr] * inv, acc[n][2 * hr + 1] * inv);
        } else {
            float* o = part_o + (flat * splits + split) * R + wq * DW + 2 * t4;
#pragma unroll
            for (int n = 0; n < NT; ++n)
                *reinterpret_cast<float2*>(o + n * 8) = make_float2(acc[n][2 * hr] * inv, acc[n][2 * hr + 1] * inv);
        }
    }
    if (tid < M && row0 + tid < rows_seq) {
        const int lr = row0 + tid;
        const float l = l_s[tid];
        const float lse = row_lse(m_s[tid], l);
        const std::int64_t flat = (std::int64_t(b) * p.q_len + lr / H) * H + lr % H;
        if (splits == 1) {
            if (p.lse) p.lse[flat] = lse;
        } else {
            part_lse[flat * splits + split] = lse;
        }
    }
}

template <class T, int R, int DR, int RT>
void launch_mla_decode_rt(const MlaDecodeParams<T>& p, const DecodePlan& plan, float* part_o, float* part_lse,
                          cudaStream_t stream) {
    constexpr int M = 16 * RT;
    const int row_blocks = (p.q_len * p.heads + M - 1) / M;
    constexpr std::size_t smem = MlaDecodeSmem<R, DR, RT>::bytes;
    auto* kernel = mla_decode_kernel<T, R, DR, RT>;
    set_smem(kernel, smem, "mla_decode_kernel");
    const dim3 grid(unsigned(plan.splits), unsigned(row_blocks), unsigned(p.batch));
    TRANSMLA_CUDA_LAUNCH(kernel, grid, 128 * RT, smem, stream, p, plan.chunk, plan.splits, part_o, part_lse);
    check_launch("mla_decode_kernel");
}

template <class T, int R, int DR>
void launch_mla_decode(const MlaDecodeParams<T>& p, const DecodePlan& plan, float* part_o, float* part_lse,
                       cudaStream_t stream) {
    // 16 rows (heads × tokens) per block when they fit, else 64 (one tile load serves 64 rows) where
    // the device has the shared memory for it (not on the 99 KiB parts, e.g. sm_86 / sm_89).
    if (mla_dec_block_rows(p.q_len, p.heads) == 64 && max_smem_optin() >= MlaDecodeSmem<R, DR, 4>::bytes)
        launch_mla_decode_rt<T, R, DR, 4>(p, plan, part_o, part_lse, stream);
    else
        launch_mla_decode_rt<T, R, DR, 1>(p, plan, part_o, part_lse, stream);
    if (plan.splits > 1)
        merge_partials<T>(part_o, part_lse, plan.rows, plan.splits, R,
                          RowOut<T>{p.out, p.out_stride_b, p.out_stride_t, p.out_stride_h, p.q_len, p.heads}, p.lse,
                          stream);
}

}  // namespace detail

template <class T>
void mla_decode(const MlaDecodeParams<T>& p, const DecodePlan& plan, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream) {
    static_assert(is_cuda_storage_v<T>, "transmla::cuda::mla_decode: T must be __half or __nv_bfloat16");
    constexpr const char* where = "cuda::mla_decode";
    require(p.batch >= 0 && p.q_len >= 1 && p.heads >= 1 && p.rank > 0 && p.rope_dim >= 0, where, ": bad shape batch=",
            p.batch, " q_len=", p.q_len, " heads=", p.heads, " rank=", p.rank, " rope_dim=", p.rope_dim);
    require(plan.batch == p.batch && plan.rows == std::int64_t(p.batch) * p.q_len * p.heads && plan.dv == p.rank, where,
            ": the plan was made for another problem (batch ", plan.batch, ", rows ", plan.rows, ", dv ", plan.dv, ")");
    require(workspace_bytes >= plan.workspace_bytes() && (plan.workspace_bytes() == 0 || workspace != nullptr), where,
            ": workspace of ", workspace_bytes, " bytes given, the plan needs ", plan.workspace_bytes());
    if (p.batch == 0) return;
    require(p.q && p.cache && p.out, where, ": q, cache and out must be device pointers (got a null one)");
    require(detail::aligned(p.cache, 16), where, ": the cache must be 16-byte aligned");
    require(detail::aligned(p.q, 4) && detail::aligned(p.out, 4) &&
                (p.q_stride_b | p.q_stride_t | p.q_stride_h | p.out_stride_b | p.out_stride_t | p.out_stride_h) % 2 == 0,
            where, ": q and out must be 4-byte aligned with even strides");
    p.layout.check(where, p.batch);
    float* part_o = static_cast<float*>(workspace);
    float* part_lse = part_o ? part_o + plan.rows * plan.splits * plan.dv : nullptr;
    const bool done = detail::dispatch_dim_pair<mla_decode_dims>(p.rank, p.rope_dim, [&](auto r, auto dr) {
        detail::launch_mla_decode<T, decltype(r)::value, decltype(dr)::value>(p, plan, part_o, part_lse, stream);
    });
    require(done, where, ": unsupported (rank, rope_dim) = (", p.rank, ", ", p.rope_dim, "); compiled: ",
            detail::describe_dims(mla_decode_dims), " (extend mla_decode_dims in transmla/cuda/api.hpp)");
}

}  // namespace transmla::cuda
