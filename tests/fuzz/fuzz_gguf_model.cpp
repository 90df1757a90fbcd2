// libFuzzer entry point of harness_gguf_model.hpp (built by tests/fuzz/CMakeLists.txt with clang).
#include "harness_gguf_model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return transmla::fuzz::run_gguf_model(data, size);
}
