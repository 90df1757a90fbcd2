// transmla/model/safetensors_loader.hpp — builds a model::Model from a Hugging Face Llama-family
// checkpoint: config.json + model.safetensors (or a sharded index), weights read as fp32.
//
// Tensor names are the transformers ones (model.embed_tokens, model.layers.N.self_attn.q_proj,
// ..., model.norm, lm_head). Q/K rows are already in the Hugging Face order, so the pairing is
// half-split. Supported model_type: llama, mistral (no sliding window at these lengths), qwen2
// (q/k/v biases), smollm-style llama checkpoints.
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/hf_config.hpp"
#include "transmla/io/safetensors.hpp"
#include "transmla/model/model.hpp"

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace transmla::model {

/// ModelConfig from a parsed config.json.
inline ModelConfig hf_model_config(const io::HfConfig& h) {
    require(h.model_type == "llama" || h.model_type == "mistral" || h.model_type == "qwen2",
            "hf_model_config: model_type '", h.model_type, "' is not supported (llama, mistral, qwen2)");
    require(h.hidden_act == "silu", "hf_model_config: hidden_act '", h.hidden_act, "' is not supported (silu)");
    require(std::int64_t(h.num_attention_heads) * h.head_dim == h.hidden_size, "hf_model_config: num_attention_heads (",
            h.num_attention_heads, ") · head_dim (", h.head_dim, ") != hidden_size (", h.hidden_size, ")");
    ModelConfig c;
    c.name = h.model_type;
    c.vocab = h.vocab_size, c.hidden = h.hidden_size, c.layers = h.num_hidden_layers;
    c.n_q = h.num_attention_heads, c.n_kv = h.num_key_value_heads, c.head_dim = h.head_dim;
    c.intermediate = h.intermediate_size, c.rms_eps = h.rms_norm_eps;
    c.rope = h.rope;
    c.rope.pairing = RopePairing::half_split;
    c.max_positions = h.max_position_embeddings > 0 ? h.max_position_embeddings : 2048;
    c.tied_embeddings = h.tie_word_embeddings;
    return c;
}

/// Builds the model from a parsed config and an open checkpoint (either may come from memory:
/// io::parse_hf_config_text, io::SafetensorsCheckpoint::from_memory). Every tensor's shape is
/// checked against the config before any matrix is sized from the config.
inline Model load_safetensors(const io::HfConfig& h, const io::SafetensorsCheckpoint& ck) {
    const std::string& path = ck.path();
    Model m;
    m.config = hf_model_config(h);
    auto& c = m.config;
    const std::int64_t D = c.hidden, d = c.head_dim, I = c.intermediate, nq = c.n_q, nkv = c.n_kv, V = c.vocab;
    auto mat = [&](const std::string& n, std::int64_t r, std::int64_t k) {
        const auto v = ck.tensor(n, {r, k});
        return RowMatrixXf(Eigen::Map<const RowMatrixXf>(v.data(), r, k));
    };
    auto vec = [&](const std::string& n, std::int64_t k) {
        const auto v = ck.tensor(n, {k});
        return VectorXf(Eigen::Map<const VectorXf>(v.data(), k));
    };
    const auto names = ck.names();
    auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
    m.embed = mat("model.embed_tokens.weight", V, D);
    if (!c.tied_embeddings) {
        require(has("lm_head.weight"), path, ": tie_word_embeddings is false but lm_head.weight is missing");
        m.lm_head = mat("lm_head.weight", V, D);
    }
    m.out_norm = vec("model.norm.weight", D);
    // head_dim sizes the RoPE table: check it against the first layer's q_proj before that
    if (c.layers > 0) {
        const auto& q0 = ck.info("model.layers.0.self_attn.q_proj.weight");
        if (q0.shape != std::vector<std::int64_t>{nq * d, D})
            fail("safetensors checkpoint '", path, "': tensor 'model.layers.0.self_attn.q_proj.weight' has shape ",
                 io::SafetensorsFile::shape_str(q0.shape), ", expected [num_attention_heads·head_dim = ", nq * d, ", ",
                 D, "]");
    }
    const auto inv_freq = rope_inv_freq(c.rope, int(d));
    for (int l = 0; l < c.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        Layer L;
        L.attn_norm = vec(p + "input_layernorm.weight", D);
        L.ffn_norm = vec(p + "post_attention_layernorm.weight", D);
        GqaAttention a;
        a.n_q = int(nq), a.n_kv = int(nkv), a.head_dim = int(d), a.pairing = RopePairing::half_split;
        a.inv_freq = inv_freq;
        a.rope_attention_factor = rope_attention_factor(c.rope);
        // each part is read (and its shape checked) before the fused matrix is sized
        {
            const RowMatrixXf q = mat(p + "self_attn.q_proj.weight", nq * d, D);
            const RowMatrixXf k = mat(p + "self_attn.k_proj.weight", nkv * d, D);
            const RowMatrixXf v = mat(p + "self_attn.v_proj.weight", nkv * d, D);
            a.wqkv.resize((nq + 2 * nkv) * d, D);
            a.wqkv.topRows(nq * d) = q;
            a.wqkv.middleRows(nq * d, nkv * d) = k;
            a.wqkv.bottomRows(nkv * d) = v;
        }
        if (h.attention_bias) {
            const VectorXf q = vec(p + "self_attn.q_proj.bias", nq * d);
            const VectorXf k = vec(p + "self_attn.k_proj.bias", nkv * d);
            const VectorXf v = vec(p + "self_attn.v_proj.bias", nkv * d);
            a.bqkv.resize((nq + 2 * nkv) * d);
            a.bqkv.head(nq * d) = q;
            a.bqkv.segment(nq * d, nkv * d) = k;
            a.bqkv.tail(nkv * d) = v;
        }
        a.wo = mat(p + "self_attn.o_proj.weight", D, nq * d);
        L.attn = std::move(a);
        {
            const RowMatrixXf gate = mat(p + "mlp.gate_proj.weight", I, D);
            const RowMatrixXf up = mat(p + "mlp.up_proj.weight", I, D);
            L.mlp.gate_up.resize(2 * I, D);
            L.mlp.gate_up.topRows(I) = gate;
            L.mlp.gate_up.bottomRows(I) = up;
        }
        L.mlp.down = mat(p + "mlp.down_proj.weight", D, I);
        m.layers.push_back(std::move(L));
    }
    m.validate();
    return m;
}

/// Loads a checkpoint: `path` is a directory (config.json beside model.safetensors or its index)
/// or a .safetensors / index file, with `config_path` (default: config.json next to it).
inline Model load_safetensors(const std::string& path, std::string config_path = "") {
    namespace fs = std::filesystem;
    if (config_path.empty()) {
        const fs::path p(path);
        config_path = ((fs::is_directory(p) ? p : p.parent_path()) / "config.json").string();
    }
    const io::HfConfig h = io::read_hf_config(config_path);
    const io::SafetensorsCheckpoint ck(path);
    return load_safetensors(h, ck);
}

}  // namespace transmla::model
