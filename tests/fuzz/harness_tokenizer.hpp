// Fuzz harness (c): a tokenizer from GGUF metadata, then encode / decode of arbitrary bytes.
// Input: u32 n | n bytes of GGUF | text. When the GGUF part does not make a tokenizer, the text
// goes through a fixed tiny tokenizer instead, so every input exercises encode / decode.
#pragma once

#include "harness_common.hpp"
#include "tiny_model.hpp"

#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"

#include <optional>

namespace transmla::fuzz {

inline void exercise_tokenizer(const io::Tokenizer& tok, std::string_view text) {
    // the flags come from the text's first byte: one encode per input keeps the harness fast
    const unsigned mode = text.empty() ? 0u : static_cast<unsigned char>(text[0]);
    expect_ok_or_error([&] {
        const auto ids = tok.encode(text, (mode & 1) != 0, (mode & 2) != 0);
        consume(tok.decode(ids, (mode & 4) != 0));
    });
    expect_ok_or_error([&] { consume(tok.pre_tokenize(text)); });
    // the text's bytes as token ids (some out of range: those must throw)
    std::vector<std::int32_t> ids;
    for (std::size_t i = 0; i + 1 < text.size() && ids.size() < 256; i += 2) {
        const auto hi = static_cast<unsigned char>(text[i]), lo = static_cast<unsigned char>(text[i + 1]);
        ids.push_back(std::int32_t((hi << 8) | lo) - 8);
    }
    expect_ok_or_error([&] { consume(tok.decode(ids)); });
    expect_ok_or_error([&] { consume(tok.decode(ids, true)); });
    // every in-range id through the getters, but only the first out-of-range one: a throw costs
    // microseconds under ASan, and 512 of them per input made this harness 20x slower than the others
    bool probed_bad = false;
    for (std::int32_t id : ids) {
        const bool in_range = id >= 0 && id < tok.vocab_size();
        if (!in_range && probed_bad) continue;
        probed_bad = probed_bad || !in_range;
        expect_ok_or_error([&] { consume(tok.token_to_piece(id)); });
        expect_ok_or_error([&] { consume(tok.token_type(id)); });
    }
    consume(tok.token_id(text));
}

inline int run_tokenizer(const std::uint8_t* data, std::size_t size) {
    static const io::Tokenizer fallback(tiny_tokenizer_config());
    std::span<const std::byte> gguf, rest;
    split_prefixed(as_bytes(data, size), gguf, rest);
    // texts beyond 64 bytes (room for several pre-tokens and special tokens) add little coverage:
    // the encoder is a loop over pre-tokens, and each byte costs much under the sanitizers and
    // the coverage instrumentation
    const std::string_view text(reinterpret_cast<const char*>(rest.data()), rest.size() < 64 ? rest.size() : 64);
    std::optional<io::Tokenizer> tok;
    try {
        const io::GgufFile f = io::GgufFile::from_memory(gguf, "<fuzz tokenizer gguf>");
        tok.emplace(io::Tokenizer::from_gguf(f));
    } catch (const ::transmla::error&) {
    }
    exercise_tokenizer(tok ? *tok : fallback, text);
    return 0;
}

}  // namespace transmla::fuzz
