// libFuzzer entry point of harness_gguf.hpp (built by tests/fuzz/CMakeLists.txt with clang).
#include "harness_gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return transmla::fuzz::run_gguf(data, size);
}
