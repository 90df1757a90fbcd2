// transmla/cuda/prefill.cuh — tiled prefill attention on tensor cores (mma.sync m16n8k16, f32
// accumulation), causal or full, GQA head mapping, qk width may differ from v width (MLA naive
// prefill uses (128 + 64, 128)). Semantics: transmla::reference::gqa_attention with
// Causal{q_offset}; arguments: PrefillParams in transmla/cuda/api.hpp.
//
// Block: 4 warps × 16 query rows of one head = 64 rows; 64 keys per tile staged in shared memory.
// Each warp computes its S = Q·Kᵀ (16 × 64) in registers, runs the online softmax on it (row
// statistics shared by the 4 lanes of a quad), turns S directly into the A fragments of P and
// accumulates O += P·V in registers. Blocks with the most keys (last query rows) start first.
#pragma once

#include "transmla/cuda/common.cuh"

#include <cstdint>

namespace transmla::cuda {
namespace detail {

template <int DQK, int DV>
struct PrefillSmem {
    static constexpr int BM = 64, BN = 64, QP = DQK + 8, VP = DV + 8;  // padded rows: conflict-free fragments
    static constexpr std::size_t q_off = 0;
    static constexpr std::size_t k_off = q_off + std::size_t(BM) * QP * 2;
    static constexpr std::size_t v_off = k_off + std::size_t(BN) * QP * 2;
    static constexpr std::size_t bytes = v_off + std::size_t(BN) * VP * 2;
};

template <class T, int DQK, int DV>
__global__ void __launch_bounds__(128) prefill_kernel(PrefillParams<T> p, std::int64_t q_offset) {
    using L = PrefillSmem<DQK, DV>;
    constexpr int BM = L::BM, BN = L::BN, QP = L::QP, VP = L::VP, NS = BN / 8, NO = DV / 8;
    static_assert(DQK % 16 == 0 && DV % 16 == 0, "prefill_kernel: head dims must be multiples of 16");
    TRANSMLA_CUDA_DYNAMIC_SMEM(smem);
    T(*q_s)[QP] = reinterpret_cast<T(*)[QP]>(smem + L::q_off);
    T(*k_s)[QP] = reinterpret_cast<T(*)[QP]>(smem + L::k_off);
    T(*v_s)[VP] = reinterpret_cast<T(*)[VP]>(smem + L::v_off);

    const int qb = int(gridDim.x) - 1 - int(blockIdx.x);  // heaviest (causal) blocks first
    const int head = blockIdx.y, kvh = head / (p.n_q / p.n_kv);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t4 = lane % 4;
    const std::int64_t row0 = std::int64_t(qb) * BM;
    const float qscale = p.scale * 1.4426950408889634f;

    for (int i = tid; i < BM * (DQK / 8); i += blockDim.x) {
        const int r = i / (DQK / 8), c = (i % (DQK / 8)) * 8;
        uint4 x = make_uint4(0, 0, 0, 0);
        if (row0 + r < p.q_len) x = *reinterpret_cast<const uint4*>(p.q + (row0 + r) * p.q_stride_t + head * p.q_stride_h + c);
        *reinterpret_cast<uint4*>(&q_s[r][c]) = x;
    }

    // Keys this block needs: up to the last query row's position (causal) or all.
    std::int64_t kv_end = p.kv_len;
    if (p.causal) {
        const std::int64_t last_row = min(row0 + BM, std::int64_t(p.q_len)) - 1;
        kv_end = min(kv_end, q_offset + last_row + 1);
    }
    const std::int64_t qrow[2] = {row0 + warp * 16 + g, row0 + warp * 16 + g + 8};

    float m[2] = {neg_inf, neg_inf}, l[2] = {0.f, 0.f};
    float acc[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (std::int64_t tile0 = 0; tile0 < kv_end; tile0 += BN) {
        const int ntok = kv_end - tile0 < BN ? int(kv_end - tile0) : BN;
        __syncthreads();  // previous tile consumed (and q_s written, on the first pass)
        for (int i = tid; i < BN * (DQK / 8); i += blockDim.x) {
            const int j = i / (DQK / 8), c = (i % (DQK / 8)) * 8;
            uint4 x = make_uint4(0, 0, 0, 0);  // keys past the end are zeros (P = 0 must not meet NaN)
            if (j < ntok) x = *reinterpret_cast<const uint4*>(p.k + (tile0 + j) * p.k_stride_t + kvh * p.k_stride_h + c);
            *reinterpret_cast<uint4*>(&k_s[j][c]) = x;
        }
        // Keys [seen_by_all, ntok) of the tile are past some row's causal end. A non-finite value
        // there would meet that row's P = 0 in the tensor-core P·V (0·NaN = NaN) and poison a row
        // that never sees it: such a tile takes the exact path below.
        const std::int64_t seen_by_all = p.causal ? q_offset + row0 + 1 - tile0 : std::int64_t(ntok);
        int risky = 0;
        for (int i = tid; i < BN * (DV / 8); i += blockDim.x) {
            const int j = i / (DV / 8), c = (i % (DV / 8)) * 8;
            uint4 x = make_uint4(0, 0, 0, 0);
            if (j < ntok) x = *reinterpret_cast<const uint4*>(p.v + (tile0 + j) * p.v_stride_t + kvh * p.v_stride_h + c);
            if (j >= seen_by_all && j < ntok) risky |= int(has_nonfinite<T>(x));
            *reinterpret_cast<uint4*>(&v_s[j][c]) = x;
        }
        const bool exact_pv = __syncthreads_or(risky) != 0;  // block-uniform

        // S = Q · K_tileᵀ for this warp's 16 rows.
        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        const int qr = warp * 16 + g;
#pragma unroll 2
        for (int kk = 0; kk < DQK; kk += 16) {
            const std::uint32_t a[4] = {*reinterpret_cast<const std::uint32_t*>(&q_s[qr][kk + 2 * t4]),
                                        *reinterpret_cast<const std::uint32_t*>(&q_s[qr + 8][kk + 2 * t4]),
                                        *reinterpret_cast<const std::uint32_t*>(&q_s[qr][kk + 2 * t4 + 8]),
                                        *reinterpret_cast<const std::uint32_t*>(&q_s[qr + 8][kk + 2 * t4 + 8])};
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                const std::uint32_t b[2] = {*reinterpret_cast<const std::uint32_t*>(&k_s[n * 8 + g][kk + 2 * t4]),
                                            *reinterpret_cast<const std::uint32_t*>(&k_s[n * 8 + g][kk + 2 * t4 + 8])};
                mma_16816<T>(s[n], a, b);
            }
        }

        // Scale, mask, online softmax. Lane holds rows g (s[n][0..1]) and g + 8 (s[n][2..3]).
        float mx[2] = {neg_inf, neg_inf};
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int hr = e / 2;
                const std::int64_t key = tile0 + n * 8 + 2 * t4 + (e % 2);
                const bool ok = key < kv_end && qrow[hr] < p.q_len && (!p.causal || key <= q_offset + qrow[hr]);
                s[n][e] = ok ? visible_logit(s[n][e] * qscale) : neg_inf;
                mx[hr] = max_nan(mx[hr], s[n][e]);
            }
        float f[2];
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            mx[hr] = max_nan(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
            mx[hr] = max_nan(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
            const float m_new = max_nan(m[hr], mx[hr]);
            f[hr] = (m[hr] == neg_inf) ? 0.f : exp2f(m[hr] - m_new);
            m[hr] = m_new;
            l[hr] *= f[hr];
        }
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2_masked(s[n][e], m[e / 2]);
                l[e / 2] += s[n][e];  // this lane's part of the row sum; the quad is summed at the end
            }
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            acc[n][0] *= f[0];
            acc[n][1] *= f[0];
            acc[n][2] *= f[1];
            acc[n][3] *= f[1];
        }

        if (exact_pv) {
            // Rare (a non-finite value in a key some row does not see): P, rounded to T as the
            // tensor cores would see it, goes through shared memory (the K tile is consumed), and
            // each lane sums its outputs over the keys its two rows see.
            static_assert(QP >= BN, "prefill_kernel: the P tile reuses the K tile");
            __syncthreads();  // every warp is done with k_s
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                k_s[qr][n * 8 + 2 * t4] = from_f32<T>(s[n][0]);
                k_s[qr][n * 8 + 2 * t4 + 1] = from_f32<T>(s[n][1]);
                k_s[qr + 8][n * 8 + 2 * t4] = from_f32<T>(s[n][2]);
                k_s[qr + 8][n * 8 + 2 * t4 + 1] = from_f32<T>(s[n][3]);
            }
            __syncthreads();
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                if (qrow[hr] >= p.q_len) continue;
                const std::int64_t row_end = p.causal ? min(kv_end, q_offset + qrow[hr] + 1) : kv_end;
                const int nvis = row_end - tile0 < ntok ? int(row_end - tile0) : ntok;
                pv_exact(acc, hr, k_s[qr + 8 * hr], &v_s[0][0], VP, 2 * t4, nvis);
            }
            continue;
        }

        // O += P · V_tile: the S accumulators of key tiles 2kk and 2kk+1 are P's A fragment.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            const std::uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                        pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                        pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const int k0 = kk * 16 + 2 * t4;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const int col = n * 8 + g;
                const std::uint32_t b[2] = {pack_raw(v_s[k0][col], v_s[k0 + 1][col]),
                                            pack_raw(v_s[k0 + 8][col], v_s[k0 + 9][col])};
                mma_16816<T>(acc[n], a, b);
            }
        }
    }

#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
        if (qrow[hr] >= p.q_len) continue;
        const float inv = row_inv(l[hr]);
        T* o = p.out + qrow[hr] * p.out_stride_t + head * p.out_stride_h + 2 * t4;
#pragma unroll
        for (int n = 0; n < NO; ++n)
            *reinterpret_cast<std::uint32_t*>(o + n * 8) = pack2<T>(acc[n][2 * hr] * inv, acc[n][2 * hr + 1] * inv);
        if (t4 == 0 && p.lse)
            p.lse[qrow[hr] * p.n_q + head] = row_lse(m[hr], l[hr]);
    }
}

template <class T, int DQK, int DV>
void launch_prefill(const PrefillParams<T>& p, std::int64_t q_offset, cudaStream_t stream) {
    constexpr std::size_t smem = PrefillSmem<DQK, DV>::bytes;
    set_smem(prefill_kernel<T, DQK, DV>, smem, "prefill_kernel");
    const dim3 grid(unsigned((p.q_len + PrefillSmem<DQK, DV>::BM - 1) / PrefillSmem<DQK, DV>::BM), unsigned(p.n_q));
    auto* kernel = prefill_kernel<T, DQK, DV>;
    TRANSMLA_CUDA_LAUNCH(kernel, grid, 128, smem, stream, p, q_offset);
    check_launch("prefill_kernel");
}

}  // namespace detail

template <class T>
void attention_prefill(const PrefillParams<T>& p, cudaStream_t stream) {
    static_assert(is_cuda_storage_v<T>, "transmla::cuda::attention_prefill: T must be __half or __nv_bfloat16");
    constexpr const char* where = "cuda::attention_prefill";
    require(p.q_len >= 0 && p.kv_len >= 0 && p.n_q >= 1 && p.n_kv >= 1 && p.n_q % p.n_kv == 0, where,
            ": bad shape q_len=", p.q_len, " kv_len=", p.kv_len, " n_q=", p.n_q, " n_kv=", p.n_kv,
            " (n_q must be a multiple of n_kv)");
    const std::int64_t q_offset = p.q_offset < 0 ? std::int64_t(p.kv_len) - p.q_len : p.q_offset;
    require(!p.causal || q_offset >= 0, where, ": causal prefill of ", p.q_len, " queries needs at least as many keys (",
            p.kv_len, ") or an explicit q_offset");
    if (p.q_len == 0) return;
    require(p.q && p.out && (p.kv_len == 0 || (p.k && p.v)), where, ": q, k, v and out must be device pointers");
    require(detail::aligned(p.q, 16) && detail::aligned(p.k, 16) && detail::aligned(p.v, 16) &&
                (p.q_stride_t | p.q_stride_h | p.k_stride_t | p.k_stride_h | p.v_stride_t | p.v_stride_h) % 8 == 0,
            where, ": q, k and v must be 16-byte aligned with strides that are multiples of 8 elements");
    require(detail::aligned(p.out, 4) && (p.out_stride_t | p.out_stride_h) % 2 == 0, where,
            ": out must be 4-byte aligned with even strides");
    const bool done = detail::dispatch_dim_pair<prefill_dims>(p.qk_dim, p.v_dim, [&](auto dqk, auto dv) {
        detail::launch_prefill<T, decltype(dqk)::value, decltype(dv)::value>(p, q_offset, stream);
    });
    require(done, where, ": unsupported (qk_dim, v_dim) = (", p.qk_dim, ", ", p.v_dim, "); compiled: ",
            detail::describe_dims(prefill_dims), " (extend prefill_dims in transmla/cuda/api.hpp)");
}

}  // namespace transmla::cuda
