// Explicit instantiations of the GQA decode kernels for the tests (f16, bf16).
#include "transmla/cuda/gqa_decode.cuh"

namespace transmla::cuda {
template void gqa_decode<__half>(const GqaDecodeParams<__half>&, const DecodePlan&, void*, std::size_t, cudaStream_t);
template void gqa_decode<__nv_bfloat16>(const GqaDecodeParams<__nv_bfloat16>&, const DecodePlan&, void*, std::size_t,
                                        cudaStream_t);
}  // namespace transmla::cuda
