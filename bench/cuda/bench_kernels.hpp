// Host-callable helpers of the CUDA benchmark that need device code (defined in bench_kernels.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace transmla::bench::cuda {

/// Fills p[0..n) with pseudo-random values uniform in [−scale, scale) (a hash of seed and index).
void fill_random(__nv_bfloat16* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t stream = nullptr);

}  // namespace transmla::bench::cuda
