// transmla/softmax.hpp — online softmax in base 2 and the log-sum-exp merge of partial states.
//
// Logits are pre-multiplied by `scale · log2(e)` so that exp becomes exp2. A partial state over a
// subset of keys is (m, l, acc): running max m of the base-2 logits, l = Σ exp2(s − m) and
// acc = Σ exp2(s − m)·v. An empty state is m = −inf, l = 0, acc = 0; merging is NaN-safe with it.
// A finished state is (o = acc / l, lse) with the natural-log lse = (m + log2 l)·ln 2, or
// (0, −inf) when empty. Both forms merge associatively.
//
// A logit of −inf is a masked key (weight 0). Non-finite logits computed from the data (NaN,
// +inf; and a −inf that is not a mask, which callers pass as NaN) poison the state: m = l = NaN,
// and every merge and finish involving it gives NaN (output and lse), as the reference does.
// "Empty" means l == 0 exactly — a NaN l is not empty — so a poisoned row never comes out as a
// row without keys (0, −inf).
#pragma once

#include <cmath>
#include <limits>
#include <numbers>

namespace transmla {

inline constexpr double log2e = std::numbers::log2e;
inline constexpr double ln2 = std::numbers::ln2;

/// Running max and denominator of one query row (acc is held by the caller).
template <class Real>
struct SoftmaxState {
    Real m = -std::numeric_limits<Real>::infinity();
    Real l = Real(0);

    /// No key seen (a poisoned state, l = NaN, is not empty).
    bool empty() const noexcept { return l == Real(0); }
    bool poisoned() const noexcept { return std::isnan(l); }
    void poison() noexcept { m = l = std::numeric_limits<Real>::quiet_NaN(); }

    /// Raises the running max to at least `block_max`; returns the factor by which the caller
    /// must multiply its acc (and which was applied to l). Safe when both maxima are −inf; a NaN
    /// or +inf block max (a non-finite logit) poisons the state and returns NaN.
    Real rescale_to(Real block_max) noexcept {
        if (std::isnan(block_max) || block_max == std::numeric_limits<Real>::infinity()) poison();
        if (poisoned()) return std::numeric_limits<Real>::quiet_NaN();
        if (!(block_max > m)) return Real(1);
        const Real f = (m == -std::numeric_limits<Real>::infinity()) ? Real(0) : std::exp2(m - block_max);
        m = block_max;
        l *= f;
        return f;
    }
    /// Adds one base-2 logit s (already ≤ m after rescale_to); returns its weight exp2(s − m).
    /// s = −inf is a masked key (weight 0); NaN or +inf poisons the state and returns NaN. (A
    /// caller whose logits can come out −inf from the data, not from a mask, passes NaN instead.)
    Real add(Real s) noexcept {
        if (std::isnan(s) || s == std::numeric_limits<Real>::infinity()) poison();
        if (poisoned()) return std::numeric_limits<Real>::quiet_NaN();
        const Real p = (s == -std::numeric_limits<Real>::infinity()) ? Real(0) : std::exp2(s - m);
        l += p;
        return p;
    }
    /// Natural-log log-sum-exp of the logits seen (−inf when empty, NaN when poisoned).
    Real lse() const noexcept {
        return empty() ? -std::numeric_limits<Real>::infinity() : (m + std::log2(l)) * Real(ln2);
    }
};

/// Merges unnormalised state b into a: (m, l, acc) ← merge. `n` accumulator entries. A poisoned
/// operand poisons the result (and its acc).
template <class Real>
void merge_state(SoftmaxState<Real>& a, Real* acc_a, const SoftmaxState<Real>& b, const Real* acc_b, int n) noexcept {
    if (a.poisoned() || b.poisoned()) {
        a.poison();
        for (int i = 0; i < n; ++i) acc_a[i] = std::numeric_limits<Real>::quiet_NaN();
        return;
    }
    if (b.empty()) return;
    if (a.empty()) {
        a = b;
        for (int i = 0; i < n; ++i) acc_a[i] = acc_b[i];
        return;
    }
    const Real m = a.m > b.m ? a.m : b.m;
    const Real fa = std::exp2(a.m - m), fb = std::exp2(b.m - m);
    for (int i = 0; i < n; ++i) acc_a[i] = acc_a[i] * fa + acc_b[i] * fb;
    a.l = a.l * fa + b.l * fb;
    a.m = m;
}

/// Writes o = acc / l (zeros when empty, NaN when poisoned) and returns the natural-log lse.
template <class Real, class Out>
Real finalize_state(const SoftmaxState<Real>& s, const Real* acc, Out* o, int n) noexcept {
    const Real inv = s.empty() ? Real(0) : Real(1) / s.l;
    for (int i = 0; i < n; ++i) o[i] = static_cast<Out>(acc[i] * inv);
    return s.lse();
}

/// Merges finished partial (o_b, lse_b) into (o_a, lse_a) in place; NaN-safe on empty partials
/// (lse = −inf); a NaN lse on either side (a poisoned partial) makes the result NaN.
template <class Real>
void merge_normalized(Real* o_a, Real& lse_a, const Real* o_b, Real lse_b, int n) noexcept {
    constexpr Real ninf = -std::numeric_limits<Real>::infinity();
    if (std::isnan(lse_a) || std::isnan(lse_b)) {
        for (int i = 0; i < n; ++i) o_a[i] = std::numeric_limits<Real>::quiet_NaN();
        lse_a = std::numeric_limits<Real>::quiet_NaN();
        return;
    }
    if (lse_b == ninf) return;
    if (lse_a == ninf) {
        for (int i = 0; i < n; ++i) o_a[i] = o_b[i];
        lse_a = lse_b;
        return;
    }
    const Real m = lse_a > lse_b ? lse_a : lse_b;
    const Real wa = std::exp(lse_a - m), wb = std::exp(lse_b - m);
    const Real inv = Real(1) / (wa + wb);
    for (int i = 0; i < n; ++i) o_a[i] = (o_a[i] * wa + o_b[i] * wb) * inv;
    lse_a = m + std::log(wa + wb);
}

}  // namespace transmla
