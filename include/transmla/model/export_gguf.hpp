// transmla/model/export_gguf.hpp — writes models as GGUF files that stock llama.cpp runs, and
// reads DeepSeek-layout GGUF files back:
//   write_deepseek2_gguf  a converted (MLA) model as llama.cpp's `deepseek2` architecture: dense
//                         layers, q_lora_rank 0 with attn_q (or attn_q_a/q_b), the absorbed-MLA
//                         tensors attn_k_b / attn_v_b, interleaved RoPE rows, norms in F32;
//   write_llama_gguf      a GQA model as `llama` (attn_q / attn_k rows in llama.cpp's order);
//   load_deepseek2_gguf   a `deepseek2` file (exported here or a genuine dense DeepSeek-V2/V3
//                         GGUF, new split k_b/v_b or legacy attn_kv_b tensors) as a model::Model.
// The tokenizer and chat template (every `tokenizer.*` key) are copied from a source GGUF.
// Matrices are stored as F32, F16, BF16 or Q8_0; a matrix whose row length is not a multiple
// of Q8_0's block of 32 is stored as F16, and attn_kv_a_mqa keeps F32 unless BF16 was asked for:
// its latent rows are scaled by s ≈ 1e-9 (model/deepseek.hpp), below F16's and Q8_0's range.
// Files are written atomically (temporary name in the target directory, then rename).
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/gguf.hpp"
#include "transmla/model/deepseek.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/model.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace transmla::model {

/// Storage type of the exported matrices.
enum class ExportDtype { f32, f16, bf16, q8_0 };

inline const char* to_string(ExportDtype t) noexcept {
    switch (t) {
        case ExportDtype::f32: return "f32";
        case ExportDtype::f16: return "f16";
        case ExportDtype::bf16: return "bf16";
        default: return "q8_0";
    }
}
inline ExportDtype parse_export_dtype(std::string_view s) {
    for (auto t : {ExportDtype::f32, ExportDtype::f16, ExportDtype::bf16, ExportDtype::q8_0})
        if (s == to_string(t)) return t;
    fail("unsupported dtype '", s, "': allowed values are f32, f16, bf16, q8_0");
}

namespace detail {

inline io::GgmlType ggml_type_of(ExportDtype t) noexcept {
    switch (t) {
        case ExportDtype::f32: return io::GgmlType::F32;
        case ExportDtype::f16: return io::GgmlType::F16;
        case ExportDtype::bf16: return io::GgmlType::BF16;
        default: return io::GgmlType::Q8_0;
    }
}

/// The type a matrix with rows of `row` values is stored as.
inline io::GgmlType matrix_type(ExportDtype t, std::int64_t row) {
    const io::GgmlType g = ggml_type_of(t);
    if (row % io::ggml_traits(g).block_elems != 0) return io::GgmlType::F16;
    return g;
}

inline void add_matrix(io::GgufWriter& w, const std::string& name, const RowMatrixXf& m, io::GgmlType type) {
    w.add_tensor(name, {m.rows(), m.cols()}, std::span<const float>(m.data(), std::size_t(m.size())), type);
}
inline void add_vector(io::GgufWriter& w, const std::string& name, const VectorXf& v) {
    w.add_tensor(name, {v.size()}, std::span<const float>(v.data(), std::size_t(v.size())), io::GgmlType::F32);
}

/// Copies every `tokenizer.*` key of `src` (vocabulary, merges, types, special ids, chat template).
inline void copy_tokenizer(io::GgufWriter& w, const io::GgufFile& src) {
    bool any = false;
    for (const auto& [k, v] : src.metadata())
        if (k.rfind("tokenizer.", 0) == 0) w.set(k, v), any = true;
    require(any, "GGUF '", src.path(), "' has no tokenizer.* metadata to copy into the exported file");
}

inline void set_u32(io::GgufWriter& w, const std::string& k, std::int64_t v) {
    require(v >= 0 && v <= 0xffffffffLL, "GGUF export: ", k, " = ", v, " does not fit in uint32");
    w.set(k, io::GgufValue::u32(std::uint32_t(v)));
}
inline void set_f32(io::GgufWriter& w, const std::string& k, double v) { w.set(k, io::GgufValue::f32(float(v))); }

/// The keys both writers set: `arch`.* hyper-parameters, general.*, and the copied tokenizer.
struct CommonKeys {
    std::string arch, name;
    std::int64_t context = 0, hidden = 0, layers = 0, ff = 0, heads = 0, heads_kv = 0, rope_dims = 0, vocab = 0;
    double rope_base = 10000.0, rope_linear_factor = 1.0, rms_eps = 1e-6;
};
inline void set_common(io::GgufWriter& w, const CommonKeys& k, ExportDtype dtype, const io::GgufFile& tokenizer_source) {
    const std::string a = k.arch + ".";
    w.set("general.architecture", io::GgufValue::string(k.arch));
    w.set("general.name", io::GgufValue::string(k.name));
    set_u32(w, "general.file_type", dtype == ExportDtype::f32    ? 0
                                    : dtype == ExportDtype::f16  ? 1
                                    : dtype == ExportDtype::q8_0 ? 7
                                                                 : 32);  // llama_ftype: MOSTLY_BF16
    set_u32(w, a + "context_length", k.context);
    set_u32(w, a + "embedding_length", k.hidden);
    set_u32(w, a + "block_count", k.layers);
    set_u32(w, a + "feed_forward_length", k.ff);
    set_u32(w, a + "attention.head_count", k.heads);
    set_u32(w, a + "attention.head_count_kv", k.heads_kv);
    set_f32(w, a + "rope.freq_base", k.rope_base);
    if (std::abs(k.rope_linear_factor - 1.0) > 1e-12) {
        w.set(a + "rope.scaling.type", io::GgufValue::string("linear"));
        set_f32(w, a + "rope.scaling.factor", k.rope_linear_factor);
    }
    set_f32(w, a + "attention.layer_norm_rms_epsilon", k.rms_eps);
    set_u32(w, a + "rope.dimension_count", k.rope_dims);
    set_u32(w, a + "vocab_size", k.vocab);
    copy_tokenizer(w, tokenizer_source);
}

}  // namespace detail

/// Writes `ck` (to_deepseek() of a converted model, with latent_norm_eps = the model's rms_eps:
/// llama.cpp applies that ε to the latent norm) as a `deepseek2` GGUF at `path`.
inline void write_deepseek2_gguf(const DeepseekCheckpoint& ck, const io::GgufFile& tokenizer_source,
                                 const std::string& path, ExportDtype dtype = ExportDtype::f32) {
    validate(ck, "write_deepseek2_gguf");
    const auto& c = ck.config;
    require(std::abs(ck.latent_norm_eps - c.rms_eps) <= 1e-12 * c.rms_eps, "write_deepseek2_gguf: the checkpoint's "
            "latent norms were made for ε = ", ck.latent_norm_eps, " but llama.cpp applies the model's rms_eps ",
            c.rms_eps, " to them (pass latent_norm_eps = rms_eps to to_deepseek)");
    require(c.qk_nope_head_dim >= 1, "write_deepseek2_gguf: llama.cpp needs qk_nope_head_dim >= 1");
    io::GgufWriter w;
    detail::set_common(w, {"deepseek2", c.name, c.max_positions, c.hidden, c.layers, c.intermediate, c.heads,
                           1,  // absorbed MLA is MQA over [c | k_pe]
                           c.qk_rope_head_dim, c.vocab, c.rope_base, c.rope_linear_factor, c.rms_eps},
                       dtype, tokenizer_source);
    const std::string a = "deepseek2.";
    using detail::set_u32;
    set_u32(w, a + "attention.key_length", c.kv_lora_rank + c.qk_rope_head_dim);
    set_u32(w, a + "attention.value_length", c.kv_lora_rank);
    set_u32(w, a + "attention.key_length_mla", c.qk_head_dim());
    set_u32(w, a + "attention.value_length_mla", c.v_head_dim);
    set_u32(w, a + "attention.q_lora_rank", c.q_lora_rank);
    set_u32(w, a + "attention.kv_lora_rank", c.kv_lora_rank);
    set_u32(w, a + "leading_dense_block_count", c.layers);  // every layer dense: no experts
    set_u32(w, a + "expert_feed_forward_length", c.intermediate);
    set_u32(w, a + "expert_shared_count", 0);

    using detail::add_matrix;
    using detail::add_vector;
    using detail::matrix_type;
    const int H = c.heads, r = c.kv_lora_rank, dn = c.qk_nope_head_dim, dv = c.v_head_dim;
    add_matrix(w, "token_embd.weight", ck.embed_tokens, matrix_type(dtype, c.hidden));
    add_vector(w, "output_norm.weight", ck.norm);
    if (!c.tied_embeddings) add_matrix(w, "output.weight", ck.lm_head, matrix_type(dtype, c.hidden));
    const io::GgmlType kv_a_type = dtype == ExportDtype::bf16 ? io::GgmlType::BF16 : io::GgmlType::F32;
    for (int l = 0; l < c.layers; ++l) {
        const auto& L = ck.layers[std::size_t(l)];
        const std::string p = "blk." + std::to_string(l) + ".";
        add_vector(w, p + "attn_norm.weight", L.input_layernorm);
        if (c.q_lora_rank > 0) {
            add_matrix(w, p + "attn_q_a.weight", L.q_a_proj, kv_a_type);  // scaled like kv_a: keep the range
            add_vector(w, p + "attn_q_a_norm.weight", L.q_a_layernorm);
            add_matrix(w, p + "attn_q_b.weight", L.q_b_proj, matrix_type(dtype, c.q_lora_rank));
        } else {
            add_matrix(w, p + "attn_q.weight", L.q_proj, matrix_type(dtype, c.hidden));
        }
        add_matrix(w, p + "attn_kv_a_mqa.weight", L.kv_a_proj_with_mqa, kv_a_type);
        add_vector(w, p + "attn_kv_a_norm.weight", L.kv_a_layernorm);
        // k_b: per head W_UK^iᵀ [r][dn] (ggml {dn, r, H}); v_b: per head W_UV^i [dv][r] (ggml {r, dv, H})
        std::vector<float> kb(std::size_t(H) * r * dn), vb(std::size_t(H) * dv * r);
        for (int i = 0; i < H; ++i) {
            const Eigen::Index base = Eigen::Index(i) * (dn + dv);
            for (int e = 0; e < r; ++e)
                for (int j = 0; j < dn; ++j) kb[(std::size_t(i) * r + e) * dn + j] = L.kv_b_proj(base + j, e);
            for (int j = 0; j < dv; ++j)
                for (int e = 0; e < r; ++e) vb[(std::size_t(i) * dv + j) * r + e] = L.kv_b_proj(base + dn + j, e);
        }
        w.add_tensor(p + "attn_k_b.weight", {H, r, dn}, kb, matrix_type(dtype, dn));
        w.add_tensor(p + "attn_v_b.weight", {H, dv, r}, vb, matrix_type(dtype, r));
        add_matrix(w, p + "attn_output.weight", L.o_proj, matrix_type(dtype, std::int64_t(H) * dv));
        add_vector(w, p + "ffn_norm.weight", L.post_attention_layernorm);
        add_matrix(w, p + "ffn_gate.weight", L.gate_proj, matrix_type(dtype, c.hidden));
        add_matrix(w, p + "ffn_up.weight", L.up_proj, matrix_type(dtype, c.hidden));
        add_matrix(w, p + "ffn_down.weight", L.down_proj, matrix_type(dtype, c.intermediate));
    }
    w.write(path);
}

/// Exports a converted model straight to `deepseek2` (to_deepseek at llama.cpp's ε).
inline void write_deepseek2_gguf(const Model& m, const io::GgufFile& tokenizer_source, const std::string& path,
                                 ExportDtype dtype = ExportDtype::f32, double max_rel_dev = 1e-9) {
    DeepseekExportOptions o;
    o.latent_norm_eps = m.config.rms_eps;
    o.max_rel_dev = max_rel_dev;
    write_deepseek2_gguf(to_deepseek(m, o), tokenizer_source, path, dtype);
}

/// Writes a GQA model (every layer GqaAttention, no biases) as a `llama` GGUF.
inline void write_llama_gguf(const Model& m, const io::GgufFile& tokenizer_source, const std::string& path,
                             ExportDtype dtype = ExportDtype::f32) {
    m.validate();
    const auto& c = m.config;
    require(c.rope.scaling == RopeScaling::none || c.rope.scaling == RopeScaling::linear, "write_llama_gguf: RoPE "
            "scaling other than none/linear is not written");
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
        const auto* a = std::get_if<GqaAttention>(&m.layers[l].attn);
        require(a != nullptr, "write_llama_gguf: layer ", l, " is '", attention_kind(m.layers[l].attn),
                "', not the original GQA (write converted models with write_deepseek2_gguf)");
        require(a->bqkv.size() == 0, "write_llama_gguf: layer ", l, " has q/k/v biases, which the llama "
                "architecture does not have");
    }
    io::GgufWriter w;
    detail::set_common(w, {"llama", c.name, c.max_positions, c.hidden, c.layers, c.intermediate, c.n_q, c.n_kv,
                           c.head_dim, c.vocab, c.rope.base,
                           c.rope.scaling == RopeScaling::linear ? c.rope.factor : 1.0, c.rms_eps},
                       dtype, tokenizer_source);
    using detail::add_matrix;
    using detail::add_vector;
    using detail::matrix_type;
    const int D = c.hidden, d = c.head_dim, nq = c.n_q, nkv = c.n_kv, I = c.intermediate;
    add_matrix(w, "token_embd.weight", m.embed, matrix_type(dtype, D));
    add_vector(w, "output_norm.weight", m.out_norm);
    if (m.lm_head.size()) add_matrix(w, "output.weight", m.lm_head, matrix_type(dtype, D));
    for (int l = 0; l < c.layers; ++l) {
        const Layer& L = m.layers[std::size_t(l)];
        const auto& at = std::get<GqaAttention>(L.attn);
        const std::string p = "blk." + std::to_string(l) + ".";
        add_vector(w, p + "attn_norm.weight", L.attn_norm);
        auto rows = [&](Eigen::Index first, Eigen::Index n, int heads, bool permute) {
            std::vector<float> v(std::size_t(n) * D);
            Eigen::Map<RowMatrixXf>(v.data(), n, D) = at.wqkv.middleRows(first, n);
            // llama.cpp rotates adjacent pairs: Hugging Face (half-split) rows are interleaved
            if (permute && at.pairing == RopePairing::half_split) io::permute_llama_qk(v, heads, d, D);
            return v;
        };
        w.add_tensor(p + "attn_q.weight", {Eigen::Index(nq) * d, D}, rows(0, Eigen::Index(nq) * d, nq, true),
                     matrix_type(dtype, D));
        w.add_tensor(p + "attn_k.weight", {Eigen::Index(nkv) * d, D},
                     rows(Eigen::Index(nq) * d, Eigen::Index(nkv) * d, nkv, true), matrix_type(dtype, D));
        w.add_tensor(p + "attn_v.weight", {Eigen::Index(nkv) * d, D},
                     rows(Eigen::Index(nq + nkv) * d, Eigen::Index(nkv) * d, nkv, false), matrix_type(dtype, D));
        add_matrix(w, p + "attn_output.weight", at.wo, matrix_type(dtype, std::int64_t(nq) * d));
        add_vector(w, p + "ffn_norm.weight", L.ffn_norm);
        add_matrix(w, p + "ffn_gate.weight", L.mlp.gate_up.topRows(I), matrix_type(dtype, D));
        add_matrix(w, p + "ffn_up.weight", L.mlp.gate_up.bottomRows(I), matrix_type(dtype, D));
        add_matrix(w, p + "ffn_down.weight", L.mlp.down, matrix_type(dtype, I));
    }
    w.write(path);
}

/// Reads a `deepseek2` GGUF into a DeepseekCheckpoint (weights as fp32; latent norm ε = the
/// file's rms_eps, as llama.cpp applies it). Mixture-of-experts layers are not supported: the
/// error says so.
inline DeepseekCheckpoint read_deepseek2_gguf(const io::GgufFile& f) {
    const std::string arch = f.meta_string("general.architecture");
    require(arch == "deepseek2", "GGUF '", f.path(), "': general.architecture is '", arch,
            "', expected 'deepseek2' (a DeepSeek-V2/V3-layout MLA model)");
    using detail::gguf_hparam;
    using detail::gguf_max_dim;
    const std::string a = "deepseek2.";
    DeepseekCheckpoint ck;
    DeepseekConfig& c = ck.config;
    c.name = f.meta_string_or("general.name", "deepseek2");
    c.hidden = int(gguf_hparam(f, a + "embedding_length", 1, gguf_max_dim));
    c.layers = int(gguf_hparam(f, a + "block_count", 1, gguf_max_dim));
    c.heads = int(gguf_hparam(f, a + "attention.head_count", 1, gguf_max_dim));
    c.intermediate = int(gguf_hparam(f, a + "feed_forward_length", 1, gguf_max_dim));
    const std::int64_t zero = 0, n_layers = c.layers;
    const std::int64_t dense = gguf_hparam(f, a + "leading_dense_block_count", 0, gguf_max_dim, &n_layers);
    const std::int64_t experts = gguf_hparam(f, a + "expert_count", 0, gguf_max_dim, &zero);
    require(experts == 0 || dense >= c.layers, "GGUF '", f.path(), "': layers ", dense, "..", c.layers - 1,
            " are mixture-of-experts layers (", experts, " experts); this library loads dense DeepSeek models only");
    c.q_lora_rank = int(gguf_hparam(f, a + "attention.q_lora_rank", 0, gguf_max_dim, &zero));
    c.kv_lora_rank = int(gguf_hparam(f, a + "attention.kv_lora_rank", 1, gguf_max_dim));
    c.qk_rope_head_dim = int(gguf_hparam(f, a + "rope.dimension_count", 2, gguf_max_dim));
    const std::int64_t k_mla = gguf_hparam(f, a + "attention.key_length_mla", 1, gguf_max_dim);
    c.v_head_dim = int(gguf_hparam(f, a + "attention.value_length_mla", 1, gguf_max_dim));
    require(k_mla > c.qk_rope_head_dim && c.qk_rope_head_dim % 2 == 0, "GGUF '", f.path(), "': key_length_mla ",
            k_mla, " must exceed an even rope.dimension_count ", c.qk_rope_head_dim);
    c.qk_nope_head_dim = int(k_mla - c.qk_rope_head_dim);
    c.rms_eps = detail::gguf_positive(f, a + "attention.layer_norm_rms_epsilon", 0, false);
    c.rope_base = detail::gguf_positive(f, a + "rope.freq_base", 10000.0, true);
    const std::string scaling = f.meta_string_or(a + "rope.scaling.type", "none");
    if (scaling == "linear") c.rope_linear_factor = detail::gguf_positive(f, a + "rope.scaling.factor", 0, false);
    else require(scaling == "none", "GGUF '", f.path(), "': rope.scaling.type '", scaling, "' is not supported (none, linear)");
    const std::int64_t default_ctx = 4096, none = -1;
    c.max_positions = gguf_hparam(f, a + "context_length", 1, std::int64_t(1) << 31, &default_ctx);
    {
        const auto s = f.tensor("token_embd.weight").shape();
        require(s.size() == 2 && s[1] == c.hidden && s[0] > 0 && s[0] <= gguf_max_dim, "GGUF '", f.path(),
                "': token_embd.weight must be [vocab, ", c.hidden, "]");
        c.vocab = int(s[0]);
    }
    c.tied_embeddings = !f.has_tensor("output.weight");
    c.bos_token = int(gguf_hparam(f, "tokenizer.ggml.bos_token_id", -1, c.vocab - 1, &none));
    c.eos_token = int(gguf_hparam(f, "tokenizer.ggml.eos_token_id", -1, c.vocab - 1, &none));
    ck.latent_norm_eps = c.rms_eps;
    const Eigen::Index H = c.heads, D = c.hidden, r = c.kv_lora_rank, dn = c.qk_nope_head_dim,
                       dr = c.qk_rope_head_dim, dv = c.v_head_dim, I = c.intermediate, ql = c.q_lora_rank;
    require(std::uint64_t(c.layers) <= f.tensors().size(), "GGUF '", f.path(), "': block_count ", c.layers,
            " exceeds the tensor count");
    for (int l = 0; l < c.layers; ++l)
        for (const char* t : {"attn_norm", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_output", "ffn_norm", "ffn_gate",
                              "ffn_up", "ffn_down"}) {
            const std::string name = "blk." + std::to_string(l) + "." + t + ".weight";
            require(f.has_tensor(name), "GGUF '", f.path(), "': block_count ", c.layers, " but tensor '", name,
                    "' is missing");
        }
    using detail::gguf_matrix;
    using detail::gguf_vector;
    ck.embed_tokens = gguf_matrix(f, "token_embd.weight", c.vocab, D);
    if (!c.tied_embeddings) ck.lm_head = gguf_matrix(f, "output.weight", c.vocab, D);
    ck.norm = gguf_vector(f, "output_norm.weight", D);
    ck.layers.resize(std::size_t(c.layers));
    for (int l = 0; l < c.layers; ++l) {
        auto& L = ck.layers[std::size_t(l)];
        const std::string p = "blk." + std::to_string(l) + ".";
        L.input_layernorm = gguf_vector(f, p + "attn_norm.weight", D);
        L.post_attention_layernorm = gguf_vector(f, p + "ffn_norm.weight", D);
        if (ql > 0) {
            L.q_a_proj = gguf_matrix(f, p + "attn_q_a.weight", ql, D);
            L.q_a_layernorm = gguf_vector(f, p + "attn_q_a_norm.weight", ql);
            L.q_b_proj = gguf_matrix(f, p + "attn_q_b.weight", H * (dn + dr), ql);
        } else {
            L.q_proj = gguf_matrix(f, p + "attn_q.weight", H * (dn + dr), D);
        }
        L.kv_a_proj_with_mqa = gguf_matrix(f, p + "attn_kv_a_mqa.weight", r + dr, D);
        L.kv_a_layernorm = gguf_vector(f, p + "attn_kv_a_norm.weight", r);
        if (f.has_tensor(p + "attn_kv_b.weight")) {
            L.kv_b_proj = gguf_matrix(f, p + "attn_kv_b.weight", H * (dn + dv), r);
        } else {
            const auto& tk = f.tensor(p + "attn_k_b.weight");
            const auto& tv = f.tensor(p + "attn_v_b.weight");
            require(tk.shape() == std::vector<std::int64_t>{H, r, dn} && tv.shape() == std::vector<std::int64_t>{H, dv, r},
                    "GGUF '", f.path(), "': ", p, "attn_k_b / attn_v_b must be [", H, ", ", r, ", ", dn, "] / [", H,
                    ", ", dv, ", ", r, "]");
            const auto kb = f.dequantize(tk), vb = f.dequantize(tv);
            L.kv_b_proj.resize(H * (dn + dv), r);
            for (Eigen::Index i = 0; i < H; ++i) {
                for (Eigen::Index e = 0; e < r; ++e)
                    for (Eigen::Index j = 0; j < dn; ++j)
                        L.kv_b_proj(i * (dn + dv) + j, e) = kb[std::size_t((i * r + e) * dn + j)];
                for (Eigen::Index j = 0; j < dv; ++j)
                    for (Eigen::Index e = 0; e < r; ++e)
                        L.kv_b_proj(i * (dn + dv) + dn + j, e) = vb[std::size_t((i * dv + j) * r + e)];
            }
        }
        L.o_proj = gguf_matrix(f, p + "attn_output.weight", D, H * dv);
        L.gate_proj = gguf_matrix(f, p + "ffn_gate.weight", I, D);
        L.up_proj = gguf_matrix(f, p + "ffn_up.weight", I, D);
        L.down_proj = gguf_matrix(f, p + "ffn_down.weight", D, I);
    }
    validate(ck, "GGUF '" + f.path() + "'");
    return ck;
}

/// A `deepseek2` GGUF as a model::Model (computing what llama.cpp computes).
inline Model load_deepseek2_gguf(const io::GgufFile& f) { return from_deepseek(read_deepseek2_gguf(f), f.path()); }
inline Model load_deepseek2_gguf(const std::string& path) { return load_deepseek2_gguf(io::GgufFile(path)); }

}  // namespace transmla::model
