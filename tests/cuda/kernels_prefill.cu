// Explicit instantiations of the tensor-core prefill kernels for the tests (f16, bf16).
#include "transmla/cuda/prefill.cuh"

namespace transmla::cuda {
template void attention_prefill<__half>(const PrefillParams<__half>&, cudaStream_t);
template void attention_prefill<__nv_bfloat16>(const PrefillParams<__nv_bfloat16>&, cudaStream_t);
}  // namespace transmla::cuda
