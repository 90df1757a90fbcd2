// transmla/model/gguf_loader.hpp — builds a model::Model from a llama-architecture GGUF file
// (weights dequantised to fp32).
//
// RoPE pairing: llama.cpp's converter permutes the rows of attn_q / attn_k so that its
// interleaved ("NORM") RoPE kernel computes what Hugging Face's half-split RoPE computes on the
// original rows. By default the loader un-permutes them (io::unpermute_llama_qk) and uses the
// half-split pairing: the Hugging Face layout that CONVERSION.md's index maps are written in.
// With `keep_gguf_order` the rows stay as stored and the pairing is interleaved; both give the
// same logits (a test checks it).
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/gguf.hpp"
#include "transmla/model/model.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace transmla::model {

struct GgufLoadOptions {
    bool keep_gguf_order = false;       ///< true: GGUF row order + interleaved RoPE
    std::int64_t max_positions = 0;     ///< 0: the file's context_length
};

namespace detail {

inline RowMatrixXf to_matrix(std::vector<float>&& v, std::int64_t rows, std::int64_t cols) {
    RowMatrixXf m(rows, cols);
    std::copy(v.begin(), v.end(), m.data());
    return m;
}

inline RowMatrixXf gguf_matrix(const io::GgufFile& f, const std::string& name, std::int64_t rows, std::int64_t cols) {
    const auto& t = f.tensor(name);
    const auto s = t.shape();
    require(s.size() == 2 && s[0] == rows && s[1] == cols, f.path(), ": tensor ", name, " has shape [",
            s.size() > 0 ? s[0] : 0, ", ", s.size() > 1 ? s[1] : 0, "], expected [", rows, ", ", cols, "]");
    return to_matrix(f.dequantize(t), rows, cols);
}

inline VectorXf gguf_vector(const io::GgufFile& f, const std::string& name, std::int64_t n) {
    const auto& t = f.tensor(name);
    require(t.n_elements() == n, f.path(), ": tensor ", name, " has ", t.n_elements(), " elements, expected ", n);
    auto v = f.dequantize(t);
    return Eigen::Map<const VectorXf>(v.data(), n);
}

}  // namespace detail

/// Reads the hyper-parameters of a llama-architecture GGUF file.
inline ModelConfig gguf_config(const io::GgufFile& f) {
    const std::string arch = f.meta_string("general.architecture");
    require(arch == "llama", f.path(), ": general.architecture is '", arch,
            "'; the model loader supports the llama architecture (Llama, SmolLM, Mistral-style files)");
    ModelConfig c;
    c.name = f.meta_string_or("general.name", "llama");
    c.hidden = int(f.meta_int("llama.embedding_length"));
    c.layers = int(f.meta_int("llama.block_count"));
    c.n_q = int(f.meta_int("llama.attention.head_count"));
    c.n_kv = int(f.meta_int_or("llama.attention.head_count_kv", c.n_q));
    c.intermediate = int(f.meta_int("llama.feed_forward_length"));
    c.rms_eps = f.meta_float("llama.attention.layer_norm_rms_epsilon");
    require(c.n_q > 0 && c.hidden % c.n_q == 0, f.path(), ": embedding_length ", c.hidden,
            " is not a multiple of head_count ", c.n_q);
    c.head_dim = int(f.meta_int_or("llama.attention.key_length", c.hidden / c.n_q));
    require(c.head_dim * c.n_q == c.hidden, f.path(), ": head dim ", c.head_dim, " · heads ", c.n_q,
            " != embedding_length ", c.hidden);
    const std::int64_t rot = f.meta_int_or("llama.rope.dimension_count", c.head_dim);
    require(rot == c.head_dim, f.path(), ": llama.rope.dimension_count = ", rot, " but head dim = ", c.head_dim,
            " (partial rotary models are not supported)");
    c.rope.base = f.meta_float_or("llama.rope.freq_base", 10000.0);
    const std::string scaling = f.meta_string_or("llama.rope.scaling.type", "none");
    if (scaling == "linear") {
        c.rope.scaling = RopeScaling::linear;
        c.rope.factor = f.meta_float("llama.rope.scaling.factor");
    } else {
        require(scaling == "none", f.path(), ": llama.rope.scaling.type '", scaling, "' is not supported (none, linear)");
    }
    c.max_positions = f.meta_int_or("llama.context_length", 2048);
    c.vocab = int(f.tensor("token_embd.weight").shape().at(0));
    if (f.has("llama.vocab_size"))
        require(f.meta_int("llama.vocab_size") == c.vocab, f.path(), ": llama.vocab_size disagrees with token_embd");
    c.tied_embeddings = !f.has_tensor("output.weight");
    c.bos_token = int(f.meta_int_or("tokenizer.ggml.bos_token_id", -1));
    c.eos_token = int(f.meta_int_or("tokenizer.ggml.eos_token_id", -1));
    return c;
}

/// Loads every weight, dequantised to fp32. Throws transmla::error naming the file and tensor
/// when something is missing or misshapen.
inline Model load_gguf(const io::GgufFile& f, const GgufLoadOptions& opt = {}) {
    Model m;
    m.config = gguf_config(f);
    auto& c = m.config;
    c.rope.pairing = opt.keep_gguf_order ? RopePairing::interleaved : RopePairing::half_split;
    if (opt.max_positions > 0) c.max_positions = opt.max_positions;
    const int D = c.hidden, d = c.head_dim, I = c.intermediate;
    m.embed = detail::gguf_matrix(f, "token_embd.weight", c.vocab, D);
    if (!c.tied_embeddings) m.lm_head = detail::gguf_matrix(f, "output.weight", c.vocab, D);
    m.out_norm = detail::gguf_vector(f, "output_norm.weight", D);
    const auto inv_freq = rope_inv_freq(c.rope, d);
    m.layers.resize(std::size_t(c.layers));
    for (int l = 0; l < c.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        Layer& L = m.layers[std::size_t(l)];
        L.attn_norm = detail::gguf_vector(f, p + "attn_norm.weight", D);
        L.ffn_norm = detail::gguf_vector(f, p + "ffn_norm.weight", D);
        GqaAttention a;
        a.n_q = c.n_q, a.n_kv = c.n_kv, a.head_dim = d, a.pairing = c.rope.pairing, a.inv_freq = inv_freq;
        a.rope_attention_factor = rope_attention_factor(c.rope);
        auto q = f.dequantize(p + "attn_q.weight");
        auto k = f.dequantize(p + "attn_k.weight");
        require(std::int64_t(q.size()) == std::int64_t(c.n_q) * d * D && std::int64_t(k.size()) == std::int64_t(c.n_kv) * d * D,
                f.path(), ": ", p, "attn_q / attn_k have the wrong size");
        if (!opt.keep_gguf_order) {
            io::unpermute_llama_qk(q, c.n_q, d, D);
            io::unpermute_llama_qk(k, c.n_kv, d, D);
        }
        const RowMatrixXf wv = detail::gguf_matrix(f, p + "attn_v.weight", std::int64_t(c.n_kv) * d, D);
        a.wqkv.resize(std::int64_t(c.n_q + 2 * c.n_kv) * d, D);
        a.wqkv.topRows(std::int64_t(c.n_q) * d) = Eigen::Map<const RowMatrixXf>(q.data(), std::int64_t(c.n_q) * d, D);
        a.wqkv.middleRows(std::int64_t(c.n_q) * d, std::int64_t(c.n_kv) * d) =
            Eigen::Map<const RowMatrixXf>(k.data(), std::int64_t(c.n_kv) * d, D);
        a.wqkv.bottomRows(std::int64_t(c.n_kv) * d) = wv;
        a.wo = detail::gguf_matrix(f, p + "attn_output.weight", D, std::int64_t(c.n_q) * d);
        L.attn = std::move(a);
        L.mlp.gate_up.resize(2 * I, D);
        L.mlp.gate_up.topRows(I) = detail::gguf_matrix(f, p + "ffn_gate.weight", I, D);
        L.mlp.gate_up.bottomRows(I) = detail::gguf_matrix(f, p + "ffn_up.weight", I, D);
        L.mlp.down = detail::gguf_matrix(f, p + "ffn_down.weight", D, I);
    }
    m.validate();
    return m;
}

inline Model load_gguf(const std::string& path, const GgufLoadOptions& opt = {}) {
    const io::GgufFile f(path);
    return load_gguf(f, opt);
}

}  // namespace transmla::model
