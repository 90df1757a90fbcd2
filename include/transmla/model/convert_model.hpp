// transmla/model/convert_model.hpp — whole-model GQA → MLA conversion on real text:
// calibration (each layer's attention-input statistics, docs/conversion.md), the two-phase TransMLA
// conversion, the exact mode and MHA2MLA, and the bridges between the fp32 runtime layers of
// model.hpp and the fp64 layer types of convert/.
//
// TransMLA, as docs/conversion.md describes it (no shortcuts):
//   1. run the ORIGINAL model on the calibration sequences, gather H_ℓ = Σ [x;1][x;1]ᵀ of every
//      layer's attention input;
//   2. RoRoPE + FreqFold of every layer from its H_ℓ (convert::rorope) → partial-RoPE layers;
//   3. run the partial-RoPE MODEL (every layer replaced) on the calibration sequences again and
//      gather H'_ℓ;
//   4. balanced KV, joint PCA at rank r, query and scale, assembly (convert::finish_transmla) of
//      every layer from H'_ℓ → DeepSeek-V3-layout MLA layers (run naive for prompts, absorbed
//      for decode).
// Exact mode: F = 1, d_r = d, RoPE kept on all L latent dims, full rank r = L: the MLA model
// reproduces the original to rounding (same cache size). MHA2MLA: partial RoPE + SVD of the
// weights (statistics only for the 2-norm selection).
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/convert/convert.hpp"
#include "transmla/convert/layer.hpp"
#include "transmla/convert/mha2mla.hpp"
#include "transmla/convert/transmla.hpp"
#include "transmla/error.hpp"
#include "transmla/model/model.hpp"

#include <Eigen/Core>

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace transmla::model {

// ------------------------------------------------------------------------------------------------
// Bridges between runtime (fp32) and conversion (fp64) layers
// ------------------------------------------------------------------------------------------------

/// The fp64 GqaLayer of a runtime GQA layer (RoPE spec of the model, with its pairing).
inline convert::GqaLayer to_convert(const GqaAttention& a, int hidden, const RopeSpec& rope) {
    convert::GqaLayer g;
    g.hidden = hidden, g.n_q = a.n_q, g.n_kv = a.n_kv, g.head_dim = a.head_dim;
    g.rope = rope;
    g.rope.pairing = a.pairing;
    const Eigen::Index nq = Eigen::Index(a.n_q) * a.head_dim, nk = Eigen::Index(a.n_kv) * a.head_dim;
    g.wq = a.wqkv.topRows(nq).cast<double>();
    g.wk = a.wqkv.middleRows(nq, nk).cast<double>();
    g.wv = a.wqkv.bottomRows(nk).cast<double>();
    g.wo = a.wo.cast<double>();
    if (a.bqkv.size()) {
        g.bq = a.bqkv.head(nq).cast<double>();
        g.bk = a.bqkv.segment(nq, nk).cast<double>();
        g.bv = a.bqkv.tail(nk).cast<double>();
    }
    g.validate();
    return g;
}

/// The runtime form of a partial-RoPE layer: q̂_i = S̃_iᵀ W_Q^i x is folded into one projection.
inline PartialRopeAttention to_runtime(const convert::PartialRopeLayer& p) {
    p.validate();
    PartialRopeAttention a;
    a.n_q = p.n_q, a.n_kv = p.n_kv, a.head_dim = p.head_dim, a.rope_dim = p.rope_dim;
    a.inv_freq = p.rope_inv_freq;
    a.rope_attention_factor = p.rope_attention_factor;
    const int d = p.head_dim, L = p.kv_width();
    const bool bias = p.bq.size() || p.bk.size() || p.bv.size();
    Eigen::MatrixXd w(Eigen::Index(p.n_q) * L + L + L, p.hidden);
    Eigen::VectorXd b = Eigen::VectorXd::Zero(w.rows());
    for (int i = 0; i < p.n_q; ++i) {
        const Eigen::MatrixXd st = p.selector(i).transpose();  // L×d
        w.middleRows(Eigen::Index(i) * L, L) = st * p.wq.middleRows(Eigen::Index(i) * d, d);
        if (p.bq.size()) b.segment(Eigen::Index(i) * L, L) = st * p.bq.segment(Eigen::Index(i) * d, d);
    }
    w.middleRows(Eigen::Index(p.n_q) * L, L) = p.wk;
    if (p.bk.size()) b.segment(Eigen::Index(p.n_q) * L, L) = p.bk;
    w.bottomRows(L) = p.wv;
    if (p.bv.size()) b.tail(L) = p.bv;
    a.w = w.cast<float>();
    if (bias) a.b = b.cast<float>();
    a.wo = p.wo.cast<float>();
    return a;
}

/// The runtime form of an MLA layer.
inline MlaAttention to_runtime(const convert::MlaLayer& m) {
    m.validate();
    MlaAttention a;
    a.n_heads = m.n_heads, a.rank = m.kv_lora_rank, a.rope_dim = m.qk_rope_head_dim;
    a.nope_dim = m.qk_nope_head_dim, a.v_dim = m.v_head_dim;
    a.inv_freq = m.rope_inv_freq;
    a.rope_attention_factor = m.rope_attention_factor;
    a.softmax_scale = float(m.softmax_scale);
    a.q_lora_rank = m.q_lora_rank;
    if (m.q_lora_rank > 0) {
        a.wq = m.q_a_proj.cast<float>();
        if (m.q_a_bias.size()) a.bq = m.q_a_bias.cast<float>();
        a.wq_b = m.q_b_proj.cast<float>();
        if (m.q_b_bias.size()) a.bq_b = m.q_b_bias.cast<float>();
    } else {
        a.wq = m.q_proj.cast<float>();
        if (m.q_bias.size()) a.bq = m.q_bias.cast<float>();
    }
    a.kv_a = m.kv_a_proj_with_mqa.cast<float>();
    if (m.kv_a_bias.size()) a.bkv_a = m.kv_a_bias.cast<float>();
    a.kv_b = m.kv_b_proj.cast<float>();
    a.wo = m.o_proj.cast<float>();
    a.prepare();  // the absorbed decode's f32 W_UK / W_UV (cpu::MlaWeights), once per layer
    return a;
}

/// The runtime form of an MHA2MLA layer.
inline Mha2MlaAttention to_runtime(const convert::Mha2MlaLayer& m) {
    Mha2MlaAttention a;
    a.n_q = m.n_q, a.n_kv = m.n_kv, a.head_dim = m.head_dim, a.rope_dims = m.rope_dims, a.latent_width = m.latent_width;
    a.pairing = m.pairing;
    a.inv_freq = m.inv_freq;
    a.rope_attention_factor = m.rope_attention_factor;
    a.rope_pairs = m.rope_pairs;
    const int d = m.head_dim, rm = m.rope_dims, D = m.hidden;
    require(int(m.rope_pairs.size()) == m.n_kv && int(m.w_k_rope.size()) == m.n_kv && int(m.w_up_k.size()) == m.n_kv &&
                int(m.w_up_v.size()) == m.n_kv,
            "to_runtime(Mha2MlaLayer): per-KV-head lists must have n_kv = ", m.n_kv, " entries");
    require(m.w_down.rows() == m.latent_width && m.w_down.cols() == D, "to_runtime(Mha2MlaLayer): w_down is ",
            m.w_down.rows(), " x ", m.w_down.cols(), ", expected latent_width x D = ", m.latent_width, " x ", D);
    a.wq = m.wq.cast<float>();
    if (m.bq.size()) a.bq = m.bq.cast<float>();
    a.wc.resize(a.cache_width(), D);
    a.wc.bottomRows(m.latent_width) = m.w_down.cast<float>();
    Eigen::VectorXf bc = Eigen::VectorXf::Zero(a.wc.rows());
    bool any_bias = false;
    for (int h = 0; h < m.n_kv; ++h) {
        require(int(m.rope_pairs[h].size()) * 2 == rm, "to_runtime(Mha2MlaLayer): KV head ", h, " keeps ",
                m.rope_pairs[h].size(), " pairs, expected r_m/2 = ", rm / 2);
        a.wc.middleRows(Eigen::Index(h) * rm, rm) = m.w_k_rope[h].cast<float>();
        if (h < int(m.b_k_rope.size()) && m.b_k_rope[h].size()) {
            bc.segment(Eigen::Index(h) * rm, rm) = m.b_k_rope[h].cast<float>();
            any_bias = true;
        }
        a.up_k.push_back(m.w_up_k[h].cast<float>());
        a.up_v.push_back(m.w_up_v[h].cast<float>());
        a.bup_k.push_back(h < int(m.b_up_k.size()) ? Eigen::VectorXf(m.b_up_k[h].cast<float>()) : Eigen::VectorXf());
        a.bup_v.push_back(h < int(m.b_up_v.size()) ? Eigen::VectorXf(m.b_up_v[h].cast<float>()) : Eigen::VectorXf());
        std::vector<int> kept, nope;
        std::vector<char> is_kept(std::size_t(d), 0);
        for (const int j : m.rope_pairs[h]) {
            const auto [x, y] = rope_pair(m.pairing, d, j);
            kept.push_back(x), kept.push_back(y);
            is_kept[std::size_t(x)] = is_kept[std::size_t(y)] = 1;
        }
        for (int e = 0; e < d; ++e)
            if (!is_kept[std::size_t(e)]) nope.push_back(e);
        a.kept_dims.push_back(std::move(kept));
        a.nope_dims.push_back(std::move(nope));
    }
    if (any_bias) a.bc = bc;
    a.wo = m.wo.cast<float>();
    return a;
}

// ------------------------------------------------------------------------------------------------
// Calibration
// ------------------------------------------------------------------------------------------------

/// `n` consecutive sequences of `len` tokens from the start of `tokens` (throws if too few).
inline std::vector<std::vector<std::int32_t>> make_sequences(std::span<const std::int32_t> tokens, int n, int len) {
    require(n > 0 && len > 1, "make_sequences: need n > 0 sequences of len > 1 tokens, got ", n, " x ", len);
    require(std::int64_t(tokens.size()) >= std::int64_t(n) * len, "make_sequences: the calibration text has ",
            tokens.size(), " tokens, ", std::int64_t(n) * len, " are needed for ", n, " sequences of ", len);
    std::vector<std::vector<std::int32_t>> s(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        s[std::size_t(i)].assign(tokens.begin() + std::int64_t(i) * len, tokens.begin() + std::int64_t(i + 1) * len);
    return s;
}

/// Adds one GQA layer's RoPE-pair fit statistics on one sequence (attention input X, [T][D],
/// positions 0..T−1) to `fit`: fp32 queries and keys, the original causal softmax of each query
/// head, and per pair the pre-RoPE and rotated values (convert::RotationFitStats::add_head).
inline void add_rotation_fit(const GqaAttention& g, const Eigen::Ref<const RowMatrixXf>& X,
                             convert::RotationFitStats& fit) {
    const std::int64_t T = X.rows();
    const int d = g.head_dim, nq = g.n_q, nkv = g.n_kv, grp = nq / nkv, J = d / 2;
    require(fit.n_kv() == nkv && fit.head_dim() == d, "add_rotation_fit: statistics for ", fit.n_kv(),
            " KV heads of ", fit.head_dim(), ", the layer has ", nkv, " of ", d);
    const Eigen::Index nqd = Eigen::Index(nq) * d, nkd = Eigen::Index(nkv) * d;
    RowMatrixXf qk = X * g.wqkv.topRows(nqd + nkd).transpose();
    if (g.bqkv.size()) qk.rowwise() += g.bqkv.head(nqd + nkd).transpose();
    RowMatrixXf rot = qk;
    const RopeRun rr(g.inv_freq, 0, T, g.rope_attention_factor);
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < nq + nkv; ++i) rr.rotate(rot.row(t).data() + i * d, t, g.pairing);
    // the pair values of head block `col` of m into rows [row0, row0 + T) of x and y (x and y
    // of pair j in column j)
    auto pairs = [&](const RowMatrixXf& m, Eigen::Index col, Eigen::MatrixXf& x, Eigen::MatrixXf& y, Eigen::Index row0) {
        for (int j = 0; j < J; ++j) {
            const auto [a, b] = rope_pair(g.pairing, d, j);
            x.col(j).segment(row0, T) = m.col(col + a);
            y.col(j).segment(row0, T) = m.col(col + b);
        }
    };
    const float scale = float(1.0 / std::sqrt(double(d)));
    Eigen::MatrixXf kx(T, J), ky(T, J), rkx(T, J), rky(T, J);
    Eigen::MatrixXf qx(grp * T, J), qy(grp * T, J), rqx(grp * T, J), rqy(grp * T, J), p(grp * T, T);
    RowMatrixXf s(T, T);
    for (int h = 0; h < nkv; ++h) {
        pairs(qk, nqd + Eigen::Index(h) * d, kx, ky, 0);
        pairs(rot, nqd + Eigen::Index(h) * d, rkx, rky, 0);
        p.setZero();
        for (int k = 0; k < grp; ++k) {
            const int i = h * grp + k;
            const Eigen::Index r0 = Eigen::Index(k) * T;
            s.noalias() = (rot.middleCols(Eigen::Index(i) * d, d) * rot.middleCols(nqd + Eigen::Index(h) * d, d).transpose()) * scale;
            for (std::int64_t t = 0; t < T; ++t) {
                const float mx = s.row(t).head(t + 1).maxCoeff();
                float z = 0;
                for (std::int64_t u = 0; u <= t; ++u) z += (p(r0 + t, u) = std::exp(s(t, u) - mx));
                p.row(r0 + t).head(t + 1) /= z;
            }
            pairs(qk, Eigen::Index(i) * d, qx, qy, r0);
            pairs(rot, Eigen::Index(i) * d, rqx, rqy, r0);
        }
        fit.add_heads(h, qx, qy, rqx, rqy, kx, ky, rkx, rky, p);
    }
}

/// Per-layer statistics of the attention input of `m` over the sequences (each run from an
/// empty cache). With `pair_norms`, also MHA2MLA's per-pair mean norms of the pre-RoPE q and k;
/// with `rotation_fit`, the output-aware method's RoPE-pair fit statistics (GQA layers only).
inline std::vector<convert::CalibrationStats> calibrate(const Model& m,
                                                        const std::vector<std::vector<std::int32_t>>& seqs,
                                                        std::vector<convert::PairNormStats>* pair_norms = nullptr,
                                                        std::vector<convert::RotationFitStats>* rotation_fit = nullptr) {
    require(!seqs.empty(), "calibrate: no calibration sequences");
    const int D = m.config.hidden;
    std::vector<convert::CalibrationStats> stats;
    stats.reserve(m.layers.size());
    for (std::size_t l = 0; l < m.layers.size(); ++l) stats.emplace_back(D);
    if (pair_norms) {
        pair_norms->clear();
        for (std::size_t l = 0; l < m.layers.size(); ++l) {
            const auto* g = std::get_if<GqaAttention>(&m.layers[l].attn);
            require(g != nullptr, "calibrate: pair norms need GQA layers; layer ", l, " is ",
                    attention_kind(m.layers[l].attn));
            pair_norms->emplace_back(g->n_q, g->n_kv, g->head_dim, g->pairing);
        }
    }
    // Σ [x;1][x;1]ᵀ per layer, accumulated in fp64 (the lower triangle by rank updates; the
    // upper one is filled at the end), then handed to the CalibrationStats.
    std::vector<Eigen::MatrixXd> moments(m.layers.size(), Eigen::MatrixXd::Zero(D + 1, D + 1));
    std::size_t longest = 0;
    for (const auto& s : seqs) longest = std::max(longest, s.size());
    if (rotation_fit) {
        rotation_fit->clear();
        for (std::size_t l = 0; l < m.layers.size(); ++l) {
            const auto* g = std::get_if<GqaAttention>(&m.layers[l].attn);
            require(g != nullptr, "calibrate: RoPE-pair fit statistics need GQA layers; layer ", l, " is ",
                    attention_kind(m.layers[l].attn));
            rotation_fit->emplace_back(g->n_kv, g->head_dim);
        }
    }
    auto cache = m.make_cache(std::int64_t(longest));
    Eigen::MatrixXd aug;
    for (const auto& s : seqs) {
        cache.clear();
        m.forward(s, cache, Logits::none, [&](int l, const float* x, std::int64_t T) {
            Eigen::Map<const RowMatrixXf> X(x, T, D);
            aug.resize(D + 1, T);  // columns are the augmented tokens [x; 1]
            aug.topRows(D) = X.transpose().cast<double>();
            aug.row(D).setOnes();
            require(aug.allFinite(), "calibrate: non-finite attention input at layer ", l);
            moments[std::size_t(l)].selfadjointView<Eigen::Lower>().rankUpdate(aug);
            if (pair_norms) {
                const auto& g = std::get<GqaAttention>(m.layers[std::size_t(l)].attn);
                const Eigen::Index nq = Eigen::Index(g.n_q) * g.head_dim, nk = Eigen::Index(g.n_kv) * g.head_dim;
                RowMatrixXf qk = X * g.wqkv.topRows(nq + nk).transpose();
                if (g.bqkv.size()) qk.rowwise() += g.bqkv.head(nq + nk).transpose();
                const Eigen::MatrixXd q = qk.leftCols(nq).cast<double>(), k = qk.rightCols(nk).cast<double>();
                (*pair_norms)[std::size_t(l)].add(q, k);
            }
            if (rotation_fit)
                add_rotation_fit(std::get<GqaAttention>(m.layers[std::size_t(l)].attn), X,
                                 (*rotation_fit)[std::size_t(l)]);
        });
    }
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
        auto& h = moments[l];
        h.triangularView<Eigen::StrictlyUpper>() = h.transpose();
        stats[l].set_moment(std::move(h));
    }
    return stats;
}

// ------------------------------------------------------------------------------------------------
// Whole-model conversion
// ------------------------------------------------------------------------------------------------

struct ModelConversion {
    Model model;                                ///< the converted model
    std::vector<convert::LayerReport> layers;   ///< per layer
    std::vector<double> layer_seconds;          ///< conversion maths per layer (both phases)
    double calibration_seconds = 0;             ///< forward passes that gather statistics
    double conversion_seconds = 0;              ///< all conversion maths
    double total_seconds = 0;
    std::int64_t calibration_tokens = 0;
    int calibration_passes = 0;                 ///< model runs over the calibration set
};

/// Called with one line per step (per layer).
using ProgressFn = std::function<void(const std::string&)>;

namespace detail {
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
inline const GqaAttention& gqa_of(const Model& m, std::size_t l) {
    const auto* g = std::get_if<GqaAttention>(&m.layers[l].attn);
    require(g != nullptr, "convert_model: layer ", l, " is ", attention_kind(m.layers[l].attn),
            ", not an original GQA layer");
    return *g;
}
inline std::string fmt(double v, int prec = 4) {
    char b[64];
    std::snprintf(b, sizeof b, "%.*g", prec, v);
    return b;
}
}  // namespace detail

/// Attention inputs of every layer of `m` on one sequence (fp64), for the reports'
/// attention-output error (convert::attention_output_error).
inline std::vector<convert::HeldOut> held_out_inputs(const Model& m, std::span<const std::int32_t> seq) {
    std::vector<convert::HeldOut> h(m.layers.size());
    auto cache = m.make_cache(std::int64_t(seq.size()));
    const int D = m.config.hidden;
    m.forward(seq, cache, Logits::none, [&](int l, const float* x, std::int64_t T) {
        auto& e = h[std::size_t(l)];
        e.x = Eigen::Map<const RowMatrixXf>(x, T, D).cast<double>();
        e.positions.resize(std::size_t(T));
        for (std::int64_t t = 0; t < T; ++t) e.positions[std::size_t(t)] = t;
    });
    return h;
}

/// Checks `opt` against every layer of `m` (all original GQA layers) before any work, throwing
/// transmla::error naming the option and the values allowed for this model.
inline void validate_conversion(const Model& m, const convert::ConvertOptions& opt) {
    m.validate();
    for (std::size_t l = 0; l < m.layers.size(); ++l)
        convert::validate_options(to_convert(detail::gqa_of(m, l), m.config.hidden, m.config.rope), opt);
}

/// Converts every attention layer of `original` (all GQA) with the options' method, calibrating
/// on `calib` (sequences of token ids). The MLP, norms and embeddings are copies. With a
/// non-empty `held_out` sequence (disjoint from the calibration text) each layer's report gets
/// the relative error of its attention output on it.
inline ModelConversion convert_model(const Model& original, const std::vector<std::vector<std::int32_t>>& calib,
                                     const convert::ConvertOptions& opt, const ProgressFn& progress = {},
                                     std::span<const std::int32_t> held_out = {}) {
    using clock = std::chrono::steady_clock;
    const auto t_start = clock::now();
    original.validate();
    const std::size_t nl = original.layers.size();
    const int D = original.config.hidden;
    ModelConversion out;
    out.model = original;
    out.layers.resize(nl);
    out.layer_seconds.assign(nl, 0.0);
    for (const auto& s : calib) out.calibration_tokens += std::int64_t(s.size());
    auto say = [&](const std::string& s) {
        if (progress) progress(s);
    };
    std::vector<convert::GqaLayer> gqa;
    for (std::size_t l = 0; l < nl; ++l) gqa.push_back(to_convert(detail::gqa_of(original, l), D, original.config.rope));

    for (std::size_t l = 0; l < nl; ++l) convert::validate_options(gqa[l], opt);  // fail before any work
    const bool need_pair_norms = opt.method == convert::Method::mha2mla && opt.selection == convert::RopeSelection::two_norm;
    std::vector<convert::CalibrationStats> stats;
    std::vector<convert::PairNormStats> pair_norms;
    std::vector<convert::RotationFitStats> rotation_fit;
    const bool oa = opt.method == convert::Method::output_aware;
    std::vector<convert::HeldOut> ho;
    if (!held_out.empty()) ho = held_out_inputs(original, held_out);
    auto held = [&](std::size_t l) -> const convert::HeldOut* { return ho.empty() ? nullptr : &ho[l]; };
    {
        require(!calib.empty(), "convert_model: no calibration sequences");
        auto t0 = clock::now();
        stats = calibrate(original, calib, need_pair_norms ? &pair_norms : nullptr, oa ? &rotation_fit : nullptr);
        out.calibration_seconds += detail::seconds_since(t0);
        ++out.calibration_passes;
        say("calibration pass 1 (original model): " + std::to_string(out.calibration_tokens) + " tokens in " +
            detail::fmt(detail::seconds_since(t0), 3) + " s");
    }

    if (opt.method == convert::Method::mha2mla) {
        for (std::size_t l = 0; l < nl; ++l) {
            const auto t0 = clock::now();
            const auto res = convert::convert_layer(gqa[l], stats[l], nullptr, opt, held(l),
                                                    need_pair_norms ? &pair_norms[l] : nullptr);
            out.model.layers[l].attn = to_runtime(res.mha2mla);
            out.layers[l] = res.report;
            out.layer_seconds[l] = detail::seconds_since(t0);
            say("layer " + std::to_string(l) + ": mha2mla " + convert::to_string(opt.selection) + "/" +
                convert::to_string(opt.svd) + " r_m=" + std::to_string(res.mha2mla.rope_dims) + " d_kv=" +
                std::to_string(res.mha2mla.latent_dim) + " latent " + std::to_string(res.mha2mla.latent_width) + " key err " + detail::fmt(res.report.key_error) +
                " value err " + detail::fmt(res.report.value_error) + " attn err " +
                detail::fmt(res.report.attn_output_error) + " cache " + std::to_string(res.mha2mla.cache_per_token()) +
                "/" + std::to_string(gqa[l].cache_per_token()) + " (" + detail::fmt(out.layer_seconds[l], 3) + " s)");
        }
    } else {
        const bool exact = opt.method == convert::Method::exact;
        const int hd = gqa.front().head_dim;
        const int d_r = exact ? hd : opt.rope_dim;
        const int F = exact ? 1 : opt.freqfold;
        // Phase 1: RoRoPE (+ FreqFold) of every layer from the original model's statistics.
        std::vector<convert::PartialRopeLayer> partial(nl);
        Model partial_model = original;
        for (std::size_t l = 0; l < nl; ++l) {
            const auto t0 = clock::now();
            partial[l] = convert::rorope(gqa[l], stats[l], d_r, F, exact);
            if (oa) convert::fold_rotation_fit(partial[l], gqa[l], rotation_fit[l]);
            partial_model.layers[l].attn = to_runtime(partial[l]);
            out.layer_seconds[l] += detail::seconds_since(t0);
            say("layer " + std::to_string(l) + ": rorope d_r=" + std::to_string(partial[l].rope_dim) + " F=" +
                std::to_string(F) + " rope energy " + detail::fmt(partial[l].rope_energy) +
                " in " +
                detail::fmt(out.layer_seconds[l], 3) + " s");
        }
        // Phase 2: statistics of the partial-RoPE model, then steps 3–6 per layer.
        std::vector<convert::CalibrationStats> after;
        if (exact) {
            after = stats;  // the partial-RoPE model equals the original exactly: same statistics
        } else {
            auto t0 = clock::now();
            after = calibrate(partial_model, calib);
            out.calibration_seconds += detail::seconds_since(t0);
            ++out.calibration_passes;
            say("calibration pass 2 (partial-RoPE model): " + std::to_string(out.calibration_tokens) + " tokens in " +
                detail::fmt(detail::seconds_since(t0), 3) + " s");
        }
        for (std::size_t l = 0; l < nl; ++l) {
            const auto t0 = clock::now();
            const int r = convert::validate_options(gqa[l], opt);
            convert::ConvertOptions oo = opt;
            if (exact) oo.balance = false, oo.q_lora_rank = 0;
            convert::LayerReport rep;
            const auto mla = oa ? convert::output_aware_finish(partial[l], after[l], r, opt.logit_weight, &rep)
                                : convert::finish_transmla(partial[l], after[l], r, oo, &rep);
            rep.method = opt.method;
            if (held(l)) {
                rep.attn_output_error = convert::attention_output_error(gqa[l], mla, *held(l));
                rep.logit_error = convert::logit_error(gqa[l], mla, *held(l));
            }
            out.model.layers[l].attn = to_runtime(mla);
            out.layers[l] = rep;
            out.layer_seconds[l] += detail::seconds_since(t0);
            say("layer " + std::to_string(l) + ": " + convert::to_string(opt.method) + " r=" + std::to_string(r) +
                " d_r=" + std::to_string(mla.qk_rope_head_dim) + " alpha " + detail::fmt(rep.alpha) + " pca energy " +
                detail::fmt(rep.pca_energy) + " key err " + detail::fmt(rep.key_error) + " value err " +
                detail::fmt(rep.value_error) + " logit err " + detail::fmt(rep.logit_error) + " attn err " +
                detail::fmt(rep.attn_output_error) + " cache " + std::to_string(mla.cache_per_token()) + "/" +
                std::to_string(gqa[l].cache_per_token()) + " (" + detail::fmt(out.layer_seconds[l], 3) + " s)");
        }
    }
    for (const double s : out.layer_seconds) out.conversion_seconds += s;
    out.total_seconds = detail::seconds_since(t_start);
    out.model.validate();
    return out;
}

}  // namespace transmla::model
