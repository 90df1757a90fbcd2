// transmla/convert/convert.hpp — one-call conversion of a GQA layer (TransMLA, MHA2MLA or the
// exact mode) with its per-layer report; includes every convert/ header.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/convert/forward.hpp"
#include "transmla/convert/layer.hpp"
#include "transmla/convert/linalg.hpp"
#include "transmla/convert/mha2mla.hpp"
#include "transmla/convert/output_aware.hpp"
#include "transmla/convert/shape_link.hpp"
#include "transmla/convert/transmla.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace transmla::convert {

/// Held-out calibration tokens for the report's attention-output error: one causal sequence.
struct HeldOut {
    MatrixXd x;                           ///< [T][D] attention inputs
    std::vector<std::int64_t> positions;  ///< T positions
};

/// What convert_layer returns. `mla` and `partial` are set for transmla and exact, `mha2mla`
/// for the MHA2MLA method.
struct ConvertResult {
    Method method = Method::transmla;
    PartialRopeLayer partial;  ///< the layer after step 2 (and 3)
    MlaLayer mla;
    Mha2MlaLayer mha2mla;
    LayerReport report;
};

/// Checks the options against the layer and throws transmla::error naming the option and the
/// allowed values. Returns the latent rank r that will be used (transmla / exact).
inline int validate_options(const GqaLayer& l, const ConvertOptions& o) {
    l.validate();
    const int d = l.head_dim, L = l.kv_width();
    switch (o.method) {
        case Method::exact: return L;
        case Method::mha2mla: {
            const int rm = o.mha2mla_rope_dims ? o.mha2mla_rope_dims : std::max(2, d / 8);
            check_mha2mla_rope_dims(d, rm, o.selection, o.uniform_start);
            check_mha2mla_latent_dim(o.svd, l.n_kv, d, rm, l.hidden, o.mha2mla_latent_dim ? o.mha2mla_latent_dim : d / 2);
            return 0;
        }
        case Method::output_aware:
            require(o.q_lora_rank == 0, "q_lora_rank = ", o.q_lora_rank,
                    " is not allowed with method output_aware: its weights use the full query (use 0)");
            [[fallthrough]];
        case Method::transmla: {
            const FreqFoldMap map(l.n_kv, d, o.rope_dim, o.freqfold, l.rope.pairing);  // d_r and F
            (void)map;
            const int r = resolve_rank(o, l.n_kv, d, o.rope_dim);
            require(r + o.rope_dim < 2 * L, "rank (r) = ", r, " with rope_dim d_r = ", o.rope_dim,
                    " gives a cache of r + d_r = ", r + o.rope_dim, " values per token, not smaller than the GQA cache 2L = ",
                    2 * L, ": allowed r: 1..", 2 * L - o.rope_dim - 1, " (use method exact for a full-size cache)");
            require(o.q_lora_rank >= 0 && o.q_lora_rank <= l.n_q * d, "q_lora_rank = ", o.q_lora_rank,
                    " is not allowed: 0 (no low-rank query) or 1..n_q·d = ", l.n_q * d);
            return r;
        }
    }
    fail("convert_layer: unknown method");
}

/// ‖out_converted − out_gqa‖_F / ‖out_gqa‖_F on one held-out sequence.
template <class Converted>
double attention_output_error(const GqaLayer& l, const Converted& c, const HeldOut& h) {
    const RowMatrix ref = forward(l, h.x, h.positions);
    const RowMatrix got = forward(c, h.x, h.positions);
    const double den = ref.norm();
    return den > 0 ? (got - ref).norm() / den : (got - ref).norm();
}

/// Logit error on one held-out sequence: ‖ℓ_c − ℓ‖ / ‖ℓ‖ over the causal pairs (s ≤ t) of
/// every query head, each query row of both centred first (the softmax ignores a per-row shift).
template <class Converted>
double logit_error(const GqaLayer& l, const Converted& c, const HeldOut& h) {
    double num = 0, den = 0;
    const Eigen::Index T = h.x.rows();
    for (int i = 0; i < l.n_q; ++i) {
        const RowMatrix ref = attention_logits(l, h.x, h.positions, i);
        const RowMatrix got = attention_logits(c, h.x, h.positions, i);
        for (Eigen::Index t = 0; t < T; ++t) {
            const auto rr = ref.row(t).head(t + 1), gr = got.row(t).head(t + 1);
            const double mr = rr.mean(), md = (gr - rr).mean();
            num += ((gr - rr).array() - md).square().sum();
            den += (rr.array() - mr).square().sum();
        }
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

namespace detail {
inline void check_held_out(const GqaLayer& l, const HeldOut* held_out) {
    if (held_out)
        require(held_out->x.cols() == l.hidden && std::int64_t(held_out->positions.size()) == held_out->x.rows(),
                "convert_layer: held-out tokens must be [T][", l.hidden, "] with T positions");
}
/// The transmla / exact part of convert_layer, for either kind of statistics (`after` = nullptr:
/// the partial-RoPE model's statistics are taken as those of the original inputs).
template <class Stats>
ConvertResult convert_transmla(const GqaLayer& l, const Stats& original, const Stats* after, int r,
                               const ConvertOptions& o, const HeldOut* held_out) {
    ConvertResult res;
    res.method = o.method;
    res.report.cache_original = l.cache_per_token();
    const bool exact = o.method == Method::exact;
    res.partial = exact ? rorope(l, original, l.head_dim, 1, /*keep_all_rope=*/true)
                        : rorope(l, original, o.rope_dim, o.freqfold);
    ConvertOptions oo = o;
    if (exact) oo.balance = false, oo.q_lora_rank = 0;
    // Steps 3–6 balance res.partial in place (the result returns the balanced partial layer).
    const CalibrationStats* query_stats = nullptr;
    JointMoment jm;
    if constexpr (std::is_same_v<Stats, KvStats>) {
        jm = after ? joint_moment(res.partial, *after) : joint_moment(res.partial, rotate_kv_stats(res.partial, original));
    } else {
        query_stats = after ? after : &original;
        jm = joint_moment(res.partial, *query_stats);
    }
    res.mla = finish_transmla_in_place(res.partial, std::move(jm), r, oo, query_stats, &res.report);
    res.report.method = o.method;
    if (held_out) {
        res.report.attn_output_error = attention_output_error(l, res.mla, *held_out);
        res.report.logit_error = logit_error(l, res.mla, *held_out);
    }
    return res;
}
}  // namespace detail

/// Converts one layer.
/// - transmla: step 2 on `original` (the original model's statistics), steps 3–6 on
///   `*after_rorope` (the partial-RoPE model's statistics; nullptr reuses `original`).
/// - exact: F = 1, d_r = d for the map, RoPE kept on all L latent dims, full rank r = L, no
///   balancing: reproduces the GQA layer (cache r + d_r = 2L).
/// - mha2mla: selection + SVD on the weights (`norms` needed for the two_norm selection);
///   `original` only feeds the report.
/// `held_out` (optional) gives the report's attention-output error.
inline ConvertResult convert_layer(const GqaLayer& l, const CalibrationStats& original,
                                   const CalibrationStats* after_rorope, const ConvertOptions& o,
                                   const HeldOut* held_out = nullptr, const PairNormStats* norms = nullptr) {
    const int r = validate_options(l, o);
    require(original.hidden() == l.hidden, "convert_layer: statistics have hidden size ", original.hidden(),
            ", the layer ", l.hidden);
    require(original.tokens() > 0, "convert_layer: the calibration statistics hold no tokens");
    if (after_rorope)
        require(after_rorope->hidden() == l.hidden, "convert_layer: after-RoRoPE statistics have hidden size ",
                after_rorope->hidden(), ", the layer ", l.hidden);
    detail::check_held_out(l, held_out);
    require(o.method != Method::output_aware, "convert_layer: method output_aware needs the attention-distance "
            "statistics of the original model: call convert_output_aware");
    if (o.method != Method::mha2mla)
        return detail::convert_transmla(l, original, after_rorope, r, o, held_out);
    ConvertResult res;
    res.method = o.method;
    res.report.method = o.method;
    res.report.cache_original = l.cache_per_token();
    res.mha2mla = mha2mla(l, o, norms);
    res.report.rope_dim = res.mha2mla.rope_dims;
    res.report.rank = res.mha2mla.latent_width;
    mha2mla_errors(l, res.mha2mla, original, res.report.key_error, res.report.value_error);
    res.report.cache_converted = res.mha2mla.cache_per_token();
    if (held_out) res.report.attn_output_error = attention_output_error(l, res.mha2mla, *held_out);
    return res;
}

/// Converts one layer (transmla or exact) from key/value statistics: `original` holds the
/// original layer's pre-RoPE keys and values, `*after_rorope` the partial-RoPE layer's rotated
/// keys and values (nullptr: rotate_kv_stats of `original`, i.e. the same inputs). Same results as the
/// CalibrationStats overload on statistics of the same tokens, without the (D+1)² projections.
/// MHA2MLA and the low-rank query need the input moment: they throw here.
inline ConvertResult convert_layer(const GqaLayer& l, const KvStats& original, const KvStats* after_rorope,
                                   const ConvertOptions& o, const HeldOut* held_out = nullptr) {
    const int r = validate_options(l, o);
    require(o.method != Method::mha2mla && o.method != Method::output_aware,
            "convert_layer: method ", to_string(o.method), " needs the input statistics (CalibrationStats); key/value statistics "
            "support methods transmla and exact");
    detail::check_held_out(l, held_out);
    return detail::convert_transmla(l, original, after_rorope, r, o, held_out);
}

/// Converts one layer with the output-aware method: RoRoPE + FreqFold on `original` (the
/// original model's input statistics at this layer), the expected rotation of the no-RoPE pairs
/// fitted from `fit` (the original model's RoPE-pair statistics at this layer), then the weighted
/// latent on `*after` (the statistics of the folded partial-RoPE model; nullptr reuses
/// `original`, an approximation: a whole-model converter gathers them in a second pass).
inline ConvertResult convert_output_aware(const GqaLayer& l, const CalibrationStats& original,
                                          const CalibrationStats* after, const RotationFitStats& fit,
                                          const ConvertOptions& o, const HeldOut* held_out = nullptr) {
    require(o.method == Method::output_aware, "convert_output_aware: options name method ", to_string(o.method));
    const int r = validate_options(l, o);
    require(original.hidden() == l.hidden && original.tokens() > 0, "convert_output_aware: statistics of hidden size ",
            original.hidden(), " with ", original.tokens(), " tokens for a layer of hidden size ", l.hidden);
    detail::check_held_out(l, held_out);
    ConvertResult res;
    res.method = o.method;
    res.partial = rorope(l, original, o.rope_dim, o.freqfold);
    fold_rotation_fit(res.partial, l, fit);
    res.mla = output_aware_finish(res.partial, after ? *after : original, r, o.logit_weight, &res.report);
    res.report.method = o.method;
    if (held_out) {
        res.report.attn_output_error = attention_output_error(l, res.mla, *held_out);
        res.report.logit_error = logit_error(l, res.mla, *held_out);
    }
    return res;
}

}  // namespace transmla::convert
