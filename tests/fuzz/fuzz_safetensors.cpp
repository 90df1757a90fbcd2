// libFuzzer entry point of harness_safetensors.hpp (built by tests/fuzz/CMakeLists.txt with clang).
#include "harness_safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return transmla::fuzz::run_safetensors(data, size);
}
