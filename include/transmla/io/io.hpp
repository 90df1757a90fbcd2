// transmla/io/io.hpp — all of transmla's model-file I/O: GGUF (read, write, dequantise), ggml
// block types, safetensors (read, write), Hugging Face config.json, and the byte-level BPE
// tokenizer. Each header can also be included on its own.
#pragma once

#include "transmla/io/ggml_types.hpp"
#include "transmla/io/gguf.hpp"
#include "transmla/io/hf_config.hpp"
#include "transmla/io/mapped_file.hpp"
#include "transmla/io/safetensors.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/io/unicode.hpp"
