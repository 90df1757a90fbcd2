// The CUDA kernels compiled by the host compiler for the host emulator (cuda_emulator.hpp) and
// instantiated like kernels_*.cu; test_cuda_emulated runs the same tests as test_cuda on them.
// The emulator switches fiber stacks with _longjmp, which _FORTIFY_SOURCE's check would abort.
#undef _FORTIFY_SOURCE
#include "cuda_emulator.hpp"
#include "transmla/cuda/gqa_decode.cuh"
#include "transmla/cuda/mla_decode.cuh"
#include "transmla/cuda/mla_prefill.cuh"

namespace transmla::cuda {
template void gqa_decode<__half>(const GqaDecodeParams<__half>&, const DecodePlan&, void*, std::size_t, cudaStream_t);
template void gqa_decode<__nv_bfloat16>(const GqaDecodeParams<__nv_bfloat16>&, const DecodePlan&, void*, std::size_t,
                                        cudaStream_t);
template void mla_decode<__half>(const MlaDecodeParams<__half>&, const DecodePlan&, void*, std::size_t, cudaStream_t);
template void mla_decode<__nv_bfloat16>(const MlaDecodeParams<__nv_bfloat16>&, const DecodePlan&, void*, std::size_t,
                                        cudaStream_t);
template void attention_prefill<__half>(const PrefillParams<__half>&, cudaStream_t);
template void attention_prefill<__nv_bfloat16>(const PrefillParams<__nv_bfloat16>&, cudaStream_t);
template void mla_naive_prefill<__half>(const MlaPrefillParams<__half>&, void*, std::size_t, cudaStream_t);
template void mla_naive_prefill<__nv_bfloat16>(const MlaPrefillParams<__nv_bfloat16>&, void*, std::size_t, cudaStream_t);
}  // namespace transmla::cuda
