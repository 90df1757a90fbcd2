// transmla/model/report.hpp — JSON forms of conversion and evaluation results, atomic JSON
// files, and the timing of one decode-attention step at a long context.
#pragma once

#include "transmla/convert/layer.hpp"
#include "transmla/error.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/model.hpp"
#include "transmla/model/perplexity.hpp"

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace transmla::model {

/// A finite number, or JSON null (NaN / infinity are not JSON).
inline nlohmann::json json_number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

inline nlohmann::json to_json(const convert::LayerReport& r) {
    return {{"method", convert::to_string(r.method)},
            {"rope_dim", r.rope_dim},
            {"rank", r.rank},
            {"freqfold", r.freqfold},
            {"rope_energy", json_number(r.rope_energy)},
            {"pca_energy", json_number(r.pca_energy)},
            {"alpha", json_number(r.alpha)},
            {"key_error", json_number(r.key_error)},
            {"value_error", json_number(r.value_error)},
            {"weighted_error", json_number(r.weighted_error)},
            {"logit_error", json_number(r.logit_error)},
            {"attn_output_error", json_number(r.attn_output_error)},
            {"cache_values_original", r.cache_original},
            {"cache_values_converted", r.cache_converted}};
}

inline nlohmann::json to_json(const PerplexityResult& p) {
    return {{"perplexity", json_number(p.perplexity)},
            {"mean_nll", json_number(p.mean_nll)},
            {"tokens_predicted", p.predicted},
            {"windows", p.windows},
            {"seconds", p.seconds}};
}

inline nlohmann::json to_json(const convert::ConvertOptions& o) {
    nlohmann::json j{{"method", convert::to_string(o.method)}};
    if (o.method == convert::Method::transmla || o.method == convert::Method::output_aware) {
        j["rope_dim"] = o.rope_dim;
        j["freqfold"] = o.freqfold;
        j["rank"] = o.rank;
        j["cache_budget"] = o.cache_budget;
        j["balance"] = o.balance;
        j["q_lora_rank"] = o.q_lora_rank;
        if (o.method == convert::Method::output_aware) j["logit_weight"] = o.logit_weight;
    } else if (o.method == convert::Method::mha2mla) {
        j["selection"] = convert::to_string(o.selection);
        j["svd"] = convert::to_string(o.svd);
        j["rope_dims_per_head"] = o.mha2mla_rope_dims;
        j["latent_dim_per_head"] = o.mha2mla_latent_dim;
        j["uniform_start"] = o.uniform_start;
    }
    return j;
}

/// Per-layer reports and timings of a whole-model conversion.
inline nlohmann::json to_json(const ModelConversion& c) {
    nlohmann::json layers = nlohmann::json::array();
    for (std::size_t l = 0; l < c.layers.size(); ++l) {
        auto j = to_json(c.layers[l]);
        j["layer"] = l;
        j["seconds"] = c.layer_seconds[l];
        j["attention"] = attention_kind(c.model.layers[l].attn);
        layers.push_back(std::move(j));
    }
    return {{"calibration_tokens", c.calibration_tokens},
            {"calibration_passes", c.calibration_passes},
            {"calibration_seconds", c.calibration_seconds},
            {"conversion_seconds", c.conversion_seconds},
            {"total_seconds", c.total_seconds},
            {"layers", std::move(layers)}};
}

/// Writes `j` (pretty-printed) to `path` through a temporary file in the same folder, renamed
/// into place, so a reader never sees a partial file.
/// Throws unless `path` can be written as a file by write_json_file or another atomic writer: its
/// directory exists and is writable, and `path` itself is not a directory. `what` names the
/// option or role in the message (e.g. "--report"). Call it before long work.
inline void check_output_file(const std::string& path, const std::string& what) {
    namespace fs = std::filesystem;
    require(!path.empty(), what, ": the output path is empty");
    const fs::path p(path);
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    std::error_code ec;
    require(fs::is_directory(dir, ec), what, ": the directory '", dir.string(), "' of '", path, "' does not exist");
    require(!fs::is_directory(p, ec), what, ": '", path, "' is a directory, not a file");
    require(::access(dir.c_str(), W_OK) == 0, what, ": the directory '", dir.string(), "' is not writable");
}

inline void write_json_file(const std::string& path, const nlohmann::json& j) {
    namespace fs = std::filesystem;
    const fs::path p(path);
    const fs::path tmp = p.parent_path() / (p.filename().string() + ".tmp" + std::to_string(std::random_device{}()));
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        require(f.good(), "write_json_file: cannot create '", tmp.string(), "'");
        f << j.dump(2) << '\n';
        f.flush();
        require(f.good(), "write_json_file: write to '", tmp.string(), "' failed");
    }
    std::error_code ec;
    fs::rename(tmp, p, ec);
    if (ec) {
        fs::remove(tmp);
        fail("write_json_file: cannot rename '", tmp.string(), "' to '", path, "': ", ec.message());
    }
}

/// The SmolLM2 file: $TRANSMLA_MODEL, else ~/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf
/// (what scripts/fetch-model.sh writes).
inline std::string default_model_path() {
    if (const char* e = std::getenv("TRANSMLA_MODEL"); e && *e) return e;
    const char* home = std::getenv("HOME");
    return std::string(home ? home : ".") + "/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf";
}

/// Seconds per token of one decode step of attention layer `layer` (its whole attention block:
/// projections, RoPE, cache append and the attention over the cache) at `context` cached tokens,
/// the median over `reps` timed steps after two warm-up steps, on `scratch`: a cache of the
/// layer's width with room for context + 1 tokens holding any finite values (attention time does
/// not depend on them; each step appends one token and is rolled back, and `scratch` is left
/// with `context` tokens). One filled cache can serve every layer of one shape at every context
/// up to its capacity − 1, so timing many layers and contexts does not refill caches.
inline double decode_attention_seconds(const Model& m, std::size_t layer, LayerCache& scratch, std::int64_t context,
                                       int reps = 15) {
    require(layer < m.layers.size(), "decode_attention_seconds: no layer ", layer);
    require(context > 0 && reps > 0, "decode_attention_seconds: context and reps must be positive");
    const Attention& at = m.layers[layer].attn;
    require(scratch.width == cache_width(at) && context + 1 <= scratch.capacity,
            "decode_attention_seconds: a scratch cache of width ", scratch.width, " and capacity ", scratch.capacity,
            " cannot time layer ", layer, " (width ", cache_width(at), ") at context ", context);
    std::mt19937 g(4321);
    std::normal_distribution<float> nd(0.f, 1.f);
    RowMatrixXf x(1, m.config.hidden);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = nd(g);
    scratch.size = context;
    std::vector<double> t;
    for (int k = 0; k < reps + 2; ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto out = m.attention(at, x, scratch);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        require(out.allFinite(), "decode_attention_seconds: non-finite output");
        scratch.size = context;
        if (k >= 2) t.push_back(s);  // two warm-up steps
    }
    std::nth_element(t.begin(), t.begin() + std::ptrdiff_t(t.size() / 2), t.end());
    return t[t.size() / 2];
}

/// A cache for decode_attention_seconds: room for `capacity` tokens of the form `at`, every row
/// filled with standard normal values (fixed seed).
inline LayerCache random_layer_cache(const Attention& at, std::int64_t capacity) {
    LayerCache c = Model::make_layer_cache(at, capacity);
    std::mt19937 g(1234);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& v : c.rows) v = nd(g);
    c.size = capacity;
    return c;
}

/// As above on a cache of its own (filled with random rows for this call only).
inline double decode_attention_seconds(const Model& m, std::size_t layer, std::int64_t context, int reps = 15) {
    require(layer < m.layers.size(), "decode_attention_seconds: no layer ", layer);
    require(context > 0 && reps > 0, "decode_attention_seconds: context and reps must be positive");
    LayerCache c = random_layer_cache(m.layers[layer].attn, context + 1);
    return decode_attention_seconds(m, layer, c, context, reps);
}

}  // namespace transmla::model
