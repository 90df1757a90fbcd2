// The Hugging Face safetensors path: a random model written under the transformers tensor names
// with a config.json loads back into the same model (same logits), with and without q/k/v biases.
#include "transmla/io/safetensors.hpp"
#include "transmla/model/safetensors_loader.hpp"

#include "random_model.hpp"
#include "test_util.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <random>

using namespace transmla;
using model::RowMatrixXf;

namespace {

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        path = std::filesystem::temp_directory_path() / ("transmla_st_" + std::to_string(std::random_device{}()));
        std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

void add(io::SafetensorsWriter& w, const std::string& name, const RowMatrixXf& m) {
    w.add(name, {m.rows(), m.cols()}, std::span<const float>(m.data(), std::size_t(m.size())));
}
void add(io::SafetensorsWriter& w, const std::string& name, const Eigen::VectorXf& v) {
    w.add(name, {v.size()}, std::span<const float>(v.data(), std::size_t(v.size())));
}

/// Writes `m` as a transformers checkpoint (model_type given) into dir.
void write_hf(const model::Model& m, const std::filesystem::path& dir, const std::string& model_type, bool bias,
              bool write_lm_head) {
    const auto& c = m.config;
    io::SafetensorsWriter w;
    add(w, "model.embed_tokens.weight", m.embed);
    if (write_lm_head) add(w, "lm_head.weight", m.lm_head);
    add(w, "model.norm.weight", m.out_norm);
    const Eigen::Index d = c.head_dim, nq = c.n_q, nkv = c.n_kv, I = c.intermediate;
    for (int l = 0; l < c.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        const auto& L = m.layers[std::size_t(l)];
        const auto& a = std::get<model::GqaAttention>(L.attn);
        add(w, p + "input_layernorm.weight", L.attn_norm);
        add(w, p + "post_attention_layernorm.weight", L.ffn_norm);
        add(w, p + "self_attn.q_proj.weight", RowMatrixXf(a.wqkv.topRows(nq * d)));
        add(w, p + "self_attn.k_proj.weight", RowMatrixXf(a.wqkv.middleRows(nq * d, nkv * d)));
        add(w, p + "self_attn.v_proj.weight", RowMatrixXf(a.wqkv.bottomRows(nkv * d)));
        if (bias) {
            add(w, p + "self_attn.q_proj.bias", Eigen::VectorXf(a.bqkv.head(nq * d)));
            add(w, p + "self_attn.k_proj.bias", Eigen::VectorXf(a.bqkv.segment(nq * d, nkv * d)));
            add(w, p + "self_attn.v_proj.bias", Eigen::VectorXf(a.bqkv.tail(nkv * d)));
        }
        add(w, p + "self_attn.o_proj.weight", a.wo);
        add(w, p + "mlp.gate_proj.weight", RowMatrixXf(L.mlp.gate_up.topRows(I)));
        add(w, p + "mlp.up_proj.weight", RowMatrixXf(L.mlp.gate_up.bottomRows(I)));
        add(w, p + "mlp.down_proj.weight", L.mlp.down);
    }
    w.write((dir / "model.safetensors").string());
    const nlohmann::json cfg{{"model_type", model_type},
                             {"architectures", {"LlamaForCausalLM"}},
                             {"hidden_size", c.hidden},
                             {"num_attention_heads", c.n_q},
                             {"num_key_value_heads", c.n_kv},
                             {"intermediate_size", c.intermediate},
                             {"num_hidden_layers", c.layers},
                             {"vocab_size", c.vocab},
                             {"max_position_embeddings", c.max_positions},
                             {"rms_norm_eps", c.rms_eps},
                             {"rope_theta", c.rope.base},
                             {"tie_word_embeddings", c.tied_embeddings},
                             {"hidden_act", "silu"}};
    std::ofstream((dir / "config.json").string()) << cfg.dump(1);
}

std::vector<float> flat(const RowMatrixXf& m) { return {m.data(), m.data() + m.size()}; }

}  // namespace

TEST_CASE("A transformers checkpoint loads back into the same model") {
    for (const bool bias : {false, true}) {
        CAPTURE(bias);
        auto m = test::random_model(70, 4, 2, 8, 40, 2, false, RopePairing::half_split);
        if (bias)
            for (auto& L : m.layers) {
                auto& a = std::get<model::GqaAttention>(L.attn);
                const auto b = test::random_vector<float>(std::size_t(a.wqkv.rows()), 0.3);
                a.bqkv = Eigen::Map<const Eigen::VectorXf>(b.data(), Eigen::Index(b.size()));
            }
        TempDir dir;
        write_hf(m, dir.path, bias ? "qwen2" : "llama", bias, true);
        const auto back = model::load_safetensors(dir.path.string());
        CHECK(back.config.rope.pairing == RopePairing::half_split);
        CHECK(back.config.layers == 2);
        const auto tok = test::random_tokens(23, 70);
        auto c0 = m.make_cache(32), c1 = back.make_cache(32);
        TRANSMLA_CHECK_CLOSE(flat(back.forward(tok, c1)), flat(m.forward(tok, c0)), 1e-6);
    }
}

TEST_CASE("An untied checkpoint without lm_head is refused") {
    const auto m = test::random_model(30, 2, 1, 8, 16, 1, false, RopePairing::half_split);
    TempDir dir;
    write_hf(m, dir.path, "llama", false, false);
    CHECK_THROWS_AS(model::load_safetensors(dir.path.string()), transmla::error);
}
