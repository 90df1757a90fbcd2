// transmla/model/attention.hpp — the fp32 building blocks of the model forward passes: RoPE
// cos/sin for a run of positions, and one causal attention routine general enough for every
// attention form the models use (GQA, the partial-RoPE intermediate, naive and absorbed MLA,
// MHA2MLA): query head i reads key head i/(H/Hk) and value head i/(H/Hv), each with its own width
// and strides.
//
// The scores and the softmax are computed per query head as two Eigen GEMMs (Q Kᵀ, then P V);
// heads are split across OpenMP threads when the work is large enough. This is the prefill path
// and the fallback; the decode-only hot loops use the cpu/ kernels where the shapes fit (see
// model/model.hpp).
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/error.hpp"
#include "transmla/rope.hpp"
#include "transmla/shape.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace transmla::model {

using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// cos/sin of `inv_freq` (one entry per rotary pair) at the positions p0 .. p0 + n − 1, computed
/// in double and stored as float, times the attention factor.
class RopeRun {
public:
    RopeRun() = default;
    RopeRun(std::span<const double> inv_freq, std::int64_t p0, std::int64_t n, double attention_factor = 1.0)
        : pairs_(int(inv_freq.size())), p0_(p0), n_(n) {
        require(p0 >= 0 && n >= 0, "RopeRun: bad position range [", p0, ", ", p0 + n, ")");
        cos_.resize(std::size_t(n) * pairs_);
        sin_.resize(cos_.size());
        for (std::int64_t t = 0; t < n; ++t)
            for (int j = 0; j < pairs_; ++j) {
                const double a = double(p0 + t) * inv_freq[std::size_t(j)];
                cos_[std::size_t(t) * pairs_ + j] = float(std::cos(a) * attention_factor);
                sin_[std::size_t(t) * pairs_ + j] = float(std::sin(a) * attention_factor);
            }
    }
    int pairs() const noexcept { return pairs_; }
    std::int64_t first() const noexcept { return p0_; }
    std::int64_t size() const noexcept { return n_; }

    /// Rotates a block of 2·pairs() dims of the token at row t (position first() + t): pair j is
    /// (j, j + pairs) for half_split and (2j, 2j + 1) for interleaved.
    void rotate(float* x, std::int64_t t, RopePairing pairing) const noexcept {
        const float* c = &cos_[std::size_t(t) * pairs_];
        const float* s = &sin_[std::size_t(t) * pairs_];
        if (pairing == RopePairing::half_split) {
            float* u = x;
            float* w = x + pairs_;
            for (int j = 0; j < pairs_; ++j) {
                const float a = u[j], b = w[j];
                u[j] = a * c[j] - b * s[j];
                w[j] = a * s[j] + b * c[j];
            }
        } else {
            for (int j = 0; j < pairs_; ++j) {
                const float a = x[2 * j], b = x[2 * j + 1];
                x[2 * j] = a * c[j] - b * s[j];
                x[2 * j + 1] = a * s[j] + b * c[j];
            }
        }
    }
    /// Rotates the two values (a, b) as pair j (frequency inv_freq[j]) at row t.
    void rotate_pair(float& a, float& b, std::int64_t t, int j) const noexcept {
        const float c = cos_[std::size_t(t) * pairs_ + j], s = sin_[std::size_t(t) * pairs_ + j];
        const float u = a, w = b;
        a = u * c - w * s;
        b = u * s + w * c;
    }
    /// Rotates only the listed pairs (indices into the frequency list; pair j is the dims
    /// rope_pair(pairing, dim, j) of a block of width `dim`). Used by MHA2MLA's partial RoPE.
    void rotate_pairs(float* x, std::int64_t t, RopePairing pairing, int dim, std::span<const int> which) const noexcept {
        const float* c = &cos_[std::size_t(t) * pairs_];
        const float* s = &sin_[std::size_t(t) * pairs_];
        for (const int j : which) {
            const auto [ia, ib] = rope_pair(pairing, dim, j);
            const float a = x[ia], b = x[ib];
            x[ia] = a * c[j] - b * s[j];
            x[ib] = a * s[j] + b * c[j];
        }
    }

private:
    int pairs_ = 0;
    std::int64_t p0_ = 0, n_ = 0;
    std::vector<float> cos_, sin_;
};

/// A strided set of heads: element (token t, head h, e) at data[t·token_stride + h·head_stride + e].
struct HeadsRef {
    const float* data = nullptr;
    std::int64_t token_stride = 0;
    std::int64_t head_stride = 0;
    int heads = 0;
    int width = 0;
};

/// Causal attention. `q` has T tokens of H heads of width dk at positions q_offset + t; `k` and
/// `v` have S tokens (positions 0 .. S−1) of Hk / Hv heads (dk / dv wide). Query t sees keys
/// s ≤ q_offset + t. Writes out[t·out_token_stride + i·dv + e]. H must be a multiple of Hk and Hv.
inline void attend(const HeadsRef& q, std::int64_t T, const HeadsRef& k, const HeadsRef& v, std::int64_t S,
                   std::int64_t q_offset, float scale, float* out, std::int64_t out_token_stride) {
    const int H = q.heads, dk = q.width, dv = v.width;
    require(k.width == dk, "model::attend: key width ", k.width, " != query width ", dk);
    require(k.heads > 0 && v.heads > 0 && H % k.heads == 0 && H % v.heads == 0, "model::attend: ", H,
            " query heads do not divide into ", k.heads, " key / ", v.heads, " value heads");
    require(q_offset >= 0 && q_offset + T <= S, "model::attend: queries at positions [", q_offset, ", ",
            q_offset + T, ") need that many keys, have ", S);
    using Stride = Eigen::OuterStride<>;
    using CMap = Eigen::Map<const RowMatrixXf, 0, Stride>;
    using OMap = Eigen::Map<RowMatrixXf, 0, Stride>;
    const int gk = H / k.heads, gv = H / v.heads;
    const bool par = double(T) * double(S) * double(H) * double(dk + dv) > 2e6;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (par)
#endif
    for (int i = 0; i < H; ++i) {
        const int kh = i / gk, vh = i / gv;
        // Only keys [0, q_offset + T) can be seen.
        const std::int64_t Sv = q_offset + T;
        CMap Q(q.data + i * q.head_stride, T, dk, Stride(q.token_stride));
        CMap K(k.data + kh * k.head_stride, Sv, dk, Stride(k.token_stride));
        CMap V(v.data + vh * v.head_stride, Sv, dv, Stride(v.token_stride));
        RowMatrixXf P(T, Sv);
        P.noalias() = (Q * K.transpose()) * scale;
        for (std::int64_t t = 0; t < T; ++t) {
            float* row = P.row(t).data();
            const std::int64_t last = q_offset + t;  // inclusive
            float m = -std::numeric_limits<float>::infinity();
            for (std::int64_t s = 0; s <= last; ++s) m = std::max(m, row[s]);
            float l = 0.f;
            for (std::int64_t s = 0; s <= last; ++s) {
                row[s] = std::exp(row[s] - m);
                l += row[s];
            }
            const float inv = 1.f / l;
            for (std::int64_t s = 0; s <= last; ++s) row[s] *= inv;
            for (std::int64_t s = last + 1; s < Sv; ++s) row[s] = 0.f;
        }
        OMap O(out + std::int64_t(i) * dv, T, dv, Stride(out_token_stride));
        O.noalias() = P * V;
    }
    (void)par;
}

/// RMSNorm of each row of x [T][D] into y: y = x / sqrt(mean(x²) + eps) · g.
inline void rms_norm(const float* x, std::int64_t T, int D, const float* g, double eps, float* y) {
    for (std::int64_t t = 0; t < T; ++t) {
        const float* xr = x + t * D;
        float* yr = y + t * D;
        double ss = 0;
        for (int e = 0; e < D; ++e) ss += double(xr[e]) * xr[e];
        const float inv = float(1.0 / std::sqrt(ss / D + eps));
        for (int e = 0; e < D; ++e) yr[e] = xr[e] * inv * g[e];
    }
}

}  // namespace transmla::model
