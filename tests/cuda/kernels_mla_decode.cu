// Explicit instantiations of the absorbed MLA decode kernels for the tests (f16, bf16).
#include "transmla/cuda/mla_decode.cuh"

namespace transmla::cuda {
template void mla_decode<__half>(const MlaDecodeParams<__half>&, const DecodePlan&, void*, std::size_t, cudaStream_t);
template void mla_decode<__nv_bfloat16>(const MlaDecodeParams<__nv_bfloat16>&, const DecodePlan&, void*, std::size_t,
                                        cudaStream_t);
}  // namespace transmla::cuda
