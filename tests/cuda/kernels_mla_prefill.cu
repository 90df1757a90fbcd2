// Explicit instantiations of the MLA naive prefill (decompression + prefill) for the tests. The
// prefill kernels it calls are instantiated in kernels_prefill.cu (declared in api.hpp), so this
// file compiles only the decompression kernels.
#include "transmla/cuda/mla_prefill.cuh"

namespace transmla::cuda {
extern template void attention_prefill<__half>(const PrefillParams<__half>&, cudaStream_t);
extern template void attention_prefill<__nv_bfloat16>(const PrefillParams<__nv_bfloat16>&, cudaStream_t);
template void mla_naive_prefill<__half>(const MlaPrefillParams<__half>&, void*, std::size_t, cudaStream_t);
template void mla_naive_prefill<__nv_bfloat16>(const MlaPrefillParams<__nv_bfloat16>&, void*, std::size_t, cudaStream_t);
}  // namespace transmla::cuda
