// transmla/cpu/mla.hpp — MLA around the latent kernel: query absorption (W_UK), the W_UV / W_O
// output helpers, and MLA prefill in either order, chosen per call by a cost model.
//
// Weights follow DeepSeek's kv_b_proj layout `kv_b [heads·(d_nope + d_v)][r]`: per head the d_nope
// rows of W_UK, then the d_v rows of W_UV (reference/mla.hpp uses the same). Queries arrive split
// into `q_nope [T][H][d_nope]` and the RoPE-rotated `q_pe [T][H][d_r]`; cache rows are
// `[c (r) | rotated k_pe (d_r)]`; the T queries are the last T tokens of the cache.
//
//   absorbed order: q̃_i = W_UK^iᵀ q_nope_i, latent attention (cpu::mla_attention), out_i = W_UV^i ō_i.
//     Per (query, key) 2·(2r + d_r) FLOPs, no per-key decompression: best for short prompts and
//     decode.
//   naive order: decompress k_nope, v for every cached token and head with one GEMM
//     ([S][r] × [r][H·(d_nope + d_v)]), then ordinary causal attention with qk width d_nope + d_r
//     and v width d_v: 2·S·r·H·(d_nope + d_v) once, then 2·(d_nope + d_r + d_v) per (query, key):
//     best for long prompts.
// GEMMs use Eigen (f32).
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/cpu/attention.hpp"
#include "transmla/cpu/mla_weights.hpp"
#include "transmla/cpu/plan.hpp"
#include "transmla/error.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

namespace transmla::cpu {

namespace detail {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A 2-D view as a float row-major matrix (copied and converted).
template <class T>
RowMatrixF to_matrix(const View2<const T>& w) {
    RowMatrixF m(w.size(0), w.size(1));
    for (std::int64_t i = 0; i < w.size(0); ++i)
        for (std::int64_t j = 0; j < w.size(1); ++j) m(i, j) = to_float(w(i, j));
    return m;
}

inline void check_kv_b(std::int64_t rows, std::int64_t cols, int H, int dn, int dv, int r, const char* who) {
    require(cols == r && rows == std::int64_t(H) * (dn + dv), who, ": kv_b must be [heads·(d_nope + d_v)][r] = [",
            std::int64_t(H) * (dn + dv), "][", r, "], got [", rows, "][", cols, "]");
}

/// An activation view as f32: `v` itself when it already is, else a copy into `buf`.
template <class T>
View3<const float> as_f32(TensorView<T, 3> v, std::vector<float>& buf) {
    if constexpr (std::is_same_v<std::remove_cv_t<T>, float>) {
        return View3<const float>(v.data, v.extent, v.stride);
    } else {
        const std::int64_t A = v.size(0), B = v.size(1), C = v.size(2);
        buf.resize(std::size_t(A * B * C));
        for (std::int64_t a = 0; a < A; ++a)
            for (std::int64_t b = 0; b < B; ++b)
                for (std::int64_t c = 0; c < C; ++c) buf[std::size_t((a * B + b) * C + c)] = to_float(v(a, b, c));
        return View3<const float>(buf.data(), {A, B, C});
    }
}

}  // namespace detail

// The three helpers below convert kv_b (and w_o) on every call; an engine builds a
// cpu::MlaWeights (cpu/mla_weights.hpp) once per layer instead and calls its methods.

/// q_abs[t][i] = [W_UK^iᵀ q_nope[t][i] | q_pe[t][i]], shape [T][H][r + d_r] (f32).
template <class Q, class Tw>
void absorb_query(TensorView<Q, 3> q_nope, TensorView<Q, 3> q_pe, View2<const Tw> kv_b, int d_v, View3<float> q_abs) {
    const char* who = "transmla::cpu::absorb_query";
    const std::int64_t T = q_nope.size(0);
    const int H = int(q_nope.size(1)), dn = int(q_nope.size(2)), dr = int(q_pe.size(2)), r = int(kv_b.size(1));
    require(q_pe.size(0) == T && q_pe.size(1) == H, who, ": q_pe must be [", T, "][", H, "][d_r]");
    detail::check_kv_b(kv_b.size(0), kv_b.size(1), H, dn, d_v, r, who);
    transmla::detail::check_extents(q_abs, {T, H, r + dr}, who, "q_abs");
    const MlaWeights w(kv_b, H, dn, d_v);
    std::vector<float> bn, bp;
    w.absorb(detail::as_f32(q_nope, bn), detail::as_f32(q_pe, bp), q_abs);
}

/// out[t][i] = W_UV^i · latent[t][i]: latent [T][H][r] → out [T][H][d_v].
template <class L, class Tw, class To>
void apply_uv(TensorView<L, 3> latent, View2<const Tw> kv_b, int d_nope, View3<To> out) {
    const char* who = "transmla::cpu::apply_uv";
    const std::int64_t T = latent.size(0);
    const int H = int(latent.size(1)), r = int(latent.size(2)), dv = int(out.size(2));
    detail::check_kv_b(kv_b.size(0), kv_b.size(1), H, d_nope, dv, r, who);
    transmla::detail::check_extents(out, {T, H, dv}, who, "out");
    const MlaWeights w(kv_b, H, d_nope, dv);
    std::vector<float> bl;
    const auto lat = detail::as_f32(latent, bl);
    if constexpr (std::is_same_v<To, float>) {
        w.up_project(lat, out);
    } else {
        std::vector<float> o(std::size_t(T) * H * dv);
        w.up_project(lat, View3<float>(o.data(), {T, H, dv}));
        for (std::int64_t t = 0; t < T; ++t)
            for (int i = 0; i < H; ++i)
                for (int e = 0; e < dv; ++e) out(t, i, e) = from_float<To>(o[(std::size_t(t) * H + i) * dv + e]);
    }
}

/// y[t] = W_O · concat_i(W_UV^i · latent[t][i]): latent [T][H][r], w_o [D][H·d_v] → y [T][D].
/// (Unfused: fusing W_O·W_UV only pays when prepared once, see MlaWeights.)
template <class L, class Tw, class To>
void apply_uv_o(TensorView<L, 3> latent, View2<const Tw> kv_b, int d_nope, View2<const Tw> w_o, View2<To> y) {
    const char* who = "transmla::cpu::apply_uv_o";
    const std::int64_t T = latent.size(0);
    const int H = int(latent.size(1)), r = int(latent.size(2));
    require(H >= 1 && w_o.size(1) % H == 0, who, ": w_o has ", w_o.size(1), " columns, not a multiple of the ", H,
            " heads");
    const int dv = int(w_o.size(1) / H);
    detail::check_kv_b(kv_b.size(0), kv_b.size(1), H, d_nope, dv, r, who);
    transmla::detail::check_extents(y, {T, w_o.size(0)}, who, "y");
    const MlaWeights w(kv_b, H, d_nope, dv, w_o, MlaFusion::unfused);
    auto ws = w.make_workspace(T);
    std::vector<float> bl;
    const auto lat = detail::as_f32(latent, bl);
    if constexpr (std::is_same_v<To, float>) {
        w.up_project(lat, y, ws);
    } else {
        std::vector<float> res(std::size_t(T) * w_o.size(0));
        w.up_project(lat, View2<float>(res.data(), {T, w_o.size(0)}), ws);
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < w_o.size(0); ++j) y(t, j) = from_float<To>(res[std::size_t(t * w_o.size(0) + j)]);
    }
}

/// Order of an MLA prefill.
enum class MlaOrder { automatic, naive, absorbed };

constexpr std::string_view mla_order_name(MlaOrder o) noexcept {
    return o == MlaOrder::naive ? "naive" : (o == MlaOrder::absorbed ? "absorbed" : "automatic");
}

/// Estimated seconds-proportional cost of each order: FLOPs divided by the relative throughput
/// each part reached in bench_cpu_attention's mla_prefill cases (device CPU, 2 threads): the Eigen
/// f32 GEMMs (absorption, decompression, W_UV; compiled for the caller's baseline ISA) ran at about
/// 26 GFLOP/s, the attention kernel at 40–100 GFLOP/s, so GEMM FLOPs are weighted 1/0.4.
struct MlaCost {
    double naive = 0, absorbed = 0;
    MlaOrder best() const noexcept { return naive < absorbed ? MlaOrder::naive : MlaOrder::absorbed; }
};

inline MlaCost mla_prefill_cost(std::int64_t T, std::int64_t S, int H, int dn, int dr, int dv, int r) {
    constexpr double gemm_speed = 0.4, attn_speed = 1.0;
    // (query, key) pairs seen under causality: queries at S−T … S−1.
    const double pairs = double(T) * double(S - T) + double(T) * double(T + 1) / 2;
    MlaCost c;
    c.absorbed = (2.0 * T * H * dn * r + 2.0 * T * H * r * dv) / gemm_speed +
                 2.0 * pairs * H * (2.0 * r + dr) / attn_speed;
    c.naive = 2.0 * S * r * H * (dn + dv) / gemm_speed + 2.0 * pairs * H * (dn + dr + dv) / attn_speed;
    return c;
}

namespace detail {

/// Attention over decompressed per-head keys [S][H][dk] and values [S][H][dv] (f32), g = 1.
template <class To>
class NaiveMlaOp {
public:
    NaiveMlaOp(const float* q, const float* k, const float* v, std::int64_t T, std::int64_t S, int H, int dk, int dv,
               float scale, View3<To> out, View2<float> lse, int q_tile)
        : q_(q), k_(k), v_(v), T_(T), S_(S), H_(H), dk_(dk), dv_(dv), scale_(scale), out_(out), lse_(lse) {
        for (int h = 0; h < H; ++h)
            for (std::int64_t t0 = 0; t0 < T; t0 += q_tile) groups_.push_back({h, t0, std::min<std::int64_t>(q_tile, T - t0)});
    }
    GroupInfo info(std::int64_t gi) const noexcept {
        const auto& g = groups_[std::size_t(gi)];
        return {int(g.nt), std::min(S_, S_ - T_ + g.t0 + g.nt), dk_, dv_, false, 1};
    }
    KvSource<float> source(std::int64_t gi) const noexcept {
        const auto& g = groups_[std::size_t(gi)];
        KvSource<float> s;
        s.k = k_ + std::int64_t(g.h) * dk_;
        s.v = v_ + std::int64_t(g.h) * dv_;
        s.token_stride = std::int64_t(H_) * dk_;
        s.v_token_stride = std::int64_t(H_) * dv_;
        s.dk = dk_;
        s.dv = dv_;
        return s;
    }
    /// Logit scale in base 2 (the kernel applies it: see AttendJob::qk_scale).
    float qk_scale() const noexcept { return scale_ * float(log2e); }
    void fill(std::int64_t gi, float* q, std::int64_t qs, std::int64_t* row_end) const {
        const auto& g = groups_[std::size_t(gi)];
        for (std::int64_t t = 0; t < g.nt; ++t) {
            const float* src = q_ + ((g.t0 + t) * H_ + g.h) * dk_;
            for (int e = 0; e < dk_; ++e) q[t * qs + e] = src[e];
            row_end[t] = S_ - T_ + g.t0 + t + 1;
        }
    }
    void write(std::int64_t gi, const float* o, std::int64_t os, const float* lse) const {
        const auto& g = groups_[std::size_t(gi)];
        for (std::int64_t t = 0; t < g.nt; ++t) {
            To* dst = out_.row(g.t0 + t, g.h);
            for (int e = 0; e < dv_; ++e) dst[e] = from_float<To>(o[t * os + e]);
            if (lse_.data != nullptr) lse_(g.t0 + t, g.h) = lse[t];
        }
    }
    std::vector<GroupInfo> infos() const {
        std::vector<GroupInfo> v;
        for (std::size_t i = 0; i < groups_.size(); ++i) v.push_back(info(std::int64_t(i)));
        return v;
    }

private:
    struct Group {
        int h;
        std::int64_t t0, nt;
    };
    const float *q_, *k_, *v_;
    std::int64_t T_, S_;
    int H_, dk_, dv_;
    float scale_;
    View3<To> out_;
    View2<float> lse_;
    std::vector<Group> groups_;
};

}  // namespace detail

/// Causal MLA prefill: `q_nope [T][H][d_nope]`, `q_pe [T][H][d_r]` (rotated) are the last T tokens
/// of `cache`; writes `out [T][H][d_v]` (per-head attention outputs before W_O) and optionally the
/// natural-log `lse [T][H]`. Returns the order used.
template <class Q, class Tc, class Tw, class To>
MlaOrder mla_prefill(TensorView<Q, 3> q_nope, TensorView<Q, 3> q_pe, const MlaSeqView<Tc>& cache, View2<const Tw> kv_b,
                     float scale, View3<To> out, View2<float> lse = {}, MlaOrder order = MlaOrder::automatic,
                     const Options& opt = {}) {
    const char* who = "transmla::cpu::mla_prefill";
    const std::int64_t T = q_nope.size(0), S = cache.length;
    const int H = int(q_nope.size(1)), dn = int(q_nope.size(2)), dr = cache.rope_dim, r = cache.rank;
    const int dv = int(out.size(2));
    require(q_pe.size(0) == T && q_pe.size(1) == H && q_pe.size(2) == dr, who, ": q_pe must be [", T, "][", H, "][",
            dr, "], got [", q_pe.size(0), "][", q_pe.size(1), "][", q_pe.size(2), "]");
    detail::check_kv_b(kv_b.size(0), kv_b.size(1), H, dn, dv, r, who);
    transmla::detail::check_extents(out, {T, H, dv}, who, "out");
    require(T <= S, who, ": ", T, " query tokens but only ", S, " cached tokens (append the prompt first)");
    if (lse.data != nullptr)
        require(lse.size(0) == T && lse.size(1) == H, who, ": lse must be [", T, "][", H, "]");
    if (order == MlaOrder::automatic) order = mla_prefill_cost(T, S, H, dn, dr, dv, r).best();

    if (order == MlaOrder::absorbed) {
        std::vector<float> qa(std::size_t(T) * H * (r + dr)), lat(std::size_t(T) * H * r);
        const MlaWeights w(kv_b, H, dn, dv);  // converted once for both ends
        std::vector<float> bn, bp;
        w.absorb(detail::as_f32(q_nope, bn), detail::as_f32(q_pe, bp), View3<float>(qa.data(), {T, H, r + dr}));
        mla_attention(MlaAttention<float, Tc, float>{View3<const float>(qa.data(), {T, H, r + dr}), {},
                                                     std::span<const MlaSeqView<Tc>>(&cache, 1), scale,
                                                     View3<float>(lat.data(), {T, H, r}), lse, -1},
                      opt);
        if constexpr (std::is_same_v<To, float>) {
            w.up_project(View3<const float>(lat.data(), {T, H, r}), out);
        } else {
            apply_uv(View3<const float>(lat.data(), {T, H, r}), kv_b, dn, out);
        }
        return order;
    }
    // Naive: decompress every cached token: [S][r] × [r][H·(dn + dv)].
    const int dk = dn + dr;
    detail::RowMatrixF C(S, r);
    for (std::int64_t s = 0; s < S; ++s) {
        const Tc* row = cache.row_at(s);
        for (int a = 0; a < r; ++a) C(s, a) = to_float(row[a]);
    }
    const detail::RowMatrixF KV = C * detail::to_matrix(kv_b).transpose();  // [S][H·(dn + dv)]
    std::vector<float> K(std::size_t(S) * H * dk), V(std::size_t(S) * H * dv), Qf(std::size_t(T) * H * dk);
    for (std::int64_t s = 0; s < S; ++s) {
        const Tc* row = cache.row_at(s);
        for (int h = 0; h < H; ++h) {
            float* k = &K[(std::size_t(s) * H + h) * dk];
            float* v = &V[(std::size_t(s) * H + h) * dv];
            const float* src = &KV(s, std::int64_t(h) * (dn + dv));
            for (int e = 0; e < dn; ++e) k[e] = src[e];
            for (int e = 0; e < dr; ++e) k[dn + e] = to_float(row[r + e]);
            for (int e = 0; e < dv; ++e) v[e] = src[dn + e];
        }
    }
    for (std::int64_t t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h) {
            float* q = &Qf[(std::size_t(t) * H + h) * dk];
            for (int e = 0; e < dn; ++e) q[e] = to_float(q_nope(t, h, e));
            for (int e = 0; e < dr; ++e) q[dn + e] = to_float(q_pe(t, h, e));
        }
    const detail::NaiveMlaOp<To> op(Qf.data(), K.data(), V.data(), T, S, H, dk, dv, scale, out, lse,
                                    opt.q_tile > 0 ? opt.q_tile : 128);
    const Plan plan = Plan::make(op.infos(), opt);
    detail::run_all(plan, op);
    return order;
}

}  // namespace transmla::cpu
