// The kernels the CUDA benchmark runs, instantiated for bf16 only (the storage type of the
// measured compute ceiling; f16 runs the same code), and the random fill.
#include "bench_kernels.hpp"
#include "transmla/cuda/gqa_decode.cuh"
#include "transmla/cuda/mla_decode.cuh"
#include "transmla/cuda/mla_prefill.cuh"

namespace transmla::cuda {
using bf16 = __nv_bfloat16;
template void gqa_decode<bf16>(const GqaDecodeParams<bf16>&, const DecodePlan&, void*, std::size_t, cudaStream_t);
template void mla_decode<bf16>(const MlaDecodeParams<bf16>&, const DecodePlan&, void*, std::size_t, cudaStream_t);
template void attention_prefill<bf16>(const PrefillParams<bf16>&, cudaStream_t);
template void mla_naive_prefill<bf16>(const MlaPrefillParams<bf16>&, void*, std::size_t, cudaStream_t);
}  // namespace transmla::cuda

namespace transmla::bench::cuda {
namespace {

__global__ void fill_random_kernel(__nv_bfloat16* p, std::size_t n, std::uint64_t seed, float scale) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
        std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);  // splitmix64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = float(z >> 40) * (1.0f / float(1ull << 24));  // [0, 1)
        p[i] = __float2bfloat16_rn((2.f * u - 1.f) * scale);
    }
}

}  // namespace

void fill_random(__nv_bfloat16* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t stream) {
    if (n == 0) return;
    fill_random_kernel<<<1024, 256, 0, stream>>>(p, n, seed, scale);
    transmla::cuda::detail::check_launch("fill_random_kernel");
}

}  // namespace transmla::bench::cuda
