// transmla/io/hf_config.hpp — the Hugging Face config.json of Llama-family decoders (Llama,
// Mistral, Qwen2, SmolLM, ...): the fields an attention / conversion engine needs, with the
// defaults those models' transformers classes use when a key is absent.
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/json.hpp"
#include "transmla/shape.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace transmla::io {

struct HfConfig {
    std::string model_type;                  ///< "llama", "mistral", "qwen2", ...
    std::vector<std::string> architectures;  ///< e.g. {"LlamaForCausalLM"}
    int hidden_size = 0;
    int num_attention_heads = 0;
    int num_key_value_heads = 0;  ///< default: num_attention_heads
    int head_dim = 0;             ///< default: hidden_size / num_attention_heads
    int intermediate_size = 0;
    int num_hidden_layers = 0;
    int vocab_size = 0;
    int max_position_embeddings = 0;  ///< 0 when absent
    double rms_norm_eps = 1e-6;
    bool tie_word_embeddings = false;
    bool attention_bias = false;  ///< q/k/v projections have biases (always true for qwen2)
    std::string hidden_act = "silu";
    RopeSpec rope;  ///< half-split pairing (HF convention); base = rope_theta (default 10000)

    /// GQA shape of the attention layers (throws when the heads do not divide).
    DynamicGqaShape gqa_shape() const { return DynamicGqaShape(num_attention_heads, num_key_value_heads, head_dim); }
};

namespace detail {

template <class T>
T hf_get(const nlohmann::json& j, const char* key, const std::string& where) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        // range-checked: get<int>() would truncate a large integer and cast a float with UB
        if (!j.contains(key)) fail(where, ": field '", key, "' is missing");
        return json_int<T>(j.at(key), ::transmla::detail::concat(where, ": field '", key, "'"));
    }
    try {
        return j.at(key).get<T>();
    } catch (const nlohmann::json::exception& e) {
        fail(where, ": field '", key, "' ", j.contains(key) ? "has the wrong type" : "is missing", " (", e.what(), ")");
    }
}
template <class T>
T hf_get_or(const nlohmann::json& j, const char* key, T fallback, const std::string& where) {
    if (!j.contains(key) || j.at(key).is_null()) return fallback;
    return hf_get<T>(j, key, where);
}

}  // namespace detail

/// Parses a config.json object; `where` (the file name) prefixes every error message.
inline HfConfig parse_hf_config(const nlohmann::json& j, const std::string& where = "config.json") {
    using detail::hf_get;
    using detail::hf_get_or;
    require(j.is_object(), where, ": not a JSON object");
    HfConfig c;
    c.model_type = hf_get_or<std::string>(j, "model_type", "", where);
    c.architectures = hf_get_or<std::vector<std::string>>(j, "architectures", {}, where);
    c.hidden_size = hf_get<int>(j, "hidden_size", where);
    c.num_attention_heads = hf_get<int>(j, "num_attention_heads", where);
    c.num_key_value_heads = hf_get_or<int>(j, "num_key_value_heads", c.num_attention_heads, where);
    c.intermediate_size = hf_get<int>(j, "intermediate_size", where);
    c.num_hidden_layers = hf_get<int>(j, "num_hidden_layers", where);
    c.vocab_size = hf_get<int>(j, "vocab_size", where);
    c.max_position_embeddings = hf_get_or<int>(j, "max_position_embeddings", 0, where);
    c.rms_norm_eps = hf_get_or<double>(j, "rms_norm_eps", 1e-6, where);
    c.tie_word_embeddings = hf_get_or<bool>(j, "tie_word_embeddings", false, where);
    c.attention_bias = hf_get_or<bool>(j, "attention_bias", c.model_type == "qwen2", where);
    c.hidden_act = hf_get_or<std::string>(j, "hidden_act", "silu", where);
    require(c.hidden_size > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.num_hidden_layers > 0 &&
                c.vocab_size > 0 && c.intermediate_size > 0,
            where, ": hidden_size, num_attention_heads, num_key_value_heads, intermediate_size, num_hidden_layers and "
                   "vocab_size must be positive");
    require(c.num_attention_heads % c.num_key_value_heads == 0, where, ": num_attention_heads (", c.num_attention_heads,
            ") is not a multiple of num_key_value_heads (", c.num_key_value_heads, ")");
    if (j.contains("head_dim") && !j.at("head_dim").is_null()) {
        c.head_dim = hf_get<int>(j, "head_dim", where);
    } else {
        require(c.hidden_size % c.num_attention_heads == 0, where, ": no head_dim and hidden_size (", c.hidden_size,
                ") is not a multiple of num_attention_heads (", c.num_attention_heads, ")");
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    require(c.head_dim > 0 && c.head_dim % 2 == 0, where, ": head_dim (", c.head_dim, ") must be positive and even");
    require(c.rms_norm_eps > 0, where, ": rms_norm_eps must be positive, got ", c.rms_norm_eps);

    c.rope.pairing = RopePairing::half_split;
    c.rope.base = hf_get_or<double>(j, "rope_theta", 10000.0, where);
    if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
        const auto& s = j.at("rope_scaling");
        const std::string w = where + ": rope_scaling";
        require(s.is_object(), w, " is not an object");
        std::string type = hf_get_or<std::string>(s, "rope_type", "", w);
        if (type.empty()) type = hf_get_or<std::string>(s, "type", "", w);
        if (type.empty() || type == "default") {
            c.rope.scaling = RopeScaling::none;
        } else if (type == "linear") {
            c.rope.scaling = RopeScaling::linear;
            c.rope.factor = hf_get<double>(s, "factor", w);
        } else if (type == "llama3") {
            c.rope.scaling = RopeScaling::llama3;
            c.rope.factor = hf_get<double>(s, "factor", w);
            c.rope.low_freq_factor = hf_get_or<double>(s, "low_freq_factor", 1.0, w);
            c.rope.high_freq_factor = hf_get_or<double>(s, "high_freq_factor", 4.0, w);
            c.rope.original_max_position = hf_get_or<int>(s, "original_max_position_embeddings", 8192, w);
        } else if (type == "yarn") {
            c.rope.scaling = RopeScaling::yarn;
            c.rope.factor = hf_get<double>(s, "factor", w);
            c.rope.beta_fast = hf_get_or<double>(s, "beta_fast", 32.0, w);
            c.rope.beta_slow = hf_get_or<double>(s, "beta_slow", 1.0, w);
            c.rope.attention_factor = hf_get_or<double>(s, "attention_factor", 0.0, w);
            const int fallback = c.max_position_embeddings > 0 ? c.max_position_embeddings : 8192;
            c.rope.original_max_position = hf_get_or<int>(s, "original_max_position_embeddings", fallback, w);
        } else {
            fail(w, ": unsupported type '", type, "' (supported: default, linear, llama3, yarn)");
        }
    }
    const double partial = hf_get_or<double>(j, "partial_rotary_factor", 1.0, where);
    require(partial == 1.0, where, ": partial_rotary_factor ", partial, " is not supported (RoPE on the whole head)");
    try {
        c.rope.validate(c.head_dim);
    } catch (const error& e) {
        fail(where, ": ", e.what());
    }
    return c;
}

/// Parses the text of a config.json; `name` (a file name, or e.g. "<fuzz input>") is named in
/// every error message. Nesting deeper than 64 levels is rejected before parsing.
inline HfConfig parse_hf_config_text(std::string_view text, const std::string& name) {
    const std::string where = "HF config '" + name + "'";
    return parse_hf_config(parse_json(text, where), where);
}

/// Reads and parses a config.json file.
inline HfConfig read_hf_config(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    require(f.good(), "cannot open HF config '", path, "'");
    const std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
    require(!f.bad(), "cannot read HF config '", path, "'");
    return parse_hf_config_text(text, path);
}

}  // namespace transmla::io
