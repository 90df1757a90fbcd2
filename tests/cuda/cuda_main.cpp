// doctest main of the CUDA tests: when no usable CUDA device is present it says so and exits
// with 77 (CTest's SKIP_RETURN_CODE) before running anything. Prints the seed of a failing test.
// Built with TRANSMLA_CUDA_HOST_EMULATION (test_cuda_emulated) it runs the kernels on the host
// emulator instead.
#define DOCTEST_CONFIG_IMPLEMENT
#include "test_util.hpp"

#include <cuda_runtime_api.h>

#include <cstdio>

namespace {

struct CudaSeedListener : doctest::IReporter {
    explicit CudaSeedListener(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats&) override {}
    void test_case_start(const doctest::TestCaseData& tc) override { transmla::test::detail::reseed(tc.m_name); }
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats& st) override {
        if (st.numAssertsFailedCurrentTest > 0 || st.failure_flags != 0)
            std::fprintf(stderr, "[transmla] test case failed with TRANSMLA_SEED=%llu (rerun with that "
                                 "environment variable to reproduce)\n",
                         static_cast<unsigned long long>(transmla::test::base_seed()));
    }
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

REGISTER_LISTENER("transmla_cuda_seed", 1, CudaSeedListener);

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
