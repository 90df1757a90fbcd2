// libFuzzer entry point of harness_tokenizer.hpp (built by tests/fuzz/CMakeLists.txt with clang).
#include "harness_tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return transmla::fuzz::run_tokenizer(data, size);
}
