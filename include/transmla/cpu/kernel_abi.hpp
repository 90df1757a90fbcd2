// transmla/cpu/kernel_abi.hpp — the boundary between the public CPU entry points (compiled with
// the consumer's flags) and the ISA-specific kernels (compiled once per instruction set).
//
// It holds plain data only: no xsimd type crosses it, so the ISA translation units and the
// consumer's code agree on it whatever flags each is compiled with.
//
// The one kernel: `attend` computes, for `n_rows` query rows (f32, unscaled, zero-padded to
// `q_stride`), the unnormalised online-softmax state over keys [kb, ke) of one KV source, row r
// seeing only keys j < row_end[r] (causality), with base-2 logits s_rj = qk_scale·(q_r · k_j):
//   m[r] = max_j s_rj (base 2), l[r] = Σ_j exp2(s_rj − m[r]), o[r] = Σ_j exp2(s_rj − m[r])·v_j;
// m[r] = −inf, l[r] = 0, o[r] = 0 when the row sees no key of the range, and m[r] = l[r] = NaN
// (o[r] NaN) when a logit it sees is not finite (NaN or ±inf). Keys a row does not see never
// touch it, whatever their values.
// GQA decode, GQA prefill, MLA absorbed decode/prefill and the naive MLA prefill all reduce to it.
#pragma once

#include "transmla/kv_cache.hpp"

#include <cstdint>

namespace transmla::cpu {

/// Instruction-set levels of the CPU kernels, lowest to highest. `native` is the architecture the
/// including translation unit is compiled for (used when run-time dispatch is not enabled).
enum class Isa : int { native = 0, sse2 = 1, avx2 = 2, avx512 = 3, avx512bf16 = 4, best = 100 };

namespace detail {

/// Token-major rows of keys and values of one KV head (GQA) or of the latent cache (MLA: v == k,
/// the value being the first dv columns of the key row). Token t's key row starts at
/// `k + map.token_offset(t, token_stride)`, its value row at the same offset from `v`.
template <class T>
struct KvSource {
    const T* k = nullptr;
    const T* v = nullptr;
    std::int64_t token_stride = 0;
    PageMap map{};
    std::int64_t v_token_stride = 0;
    int dk = 0;  ///< key width
    int dv = 0;  ///< value width (≤ dk when v == k)
    int n_heads = 1;               ///< KV heads read together (their rows are contiguous per token)
    std::int64_t head_stride = 0;  ///< elements between the heads of one token
};

/// One call of the attention kernel. All buffers are f32 and owned by the caller. With
/// `n_heads` > 1 in the source, rows [h·n_rows/n_heads, (h+1)·n_rows/n_heads) attend to head h.
struct AttendJob {
    /// [n_rows][q_stride], zero beyond dk, unscaled. The f32 paths multiply it by qk_scale in
    /// place; the bf16 pair-dot paths read it as it is (a bf16 query stays exact) and scale the
    /// dot products instead.
    float* q = nullptr;
    std::int64_t q_stride = 0;           ///< ≥ round_up(dk, 16)
    float qk_scale = 1.f;                ///< logit scale in base 2: scale·log2 e
    int n_rows = 0;
    const std::int64_t* row_end = nullptr;  ///< per row: keys j < row_end[r] are visible
    std::int64_t kb = 0, ke = 0;         ///< key range of this job
    int tile = 32;                       ///< keys per tile: a multiple of 16
    bool prefetch = true;                ///< software-prefetch the next tile's rows
    bool direct = true;                  ///< allow the streaming variant (≤ 4 rows per KV head)
    bool transposed = true;              ///< allow the transposed-K QK micro-kernel (≥ 8 rows per head)
    float* o = nullptr;                  ///< [n_rows][o_stride] out: unnormalised accumulators
    std::int64_t o_stride = 0;           ///< ≥ round_up(dv, 16)
    float* m = nullptr;                  ///< [n_rows] out: running max (base 2), −inf if no key
    float* l = nullptr;                  ///< [n_rows] out: softmax denominator
    float* scratch = nullptr;            ///< scratch_floats(...) floats, 64-byte aligned
};

constexpr std::int64_t round_up(std::int64_t x, std::int64_t m) noexcept { return (x + m - 1) / m * m; }

/// Floats of scratch an AttendJob needs (for any ISA).
constexpr std::int64_t scratch_floats(int dk, int dv, bool v_is_k, int n_rows, int tile, int n_heads) noexcept {
    const std::int64_t dkp = round_up(dk, 32) * n_heads, dvp = round_up(dv, 32) * n_heads;
    // K (and V) f32 tiles, scores, α; then the bf16 pair-dot path's pair-transposed key tile, the
    // query's hi and lo pairs, the value tile as key pairs and a zero row.
    return 2 * tile * dkp + (v_is_k ? 0 : tile * dvp) + std::int64_t(n_rows) * tile + round_up(n_rows, 16) +
           tile * dkp / 2 + round_up(n_rows, 16) * round_up(dk, 32) + tile * dvp / 2 +
           round_up(dk > dv ? dk : dv, 32) / 2 + 128;
}

/// Default keys per tile: about 64 KB of f32 K and V tiles (L2-resident), a multiple of 16 in
/// [16, 64]. The general kernel's AVX-512-BF16 pair-dot path (bf16 storage, ≥ 16 rows of which
/// more than 4 per KV head: MLA heads, prefill tiles; not the streaming GQA decode kernel) takes
/// 128: its tiles are bf16 pairs (half the bytes), and every tile reloads the R × dv output
/// accumulators, which 128 keys amortise (measured on a Zen 4: 128 heads × (512 + 64), 4K keys,
/// 10.0 ms at 64, 9.25 ms at 128, 9.29 ms at 256).
constexpr int default_tile(int dk, int dv, bool v_is_k, int n_heads, bool pair_dot = false, int n_rows = 0) noexcept {
    if (pair_dot && n_rows >= 16 && (v_is_k || n_rows > 4 * n_heads)) return 128;
    const std::int64_t bytes = 4 * std::int64_t(n_heads) * (round_up(dk, 16) + (v_is_k ? 0 : round_up(dv, 16)));
    const std::int64_t t = 65536 / bytes / 16 * 16;
    return int(t < 16 ? 16 : (t > 64 ? 64 : t));
}

}  // namespace detail
}  // namespace transmla::cpu
