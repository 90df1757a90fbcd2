// transmla/model/gguf_loader.hpp — builds a model::Model from a llama-architecture GGUF file
// (weights dequantised to fp32).
//
// RoPE pairing: llama.cpp's converter permutes the rows of attn_q / attn_k so that its
// interleaved ("NORM") RoPE kernel computes what Hugging Face's half-split RoPE computes on the
// original rows. By default the loader un-permutes them (io::unpermute_llama_qk) and uses the
// half-split pairing: the Hugging Face layout that the index maps of docs/conversion.md use.
// With `keep_gguf_order` the rows stay as stored and the pairing is interleaved; both give the
// same logits (a test checks it).
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/gguf.hpp"
#include "transmla/model/model.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
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
    require(s.size() == 2 && s[0] == rows && s[1] == cols, "GGUF '", f.path(), "': tensor ", name, " has shape [",
            s.size() > 0 ? s[0] : 0, ", ", s.size() > 1 ? s[1] : 0, "], expected [", rows, ", ", cols, "]");
    return to_matrix(f.dequantize(t), rows, cols);
}

inline VectorXf gguf_vector(const io::GgufFile& f, const std::string& name, std::int64_t n) {
    const auto& t = f.tensor(name);
    require(t.n_elements() == n, "GGUF '", f.path(), "': tensor ", name, " has ", t.n_elements(), " elements, expected ", n);
    auto v = f.dequantize(t);
    return Eigen::Map<const VectorXf>(v.data(), n);
}

/// Most of any one extent the loader accepts from metadata (hidden size, heads, layers, MLP width):
/// 2^24. Products of two such values fit in int64, and each value is then checked against the
/// tensors present before it sizes anything.
inline constexpr std::int64_t gguf_max_dim = std::int64_t(1) << 24;

/// An integer hyper-parameter in [lo, hi] (or `fallback` when the key is absent and a fallback is
/// given); out of range throws naming the file and key.
inline std::int64_t gguf_hparam(const io::GgufFile& f, std::string_view key, std::int64_t lo, std::int64_t hi,
                                const std::int64_t* fallback = nullptr) {
    if (fallback && !f.has(key)) return *fallback;
    const std::int64_t v = f.meta_int(key);
    if (v < lo || v > hi)
        fail("GGUF '", f.path(), "': metadata key '", key, "' = ", v, " is out of range [", lo, ", ", hi, "]");
    return v;
}

inline double gguf_positive(const io::GgufFile& f, std::string_view key, double fallback, bool has_fallback) {
    if (has_fallback && !f.has(key)) return fallback;
    const double v = f.meta_float(key);
    if (!(std::isfinite(v) && v > 0))
        fail("GGUF '", f.path(), "': metadata key '", key, "' = ", v, " is not a positive finite number");
    return v;
}

}  // namespace detail

/// Reads the hyper-parameters of a llama-architecture GGUF file.
inline ModelConfig gguf_config(const io::GgufFile& f) {
    const std::string arch = f.meta_string("general.architecture");
    require(arch == "llama", f.path(), ": general.architecture is '", arch,
            "'; the model loader supports the llama architecture (Llama, SmolLM, Mistral-style files)");
    ModelConfig c;
    c.name = f.meta_string_or("general.name", "llama");
    using detail::gguf_hparam;
    using detail::gguf_max_dim;
    // every value range-checked before it is narrowed to int or multiplied
    c.hidden = int(gguf_hparam(f, "llama.embedding_length", 1, gguf_max_dim));
    c.layers = int(gguf_hparam(f, "llama.block_count", 1, gguf_max_dim));
    c.n_q = int(gguf_hparam(f, "llama.attention.head_count", 1, gguf_max_dim));
    const std::int64_t n_q = c.n_q;
    c.n_kv = int(gguf_hparam(f, "llama.attention.head_count_kv", 1, gguf_max_dim, &n_q));
    c.intermediate = int(gguf_hparam(f, "llama.feed_forward_length", 1, gguf_max_dim));
    c.rms_eps = detail::gguf_positive(f, "llama.attention.layer_norm_rms_epsilon", 0, false);
    require(c.hidden % c.n_q == 0, "GGUF '", f.path(), "': llama.embedding_length ", c.hidden,
            " is not a multiple of llama.attention.head_count ", c.n_q);
    require(c.n_q % c.n_kv == 0, "GGUF '", f.path(), "': llama.attention.head_count ", c.n_q,
            " is not a multiple of llama.attention.head_count_kv ", c.n_kv);
    const std::int64_t head_dim = c.hidden / c.n_q;
    c.head_dim = int(gguf_hparam(f, "llama.attention.key_length", 1, gguf_max_dim, &head_dim));
    require(std::int64_t(c.head_dim) * c.n_q == c.hidden, "GGUF '", f.path(), "': llama.attention.key_length ",
            c.head_dim, " · head_count ", c.n_q, " != embedding_length ", c.hidden);
    require(c.head_dim % 2 == 0, "GGUF '", f.path(), "': head dim ", c.head_dim, " is odd (RoPE rotates pairs)");
    const std::int64_t rot = f.meta_int_or("llama.rope.dimension_count", c.head_dim);
    if (f.has("llama.attention.value_length"))
        require(f.meta_int("llama.attention.value_length") == c.head_dim, "GGUF '", f.path(),
                "': llama.attention.value_length differs from the key length ", c.head_dim, " (not supported)");
    require(rot == c.head_dim, f.path(), ": llama.rope.dimension_count = ", rot, " but head dim = ", c.head_dim,
            " (partial rotary models are not supported)");
    c.rope.base = detail::gguf_positive(f, "llama.rope.freq_base", 10000.0, true);
    const std::string scaling = f.meta_string_or("llama.rope.scaling.type", "none");
    if (scaling == "linear") {
        c.rope.scaling = RopeScaling::linear;
        c.rope.factor = detail::gguf_positive(f, "llama.rope.scaling.factor", 0, false);
    } else {
        require(scaling == "none", f.path(), ": llama.rope.scaling.type '", scaling, "' is not supported (none, linear)");
    }
    const std::int64_t default_ctx = 2048;
    c.max_positions = gguf_hparam(f, "llama.context_length", 1, std::int64_t(1) << 31, &default_ctx);
    {
        // the vocabulary comes from the embedding's shape, which must be [vocab, hidden]
        const auto& emb = f.tensor("token_embd.weight");
        const auto s = emb.shape();
        require(s.size() == 2 && s[1] == c.hidden && s[0] <= std::numeric_limits<int>::max(), "GGUF '", f.path(),
                "': tensor 'token_embd.weight' has shape ", s.size() == 2 ? std::to_string(s[0]) + " x " + std::to_string(s[1]) : std::to_string(s.size()) + "-D",
                ", expected [vocab, embedding_length = ", c.hidden, "]");
        c.vocab = int(s[0]);
    }
    if (f.has("llama.vocab_size"))
        require(f.meta_int("llama.vocab_size") == c.vocab, "GGUF '", f.path(), "': llama.vocab_size ",
                f.meta_int("llama.vocab_size"), " disagrees with token_embd.weight (", c.vocab, " rows)");
    c.tied_embeddings = !f.has_tensor("output.weight");
    const std::int64_t none = -1;
    c.bos_token = int(gguf_hparam(f, "tokenizer.ggml.bos_token_id", -1, c.vocab - 1, &none));
    c.eos_token = int(gguf_hparam(f, "tokenizer.ggml.eos_token_id", -1, c.vocab - 1, &none));
    // the layer count sizes the model: every layer must be present before anything is allocated
    require(std::uint64_t(c.layers) <= f.tensors().size(), "GGUF '", f.path(), "': llama.block_count = ", c.layers,
            " but the file has only ", f.tensors().size(), " tensors");
    for (int l = 0; l < c.layers; ++l)
        for (const char* t : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}) {
            const std::string name = "blk." + std::to_string(l) + "." + t + ".weight";
            if (!f.has_tensor(name))
                fail("GGUF '", f.path(), "': llama.block_count = ", c.layers, " but tensor '", name, "' is missing");
        }
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
                "GGUF '", f.path(), "': tensors '", p, "attn_q.weight' / '", p, "attn_k.weight' have ", q.size(), " / ",
                k.size(), " elements, expected ", std::int64_t(c.n_q) * d * D, " / ", std::int64_t(c.n_kv) * d * D);
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
        // read (shape-checked) before the fused matrix is sized from the metadata's width
        const RowMatrixXf gate = detail::gguf_matrix(f, p + "ffn_gate.weight", I, D);
        const RowMatrixXf up = detail::gguf_matrix(f, p + "ffn_up.weight", I, D);
        L.mlp.gate_up.resize(2 * I, D);
        L.mlp.gate_up.topRows(I) = gate;
        L.mlp.gate_up.bottomRows(I) = up;
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
