// transmla/cuda/gqa_decode.cuh — GQA decode attention on CUDA: a batch of sequences with 1…8 new
// query tokens each, against contiguous or paged K/V caches, f16 or bf16 storage, f32
// accumulation, split-KV with a log-sum-exp merge kernel.
//
// Semantics (as transmla::reference::gqa_decode): the q_len query tokens of sequence b are its
// last q_len cached tokens, so query t sits at position len_b − q_len + t and sees keys
// [0, len_b − q_len + t]. Query head i reads KV head i / (n_q / n_kv). Outputs `out` (storage
// type) and the natural-log `lse` (f32); a row that sees no key gets 0 and −inf.
//
// Kernel: one block per (split, KV head, tile of 16 query rows of that KV head, sequence). A
// tile of 32 keys and values is staged in shared memory once and serves every query row of the
// group (the rows that share the KV head): lane j scores key j, the warp reduces max and sum
// with shuffles, and each lane accumulates its own output dims. Online softmax in base 2.
#pragma once

#include "transmla/cuda/cache.cuh"

#include <cstdint>

namespace transmla::cuda {

namespace detail {

template <class T, int D>
__global__ void __launch_bounds__(128)
    gqa_decode_kernel(GqaDecodeParams<T> p, int group, int row_tiles, std::int64_t chunk, int splits,
                      float* __restrict__ part_o, float* __restrict__ part_lse) {
    static_assert(D % 64 == 0, "gqa_decode_kernel: head dim must be a multiple of 64");
    constexpr int TILE = 32, PAIRS = D / 64, KP = D + 2;  // K rows padded: conflict-free column reads
    __shared__ float q_s[gqa_dec_rows][D];
    __shared__ __align__(16) T k_s[TILE][KP];
    __shared__ __align__(16) T v_s[TILE][D];

    const int b = blockIdx.z, h = blockIdx.y / row_tiles, rt = blockIdx.y % row_tiles, split = blockIdx.x;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int rows_seq = p.q_len * group, row0 = rt * gqa_dec_rows;
    const std::int64_t len = cache_length(p.layout, b);
    std::int64_t begin, end;
    split_range(len, chunk, split, splits, begin, end);
    const float qscale = p.scale * 1.4426950408889634f;  // fold log2(e): softmax in base 2

    // Queries of this block's rows, pre-scaled, as f32. Local row lr = t·group + j ↔ head h·group + j.
    for (int i = tid; i < gqa_dec_rows * D / 2; i += 128) {
        const int r = i / (D / 2), c = (i % (D / 2)) * 2, lr = row0 + r;
        float2 x = make_float2(0.f, 0.f);
        if (lr < rows_seq) {
            const int t = lr / group, head = h * group + lr % group;
            x = load2_f32(p.q + b * p.q_stride_b + t * p.q_stride_t + head * p.q_stride_h + c);
        }
        q_s[r][c] = x.x * qscale;
        q_s[r][c + 1] = x.y * qscale;
    }

    float m[4], l[4];
    float2 acc[4][PAIRS];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = neg_inf;
        l[i] = 0.f;
#pragma unroll
        for (int pi = 0; pi < PAIRS; ++pi) acc[i][pi] = make_float2(0.f, 0.f);
    }

    // K/V tiles are prefetched into registers one tile ahead: the loads of tile i + 1 are in flight
    // while tile i is scored and accumulated. Thread `tid` moves chunks tid + 128·j (8 elements each).
    constexpr int NT = 128, CHUNKS = TILE * D / 8, PER = CHUNKS / NT;
    static_assert(CHUNKS % NT == 0, "gqa_decode_kernel: a tile must split evenly over the threads");
    uint4 kreg[PER], vreg[PER];
    auto fetch = [&](std::int64_t t0) {
        const int n = end - t0 < TILE ? int(end - t0) : TILE;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = tid + NT * j, tok = i / (D / 8), c = (i % (D / 8)) * 8;
            kreg[j] = vreg[j] = make_uint4(0, 0, 0, 0);  // keys/values past the end are zeros: p = 0 must not meet NaN
            if (tok < n) {
                const std::int64_t o = cache_token_offset(p.layout, b, t0 + tok) + h * p.head_stride + c;
                kreg[j] = *reinterpret_cast<const uint4*>(p.k + o);
                vreg[j] = *reinterpret_cast<const uint4*>(p.v + o);
            }
        }
    };
    if (begin < end) fetch(begin);

    for (std::int64_t tile0 = begin; tile0 < end; tile0 += TILE) {
        const int ntok = end - tile0 < TILE ? int(end - tile0) : TILE;
        __syncthreads();  // previous tile fully consumed (and q_s written, on the first pass)
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            const int i = tid + NT * j, tok = i / (D / 8), c = (i % (D / 8)) * 8;
            auto* kd = reinterpret_cast<std::uint32_t*>(&k_s[tok][c]);
            kd[0] = kreg[j].x;
            kd[1] = kreg[j].y;
            kd[2] = kreg[j].z;
            kd[3] = kreg[j].w;
            *reinterpret_cast<uint4*>(&v_s[tok][c]) = vreg[j];
        }
        __syncthreads();
        if (tile0 + TILE < end) fetch(tile0 + TILE);

#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = warp + 4 * i, lr = row0 + r;
            if (lr >= rows_seq) continue;  // warp-uniform
            const std::int64_t t = lr / group;
            const std::int64_t key_end = min(end, len - p.q_len + t + 1);  // causal within the new tokens
            const std::int64_t key = tile0 + lane;
            float s = 0.f;
#pragma unroll 8
            for (int c = 0; c < D; c += 2) {
                const float2 kf = load2_f32(&k_s[lane][c]);
                s = fmaf(q_s[r][c], kf.x, s);
                s = fmaf(q_s[r][c + 1], kf.y, s);
            }
            s = key < key_end ? visible_logit(s) : neg_inf;
            const float m_new = max_nan(m[i], warp_max(s));
            if (m_new == neg_inf) continue;  // nothing visible yet (warp-uniform)
            const float f = (m[i] == neg_inf) ? 0.f : exp2f(m[i] - m_new);
            const float pj = exp2_masked(s, m_new);
            l[i] = l[i] * f + warp_sum(pj);
            m[i] = m_new;
#pragma unroll
            for (int pi = 0; pi < PAIRS; ++pi) {
                acc[i][pi].x *= f;
                acc[i][pi].y *= f;
            }
            // only the keys this row sees: 0·v would turn a NaN value past its causal end into NaN
            const int nvis = key_end - tile0 < ntok ? int(key_end - tile0) : ntok;
            for (int j = 0; j < nvis; ++j) {
                const float w = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
                for (int pi = 0; pi < PAIRS; ++pi) {
                    const float2 vf = load2_f32(&v_s[j][pi * 64 + 2 * lane]);
                    acc[i][pi].x = fmaf(w, vf.x, acc[i][pi].x);
                    acc[i][pi].y = fmaf(w, vf.y, acc[i][pi].y);
                }
            }
        }
    }

    // Results: final rows when there is one split, else f32 partials for the merge kernel.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = warp + 4 * i, lr = row0 + r;
        if (lr >= rows_seq) continue;
        const int t = lr / group, head = h * group + lr % group;
        const float inv = row_inv(l[i]);
        const float lse = row_lse(m[i], l[i]);
        const std::int64_t flat = (std::int64_t(b) * p.q_len + t) * p.n_q + head;
        if (splits == 1) {
            T* o = p.out + b * p.out_stride_b + t * p.out_stride_t + head * p.out_stride_h;
#pragma unroll
            for (int pi = 0; pi < PAIRS; ++pi)
                *reinterpret_cast<std::uint32_t*>(o + pi * 64 + 2 * lane) =
                    pack2<T>(acc[i][pi].x * inv, acc[i][pi].y * inv);
            if (lane == 0 && p.lse) p.lse[flat] = lse;
        } else {
            float* o = part_o + (flat * splits + split) * D;
#pragma unroll
            for (int pi = 0; pi < PAIRS; ++pi)
                *reinterpret_cast<float2*>(o + pi * 64 + 2 * lane) = make_float2(acc[i][pi].x * inv, acc[i][pi].y * inv);
            if (lane == 0) part_lse[flat * splits + split] = lse;
        }
    }
}

template <class T, int D>
void launch_gqa_decode(const GqaDecodeParams<T>& p, const DecodePlan& plan, float* part_o, float* part_lse,
                       cudaStream_t stream) {
    const int group = p.n_q / p.n_kv;
    const int row_tiles = (p.q_len * group + gqa_dec_rows - 1) / gqa_dec_rows;
    const dim3 grid(unsigned(plan.splits), unsigned(p.n_kv * row_tiles), unsigned(p.batch));
    auto* kernel = gqa_decode_kernel<T, D>;
    TRANSMLA_CUDA_LAUNCH(kernel, grid, 128, 0, stream, p, group, row_tiles, plan.chunk, plan.splits, part_o, part_lse);
    check_launch("gqa_decode_kernel");
    if (plan.splits > 1)
        merge_partials<T>(part_o, part_lse, plan.rows, plan.splits, D,
                          RowOut<T>{p.out, p.out_stride_b, p.out_stride_t, p.out_stride_h, p.q_len, p.n_q}, p.lse,
                          stream);
}

}  // namespace detail

/// Runs GQA decode attention (see the file comment). `workspace` must hold
/// plan.workspace_bytes() bytes of device memory (it may be null when that is 0). Asynchronous on
/// `stream`; throws transmla::error on bad arguments, an unsupported head dim or a failed launch.
template <class T>
void gqa_decode(const GqaDecodeParams<T>& p, const DecodePlan& plan, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream) {
    static_assert(is_cuda_storage_v<T>, "transmla::cuda::gqa_decode: T must be __half or __nv_bfloat16");
    constexpr const char* where = "cuda::gqa_decode";
    require(p.batch >= 0 && p.q_len >= 1 && p.n_kv >= 1 && p.n_q >= 1 && p.n_q % p.n_kv == 0, where,
            ": bad shape batch=", p.batch, " q_len=", p.q_len, " n_q=", p.n_q, " n_kv=", p.n_kv,
            " (n_q must be a multiple of n_kv)");
    require(plan.batch == p.batch && plan.rows == std::int64_t(p.batch) * p.q_len * p.n_q && plan.dv == p.head_dim,
            where, ": the plan was made for another problem (batch ", plan.batch, ", rows ", plan.rows, ", dv ",
            plan.dv, ")");
    require(workspace_bytes >= plan.workspace_bytes() && (plan.workspace_bytes() == 0 || workspace != nullptr), where,
            ": workspace of ", workspace_bytes, " bytes given, the plan needs ", plan.workspace_bytes());
    if (p.batch == 0) return;
    require(p.q && p.k && p.v && p.out, where, ": q, k, v and out must be device pointers (got a null one)");
    require(detail::aligned(p.k, 16) && detail::aligned(p.v, 16) && p.head_stride % 8 == 0, where,
            ": k and v must be 16-byte aligned and head_stride (", p.head_stride, ") a multiple of 8");
    require(detail::aligned(p.q, 4) && detail::aligned(p.out, 4) &&
                (p.q_stride_b | p.q_stride_t | p.q_stride_h | p.out_stride_b | p.out_stride_t | p.out_stride_h) % 2 == 0,
            where, ": q and out must be 4-byte aligned with even strides");
    p.layout.check(where, p.batch);
    float* part_o = static_cast<float*>(workspace);
    float* part_lse = part_o ? part_o + plan.rows * plan.splits * plan.dv : nullptr;
    const bool done = detail::dispatch_dim<gqa_decode_head_dims>(p.head_dim, [&](auto d) {
        detail::launch_gqa_decode<T, decltype(d)::value>(p, plan, part_o, part_lse, stream);
    });
    require(done, where, ": unsupported head_dim ", p.head_dim, "; compiled head dims: ",
            detail::describe_dims(gqa_decode_head_dims), " (extend gqa_decode_head_dims in transmla/cuda/api.hpp)");
}

}  // namespace transmla::cuda
