// transmla/cuda/api.hpp — the host side of the CUDA backend: argument structs, plans and the
// declarations of the launch functions, in plain C++ (no CUDA compiler needed to include it).
//
// A `.cpp` file compiled by the host compiler can include this header and call the launch
// functions; their definitions (and the kernels) are in the `.cuh` headers, which one `.cu` file
// of the program includes and instantiates explicitly, e.g.
//     #include "transmla/cuda/gqa_decode.cuh"
//     template void transmla::cuda::gqa_decode<__half>(const GqaDecodeParams<__half>&, const DecodePlan&,
//                                                      void*, std::size_t, cudaStream_t);
// or a `.cu` file includes the `.cuh` headers and calls them directly.
//
// Conventions (those of transmla/kv_cache.hpp and transmla/reference/): all pointers are device
// pointers, strides are in elements, the innermost dim is unit-stride. GQA caches are
// `[token][kv_head][head_dim]` for K and for V; MLA caches hold one row `[latent (r) | rope (d_r)]`
// per token, V being the first r columns; paged caches use a FlashInfer CSR page table and pages
// laid out `[page][token in page][...]`. Storage is `__half` or `__nv_bfloat16` (the bits of
// transmla::half / transmla::bfloat16), accumulation f32. Every call returns `out` in the storage
// type and the natural-log `lse` in f32 (−inf, with a zero output row, where a query sees no key).
// Launches are asynchronous on the given stream; bad arguments, unsupported dims and failed
// launches throw transmla::error.
#pragma once

#include "transmla/error.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

/// Checks a CUDA runtime call; throws transmla::error naming the call, file and line.
#define TRANSMLA_CUDA_CHECK(call)                                                                  \
    do {                                                                                           \
        const cudaError_t transmla_cuda_err_ = (call);                                             \
        if (transmla_cuda_err_ != cudaSuccess)                                                     \
            ::transmla::fail("CUDA error ", cudaGetErrorName(transmla_cuda_err_), " (",            \
                             cudaGetErrorString(transmla_cuda_err_), ") in ", #call, " at ",       \
                             __FILE__, ":", __LINE__);                                             \
    } while (0)

namespace transmla::cuda {

/// Storage types the CUDA kernels accept.
template <class T>
inline constexpr bool is_cuda_storage_v = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

/// Name of a CUDA storage type, for messages and benchmark labels.
template <class T>
constexpr const char* cuda_type_name() noexcept {
    if constexpr (std::is_same_v<T, __half>) return "f16";
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bf16";
    else return "unsupported";
}

namespace detail {

/// Throws when the last kernel launch failed (bad configuration, too much shared memory, ...).
inline void check_launch(const char* kernel) {
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
    (void)kernel;  // the host emulator of the tests ran the kernel synchronously
#else
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        fail("transmla::cuda: launch of ", kernel, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
             ")");
#endif
}

/// Multiprocessor count of the current device.
inline int sm_count() {
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
    return 4;  // the tests' host emulator: a small device, few blocks
#else
    int dev = 0, n = 0;
    TRANSMLA_CUDA_CHECK(cudaGetDevice(&dev));
    TRANSMLA_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
#endif
}

inline bool aligned(const void* ptr, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0; }

// Run-time → compile-time dispatch over the lists of compiled dims below (the one place that says
// what is instantiated): f receives std::integral_constant arguments.

/// Calls f(integral_constant<int, List[i]>) for the entry equal to x; false when there is none.
template <const auto& List, std::size_t I = 0, class F>
bool dispatch_dim(int x, F&& f) {
    if constexpr (I < std::extent_v<std::remove_reference_t<decltype(List)>>) {
        if (x == List[I]) {
            f(std::integral_constant<int, List[I]>{});
            return true;
        }
        return dispatch_dim<List, I + 1>(x, std::forward<F>(f));
    } else {
        return false;
    }
}
/// Calls f(integral_constant<List[i][0]>, integral_constant<List[i][1]>) for the pair (x, y).
template <const auto& List, std::size_t I = 0, class F>
bool dispatch_dim_pair(int x, int y, F&& f) {
    if constexpr (I < std::extent_v<std::remove_reference_t<decltype(List)>>) {
        if (x == List[I][0] && y == List[I][1]) {
            f(std::integral_constant<int, List[I][0]>{}, std::integral_constant<int, List[I][1]>{});
            return true;
        }
        return dispatch_dim_pair<List, I + 1>(x, y, std::forward<F>(f));
    } else {
        return false;
    }
}
/// "64, 128" or "(512, 64), (128, 64)": a list of compiled dims for error messages.
template <class List>
std::string describe_dims(const List& list) {
    std::ostringstream os;
    const char* sep = "";
    for (const auto& e : list) {
        os << sep;
        sep = ", ";
        if constexpr (std::is_array_v<std::remove_reference_t<decltype(e)>>) os << '(' << e[0] << ", " << e[1] << ')';
        else os << e;
    }
    return os.str();
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Caches and decode plans
// ------------------------------------------------------------------------------------------------

/// Token addressing of a batch of sequences in a contiguous or a paged cache (device pointers; a
/// null `indices` means contiguous).
/// Contiguous: sequence b's token t starts at `b·seq_stride + t·token_stride`, its length is
///   `seq_lens[b]`.
/// Paged: sequence b owns pages `indices[indptr[b] .. indptr[b+1])`, its last page holds
///   `last_page_len[b]` tokens; token t is in page `indices[indptr[b] + t / page_size]` at slot
///   `t % page_size`, i.e. at `page·page_stride + slot·token_stride`.
struct CacheLayout {
    std::int64_t token_stride = 0;  ///< elements between consecutive tokens (within a page)
    // contiguous
    std::int64_t seq_stride = 0;             ///< elements between token 0 of consecutive sequences
    const std::int32_t* seq_lens = nullptr;  ///< [batch] tokens per sequence
    // paged
    const std::int32_t* indptr = nullptr;         ///< [batch + 1]
    const std::int32_t* indices = nullptr;        ///< [indptr[batch]] page numbers
    const std::int32_t* last_page_len = nullptr;  ///< [batch]
    std::int64_t page_size = 0;                   ///< tokens per page
    std::int64_t page_stride = 0;                 ///< elements between consecutive pages

    bool paged() const noexcept { return indices != nullptr; }

    /// Throws transmla::error when the layout cannot be used (rows are read as 16-byte vectors).
    void check(const char* where, int batch) const {
        require(token_stride > 0 && token_stride % 8 == 0, where, ": token_stride (", token_stride,
                " elements) must be a positive multiple of 8 (16-byte aligned rows)");
        if (paged()) {
            require(indptr != nullptr && last_page_len != nullptr, where,
                    ": a paged cache needs indptr, indices and last_page_len");
            require(page_size > 0, where, ": page_size must be positive, got ", page_size);
            require(page_stride % 8 == 0 && page_stride >= page_size * token_stride, where, ": page_stride (",
                    page_stride, ") must be a multiple of 8 and at least page_size·token_stride (",
                    page_size * token_stride, ")");
        } else {
            require(batch <= 1 || seq_stride % 8 == 0, where, ": seq_stride (", seq_stride,
                    ") must be a multiple of 8 elements");
            require(seq_lens != nullptr, where, ": a contiguous cache needs seq_lens (a device array of ", batch,
                    " lengths)");
        }
    }
};

/// How a decode call splits each sequence's keys: split s covers tokens `[s·chunk, (s+1)·chunk)`;
/// the last split also takes any tokens beyond `splits·chunk`, so a sequence longer than the
/// planned maximum is still attended completely (only less evenly).
struct DecodePlan {
    int batch = 0;
    std::int64_t rows = 0;   ///< query rows, batch · q_len · heads
    int dv = 0;              ///< output width
    std::int64_t chunk = 0;  ///< tokens per split, a multiple of 32
    int splits = 1;          ///< splits per sequence; 1 = no partials, no merge

    /// Device workspace bytes the decode call needs (0 when splits == 1).
    std::size_t workspace_bytes() const {
        return splits <= 1 ? 0 : std::size_t(rows) * std::size_t(splits) * (std::size_t(dv) + 1) * sizeof(float);
    }
};

namespace detail {

/// A plan with about `2 · sm_count` blocks, `units` blocks per split; `force_chunk` > 0 fixes the
/// tokens per split (rounded up to a multiple of 32).
inline DecodePlan make_decode_plan(int batch, std::int64_t rows, int dv, std::int64_t max_len, std::int64_t units,
                                   int sm_count, std::int64_t min_chunk, std::int64_t force_chunk) {
    DecodePlan p;
    p.batch = batch;
    p.rows = rows;
    p.dv = dv;
    std::int64_t chunk;
    if (force_chunk > 0) {
        chunk = (force_chunk + 31) / 32 * 32;
    } else {
        if (sm_count <= 0) sm_count = detail::sm_count();
        const std::int64_t tiles = std::max<std::int64_t>(1, (max_len + 31) / 32);
        const std::int64_t want = std::max<std::int64_t>(1, (2LL * sm_count + units - 1) / std::max<std::int64_t>(1, units));
        chunk = std::max(((tiles + want - 1) / want) * 32, min_chunk);
    }
    p.chunk = chunk;
    p.splits = int(std::max<std::int64_t>(1, (max_len + chunk - 1) / chunk));
    return p;
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// GQA decode (gqa_decode.cuh)
// ------------------------------------------------------------------------------------------------

/// Arguments of gqa_decode. The q_len query tokens of sequence b are its last q_len cached
/// tokens: query t sits at position len_b − q_len + t and sees keys [0, len_b − q_len + t].
/// Query head i reads KV head i / (n_q / n_kv).
template <class T>
struct GqaDecodeParams {
    const T* q = nullptr;  ///< [batch][q_len][n_q][head_dim]
    std::int64_t q_stride_b = 0, q_stride_t = 0, q_stride_h = 0;
    const T* k = nullptr;          ///< K cache (contiguous: sequence 0's token 0; paged: the page pool)
    const T* v = nullptr;          ///< V cache, same layout as K
    std::int64_t head_stride = 0;  ///< elements between the KV heads of one token
    CacheLayout layout{};          ///< token addressing, shared by K and V
    T* out = nullptr;              ///< [batch][q_len][n_q][head_dim]
    std::int64_t out_stride_b = 0, out_stride_t = 0, out_stride_h = 0;
    float* lse = nullptr;  ///< [batch][q_len][n_q] contiguous; may be null
    int batch = 0, q_len = 1, n_q = 0, n_kv = 0, head_dim = 0;
    float scale = 0.f;  ///< softmax scale, usually head_dim^-1/2
};

/// Head dims gqa_decode is compiled for (each entry instantiates the kernel for f16 and bf16).
inline constexpr int gqa_decode_head_dims[] = {64, 128};

namespace detail {
constexpr int gqa_dec_rows = 16;  ///< query rows per decode block
}

/// Plans a gqa_decode call; `max_len` bounds the sequence lengths. `sm_count` 0 queries the
/// current device; `chunk` > 0 forces the tokens per split (e.g. to exercise split-KV in tests).
inline DecodePlan plan_gqa_decode(int batch, int q_len, int n_q, int n_kv, int head_dim, std::int64_t max_len,
                                  int sm_count = 0, std::int64_t chunk = 0) {
    require(batch >= 0 && q_len >= 1 && n_q >= 1 && n_kv >= 1 && n_q % n_kv == 0 && head_dim > 0 && max_len >= 0,
            "cuda::plan_gqa_decode: bad problem batch=", batch, " q_len=", q_len, " n_q=", n_q, " n_kv=", n_kv,
            " head_dim=", head_dim, " max_len=", max_len, " (n_q must be a multiple of n_kv)");
    const std::int64_t row_tiles = (std::int64_t(q_len) * (n_q / n_kv) + detail::gqa_dec_rows - 1) / detail::gqa_dec_rows;
    return detail::make_decode_plan(batch, std::int64_t(batch) * q_len * n_q, head_dim, max_len,
                                    std::int64_t(batch) * n_kv * row_tiles, sm_count, 256, chunk);
}

/// GQA decode attention. `workspace` holds plan.workspace_bytes() bytes of device memory (null
/// when that is 0).
template <class T>
void gqa_decode(const GqaDecodeParams<T>& p, const DecodePlan& plan, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream = nullptr);

// ------------------------------------------------------------------------------------------------
// MLA absorbed decode (mla_decode.cuh)
// ------------------------------------------------------------------------------------------------

/// Arguments of mla_decode: the latent-space core of absorbed MLA decode (multi-query attention
/// of the absorbed queries `[q̃_i | q_pe_i] = [W_UK^iᵀ q_nope_i | RoPE q_pe_i]` against the cache
/// rows `[c | k_pe]`, values = the first `rank` columns of the rows), as
/// transmla::reference::mla_latent_attention. Causality as in gqa_decode. The caller applies
/// W_UV (and W_O) to the latent outputs.
template <class T>
struct MlaDecodeParams {
    const T* q = nullptr;  ///< [batch][q_len][heads][rank + rope_dim]
    std::int64_t q_stride_b = 0, q_stride_t = 0, q_stride_h = 0;
    const T* cache = nullptr;  ///< rows [rank + rope_dim] (contiguous: sequence 0's token 0; paged: the pool)
    CacheLayout layout{};
    T* out = nullptr;  ///< [batch][q_len][heads][rank]
    std::int64_t out_stride_b = 0, out_stride_t = 0, out_stride_h = 0;
    float* lse = nullptr;  ///< [batch][q_len][heads] contiguous; may be null
    int batch = 0, q_len = 1, heads = 0, rank = 0, rope_dim = 0;
    float scale = 0.f;  ///< softmax scale, (nope_dim + rope_dim)^-1/2 for DeepSeek
};

/// (rank, rope_dim) pairs mla_decode is compiled for (rank a multiple of 32).
inline constexpr int mla_decode_dims[][2] = {{512, 64}, {128, 64}};

namespace detail {
/// Query rows (heads × tokens) per MLA decode block: 16 (one mma tile, 4 warps) when they fit,
/// else 64 (4 tiles, 16 warps, sharing each tile of cache rows).
constexpr int mla_dec_block_rows(int q_len, int heads) { return q_len * heads <= 16 ? 16 : 64; }
}

/// Plans an mla_decode call (see plan_gqa_decode).
inline DecodePlan plan_mla_decode(int batch, int q_len, int heads, int rank, std::int64_t max_len, int sm_count = 0,
                                  std::int64_t chunk = 0) {
    require(batch >= 0 && q_len >= 1 && heads >= 1 && rank > 0 && max_len >= 0, "cuda::plan_mla_decode: bad problem batch=",
            batch, " q_len=", q_len, " heads=", heads, " rank=", rank, " max_len=", max_len);
    const int m = detail::mla_dec_block_rows(q_len, heads);
    const std::int64_t row_tiles = (std::int64_t(q_len) * heads + m - 1) / m;
    return detail::make_decode_plan(batch, std::int64_t(batch) * q_len * heads, rank, max_len,
                                    std::int64_t(batch) * row_tiles, sm_count, 64, chunk);
}

/// MLA absorbed decode (latent core). Workspace as in gqa_decode.
template <class T>
void mla_decode(const MlaDecodeParams<T>& p, const DecodePlan& plan, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream = nullptr);

// ------------------------------------------------------------------------------------------------
// Prefill (prefill.cuh)
// ------------------------------------------------------------------------------------------------

/// Arguments of attention_prefill: tiled attention of one sequence on tensor cores. Query t sits
/// at position q_offset + t; with `causal` it sees keys [0, q_offset + t], else all kv_len keys.
/// Query head i reads KV head i / (n_q / n_kv). qk_dim may differ from v_dim (MLA naive prefill).
template <class T>
struct PrefillParams {
    const T* q = nullptr;  ///< [q_len][n_q][qk_dim]
    std::int64_t q_stride_t = 0, q_stride_h = 0;
    const T* k = nullptr;  ///< [kv_len][n_kv][qk_dim]
    std::int64_t k_stride_t = 0, k_stride_h = 0;
    const T* v = nullptr;  ///< [kv_len][n_kv][v_dim]
    std::int64_t v_stride_t = 0, v_stride_h = 0;
    T* out = nullptr;  ///< [q_len][n_q][v_dim]
    std::int64_t out_stride_t = 0, out_stride_h = 0;
    float* lse = nullptr;  ///< [q_len][n_q] contiguous; may be null
    int q_len = 0, kv_len = 0, n_q = 0, n_kv = 0, qk_dim = 0, v_dim = 0;
    std::int64_t q_offset = -1;  ///< −1: kv_len − q_len (the queries are the last tokens)
    bool causal = true;
    float scale = 0.f;
};

/// (qk_dim, v_dim) pairs attention_prefill is compiled for: GQA 64 and 128, DeepSeek MLA naive
/// (128 + 64, 128).
inline constexpr int prefill_dims[][2] = {{64, 64}, {128, 128}, {192, 128}};

/// Causal (or full) prefill attention.
template <class T>
void attention_prefill(const PrefillParams<T>& p, cudaStream_t stream = nullptr);

// ------------------------------------------------------------------------------------------------
// MLA naive prefill (mla_prefill.cuh)
// ------------------------------------------------------------------------------------------------

/// Arguments of mla_naive_prefill: decompress every cached token per head
/// (`k_nope_i = W_UK^i c`, `v_i = W_UV^i c`, the shared RoPE key appended to every head's key),
/// then attention_prefill with qk width nope_dim + rope_dim and v width v_dim, as
/// transmla::reference::mla_naive.
template <class T>
struct MlaPrefillParams {
    const T* q = nullptr;  ///< [q_len][heads][nope_dim + rope_dim]: each row is [q_nope | RoPE q_pe]
    std::int64_t q_stride_t = 0, q_stride_h = 0;
    const T* cache = nullptr;  ///< [kv_len][rank + rope_dim] rows of one sequence
    std::int64_t cache_stride_t = 0;
    const T* kv_b = nullptr;  ///< [heads·(nope_dim + v_dim)][rank], row-major (DeepSeek kv_b_proj)
    T* out = nullptr;         ///< [q_len][heads][v_dim]
    std::int64_t out_stride_t = 0, out_stride_h = 0;
    float* lse = nullptr;  ///< [q_len][heads] contiguous; may be null
    int q_len = 0, kv_len = 0, heads = 0, rank = 0, rope_dim = 0, nope_dim = 0, v_dim = 0;
    std::int64_t q_offset = -1;  ///< −1: kv_len − q_len
    bool causal = true;
    float scale = 0.f;  ///< (nope_dim + rope_dim)^-1/2 for DeepSeek
};

/// Device workspace bytes mla_naive_prefill needs: the decompressed keys and values.
template <class T>
std::size_t mla_prefill_workspace_bytes(const MlaPrefillParams<T>& p) {
    const std::size_t k = std::size_t(p.kv_len) * p.heads * (p.nope_dim + p.rope_dim) * sizeof(T);
    const std::size_t v = std::size_t(p.kv_len) * p.heads * p.v_dim * sizeof(T);
    return (k + 255) / 256 * 256 + v;
}

/// MLA naive prefill.
template <class T>
void mla_naive_prefill(const MlaPrefillParams<T>& p, void* workspace, std::size_t workspace_bytes,
                       cudaStream_t stream = nullptr);

}  // namespace transmla::cuda
