// transmla/model/export_hf.hpp — a DeepseekCheckpoint as a Hugging Face DeepSeek-V3 directory
// that stock transformers (DeepseekV3ForCausalLM, no remote code) loads, and back:
//   config.json                  model_type deepseek_v3, every layer dense
//                                (first_k_dense_replace = num_hidden_layers), rope_interleave,
//                                no custom keys
//   model.safetensors            or model-0000K-of-0000N.safetensors + model.safetensors.index.json
//                                when the tensors exceed `shard_bytes`
//   tokenizer files              copied from a Hugging Face source directory when one is given
// The directory is built under a temporary name beside the target and renamed into place when
// complete; an existing directory of the same name is replaced only then.
//
// The latent norm weights depend on the ε the engine applies to kv_a_layernorm, and engines
// differ: transformers uses its RMSNorm default 1e-6 whatever rms_norm_eps says; vLLM and SGLang
// use rms_norm_eps. HfExportOptions::engine picks one (default transformers); a directory written
// for one engine scales the latent by sqrt(ε_file/ε_engine) in the other, unless the model's
// rms_norm_eps is 1e-6. read_deepseek_v3_dir takes the ε to read with.
// lm_head.weight is always written (tie_word_embeddings false): vLLM does not tie the head.
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/json.hpp"
#include "transmla/io/safetensors.hpp"
#include "transmla/model/deepseek.hpp"
#include "transmla/model/export_gguf.hpp"  // ExportDtype

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace transmla::model {

/// The ε transformers' DeepseekV3RMSNorm applies to kv_a_layernorm / q_a_layernorm.
inline constexpr double transformers_latent_norm_eps = 1e-6;

/// Files of a Hugging Face directory that describe the tokenizer (copied when present).
inline const std::vector<std::string>& hf_tokenizer_files() {
    static const std::vector<std::string> f{"tokenizer.json",          "tokenizer_config.json", "special_tokens_map.json",
                                            "vocab.json",              "merges.txt",            "tokenizer.model",
                                            "generation_config.json",  "chat_template.jinja",   "added_tokens.json"};
    return f;
}

namespace detail {

inline nlohmann::ordered_json deepseek_v3_config_json(const DeepseekConfig& c, ExportDtype dtype) {
    nlohmann::ordered_json j;
    j["architectures"] = {"DeepseekV3ForCausalLM"};
    j["model_type"] = "deepseek_v3";
    j["vocab_size"] = c.vocab;
    j["hidden_size"] = c.hidden;
    j["intermediate_size"] = c.intermediate;
    j["moe_intermediate_size"] = c.intermediate;
    j["num_hidden_layers"] = c.layers;
    j["num_attention_heads"] = c.heads;
    j["num_key_value_heads"] = c.heads;
    j["first_k_dense_replace"] = c.layers;  // every layer dense: no expert is ever built
    j["n_shared_experts"] = 0;
    j["kv_lora_rank"] = c.kv_lora_rank;
    if (c.q_lora_rank > 0) j["q_lora_rank"] = c.q_lora_rank;
    else j["q_lora_rank"] = nullptr;
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["rms_norm_eps"] = c.rms_eps;
    j["rope_theta"] = c.rope_base;
    if (std::abs(c.rope_linear_factor - 1.0) > 1e-12)
        j["rope_scaling"] = {{"rope_type", "linear"}, {"type", "linear"}, {"factor", c.rope_linear_factor}};
    j["rope_interleave"] = true;  // RoPE on adjacent pairs (2j, 2j+1), the layout written here
    j["max_position_embeddings"] = c.max_positions;
    j["tie_word_embeddings"] = false;  // lm_head.weight is always written (see write_deepseek_v3_dir)
    if (c.bos_token >= 0) j["bos_token_id"] = c.bos_token;
    if (c.eos_token >= 0) j["eos_token_id"] = c.eos_token;
    j["num_nextn_predict_layers"] = 0;
    j["torch_dtype"] = dtype == ExportDtype::f32 ? "float32" : dtype == ExportDtype::f16 ? "float16" : "bfloat16";
    return j;
}

inline void write_text_file_in(const std::filesystem::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
    f.flush();
    require(f.good(), "cannot write '", p.string(), "'");
}

}  // namespace detail

/// The engine a Hugging Face directory is written for: it decides the ε of the latent norm.
enum class HfEngine {
    transformers,  ///< DeepseekV3RMSNorm's default ε = 1e-6
    vllm,          ///< vLLM and SGLang: the config's rms_norm_eps
};

struct HfExportOptions {
    HfEngine engine = HfEngine::transformers;
    ExportDtype dtype = ExportDtype::f32;      ///< f32 or bf16 (see write_deepseek_v3_dir)
    std::string tokenizer_dir;                 ///< a Hugging Face directory to copy tokenizer files from
    std::uint64_t shard_bytes = 5ull << 30;    ///< shard above this many bytes per file
};

/// Writes `ck` as a DeepSeek-V3 directory at `dir` (see the top of this file).
inline void write_deepseek_v3_dir(const DeepseekCheckpoint& ck, const std::string& dir, const HfExportOptions& o = {}) {
    namespace fs = std::filesystem;
    validate(ck, "write_deepseek_v3_dir");
    require(o.dtype != ExportDtype::q8_0, "write_deepseek_v3_dir: dtype q8_0 is not a safetensors type; allowed "
            "values for a Hugging Face directory are f32, f16, bf16");
    // the scaled latent rows (about 1e-9 of the original) are fine in BF16, which has fp32's
    // exponent range, and below F16's smallest subnormal (transformers casts every tensor to
    // torch_dtype, so a mixed file would not help)
    require(o.dtype != ExportDtype::f16, "write_deepseek_v3_dir: dtype f16 cannot hold the scaled latent rows of "
            "kv_a_proj_with_mqa (about 1e-9 of the original, below F16's range); use bf16 or f32");
    require(o.shard_bytes > 0, "write_deepseek_v3_dir: shard_bytes must be positive");
    const auto& c = ck.config;
    if (!o.tokenizer_dir.empty())
        require(fs::is_directory(o.tokenizer_dir) && fs::exists(fs::path(o.tokenizer_dir) / "tokenizer_config.json"),
                "write_deepseek_v3_dir: '", o.tokenizer_dir, "' is not a Hugging Face directory with a tokenizer_config.json");
    const fs::path target = fs::absolute(fs::path(dir)).lexically_normal();
    const fs::path parent = target.parent_path();
    require(fs::is_directory(parent), "write_deepseek_v3_dir: the directory '", parent.string(), "' of '",
            target.string(), "' does not exist");
    require(!fs::exists(target) || fs::is_directory(target), "write_deepseek_v3_dir: '", target.string(),
            "' exists and is not a directory");
    const fs::path tmp = parent / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(tmp, ec);
    require(fs::create_directory(tmp, ec), "write_deepseek_v3_dir: cannot create '", tmp.string(), "': ", ec.message());
    struct Cleanup {
        fs::path p;
        bool keep = false;
        ~Cleanup() {
            std::error_code e;
            if (!keep) fs::remove_all(p, e);
        }
    } cleanup{tmp};

    // tensors in transformers' names, grouped into shards of at most shard_bytes
    const char* dt = o.dtype == ExportDtype::f32 ? "F32" : o.dtype == ExportDtype::f16 ? "F16" : "BF16";
    const std::uint64_t es = o.dtype == ExportDtype::f32 ? 4 : 2;
    struct Item {
        std::string name;
        const float* data;
        std::vector<std::int64_t> shape;
        std::uint64_t bytes() const {
            std::uint64_t n = 1;
            for (auto e : shape) n *= std::uint64_t(e);
            return n;
        }
    };
    std::vector<Item> items;
    auto mat = [&](const std::string& n, const RowMatrixXf& m) { items.push_back({n, m.data(), {m.rows(), m.cols()}}); };
    auto vec = [&](const std::string& n, const VectorXf& v) { items.push_back({n, v.data(), {v.size()}}); };
    mat("model.embed_tokens.weight", ck.embed_tokens);
    for (int l = 0; l < c.layers; ++l) {
        const auto& L = ck.layers[std::size_t(l)];
        const std::string p = "model.layers." + std::to_string(l) + ".";
        vec(p + "input_layernorm.weight", L.input_layernorm);
        if (c.q_lora_rank > 0) {
            mat(p + "self_attn.q_a_proj.weight", L.q_a_proj);
            vec(p + "self_attn.q_a_layernorm.weight", L.q_a_layernorm);
            mat(p + "self_attn.q_b_proj.weight", L.q_b_proj);
        } else {
            mat(p + "self_attn.q_proj.weight", L.q_proj);
        }
        mat(p + "self_attn.kv_a_proj_with_mqa.weight", L.kv_a_proj_with_mqa);
        vec(p + "self_attn.kv_a_layernorm.weight", L.kv_a_layernorm);
        mat(p + "self_attn.kv_b_proj.weight", L.kv_b_proj);
        mat(p + "self_attn.o_proj.weight", L.o_proj);
        vec(p + "post_attention_layernorm.weight", L.post_attention_layernorm);
        mat(p + "mlp.gate_proj.weight", L.gate_proj);
        mat(p + "mlp.up_proj.weight", L.up_proj);
        mat(p + "mlp.down_proj.weight", L.down_proj);
    }
    vec("model.norm.weight", ck.norm);
    // always an explicit head (config: untied): vLLM does not tie DeepSeek's head
    mat("lm_head.weight", c.tied_embeddings ? ck.embed_tokens : ck.lm_head);
    std::vector<std::vector<const Item*>> shards(1);
    std::uint64_t in_shard = 0, total = 0;
    for (const auto& it : items) {
        const std::uint64_t b = it.bytes() * es;
        if (in_shard > 0 && in_shard + b > o.shard_bytes) shards.emplace_back(), in_shard = 0;
        shards.back().push_back(&it);
        in_shard += b, total += b;
    }
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    const std::size_t n = shards.size();
    for (std::size_t s = 0; s < n; ++s) {
        char name[64];
        if (n == 1) std::snprintf(name, sizeof name, "model.safetensors");
        else std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
        io::SafetensorsWriter w;
        w.set_metadata("format", "pt");
        for (const Item* it : shards[s]) {
            w.add(it->name, it->shape, std::span<const float>(it->data, std::size_t(it->bytes())), dt);
            weight_map[it->name] = name;
        }
        w.write((tmp / name).string());
    }
    if (n > 1) {
        nlohmann::ordered_json idx;
        idx["metadata"] = {{"total_size", total}};
        idx["weight_map"] = weight_map;
        detail::write_text_file_in(tmp / "model.safetensors.index.json", idx.dump(2) + "\n");
    }
    detail::write_text_file_in(tmp / "config.json", detail::deepseek_v3_config_json(c, o.dtype).dump(2) + "\n");
    if (!o.tokenizer_dir.empty())
        for (const auto& f : hf_tokenizer_files()) {
            const fs::path src = fs::path(o.tokenizer_dir) / f;
            if (!fs::exists(src)) continue;
            fs::copy_file(src, tmp / f, ec);
            require(!ec, "write_deepseek_v3_dir: cannot copy '", src.string(), "': ", ec.message());
        }
    // put the new directory in place; an old one is moved aside first and removed after
    const fs::path old = parent / ("." + target.filename().string() + ".old." + std::to_string(::getpid()));
    const bool had = fs::exists(target);
    if (had) {
        fs::rename(target, old, ec);
        require(!ec, "write_deepseek_v3_dir: cannot move the existing '", target.string(), "' aside: ", ec.message());
    }
    fs::rename(tmp, target, ec);
    if (ec) {
        std::error_code e2;
        if (had) fs::rename(old, target, e2);
        fail("write_deepseek_v3_dir: cannot rename '", tmp.string(), "' to '", target.string(), "': ", ec.message());
    }
    cleanup.keep = true;
    if (had) fs::remove_all(old, ec);
}

/// Exports a converted model as a DeepSeek-V3 directory for transformers.
inline void write_deepseek_v3_dir(const Model& m, const std::string& dir, const HfExportOptions& o = {},
                                  double max_rel_dev = 1e-9) {
    DeepseekExportOptions e;
    e.latent_norm_eps = o.engine == HfEngine::transformers ? transformers_latent_norm_eps : m.config.rms_eps;
    e.max_rel_dev = max_rel_dev;
    write_deepseek_v3_dir(to_deepseek(m, e), dir, o);
}

/// Reads a DeepSeek-V3 (or V2) Hugging Face directory with dense layers into a checkpoint;
/// `latent_norm_eps` is the ε of the engine whose function is wanted (transformers: 1e-6).
inline DeepseekCheckpoint read_deepseek_v3_dir(const std::string& dir,
                                               double latent_norm_eps = transformers_latent_norm_eps) {
    namespace fs = std::filesystem;
    const fs::path cfgp = fs::path(dir) / "config.json";
    const std::string where = "'" + cfgp.string() + "'";
    std::ifstream in(cfgp, std::ios::binary);
    require(in.good(), "read_deepseek_v3_dir: cannot open ", where);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const nlohmann::json j = io::parse_json(text, where);
    auto get_int = [&](const char* k, std::int64_t lo, std::int64_t hi) {
        require(j.contains(k) && j[k].is_number_integer(), where, ": '", k, "' is missing or not an integer");
        const std::int64_t v = j[k].get<std::int64_t>();
        require(v >= lo && v <= hi, where, ": '", k, "' = ", v, " is out of range [", lo, ", ", hi, "]");
        return v;
    };
    const std::string mt = j.value("model_type", std::string());
    require(mt == "deepseek_v3" || mt == "deepseek_v2", where, ": model_type '", mt,
            "' is not deepseek_v3 / deepseek_v2");
    const std::int64_t big = std::int64_t(1) << 24;
    DeepseekCheckpoint ck;
    auto& c = ck.config;
    c.name = mt;
    c.vocab = int(get_int("vocab_size", 1, big));
    c.hidden = int(get_int("hidden_size", 1, big));
    c.intermediate = int(get_int("intermediate_size", 1, big));
    c.layers = int(get_int("num_hidden_layers", 1, big));
    c.heads = int(get_int("num_attention_heads", 1, big));
    const std::int64_t dense = j.contains("first_k_dense_replace") ? get_int("first_k_dense_replace", 0, big) : 0;
    const bool moe = j.contains("n_routed_experts") && !j["n_routed_experts"].is_null() &&
                     j["n_routed_experts"].get<std::int64_t>() > 0;
    require(!moe || dense >= c.layers, where, ": layers ", dense, "..", c.layers - 1,
            " are mixture-of-experts layers; this library loads dense DeepSeek models only");
    c.kv_lora_rank = int(get_int("kv_lora_rank", 1, big));
    c.q_lora_rank = j.contains("q_lora_rank") && !j["q_lora_rank"].is_null() ? int(get_int("q_lora_rank", 1, big)) : 0;
    c.qk_rope_head_dim = int(get_int("qk_rope_head_dim", 2, big));
    c.qk_nope_head_dim = int(get_int("qk_nope_head_dim", 0, big));
    c.v_head_dim = int(get_int("v_head_dim", 1, big));
    c.rms_eps = j.value("rms_norm_eps", 1e-6);
    c.rope_base = j.value("rope_theta", 10000.0);
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object())
        c.rope_base = j["rope_parameters"].value("rope_theta", c.rope_base);
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
        const auto& rs = j["rope_scaling"];
        const std::string t = rs.value("rope_type", rs.value("type", std::string("default")));
        require(t == "linear" || t == "default", where, ": rope_scaling type '", t, "' is not supported (linear)");
        if (t == "linear") c.rope_linear_factor = rs.value("factor", 1.0);
    }
    require(j.value("rope_interleave", true), where, ": rope_interleave false (half-split RoPE rows) is not supported");
    require(!j.value("attention_bias", false), where, ": attention_bias true is not DeepSeek's layout");
    c.max_positions = j.value("max_position_embeddings", std::int64_t(4096));
    c.tied_embeddings = j.value("tie_word_embeddings", false);
    c.bos_token = j.contains("bos_token_id") && j["bos_token_id"].is_number_integer() ? j["bos_token_id"].get<int>() : -1;
    c.eos_token = j.contains("eos_token_id") && j["eos_token_id"].is_number_integer() ? j["eos_token_id"].get<int>() : -1;
    ck.latent_norm_eps = latent_norm_eps;
    const io::SafetensorsCheckpoint st(dir);
    const std::int64_t H = c.heads, D = c.hidden, r = c.kv_lora_rank, dn = c.qk_nope_head_dim,
                       dr = c.qk_rope_head_dim, dv = c.v_head_dim, I = c.intermediate, ql = c.q_lora_rank;
    auto mat = [&](const std::string& n, std::int64_t rows, std::int64_t cols) {
        const auto v = st.tensor(n, {rows, cols});
        return RowMatrixXf(Eigen::Map<const RowMatrixXf>(v.data(), rows, cols));
    };
    auto vec = [&](const std::string& n, std::int64_t k) {
        const auto v = st.tensor(n, {k});
        return VectorXf(Eigen::Map<const VectorXf>(v.data(), k));
    };
    ck.embed_tokens = mat("model.embed_tokens.weight", c.vocab, D);
    ck.norm = vec("model.norm.weight", D);
    if (!c.tied_embeddings) ck.lm_head = mat("lm_head.weight", c.vocab, D);
    ck.layers.resize(std::size_t(c.layers));
    for (int l = 0; l < c.layers; ++l) {
        auto& L = ck.layers[std::size_t(l)];
        const std::string p = "model.layers." + std::to_string(l) + ".";
        L.input_layernorm = vec(p + "input_layernorm.weight", D);
        L.post_attention_layernorm = vec(p + "post_attention_layernorm.weight", D);
        if (ql > 0) {
            L.q_a_proj = mat(p + "self_attn.q_a_proj.weight", ql, D);
            L.q_a_layernorm = vec(p + "self_attn.q_a_layernorm.weight", ql);
            L.q_b_proj = mat(p + "self_attn.q_b_proj.weight", H * (dn + dr), ql);
        } else {
            L.q_proj = mat(p + "self_attn.q_proj.weight", H * (dn + dr), D);
        }
        L.kv_a_proj_with_mqa = mat(p + "self_attn.kv_a_proj_with_mqa.weight", r + dr, D);
        L.kv_a_layernorm = vec(p + "self_attn.kv_a_layernorm.weight", r);
        L.kv_b_proj = mat(p + "self_attn.kv_b_proj.weight", H * (dn + dv), r);
        L.o_proj = mat(p + "self_attn.o_proj.weight", D, H * dv);
        L.gate_proj = mat(p + "mlp.gate_proj.weight", I, D);
        L.up_proj = mat(p + "mlp.up_proj.weight", I, D);
        L.down_proj = mat(p + "mlp.down_proj.weight", D, I);
    }
    validate(ck, where);
    return ck;
}

/// A DeepSeek-V3 directory as a model::Model computing what transformers computes.
inline Model load_deepseek_v3_dir(const std::string& dir, double latent_norm_eps = transformers_latent_norm_eps) {
    return from_deepseek(read_deepseek_v3_dir(dir, latent_norm_eps), dir);
}

}  // namespace transmla::model
