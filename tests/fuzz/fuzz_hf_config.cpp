// libFuzzer entry point of harness_hf_config.hpp (built by tests/fuzz/CMakeLists.txt with clang).
#include "harness_hf_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return transmla::fuzz::run_hf_config(data, size);
}
