// Small valid inputs built with the library's own writers: a tiny Llama GGUF (with a byte-level
// BPE tokenizer), safetensors files and an HF config.json. Shared by the seed-corpus generator of
// the fuzz harnesses (make_seeds.cpp) and by the io regression tests, which patch them.
#pragma once

#include "transmla/io/ggml_types.hpp"
#include "transmla/io/gguf.hpp"
#include "transmla/io/safetensors.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/io/unicode.hpp"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace transmla::fuzz {

/// Deterministic pseudo-random weights (never all zero).
inline std::vector<float> tiny_weights(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> d(0.0f, 0.5f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
}

struct TinyLlama {
    int hidden = 8, n_q = 2, n_kv = 1, layers = 2, intermediate = 16;
    int vocab = 0;  ///< 0: the tokenizer's vocabulary size (or 64 without a tokenizer)
    bool tokenizer = true;
    std::string pre = "smollm";
    bool tied = true;
    io::GgmlType matrix_type = io::GgmlType::F32;  ///< of the 2-D weights (norms stay F32)
    std::uint64_t seed = 1;
};

/// The byte-level vocabulary: the 256 byte characters, a few merged tokens, three control tokens.
inline io::TokenizerConfig tiny_tokenizer_config() {
    io::TokenizerConfig c;
    const auto map = io::detail::gpt2_byte_to_cp();
    for (std::uint32_t b = 0; b < 256; ++b) {
        std::string s;
        io::utf8_append(s, map[b]);
        c.tokens.push_back(s);
    }
    for (const char* t : {"\xC4\xA0t", "he", "\xC4\xA0the", "in", "er", "\xC4\xA0" "a", "on"}) c.tokens.push_back(t);
    c.merges = {"\xC4\xA0 t", "h e", "\xC4\xA0t he", "i n", "e r", "\xC4\xA0 a", "o n"};
    c.token_types.assign(c.tokens.size(), std::int32_t(io::TokenType::normal));
    for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
        c.tokens.push_back(t);
        c.token_types.push_back(std::int32_t(io::TokenType::control));
    }
    c.bos_id = std::int32_t(c.tokens.size()) - 3;
    c.eos_id = std::int32_t(c.tokens.size()) - 1;
    c.pre = io::PreTokenizer::digits_gpt2;
    return c;
}

/// A GGUF writer holding a complete tiny Llama model; patch it (set / add tensors) before to_bytes().
inline io::GgufWriter tiny_llama_writer(const TinyLlama& o = {}) {
    io::GgufWriter w;
    const io::TokenizerConfig tc = tiny_tokenizer_config();
    const int V = o.vocab > 0 ? o.vocab : (o.tokenizer ? int(tc.tokens.size()) : 64);
    const int D = o.hidden, hd = o.hidden / o.n_q, I = o.intermediate;
    w.set("general.architecture", io::GgufValue::string("llama"));
    w.set("general.name", io::GgufValue::string("tiny"));
    w.set("llama.context_length", io::GgufValue::u32(64));
    w.set("llama.embedding_length", io::GgufValue::u32(std::uint32_t(D)));
    w.set("llama.block_count", io::GgufValue::u32(std::uint32_t(o.layers)));
    w.set("llama.feed_forward_length", io::GgufValue::u32(std::uint32_t(I)));
    w.set("llama.attention.head_count", io::GgufValue::u32(std::uint32_t(o.n_q)));
    w.set("llama.attention.head_count_kv", io::GgufValue::u32(std::uint32_t(o.n_kv)));
    w.set("llama.attention.layer_norm_rms_epsilon", io::GgufValue::f32(1e-5f));
    w.set("llama.rope.freq_base", io::GgufValue::f32(10000.0f));
    w.set("llama.rope.dimension_count", io::GgufValue::u32(std::uint32_t(hd)));
    w.set("llama.vocab_size", io::GgufValue::u32(std::uint32_t(V)));
    if (o.tokenizer) {
        w.set("tokenizer.ggml.model", io::GgufValue::string("gpt2"));
        w.set("tokenizer.ggml.pre", io::GgufValue::string(o.pre));
        w.set("tokenizer.ggml.tokens", io::GgufValue::strings(tc.tokens));
        w.set("tokenizer.ggml.token_type", io::GgufValue::i32s(tc.token_types));
        w.set("tokenizer.ggml.merges", io::GgufValue::strings(tc.merges));
        w.set("tokenizer.ggml.bos_token_id", io::GgufValue::u32(std::uint32_t(tc.bos_id)));
        w.set("tokenizer.ggml.eos_token_id", io::GgufValue::u32(std::uint32_t(tc.eos_id)));
        w.set("tokenizer.ggml.add_bos_token", io::GgufValue::boolean(false));
    }
    std::uint64_t seed = o.seed;
    auto mat = [&](const std::string& name, int rows, int cols) {
        const auto v = tiny_weights(std::size_t(rows) * std::size_t(cols), seed++);
        w.add_tensor(name, {rows, cols}, v, o.matrix_type);
    };
    auto vec = [&](const std::string& name, int n) {
        auto v = tiny_weights(std::size_t(n), seed++);
        for (auto& x : v) x += 1.0f;
        w.add_tensor(name, {n}, v, io::GgmlType::F32);
    };
    mat("token_embd.weight", V, D);
    vec("output_norm.weight", D);
    if (!o.tied) mat("output.weight", V, D);
    for (int l = 0; l < o.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        vec(p + "attn_norm.weight", D);
        mat(p + "attn_q.weight", o.n_q * hd, D);
        mat(p + "attn_k.weight", o.n_kv * hd, D);
        mat(p + "attn_v.weight", o.n_kv * hd, D);
        mat(p + "attn_output.weight", D, o.n_q * hd);
        vec(p + "ffn_norm.weight", D);
        mat(p + "ffn_gate.weight", I, D);
        mat(p + "ffn_up.weight", I, D);
        mat(p + "ffn_down.weight", D, I);
    }
    return w;
}

inline std::vector<std::uint8_t> tiny_llama_gguf(const TinyLlama& o = {}) { return tiny_llama_writer(o).to_bytes(); }

/// A small config.json of a Llama model matching tiny_llama_safetensors().
inline std::string tiny_hf_config(int hidden = 8, int n_q = 2, int n_kv = 1, int layers = 1, int intermediate = 16,
                                  int vocab = 32) {
    return "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": " +
           std::to_string(hidden) + ", \"num_attention_heads\": " + std::to_string(n_q) +
           ", \"num_key_value_heads\": " + std::to_string(n_kv) + ", \"num_hidden_layers\": " + std::to_string(layers) +
           ", \"intermediate_size\": " + std::to_string(intermediate) + ", \"vocab_size\": " + std::to_string(vocab) +
           ", \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, "
           "\"tie_word_embeddings\": true, \"hidden_act\": \"silu\", \"torch_dtype\": \"float32\"}";
}

/// The safetensors writer of the checkpoint tiny_hf_config() describes.
inline io::SafetensorsWriter tiny_llama_safetensors(int hidden = 8, int n_q = 2, int n_kv = 1, int layers = 1,
                                                    int intermediate = 16, int vocab = 32, std::string_view dtype = "F32") {
    io::SafetensorsWriter w;
    std::uint64_t seed = 7;
    const int hd = hidden / n_q;
    auto add = [&](const std::string& name, std::vector<std::int64_t> shape) {
        std::size_t n = 1;
        for (auto e : shape) n *= std::size_t(e);
        w.add(name, shape, tiny_weights(n, seed++), dtype);
    };
    add("model.embed_tokens.weight", {vocab, hidden});
    add("model.norm.weight", {hidden});
    for (int l = 0; l < layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        add(p + "input_layernorm.weight", {hidden});
        add(p + "post_attention_layernorm.weight", {hidden});
        add(p + "self_attn.q_proj.weight", {n_q * hd, hidden});
        add(p + "self_attn.k_proj.weight", {n_kv * hd, hidden});
        add(p + "self_attn.v_proj.weight", {n_kv * hd, hidden});
        add(p + "self_attn.o_proj.weight", {hidden, n_q * hd});
        add(p + "mlp.gate_proj.weight", {intermediate, hidden});
        add(p + "mlp.up_proj.weight", {intermediate, hidden});
        add(p + "mlp.down_proj.weight", {hidden, intermediate});
    }
    return w;
}

}  // namespace transmla::fuzz
