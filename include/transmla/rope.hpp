// transmla/rope.hpp — RoPE frequencies (none / linear / llama3 / yarn scaling), both pairings,
// application at per-token positions, and precomputed cos/sin tables for kernels.
//
// Pair j of a rotary block of width d (j in [0, d/2)) has inverse frequency θ_j and is made of
// dims (j, j + d/2) for the half-split pairing and (2j, 2j + 1) for the interleaved one. At
// position t it maps (u, w) to (u·cos tθ_j − w·sin tθ_j, u·sin tθ_j + w·cos tθ_j), times the
// attention factor (1 except for yarn).
#pragma once

#include "transmla/error.hpp"
#include "transmla/shape.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <span>
#include <utility>
#include <vector>

namespace transmla {

/// The two dims of pair j in a rotary block of width `dim`.
constexpr std::pair<int, int> rope_pair(RopePairing p, int dim, int j) noexcept {
    return p == RopePairing::half_split ? std::pair{j, j + dim / 2} : std::pair{2 * j, 2 * j + 1};
}

/// Inverse frequencies θ_j, j ∈ [0, rotary_dim/2), after the spec's scaling.
inline std::vector<double> rope_inv_freq(const RopeSpec& spec, int rotary_dim) {
    spec.validate(rotary_dim);
    const int half = rotary_dim / 2;
    std::vector<double> f(half);
    for (int j = 0; j < half; ++j) f[j] = std::pow(spec.base, -2.0 * j / rotary_dim);
    const double pi2 = 2.0 * std::numbers::pi;
    switch (spec.scaling) {
        case RopeScaling::none: break;
        case RopeScaling::linear:
            for (auto& x : f) x /= spec.factor;
            break;
        case RopeScaling::llama3: {
            const double old_len = spec.original_max_position;
            const double low_wl = old_len / spec.low_freq_factor, high_wl = old_len / spec.high_freq_factor;
            for (auto& x : f) {
                const double wl = pi2 / x;
                if (wl < high_wl) continue;          // high frequency: unchanged
                if (wl > low_wl) { x /= spec.factor; continue; }  // low frequency: interpolated
                const double s = (old_len / wl - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor);
                x = (1.0 - s) * x / spec.factor + s * x;
            }
            break;
        }
        case RopeScaling::yarn: {
            const double d = rotary_dim, L = spec.original_max_position, lb = std::log(spec.base);
            auto corr = [&](double rot) { return d * std::log(L / (rot * pi2)) / (2.0 * lb); };
            double lo = std::max(std::floor(corr(spec.beta_fast)), 0.0);
            double hi = std::min(std::ceil(corr(spec.beta_slow)), d - 1.0);
            if (lo == hi) hi += 0.001;
            for (int j = 0; j < half; ++j) {
                const double ramp = std::clamp((j - lo) / (hi - lo), 0.0, 1.0);
                const double extrap = 1.0 - ramp;  // weight of the unscaled frequency
                f[j] = f[j] / spec.factor * (1.0 - extrap) + f[j] * extrap;
            }
            break;
        }
    }
    return f;
}

/// Multiplier on cos and sin: yarn's `0.1·ln(factor) + 1` (or the spec's explicit value), else 1.
inline double rope_attention_factor(const RopeSpec& spec) noexcept {
    if (spec.scaling != RopeScaling::yarn) return 1.0;
    if (spec.attention_factor > 0.0) return spec.attention_factor;
    return spec.factor > 1.0 ? 0.1 * std::log(spec.factor) + 1.0 : 1.0;
}

/// Rotates one rotary block `x[0..dim)` at position `pos`, computing cos/sin in double.
/// `inv_freq` has dim/2 entries. Works on float, double and the 16-bit storage types.
template <class T>
void apply_rope(T* x, int dim, RopePairing pairing, std::span<const double> inv_freq, double pos,
                double attention_factor = 1.0) {
    require(dim % 2 == 0 && std::int64_t(inv_freq.size()) == dim / 2, "apply_rope: dim ", dim, " needs ",
            dim / 2, " frequencies, got ", inv_freq.size());
    for (int j = 0; j < dim / 2; ++j) {
        const auto [a, b] = rope_pair(pairing, dim, j);
        const double c = std::cos(pos * inv_freq[j]) * attention_factor;
        const double s = std::sin(pos * inv_freq[j]) * attention_factor;
        const double u = double(x[a]), w = double(x[b]);
        x[a] = static_cast<T>(u * c - w * s);
        x[b] = static_cast<T>(u * s + w * c);
    }
}

/// Permutation taking a half-split head to the interleaved layout: `out[perm[i]] = in[i]`
/// (dim j → 2j and dim j + d/2 → 2j + 1), so pair j keeps frequency θ_j.
inline std::vector<int> half_split_to_interleaved(int dim) {
    require(dim % 2 == 0, "half_split_to_interleaved: dim must be even, got ", dim);
    std::vector<int> p(dim);
    for (int j = 0; j < dim / 2; ++j) {
        p[j] = 2 * j;
        p[j + dim / 2] = 2 * j + 1;
    }
    return p;
}

/// Precomputed cos/sin (f32, computed in double) for positions [0, max_positions): what kernels
/// and the model forward passes use.
class RopeTable {
public:
    RopeTable(const RopeSpec& spec, int rotary_dim, std::int64_t max_positions)
        : RopeTable(rope_inv_freq(spec, checked_rotary_dim(rotary_dim, max_positions)), spec.pairing, max_positions,
                    rope_attention_factor(spec)) {}

    /// Table from explicit inverse frequencies, e.g. a subset of another table's (the RoPE key of
    /// a converted MLA model rotates pair i with θ_{c·i} of the original table).
    RopeTable(std::vector<double> inv_freq, RopePairing pairing, std::int64_t max_positions,
              double attention_factor = 1.0)
        : inv_freq_(std::move(inv_freq)), pairing_(pairing), max_pos_(max_positions), af_(attention_factor) {
        require(!inv_freq_.empty() && max_positions > 0, "RopeTable: need frequencies and max_positions > 0, got ",
                inv_freq_.size(), " frequencies and max_positions=", max_positions);
        // rotary_dim() is an int: twice the number of frequencies must fit.
        require(inv_freq_.size() <= std::size_t(std::numeric_limits<int>::max() / 2), "RopeTable: ", inv_freq_.size(),
                " frequencies make a rotary dim that overflows int");
        const std::size_t h = inv_freq_.size();
        cos_.resize(std::size_t(detail::size_product(
            "RopeTable", {{"max_positions", max_positions}, {"rotary_dim / 2", std::int64_t(h)}}, 2 * sizeof(float))));
        sin_.resize(cos_.size());
        for (std::size_t i = 0; i < cos_.size(); ++i) {  // i = t·h + j
            const double angle = double(i / h) * inv_freq_[i % h];
            cos_[i] = float(std::cos(angle) * af_);
            sin_[i] = float(std::sin(angle) * af_);
        }
    }

    int rotary_dim() const noexcept { return int(inv_freq_.size()) * 2; }
    RopePairing pairing() const noexcept { return pairing_; }
    std::int64_t max_positions() const noexcept { return max_pos_; }
    std::span<const double> inv_freq() const noexcept { return inv_freq_; }
    double attention_factor() const noexcept { return af_; }
    const float* cos_row(std::int64_t pos) const noexcept { return &cos_[std::size_t(pos) * inv_freq_.size()]; }
    const float* sin_row(std::int64_t pos) const noexcept { return &sin_[std::size_t(pos) * inv_freq_.size()]; }

    /// Rotates one rotary block in place at position pos (f32 arithmetic).
    template <class T>
    void apply(T* x, std::int64_t pos) const {
        require(pos >= 0 && pos < max_pos_, "RopeTable::apply: position ", pos, " outside [0, ", max_pos_, ")");
        const int d = rotary_dim();
        const float* c = cos_row(pos);
        const float* s = sin_row(pos);
        for (int j = 0; j < d / 2; ++j) {
            const auto [a, b] = rope_pair(pairing_, d, j);
            const float u = to_float(x[a]), w = to_float(x[b]);
            x[a] = static_cast<T>(u * c[j] - w * s[j]);
            x[b] = static_cast<T>(u * s[j] + w * c[j]);
        }
    }

    /// Rotates the first rotary_dim() dims of every head of `x` `[tokens][heads][≥ rotary_dim]`,
    /// token t at positions[t].
    template <class T>
    void apply(View3<T> x, std::span<const std::int64_t> positions) const {
        require(std::int64_t(positions.size()) == x.size(0), "RopeTable::apply: ", positions.size(),
                " positions for ", x.size(0), " tokens");
        require(x.size(2) >= rotary_dim() && x.inner_contiguous(), "RopeTable::apply: head width ", x.size(2),
                " is smaller than the rotary dim ", rotary_dim());
        for (std::int64_t t = 0; t < x.size(0); ++t)
            for (std::int64_t h = 0; h < x.size(1); ++h) apply(x.row(t, h), positions[t]);
    }

private:
    // Checks the table size before the frequencies are computed (a huge rotary dim would
    // otherwise allocate and fill them first).
    static int checked_rotary_dim(int rotary_dim, std::int64_t max_positions) {
        require(max_positions > 0, "RopeTable: max_positions must be positive, got ", max_positions);
        if (rotary_dim > 0)
            (void)detail::size_product("RopeTable", {{"max_positions", max_positions}, {"rotary_dim / 2", rotary_dim / 2}},
                                       2 * sizeof(float));
        return rotary_dim;  // its other checks: RopeSpec::validate
    }

    std::vector<double> inv_freq_;
    RopePairing pairing_;
    std::int64_t max_pos_;
    double af_;
    std::vector<float> cos_, sin_;
};

}  // namespace transmla
