// Fuzz harness (b): a Llama model loaded from a GGUF file in memory (model/gguf_loader), in both
// row orders.
#pragma once

#include "harness_common.hpp"

#include "transmla/io/gguf.hpp"
#include "transmla/model/gguf_loader.hpp"

namespace transmla::fuzz {

inline int run_gguf_model(const std::uint8_t* data, std::size_t size) {
    try {
        const io::GgufFile f = io::GgufFile::from_memory(as_bytes(data, size), "<fuzz gguf model>");
        const model::ModelConfig c = model::gguf_config(f);
        consume(c);
        const model::Model m = model::load_gguf(f);
        consume(m.config);
        const model::Model raw = model::load_gguf(f, {.keep_gguf_order = true});
        consume(raw.config);
    } catch (const ::transmla::error&) {
    }
    return 0;
}

}  // namespace transmla::fuzz
