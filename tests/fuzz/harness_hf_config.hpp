// Fuzz harness (e): a Hugging Face config.json from memory.
#pragma once

#include "harness_common.hpp"

#include "transmla/io/hf_config.hpp"

namespace transmla::fuzz {

inline int run_hf_config(const std::uint8_t* data, std::size_t size) {
    try {
        const io::HfConfig c =
            io::parse_hf_config_text(std::string_view(reinterpret_cast<const char*>(data), size), "<fuzz config.json>");
        consume(c);
        expect_ok_or_error([&] { consume(c.gqa_shape()); });
    } catch (const ::transmla::error&) {
    }
    return 0;
}

}  // namespace transmla::fuzz
