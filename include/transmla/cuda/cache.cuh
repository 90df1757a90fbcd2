// transmla/cuda/cache.cuh — device-side token addressing of the caches described by
// transmla::cuda::CacheLayout (api.hpp), and the key range of one decode split.
#pragma once

#include "transmla/cuda/common.cuh"

#include <cstdint>

namespace transmla::cuda::detail {

/// Tokens of sequence b.
__device__ __forceinline__ std::int64_t cache_length(const CacheLayout& c, int b) {
    if (!c.indices) return c.seq_lens[b];
    const std::int64_t np = c.indptr[b + 1] - c.indptr[b];
    return np == 0 ? 0 : (np - 1) * c.page_size + c.last_page_len[b];
}

/// Element offset of token t of sequence b.
__device__ __forceinline__ std::int64_t cache_token_offset(const CacheLayout& c, int b, std::int64_t t) {
    if (!c.indices) return std::int64_t(b) * c.seq_stride + t * c.token_stride;
    const std::int64_t page = c.indices[c.indptr[b] + t / c.page_size];
    return page * c.page_stride + (t % c.page_size) * c.token_stride;
}

/// Key range [begin, end) of split s of a sequence of len tokens (see DecodePlan).
__device__ __forceinline__ void split_range(std::int64_t len, std::int64_t chunk, int s, int splits,
                                            std::int64_t& begin, std::int64_t& end) {
    begin = std::int64_t(s) * chunk;
    end = (s == splits - 1) ? len : (begin + chunk < len ? begin + chunk : len);
    if (begin > len) begin = len;
}

}  // namespace transmla::cuda::detail
