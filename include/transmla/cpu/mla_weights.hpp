// transmla/cpu/mla_weights.hpp — prepared weights of absorbed MLA decode: W_UK and W_UV per head
// (and optionally W_O, or the fused W_O·W_UV per head) converted to f32 once per layer, laid out
// for the GEMMs that absorb the query and up-project the latent attention output.
//
// An engine builds one `MlaWeights` per layer when it loads or converts the model, from DeepSeek's
// `kv_b [H·(d_nope + d_v)][r]` (per head the d_nope rows of W_UK, then the d_v rows of W_UV; any
// storage type) and optionally `W_O [D][H·d_v]`. Each decode step then runs
//
//   absorb(q_nope [T][H][d_nope], q_pe [T][H][d_r], q_abs [T][H][r + d_r])
//       q_abs[t][i] = [W_UK^iᵀ q_nope[t][i] | q_pe[t][i]]        (what cpu::mla_decode takes)
//   up_project(latent [T][H][r], out [T][H][d_v])                   out[t][i] = W_UV^i latent[t][i]
//   up_project(latent [T][H][r], y [T][D], workspace)               y[t] = W_O concat_i(W_UV^i latent[t][i])
//
// with no weight conversion and, for T = 1, no heap allocation (the products are Eigen GEMVs on
// the stored f32 matrices; Eigen's temporaries for T = 1 are on the stack; for T > 1 Eigen's GEMM
// may allocate its packing buffers). Activations are f32 with any strides (unit stride in the last
// dim); outputs must not overlap inputs.
//
// Fusion (per token, multiply-adds): up-projecting through W_O costs H·r·d_v + H·d_v·D unfused and
// H·r·D with the fused matrix W_F = [W_O^{:,i} W_UV^i]_i ([D][H·r]); `mla_output_cost` computes
// both and `MlaFusion::automatic` fuses when that is cheaper (r·D < r·d_v + d_v·D, i.e. roughly
// when r < d_v). `fused` / `unfused` force the choice. Fusing costs H·r·d_v·D multiply-adds once, at
// construction. Typical shapes (DeepSeek, TransMLA conversions: r ≥ d_v) stay unfused.
//
// Memory (f32): H·(d_nope + d_v)·r, plus D·H·d_v (unfused with W_O) or D·H·r (fused).
//
// Thread-safety: an MlaWeights is immutable after construction; its const methods may run
// concurrently from any threads. A Workspace holds scratch for one call at a time: give each
// thread its own. Nothing here starts threads.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/error.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

namespace transmla::cpu {

/// Whether the up-projection through W_O uses the fused W_O·W_UV.
enum class MlaFusion { automatic, fused, unfused };

constexpr std::string_view mla_fusion_name(MlaFusion f) noexcept {
    return f == MlaFusion::fused ? "fused" : (f == MlaFusion::unfused ? "unfused" : "automatic");
}

/// Multiply-adds per token of latent [H][r] → y [D]: through the fused [D][H·r] matrix, or through
/// W_UV per head then W_O.
struct MlaOutputCost {
    double fused = 0, unfused = 0;
    constexpr bool fused_pays() const noexcept { return fused < unfused; }
};

constexpr MlaOutputCost mla_output_cost(int heads, int rank, int v_dim, std::int64_t model_dim) noexcept {
    const double H = heads, r = rank, dv = v_dim, D = double(model_dim);
    return {H * r * D, H * r * dv + H * dv * D};
}

class MlaWeights;

/// Scratch of one up_project-to-y call of up to `max_tokens` tokens (caller-owned, reusable; one
/// call at a time).
class MlaWorkspace {
public:
    MlaWorkspace() = default;
    MlaWorkspace(const MlaWeights& w, std::int64_t max_tokens);
    std::int64_t max_tokens() const noexcept { return max_tokens_; }

private:
    friend class MlaWeights;
    std::vector<float> buf_;
    std::int64_t max_tokens_ = 0, per_token_ = 0;
};

class MlaWeights {
public:
    using Workspace = MlaWorkspace;
    using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

    MlaWeights() = default;

    /// From `kv_b [heads·(d_nope + d_v)][r]` only: absorb and up_project to [T][H][d_v].
    template <class Tw>
    MlaWeights(View2<const Tw> kv_b, int heads, int d_nope, int d_v) {
        init(kv_b, heads, d_nope, d_v, "transmla::cpu::MlaWeights");
    }

    /// With `w_o [D][heads·d_v]` too: up_project to y [T][D], fused or not (`fusion`).
    template <class Tw, class To>
    MlaWeights(View2<const Tw> kv_b, int heads, int d_nope, int d_v, View2<const To> w_o,
               MlaFusion fusion = MlaFusion::automatic) {
        const char* who = "transmla::cpu::MlaWeights";
        init(kv_b, heads, d_nope, d_v, who);
        require(w_o.data != nullptr && w_o.size(0) >= 1 && w_o.size(1) == std::int64_t(heads) * d_v, who,
                ": w_o must be [D][heads·d_v] = [D][", std::int64_t(heads) * d_v, "] with D >= 1, got [", w_o.size(0),
                "][", w_o.size(1), "]", w_o.data == nullptr ? " (null view)" : "");
        D_ = w_o.size(0);
        fused_ = fusion == MlaFusion::fused ||
                 (fusion == MlaFusion::automatic && mla_output_cost(H_, r_, dv_, D_).fused_pays());
        const std::int64_t HV = std::int64_t(H_) * dv_;
        if (!fused_) {
            wo_.resize(D_, HV);
            for (std::int64_t j = 0; j < D_; ++j)
                for (std::int64_t k = 0; k < HV; ++k) wo_(j, k) = to_float(w_o(j, k));
            return;
        }
        // W_F [D][H·r]: block i = W_O[:, i·d_v : (i+1)·d_v] · W_UV^i, accumulated in f32 by Eigen
        // from the f32-converted operands.
        transmla::detail::size_product(who, {{"D", D_}, {"heads", H_}, {"r", r_}}, sizeof(float), 1);
        RowMatrix wo_full(D_, HV);
        for (std::int64_t j = 0; j < D_; ++j)
            for (std::int64_t k = 0; k < HV; ++k) wo_full(j, k) = to_float(w_o(j, k));
        wf_.resize(D_, std::int64_t(H_) * r_);
        for (int i = 0; i < H_; ++i)
            wf_.middleCols(std::int64_t(i) * r_, r_).noalias() = wo_full.middleCols(std::int64_t(i) * dv_, dv_) * uv(i);
    }

    int heads() const noexcept { return H_; }
    int rank() const noexcept { return r_; }
    int nope_dim() const noexcept { return dn_; }
    int v_dim() const noexcept { return dv_; }
    /// D, or 0 without W_O.
    std::int64_t model_dim() const noexcept { return D_; }
    bool has_output() const noexcept { return D_ > 0; }
    bool fused() const noexcept { return fused_; }
    bool empty() const noexcept { return H_ == 0; }
    /// Bytes of the stored f32 matrices.
    std::size_t bytes() const noexcept {
        return sizeof(float) * std::size_t(uk_.size() + uv_.size() + wo_.size() + wf_.size());
    }
    /// f32 W_UK^i [d_nope][r], W_UV^i [d_v][r] (rows of kv_b), W_O [D][H·d_v] (unfused), W_F [D][H·r] (fused).
    Eigen::Map<const RowMatrix> uk(int i) const noexcept {
        return {uk_.data() + std::int64_t(i) * dn_ * r_, dn_, r_};
    }
    Eigen::Map<const RowMatrix> uv(int i) const noexcept {
        return {uv_.data() + std::int64_t(i) * dv_ * r_, dv_, r_};
    }
    const RowMatrix& w_o() const noexcept { return wo_; }
    const RowMatrix& w_fused() const noexcept { return wf_; }

    /// Scratch for up_project(latent, y, ws) of up to `max_tokens` tokens.
    Workspace make_workspace(std::int64_t max_tokens) const { return Workspace(*this, max_tokens); }

    /// q_abs[t][i] = [W_UK^iᵀ q_nope[t][i] | q_pe[t][i]]: q_nope [T][H][d_nope], q_pe [T][H][d_r]
    /// (rotated), q_abs [T][H][r + d_r].
    void absorb(View3<const float> q_nope, View3<const float> q_pe, View3<float> q_abs) const {
        const char* who = "transmla::cpu::MlaWeights::absorb";
        check_ready(who);
        const std::int64_t T = q_nope.size(0);
        const std::int64_t dr = q_pe.size(2);
        transmla::detail::check_extents(q_nope, {T, H_, dn_}, who, "q_nope");
        transmla::detail::check_extents(q_pe, {T, H_, dr}, who, "q_pe");
        transmla::detail::check_extents(q_abs, {T, H_, r_ + dr}, who, "q_abs");
        if (T == 0) return;
        for (int i = 0; i < H_; ++i) {
            OMap qa(q_abs.data + i * q_abs.stride[1], T, r_, Stride(q_abs.stride[0]));
            if (dn_ == 0) qa.setZero();
            else qa.noalias() = CMap(q_nope.data + i * q_nope.stride[1], T, dn_, Stride(q_nope.stride[0])) * uk(i);
            for (std::int64_t t = 0; t < T; ++t) std::copy_n(q_pe.row(t, i), dr, q_abs.row(t, i) + r_);
        }
    }

    /// out[t][i] = W_UV^i latent[t][i]: latent [T][H][r] → out [T][H][d_v].
    void up_project(View3<const float> latent, View3<float> out) const {
        const char* who = "transmla::cpu::MlaWeights::up_project";
        check_ready(who);
        const std::int64_t T = latent.size(0);
        transmla::detail::check_extents(latent, {T, H_, r_}, who, "latent");
        transmla::detail::check_extents(out, {T, H_, dv_}, who, "out");
        if (T == 0) return;
        for (int i = 0; i < H_; ++i)
            OMap(out.data + i * out.stride[1], T, dv_, Stride(out.stride[0])).noalias() =
                CMap(latent.data + i * latent.stride[1], T, r_, Stride(latent.stride[0])) * uv(i).transpose();
    }

    /// y[t] = W_O concat_i(W_UV^i latent[t][i]): latent [T][H][r] → y [T][D]; needs W_O and a
    /// workspace of at least T tokens made for these weights.
    void up_project(View3<const float> latent, View2<float> y, Workspace& ws) const {
        const char* who = "transmla::cpu::MlaWeights::up_project";
        check_ready(who);
        require(has_output(), who, ": these weights were prepared without W_O (construct with w_o to project to y)");
        const std::int64_t T = latent.size(0);
        transmla::detail::check_extents(latent, {T, H_, r_}, who, "latent");
        transmla::detail::check_extents(y, {T, D_}, who, "y");
        require(ws.per_token_ == workspace_per_token() && T <= ws.max_tokens_, who, ": the workspace holds ",
                ws.max_tokens_, " tokens of ", ws.per_token_, " floats; this call needs ", T, " tokens of ",
                workspace_per_token(), " (make it with make_workspace(max_tokens) of these weights)");
        if (T == 0) return;
        OMap Y(y.data, T, D_, Stride(y.stride[0]));
        if (fused_) {
            const std::int64_t HR = std::int64_t(H_) * r_;
            if (H_ == 1 || latent.stride[1] == r_) {  // heads contiguous: one [T][H·r] matrix
                Y.noalias() = CMap(latent.data, T, HR, Stride(T == 1 ? HR : latent.stride[0])) * wf_.transpose();
            } else {
                float* L = ws.buf_.data();
                for (std::int64_t t = 0; t < T; ++t)
                    for (int i = 0; i < H_; ++i) std::copy_n(latent.row(t, i), r_, L + t * HR + std::int64_t(i) * r_);
                Y.noalias() = CMap(L, T, HR, Stride(HR)) * wf_.transpose();
            }
            return;
        }
        const std::int64_t HV = std::int64_t(H_) * dv_;
        float* o = ws.buf_.data();
        up_project(latent, View3<float>(o, {T, H_, dv_}));
        Y.noalias() = CMap(o, T, HV, Stride(HV)) * wo_.transpose();
    }

    /// Floats per token a workspace holds for these weights.
    std::int64_t workspace_per_token() const noexcept {
        return !has_output() ? 0 : std::int64_t(H_) * (fused_ ? r_ : dv_);
    }

private:
    using Stride = Eigen::OuterStride<>;
    using CMap = Eigen::Map<const RowMatrix, 0, Stride>;
    using OMap = Eigen::Map<RowMatrix, 0, Stride>;

    template <class Tw>
    void init(View2<const Tw> kv_b, int heads, int d_nope, int d_v, const char* who) {
        require(heads >= 1 && d_nope >= 0 && d_v >= 1, who, ": need heads >= 1, d_nope >= 0, d_v >= 1; got heads=",
                heads, " d_nope=", d_nope, " d_v=", d_v);
        const std::int64_t rows = std::int64_t(heads) * (std::int64_t(d_nope) + d_v);
        require(kv_b.data != nullptr && kv_b.size(1) >= 1 && kv_b.size(1) <= (1 << 30) && kv_b.size(0) == rows, who,
                ": kv_b must be [heads·(d_nope + d_v)][r] = [", rows, "][r] with r >= 1, got [", kv_b.size(0), "][",
                kv_b.size(1), "]", kv_b.data == nullptr ? " (null view)" : "");
        const int r = int(kv_b.size(1));
        transmla::detail::size_product(who, {{"heads", heads}, {"d_nope + d_v", std::int64_t(d_nope) + d_v}, {"r", r}},
                             sizeof(float), 0);
        H_ = heads, dn_ = d_nope, dv_ = d_v, r_ = r;
        uk_.resize(std::int64_t(heads) * d_nope, r);
        uv_.resize(std::int64_t(heads) * d_v, r);
        for (int i = 0; i < heads; ++i) {
            const std::int64_t base = std::int64_t(i) * (d_nope + d_v);
            for (int e = 0; e < d_nope; ++e)
                for (int a = 0; a < r; ++a) uk_(std::int64_t(i) * d_nope + e, a) = to_float(kv_b(base + e, a));
            for (int e = 0; e < d_v; ++e)
                for (int a = 0; a < r; ++a) uv_(std::int64_t(i) * d_v + e, a) = to_float(kv_b(base + d_nope + e, a));
        }
    }
    void check_ready(const char* who) const {
        require(!empty(), who, ": the weights are empty (default-constructed)");
    }

    int H_ = 0, dn_ = 0, dv_ = 0, r_ = 0;
    std::int64_t D_ = 0;
    bool fused_ = false;
    RowMatrix uk_, uv_, wo_, wf_;  // [H·d_nope][r], [H·d_v][r], [D][H·d_v] (unfused), [D][H·r] (fused)
};

inline MlaWorkspace::MlaWorkspace(const MlaWeights& w, std::int64_t max_tokens) {
    require(max_tokens >= 0, "transmla::cpu::MlaWorkspace: max_tokens must be >= 0, got ", max_tokens);
    per_token_ = w.workspace_per_token();
    max_tokens_ = max_tokens;
    buf_.resize(std::size_t(transmla::detail::size_product("transmla::cpu::MlaWorkspace",
                                                           {{"max_tokens", max_tokens}, {"floats per token", per_token_}},
                                                           sizeof(float))));
}

}  // namespace transmla::cpu
