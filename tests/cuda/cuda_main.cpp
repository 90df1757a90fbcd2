// doctest main of the CUDA tests: when no usable CUDA device is present it says so and exits
// with 77 (CTest's SKIP_RETURN_CODE) before running anything. Prints the seed of a failing test.
// Built with TRANSMLA_CUDA_HOST_EMULATION (test_cuda_emulated) it runs the kernels on the host
// emulator instead.
#define DOCTEST_CONFIG_IMPLEMENT
#include "seed_listener.hpp"

#include <cuda_runtime_api.h>

#include <cstdio>


int main(int argc, char** argv) {
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
#if defined(__SANITIZE_ADDRESS__)
    std::printf("test_cuda_emulated: SKIPPED under AddressSanitizer (the host emulator switches fiber stacks)\n");
    return 77;
#endif
    std::printf("test_cuda_emulated: running the CUDA kernels on the host emulator of the CUDA execution model "
                "(tests/cuda/emulation); this checks their logic, not the hardware\n");
    doctest::Context ectx(argc, argv);
    return ectx.run();
#endif
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        std::printf("test_cuda: SKIPPED, no CUDA GPU available (%s); the CUDA kernels were compiled but not run\n",
                    e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
        std::printf("test_cuda: running on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
        if (prop.major < 8) {
            std::printf("test_cuda: SKIPPED, the kernels need sm_80 or newer\n");
            return 77;
        }
    }
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
