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
        a.wqkv.resize((nq + 2 * nkv) * d, D);
        a.wqkv.topRows(nq * d) = mat(p + "self_attn.q_proj.weight", nq * d, D);
        a.wqkv.middleRows(nq * d, nkv * d) = mat(p + "self_attn.k_proj.weight", nkv * d, D);
        a.wqkv.bottomRows(nkv * d) = mat(p + "self_attn.v_proj.weight", nkv * d, D);
        if (h.attention_bias) {
            a.bqkv.resize((nq + 2 * nkv) * d);
            a.bqkv.head(nq * d) = vec(p + "self_attn.q_proj.bias", nq * d);
            a.bqkv.segment(nq * d, nkv * d) = vec(p + "self_attn.k_proj.bias", nkv * d);
            a.bqkv.tail(nkv * d) = vec(p + "self_attn.v_proj.bias", nkv * d);
        }
        a.wo = mat(p + "self_attn.o_proj.weight", D, nq * d);
        L.attn = std::move(a);
        L.mlp.gate_up.resize(2 * I, D);
        L.mlp.gate_up.topRows(I) = mat(p + "mlp.gate_proj.weight", I, D);
        L.mlp.gate_up.bottomRows(I) = mat(p + "mlp.up_proj.weight", I, D);
        L.mlp.down = mat(p + "mlp.down_proj.weight", D, I);
        m.layers.push_back(std::move(L));
    }
    m.validate();
    return m;
}

}  // namespace transmla::model
