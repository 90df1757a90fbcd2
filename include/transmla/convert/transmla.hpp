// transmla/convert/transmla.hpp — the TransMLA conversion, one function per step of
// docs/conversion.md, in order: equivalence (1), RoRoPE + FreqFold (2), balanced KV (3), joint PCA
// (4), query construction and scale fix (5), DeepSeek-V3 assembly (6), absorption (7); and
// finish_transmla, steps 3–6 in one call on the statistics of the partial-RoPE model.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/convert/layer.hpp"
#include "transmla/convert/linalg.hpp"
#include "transmla/rope.hpp"

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace transmla::convert {

// ------------------------------------------------------------------------------------------------
// Step 1: equivalence
// ------------------------------------------------------------------------------------------------

/// Selector S_i ∈ R^{d×L} of query head i: picks KV block i / g of the latent.
inline MatrixXd selector(const GqaLayer& l, int i) {
    require(i >= 0 && i < l.n_q, "selector: head ", i, " outside [0, ", l.n_q, ")");
    MatrixXd s = MatrixXd::Zero(l.head_dim, l.kv_width());
    s.middleCols(Eigen::Index(i / l.group()) * l.head_dim, l.head_dim).setIdentity();
    return s;
}

/// Step 1: the layer as one L-wide latent key/value with per-head selectors (exact).
inline EquivalentLayer equivalence(const GqaLayer& l) {
    l.validate();
    EquivalentLayer e{l, {}};
    for (int i = 0; i < l.n_q; ++i) e.selectors.push_back(selector(l, i));
    return e;
}

// ------------------------------------------------------------------------------------------------
// Step 2: RoRoPE + FreqFold
// ------------------------------------------------------------------------------------------------

namespace detail {
inline std::string list_of(const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
    return s.empty() ? std::string("none") : s;
}
/// The RoPE dims d_r allowed for head dim d: even divisors of d.
inline std::vector<int> allowed_rope_dims(int d) {
    std::vector<int> v;
    for (int x = 2; x <= d; x += 2)
        if (d % x == 0) v.push_back(x);
    return v;
}
/// The FreqFold factors allowed for (d, c): multiples of c that divide d/2.
inline std::vector<int> allowed_freqfolds(int d, int c) {
    std::vector<int> v;
    for (int f = c; f <= d / 2; f += c)
        if ((d / 2) % f == 0) v.push_back(f);
    return v;
}
}  // namespace detail

/// The closed-form RoRoPE/FreqFold index map of docs/conversion.md, step 2.
///
/// Half-head frequency j ∈ [0, d/2) splits as j = a·F + f1·c + f0 (a < G = d/(2F), f1 < F/c,
/// f0 < c). Group a has n_kv·F features φ = f0·(n_kv·F/c) + h·(F/c) + f1 (KV head h, frequency
/// j(φ)); each token gives it the two samples u[φ] = k̂[h·d + first(j)], w[φ] = k̂[h·d + second(j)]
/// where (first, second) = rope_pair(pairing, d, j) (for half-split: j and j + d/2). Component p
/// of group a, half s, lands at latent index
///   Lidx(p, a, s) = ((((p0·n_kv + p1)·G + a)·(F/c) + p2)·2 + s),
///   p0 = p div (n_kv·F/c), p1 = (p mod (n_kv·F/c)) div (F/c), p2 = p mod (F/c).
/// Latent pair P = Lidx/2 rotates (if it keeps RoPE) with the original frequency
/// θ_{a·F + p2·c}, a = (P div (F/c)) mod G, p2 = P mod (F/c); for P < d_r/2 that is θ_{c·P}.
struct FreqFoldMap {
    int n_kv = 0, d = 0, d_r = 0, F = 0, c = 0, G = 0, Fc = 0;
    RopePairing pairing = RopePairing::half_split;

    /// Validates (d_r even and dividing d; F a multiple of c = d/d_r dividing d/2) and throws
    /// transmla::error naming the option and the allowed values.
    FreqFoldMap(int n_kv_, int d_, int d_r_, int F_, RopePairing p = RopePairing::half_split)
        : n_kv(n_kv_), d(d_), d_r(d_r_), F(F_), pairing(p) {
        require(n_kv > 0 && d > 0 && d % 2 == 0, "FreqFoldMap: bad head shape n_kv=", n_kv, " head_dim=", d);
        require(d_r > 0 && d_r % 2 == 0 && d % d_r == 0, "rope_dim (d_r) = ", d_r,
                " is not allowed for head_dim d = ", d, ": d_r must be even and divide d; allowed: ",
                detail::list_of(detail::allowed_rope_dims(d)));
        c = d / d_r;
        require(F > 0 && F % c == 0 && (d / 2) % F == 0, "freqfold (F) = ", F, " is not allowed for head_dim d = ", d,
                " and rope_dim d_r = ", d_r, " (c = d/d_r = ", c, "): F must be a multiple of c that divides d/2 = ",
                d / 2, "; allowed: ", detail::list_of(detail::allowed_freqfolds(d, c)));
        G = d / (2 * F);
        Fc = F / c;
    }

    int groups() const noexcept { return G; }
    int group_size() const noexcept { return n_kv * F; }
    int latent_width() const noexcept { return n_kv * d; }
    /// KV head of feature φ.
    int head(int phi) const noexcept { return (phi % (n_kv * Fc)) / Fc; }
    /// Frequency index j of feature φ of group a.
    int freq(int a, int phi) const noexcept { return a * F + (phi % Fc) * c + phi / (n_kv * Fc); }
    /// Index into k̂ (width L) of sample s ∈ {0, 1} of feature φ of group a.
    int key_index(int a, int phi, int s) const noexcept {
        const auto [x, y] = rope_pair(pairing, d, freq(a, phi));
        return head(phi) * d + (s ? y : x);
    }
    /// Lidx(p, a, s).
    int latent_index(int p, int a, int s) const noexcept {
        const int p0 = p / (n_kv * Fc), p1 = (p % (n_kv * Fc)) / Fc, p2 = p % Fc;
        return ((((p0 * n_kv + p1) * G + a) * Fc + p2) * 2 + s);
    }
    /// Original frequency index of latent pair P (see above).
    int pair_freq(int P) const noexcept { return ((P / Fc) % G) * F + (P % Fc) * c; }
};

/// Group second moments H_a = Σ_t (u uᵀ + w wᵀ) from the pre-RoPE key moment Σ k̂ k̂ᵀ (L×L).
inline std::vector<MatrixXd> rorope_group_moments(const MatrixXd& key_moment, const FreqFoldMap& map) {
    const int L = map.latent_width(), n = map.group_size();
    detail::check_matrix(key_moment, L, L, "rorope_group_moments", "key moment");
    std::vector<MatrixXd> hs;
    for (int a = 0; a < map.G; ++a) {
        MatrixXd h(n, n);
        for (int x = 0; x < n; ++x)
            for (int y = 0; y < n; ++y)
                h(x, y) = key_moment(map.key_index(a, x, 0), map.key_index(a, y, 0)) +
                          key_moment(map.key_index(a, x, 1), map.key_index(a, y, 1));
        hs.push_back(std::move(h));
    }
    return hs;
}

/// The orthogonal RoRoPE rotation M (L×L): M[Lidx(p,a,s)][key_index(a,φ,s)] = U_a[φ][p], U_a
/// the eigenvectors of H_a (descending). `rope_energy` (optional) receives the fraction of the
/// key energy in the first d_r latent dims: Σ_a Σ_{p<F/c} λ_{a,p} / Σ_a tr H_a.
inline MatrixXd rorope_rotation(const MatrixXd& key_moment, const FreqFoldMap& map, double* rope_energy = nullptr) {
    const int L = map.latent_width(), n = map.group_size();
    const auto hs = rorope_group_moments(key_moment, map);
    MatrixXd m = MatrixXd::Zero(L, L);
    double kept = 0, total = 0;
    for (int a = 0; a < map.G; ++a) {
        const EigenTop e = eigen_full(hs[std::size_t(a)]);
        total += e.trace;
        for (int p = 0; p < map.Fc; ++p) kept += e.values(p);
        for (int p = 0; p < n; ++p)
            for (int phi = 0; phi < n; ++phi)
                for (int s = 0; s < 2; ++s) m(map.latent_index(p, a, s), map.key_index(a, phi, s)) = e.vectors(phi, p);
    }
    if (rope_energy) *rope_energy = total > 0 ? kept / total : 1.0;
    return m;
}

/// M·W for the RoRoPE rotation M of `map` (any W with L rows), using M's block structure: the
/// rows of group a, half s mix only the n_kv·F key rows of that group and half (cost L·n_kv·F
/// per column instead of L²). W's rows are gathered column by column into group order, each
/// group is one small GEMM, and the result is scattered back the same way (row gathers across a
/// column-major matrix would touch a new page per element).
inline MatrixXd rotate_rows(const FreqFoldMap& map, const MatrixXd& m, const MatrixXd& w) {
    const int L = map.latent_width(), n = map.group_size();
    detail::check_matrix(m, L, L, "rotate_rows", "rotation");
    require(w.rows() == L, "rotate_rows: W has ", w.rows(), " rows, expected L = ", L);
    std::vector<int> from(static_cast<std::size_t>(L)), to(static_cast<std::size_t>(L));  // block b = 2a + s, row b·n + i
    std::vector<MatrixXd> mg;
    for (int a = 0; a < map.G; ++a)
        for (int s = 0; s < 2; ++s) {
            const int b = 2 * a + s;
            MatrixXd g(n, n);
            for (int i = 0; i < n; ++i) {
                from[std::size_t(b * n + i)] = map.key_index(a, i, s);
                to[std::size_t(b * n + i)] = map.latent_index(i, a, s);
            }
            for (int pp = 0; pp < n; ++pp)
                for (int phi = 0; phi < n; ++phi) g(pp, phi) = m(map.latent_index(pp, a, s), map.key_index(a, phi, s));
            mg.push_back(std::move(g));
        }
    const Eigen::Index cols = w.cols();
    MatrixXd gathered(L, cols), out(L, cols), prod;
    for (Eigen::Index c = 0; c < cols; ++c)
        for (int q = 0; q < L; ++q) gathered(q, c) = w(from[std::size_t(q)], c);
    for (int b = 0; b < 2 * map.G; ++b) {
        prod.noalias() = mg[std::size_t(b)] * gathered.middleRows(Eigen::Index(b) * n, n);
        for (Eigen::Index c = 0; c < cols; ++c)
            for (int i = 0; i < n; ++i) out(to[std::size_t(b * n + i)], c) = prod(i, c);
    }
    return out;
}

namespace detail {
/// Key/value statistics must match the layer's L = n_kv·d and hold tokens.
inline void check_kv_stats(const KvStats& s, int L, const char* where) {
    require(s.kv_width() == L, where, ": key/value statistics have kv width ", s.kv_width(),
            ", the layer L = n_kv·d = ", L);
    require(s.tokens() > 0, where, ": the key/value statistics hold no tokens");
}
}  // namespace detail

/// Step 2 from the pre-RoPE key moment Σ k̂ k̂ᵀ (L×L, bias included): the partial-RoPE layer.
/// RoPE is kept on the first d_r latent dims, or on all L when keep_all_rope (with F = 1 that is
/// exact: the rotation commutes with RoPE). The layer is taken by value: pass std::move(layer)
/// to hand its W_Q, W_V, W_O over to the partial layer instead of copying them.
inline PartialRopeLayer rorope_from_moment(GqaLayer l, const MatrixXd& key_moment, int d_r, int F,
                                           bool keep_all_rope = false) {
    l.validate();
    const FreqFoldMap map(l.n_kv, l.head_dim, d_r, F, l.rope.pairing);
    const int L = l.kv_width();
    PartialRopeLayer p;
    p.hidden = l.hidden, p.n_q = l.n_q, p.n_kv = l.n_kv, p.head_dim = l.head_dim;
    p.rope_dim = keep_all_rope ? L : d_r;
    p.freqfold = F;
    p.c = map.c;
    const auto theta = l.inv_freq();
    for (int P = 0; P < p.rope_dim / 2; ++P) p.rope_inv_freq.push_back(theta[std::size_t(map.pair_freq(P))]);
    p.rope_attention_factor = rope_attention_factor(l.rope);
    double energy = 1.0;
    p.rotation = rorope_rotation(key_moment, map, &energy);
    p.rope_energy = keep_all_rope ? 1.0 : energy;
    p.wk = rotate_rows(map, p.rotation, l.wk);
    if (l.bk.size()) p.bk = rotate_rows(map, p.rotation, l.bk);
    p.wq = std::move(l.wq), p.bq = std::move(l.bq);
    p.wv = std::move(l.wv), p.bv = std::move(l.bv), p.wo = std::move(l.wo);
    p.alpha = 1.0;
    return p;
}

/// Step 2 from the statistics of the ORIGINAL model's attention input at this layer (layer by
/// value, as rorope_from_moment).
inline PartialRopeLayer rorope(GqaLayer l, const CalibrationStats& original, int d_r, int F, bool keep_all_rope = false) {
    l.validate();
    require(original.hidden() == l.hidden, "rorope: statistics have hidden size ", original.hidden(),
            ", the layer ", l.hidden);
    MatrixXd key_moment = original.project(l.wk, l.bk);
    return rorope_from_moment(std::move(l), key_moment, d_r, F, keep_all_rope);
}

/// Step 2 from the key/value statistics of the ORIGINAL layer (its pre-RoPE keys k̂ = W_K x + b_K):
/// only the key block S[:L, :L] is used (layer by value, as rorope_from_moment).
inline PartialRopeLayer rorope(GqaLayer l, const KvStats& original, int d_r, int F, bool keep_all_rope = false) {
    l.validate();
    const int L = l.kv_width();
    detail::check_kv_stats(original, L, "rorope");
    MatrixXd key_moment = original.leading_block(L);
    return rorope_from_moment(std::move(l), key_moment, d_r, F, keep_all_rope);
}

// ------------------------------------------------------------------------------------------------
// Step 3: balanced KV
// ------------------------------------------------------------------------------------------------

/// α = mean_{j ≥ d_r} ‖K̃[:, j]‖₂ / mean_{j ≥ d_r} ‖V̂[:, j]‖₂ over the calibration tokens (K̃ the
/// rotated, unbalanced keys; the reference also skips the first d_r value columns). Throws when
/// the layer keeps RoPE on every latent dim (no no-RoPE dims to balance).
inline double bkv_alpha(const PartialRopeLayer& p, const CalibrationStats& stats) {
    p.validate();
    const int L = p.kv_width(), dr = p.rope_dim, n = L - dr;
    require(n > 0, "bkv_alpha: the layer keeps RoPE on all ", L, " latent dims; nothing to balance");
    require(stats.hidden() == p.hidden, "bkv_alpha: statistics have hidden size ", stats.hidden(), ", the layer ",
            p.hidden);
    const MatrixXd wk = p.wk.bottomRows(n) * p.alpha;
    const VectorXd bk = p.bk.size() ? VectorXd(p.bk.tail(n) * p.alpha) : VectorXd();
    const VectorXd kd = stats.project_diag(wk, bk);
    const VectorXd vd = stats.project_diag(p.wv.bottomRows(n), p.bv.size() ? VectorXd(p.bv.tail(n)) : VectorXd());
    const double kn = kd.cwiseMax(0.0).cwiseSqrt().mean(), vn = vd.cwiseMax(0.0).cwiseSqrt().mean();
    require(kn > 0 && vn > 0 && std::isfinite(kn / vn), "bkv_alpha: degenerate statistics (mean key norm ", kn,
            ", mean value norm ", vn, ")");
    return kn / vn;
}

/// Step 3: sets the layer's balance factor to α: W̃_K[d_r:], b̃_K[d_r:] become M W_K / α and the
/// no-RoPE selector columns are multiplied by α (selector()). Function-preserving.
/// Step 3 in place (no copy of the layer's weights).
inline void balance_kv_in_place(PartialRopeLayer& p, double alpha) {
    p.validate();
    require(alpha > 0 && std::isfinite(alpha), "balance_kv: alpha must be positive and finite, got ", alpha);
    const int n = p.kv_width() - p.rope_dim;
    const double f = p.alpha / alpha;
    p.wk.bottomRows(n) *= f;
    if (p.bk.size()) p.bk.tail(n) *= f;
    p.alpha = alpha;
}
inline PartialRopeLayer balance_kv(const PartialRopeLayer& p, double alpha) {
    PartialRopeLayer out = p;
    balance_kv_in_place(out, alpha);
    return out;
}

// ------------------------------------------------------------------------------------------------
// Step 4: joint PCA
// ------------------------------------------------------------------------------------------------

/// Result of the joint PCA of z = [k̃[d_r:]/α ; v̂] (width n = 2L − d_r).
struct JointPca {
    int rank = 0;
    MatrixXd basis;         ///< R_r, n × r (orthonormal columns)
    VectorXd eigenvalues;   ///< the top r, descending
    double total_energy = 0;        ///< tr H_z
    double key_energy = 0, value_energy = 0;  ///< traces of the key and value blocks of H_z
    double key_error = 0, value_error = 0;    ///< E‖(I − R Rᵀ) z‖² restricted to the key / value block
    double max_residual = 0;  ///< eigensolver residual (relative to λ_1)
    int iterations = 0;       ///< Lanczos block steps of the eigensolver (0: dense solver)
    MatrixXd w_dkv;  ///< [r][D] = R_rᵀ [W̃_K[d_r:] ; W_V]
    VectorXd b_dkv;  ///< [r] or empty (no key/value bias)
    MatrixXd kv_b;   ///< [n_q·2d][r] = B R_r, per head [k rows (d) | v rows (d)]

    double pca_energy() const { return total_energy > 0 ? eigenvalues.sum() / total_energy : 1.0; }
    double relative_key_error() const { return key_energy > 0 ? key_error / key_energy : 0.0; }
    double relative_value_error() const { return value_energy > 0 ? value_error / value_energy : 0.0; }
};

namespace detail {
/// A = [W̃_K[d_r:] ; W_V] (n × D) and its bias (empty if neither part has one).
inline void joint_matrix(const PartialRopeLayer& p, MatrixXd& a, VectorXd& b) {
    const int L = p.kv_width(), nk = L - p.rope_dim;
    a.resize(nk + L, p.hidden);
    a.topRows(nk) = p.wk.bottomRows(nk);
    a.bottomRows(L) = p.wv;
    b.resize(0);
    if (p.bk.size() || p.bv.size()) {
        b = VectorXd::Zero(nk + L);
        if (p.bk.size()) b.head(nk) = p.bk.tail(nk);
        if (p.bv.size()) b.tail(L) = p.bv;
    }
}
inline void project_basis(const PartialRopeLayer& p, const MatrixXd& basis, JointPca& out);
}  // namespace detail

/// The second moment H_z of z = [k̃[d_r:] ; v̂] of a partial-RoPE layer (at the layer's current
/// α), either explicit (n×n) or as a factor B (n×m, H_z = B Bᵀ, m = D+1) when n > m: the one
/// expensive product of steps 3–4, computed once and shared by α, the PCA and the errors.
struct JointMoment {
    int n = 0, nk = 0;        ///< width 2L − d_r, of which nk = L − d_r key dims
    MatrixXd h;               ///< explicit H_z (empty when factored)
    MatrixXd b;               ///< factor B (empty when explicit)
    VectorXd diag;            ///< diag H_z

    bool factored() const noexcept { return b.size() > 0; }
    /// Rescales the key part by f (z_k → f·z_k), as balancing by α does with f = α_old/α_new.
    void scale_keys(double f) {
        if (factored()) b.topRows(nk) *= f;
        else {
            h.topRows(nk) *= f;
            h.leftCols(nk) *= f;
        }
        diag.head(nk) *= f * f;
    }
    /// H_z x.
    MatrixXd apply(const MatrixXd& x) const {
        if (factored()) return b * (b.transpose() * x);
        return h * x;  // h is stored full (both triangles): the general product is twice as fast
    }
};

/// H_z of the partial-RoPE layer p on `stats` (explicit when 2L − d_r <= D + 1, factored through
/// a Cholesky factor of the input moment otherwise).
inline JointMoment joint_moment(const PartialRopeLayer& p, const CalibrationStats& stats) {
    p.validate();
    require(stats.hidden() == p.hidden, "joint_moment: statistics have hidden size ", stats.hidden(), ", the layer ",
            p.hidden);
    JointMoment jm;
    MatrixXd a;
    VectorXd bias;
    detail::joint_matrix(p, a, bias);
    jm.nk = p.kv_width() - p.rope_dim;
    jm.n = int(a.rows());
    const int m = p.hidden + 1;
    if (jm.n <= m) {
        jm.h = stats.project(a, bias);
        jm.diag = jm.h.diagonal();
        return jm;
    }
    // H_x = C Cᵀ (with the smallest diagonal jitter that makes it positive definite), B = [A | b] C.
    MatrixXd hx = stats.moment();
    const double mean_diag = hx.diagonal().mean();
    Eigen::LLT<MatrixXd> llt;
    double jitter = 0;
    for (int attempt = 0;; ++attempt) {
        llt.compute(hx);
        if (llt.info() == Eigen::Success) break;
        require(attempt < 8, "joint_moment: the calibration moment is not positive semi-definite");
        const double add = (jitter == 0 ? 1e-12 : jitter * 9) * mean_diag;
        hx.diagonal().array() += add;
        jitter = jitter == 0 ? 1e-12 : jitter * 10;
    }
    MatrixXd aug(jm.n, m);
    aug.leftCols(p.hidden) = a;
    if (bias.size()) aug.col(p.hidden) = bias;
    else aug.col(p.hidden).setZero();
    jm.b = aug * llt.matrixL();
    jm.diag = jm.b.rowwise().squaredNorm();
    return jm;
}

/// H_z from the key/value statistics of the partial-RoPE layer p (its rotated pre-RoPE keys
/// k̃ = W̃_K x + b̃_K, gathered at p's current α, and its values): the block S[d_r:, d_r:]. No
/// projection: this is what makes converting from KvStats fast.
inline JointMoment joint_moment(const PartialRopeLayer& p, const KvStats& after) {
    p.validate();
    const int L = p.kv_width();
    detail::check_kv_stats(after, L, "joint_moment");
    JointMoment jm;
    jm.nk = L - p.rope_dim;
    jm.n = jm.nk + L;
    jm.h = after.trailing_block(p.rope_dim);
    jm.diag = jm.h.diagonal();
    return jm;
}

/// The key/value statistics the partial-RoPE layer p would give on the same tokens as `original`
/// (the original layer's pre-RoPE keys and values): keys k̃ = Λ_α⁻¹ M k̂, values unchanged. What
/// convert_layer uses when no statistics of the partial-RoPE model are given.
inline KvStats rotate_kv_stats(const PartialRopeLayer& p, const KvStats& original) {
    p.validate();
    const int L = p.kv_width();
    detail::check_kv_stats(original, L, "rotate_kv_stats");
    MatrixXd rot = p.rotation;
    if (L > p.rope_dim) rot.bottomRows(L - p.rope_dim) /= p.alpha;
    const MatrixXd s = original.moment();
    MatrixXd out(2 * L, 2 * L);
    out.topLeftCorner(L, L) = rot * s.topLeftCorner(L, L) * rot.transpose();
    out.topRightCorner(L, L) = rot * s.topRightCorner(L, L);
    out.bottomLeftCorner(L, L) = out.topRightCorner(L, L).transpose();
    out.bottomRightCorner(L, L) = s.bottomRightCorner(L, L);
    out = (0.5 * (out + out.transpose())).eval();
    KvStats k(L);
    k.set_moment(std::move(out), original.tokens());
    return k;
}

/// α of step 3 from a joint moment computed at the layer's current α (`alpha_now`).
inline double bkv_alpha(const JointMoment& jm, int rope_dim, double alpha_now) {
    require(jm.nk > 0, "bkv_alpha: the layer keeps RoPE on every latent dim; nothing to balance");
    const int L = jm.n - jm.nk;
    const double kn = jm.diag.head(jm.nk).cwiseMax(0.0).cwiseSqrt().mean() * alpha_now;
    const double vn = jm.diag.tail(L - rope_dim).cwiseMax(0.0).cwiseSqrt().mean();
    require(kn > 0 && vn > 0 && std::isfinite(kn / vn), "bkv_alpha: degenerate statistics (mean key norm ", kn,
            ", mean value norm ", vn, ")");
    return kn / vn;
}

/// Step 4 at rank r from a joint moment of p (at p's α).
inline JointPca joint_pca(const PartialRopeLayer& p, const JointMoment& jm, int r, EigenOptions opt = {}) {
    p.validate();
    const int L = p.kv_width(), nk = L - p.rope_dim, n = nk + L;
    require(jm.n == n && jm.nk == nk, "joint_pca: the joint moment has width ", jm.n, ", the layer needs ", n);
    require(r >= 1 && r <= n, "rank (r) = ", r, " is not allowed: 1 <= r <= 2L - d_r = ", n, " (L = ", L,
            ", d_r = ", p.rope_dim, ")");
    EigenTop e;
    if (!jm.factored()) {
        e = eigen_top(jm.h, r, opt);
    } else if (r > jm.b.cols()) {
        // More directions than the statistic's rank (D + 1): the eigenvalue-0 directions are an
        // arbitrary orthonormal completion; form H_z explicitly.
        MatrixXd h = MatrixXd::Zero(n, n);
        h.selfadjointView<Eigen::Lower>().rankUpdate(jm.b);
        h.triangularView<Eigen::StrictlyUpper>() = h.transpose();
        e = eigen_top(h, r, opt);
    } else {
        // Top eigenvectors of B Bᵀ from those of the Gram matrix Bᵀ B (m×m, m < n).
        MatrixXd g = MatrixXd::Zero(jm.b.cols(), jm.b.cols());
        g.selfadjointView<Eigen::Lower>().rankUpdate(jm.b.transpose());
        g.triangularView<Eigen::StrictlyUpper>() = g.transpose();
        const EigenTop eg = eigen_top(g, r, opt);
        require(eg.values(r - 1) > 0, "joint_pca: the statistic has rank below r = ", r);
        e.values = eg.values;
        e.vectors = jm.b * (eg.vectors * eg.values.cwiseSqrt().cwiseInverse().asDiagonal());
        e.iterations = eg.iterations;
        e.max_residual = eg.max_residual;
    }
    const MatrixXd hr = jm.apply(e.vectors);
    JointPca out;
    out.rank = r;
    out.basis = e.vectors;
    out.eigenvalues = e.values;
    out.total_energy = jm.diag.sum();
    out.key_energy = jm.diag.head(nk).sum();
    out.value_energy = jm.diag.tail(L).sum();
    out.iterations = e.iterations;
    out.max_residual = e.max_residual;
    // diag of (I−P) H (I−P) = diag H − 2 rowsum(R∘HR) + rowsum((R T)∘R), T = Rᵀ H R.
    const MatrixXd t = e.vectors.transpose() * hr;
    const VectorXd err = jm.diag - 2.0 * e.vectors.cwiseProduct(hr).rowwise().sum() +
                         (e.vectors * t).cwiseProduct(e.vectors).rowwise().sum();
    out.key_error = err.head(nk).sum();
    out.value_error = err.tail(L).sum();
    detail::project_basis(p, e.vectors, out);
    return out;
}

namespace detail {
/// W_DKV = Rᵀ A, b_DKV = Rᵀ b and kv_b = B R for a basis R (n × r) of the joint space.
inline void project_basis(const PartialRopeLayer& p, const MatrixXd& basis, JointPca& out) {
    const int L = p.kv_width(), nk = L - p.rope_dim, r = int(basis.cols());
    // Rᵀ A with A = [W̃_K[d_r:] ; W_V], block by block (no copy of A)
    out.w_dkv.noalias() = basis.bottomRows(L).transpose() * p.wv;
    if (nk > 0) out.w_dkv.noalias() += basis.topRows(nk).transpose() * p.wk.bottomRows(nk);
    out.b_dkv.resize(0);
    if (p.bk.size() || p.bv.size()) {
        out.b_dkv = VectorXd::Zero(r);
        if (p.bv.size()) out.b_dkv += basis.bottomRows(L).transpose() * p.bv;
        if (p.bk.size() && nk > 0) out.b_dkv += basis.topRows(nk).transpose() * p.bk.tail(nk);
    }
    const auto& e_vectors = basis;
    // Up projection B R_r, head i: k rows S̃_i[:, d_r:] R_r[:nk], v rows R_r[nk + γ(i)·d : +d].
    // (computed once per KV head and copied to the g query heads that share it)
    const int d = p.head_dim, g = p.group();
    out.kv_b.resize(Eigen::Index(p.n_q) * 2 * d, r);
    for (int h = 0; h < p.n_kv; ++h) {
        const Eigen::Index i0 = Eigen::Index(h) * g * 2 * d;
        if (nk > 0) {
            const MatrixXd snope = p.rotation.block(p.rope_dim, Eigen::Index(h) * d, nk, d).transpose() * p.alpha;
            out.kv_b.middleRows(i0, d) = snope * e_vectors.topRows(nk);
        } else {
            out.kv_b.middleRows(i0, d).setZero();
        }
        out.kv_b.middleRows(i0 + d, d) = e_vectors.middleRows(nk + Eigen::Index(h) * d, d);
        for (int k = 1; k < g; ++k) out.kv_b.middleRows(i0 + Eigen::Index(k) * 2 * d, 2 * d) = out.kv_b.middleRows(i0, 2 * d);
    }
}
}  // namespace detail

/// Step 4 at rank r (1 ≤ r ≤ 2L − d_r) on the statistics of the partial-RoPE model (its layer
/// must already carry its α).
inline JointPca joint_pca(const PartialRopeLayer& p, const CalibrationStats& stats, int r, EigenOptions opt = {}) {
    return joint_pca(p, joint_moment(p, stats), r, opt);
}

// ------------------------------------------------------------------------------------------------
// Step 5: query and scale
// ------------------------------------------------------------------------------------------------

/// The MLA query projection(s) of step 5.
struct MlaQuery {
    int q_lora_rank = 0;
    double sigma = 1.0;  ///< sqrt((d + d_r)/d)
    MatrixXd q_proj;     ///< [n_q·(d + d_r)][D] (q_lora_rank == 0)
    VectorXd q_bias;
    MatrixXd q_a_proj;   ///< [r_q][D] (q_lora_rank > 0)
    VectorXd q_a_bias;
    MatrixXd q_b_proj;   ///< [n_q·(d + d_r)][r_q]
};

/// σ = sqrt((d + d_r)/d): the query scale that makes the MLA scale (d + d_r)^−½ reproduce d^−½.
inline double mla_sigma(int head_dim, int rope_dim) { return std::sqrt(double(head_dim + rope_dim) / head_dim); }

/// Step 5: rows of head i = σ·[W_Q^i ; P_iᵀ W_Q^i], P_i = S̃_i[:, :d_r] (bias likewise). With
/// q_lora_rank = r_q > 0 the query is first compressed by the PCA of the query activations on
/// `stats` (required then): q_a_proj = R_qᵀ W_Q (bias R_qᵀ b_Q), q_b rows of head i =
/// σ·[Q_b^i ; P_iᵀ Q_b^i] with Q_b = R_q.
inline MlaQuery build_query(const PartialRopeLayer& p, int q_lora_rank = 0, const CalibrationStats* stats = nullptr) {
    p.validate();
    const int d = p.head_dim, dr = p.rope_dim, g = p.group(), nqd = p.n_q * d;
    MlaQuery q;
    q.q_lora_rank = q_lora_rank;
    q.sigma = mla_sigma(d, dr);
    // Maps head i's d-dim query to its (d + d_r) MLA rows: σ·[I ; P_iᵀ].
    auto head_map = [&](int i) {
        MatrixXd m(d + dr, d);
        m.topRows(d) = MatrixXd::Identity(d, d);
        m.bottomRows(dr) = p.rotation.block(0, Eigen::Index(i / g) * d, dr, d);  // P_iᵀ = M[:d_r, block]
        return MatrixXd(q.sigma * m);
    };
    if (q_lora_rank == 0) {
        q.q_proj.resize(Eigen::Index(p.n_q) * (d + dr), p.hidden);
        if (p.bq.size()) q.q_bias.resize(Eigen::Index(p.n_q) * (d + dr));
        for (int i = 0; i < p.n_q; ++i) {
            // σ·W_Q^i, then σ·P_iᵀ W_Q^i (the identity block is a copy, not a product)
            const Eigen::Index o = Eigen::Index(i) * (d + dr);
            const auto wqi = p.wq.middleRows(Eigen::Index(i) * d, d);
            q.q_proj.middleRows(o, d) = q.sigma * wqi;
            q.q_proj.middleRows(o + d, dr).noalias() = head_map(i).bottomRows(dr) * wqi;
            if (p.bq.size()) q.q_bias.segment(o, d + dr) = head_map(i) * p.bq.segment(Eigen::Index(i) * d, d);
        }
        return q;
    }
    require(q_lora_rank >= 1 && q_lora_rank <= nqd, "q_lora_rank = ", q_lora_rank,
            " is not allowed: 0 (no low-rank query) or 1..n_q·d = ", nqd);
    require(stats != nullptr, "build_query: q_lora_rank > 0 needs calibration statistics");
    require(stats->hidden() == p.hidden, "build_query: statistics have hidden size ", stats->hidden(), ", the layer ",
            p.hidden);
    const EigenTop e = eigen_top(stats->project(p.wq, p.bq), q_lora_rank);
    q.q_a_proj = e.vectors.transpose() * p.wq;
    if (p.bq.size()) q.q_a_bias = e.vectors.transpose() * p.bq;
    q.q_b_proj.resize(Eigen::Index(p.n_q) * (d + dr), q_lora_rank);
    for (int i = 0; i < p.n_q; ++i)
        q.q_b_proj.middleRows(Eigen::Index(i) * (d + dr), d + dr) = head_map(i) * e.vectors.middleRows(Eigen::Index(i) * d, d);
    return q;
}

// ------------------------------------------------------------------------------------------------
// Step 6: assembly (DeepSeek-V3 layout)
// ------------------------------------------------------------------------------------------------

namespace detail {
/// assemble() with the output projection given (copied or moved from p.wo by the caller, who
/// has validated p).
inline MlaLayer assemble_with(const PartialRopeLayer& p, const JointPca& pca, MlaQuery q, MatrixXd o_proj) {
    const int d = p.head_dim, dr = p.rope_dim, r = pca.rank;
    detail::check_matrix(pca.w_dkv, r, p.hidden, "assemble", "W_DKV");
    detail::check_matrix(pca.kv_b, Eigen::Index(p.n_q) * 2 * d, r, "assemble", "kv_b");
    MlaLayer m;
    m.hidden = p.hidden;
    m.n_heads = p.n_q;
    m.q_lora_rank = q.q_lora_rank;
    m.kv_lora_rank = r;
    m.qk_nope_head_dim = d;
    m.qk_rope_head_dim = dr;
    m.v_head_dim = d;
    m.q_proj = std::move(q.q_proj), m.q_bias = std::move(q.q_bias);
    m.q_a_proj = std::move(q.q_a_proj), m.q_a_bias = std::move(q.q_a_bias), m.q_b_proj = std::move(q.q_b_proj);
    m.kv_a_proj_with_mqa.resize(r + dr, p.hidden);
    m.kv_a_proj_with_mqa.topRows(r) = pca.w_dkv;
    m.kv_a_proj_with_mqa.bottomRows(dr) = p.wk.topRows(dr);
    if (pca.b_dkv.size() || p.bk.size()) {
        m.kv_a_bias = VectorXd::Zero(r + dr);
        if (pca.b_dkv.size()) m.kv_a_bias.head(r) = pca.b_dkv;
        if (p.bk.size()) m.kv_a_bias.tail(dr) = p.bk.head(dr);
    }
    m.kv_b_proj = pca.kv_b;
    m.o_proj = std::move(o_proj);
    m.rope_inv_freq = p.rope_inv_freq;
    m.rope_attention_factor = p.rope_attention_factor;
    m.softmax_scale = 1.0 / std::sqrt(double(d + dr));
    m.validate();
    return m;
}
}  // namespace detail

/// Step 6: kv_a_proj_with_mqa = [W_DKV ; W̃_K[:d_r]] (bias [b_DKV ; b̃_K[:d_r]] if any), kv_b_proj =
/// B R_r, o_proj unchanged; dn = dv = d, dr = d_r, H = n_q, scale (d + d_r)^−½.
inline MlaLayer assemble(const PartialRopeLayer& p, const JointPca& pca, MlaQuery q) {
    p.validate();
    return detail::assemble_with(p, pca, std::move(q), p.wo);
}

/// The partial-RoPE layer written exactly as an MLA layer (DeepSeek-V3 layout) without any
/// statistics: the joint "PCA" at full rank with the identity basis (r = 2L − d_r), the query and
/// scale of step 5. Lets an engine that runs MLA run the partial-RoPE model (e.g. to gather the
/// statistics of steps 3–4). Same function as the partial layer, to rounding.
inline MlaLayer partial_as_mla(const PartialRopeLayer& p) {
    p.validate();
    const int n = 2 * p.kv_width() - p.rope_dim;
    JointPca id;
    id.rank = n;
    detail::project_basis(p, MatrixXd::Identity(n, n), id);
    return assemble(p, id, build_query(p));
}

// ------------------------------------------------------------------------------------------------
// Step 7: absorption
// ------------------------------------------------------------------------------------------------

/// Step 7: q_abs[i] = W_UK^iᵀ · (the q_nope rows of head i), o_abs[i] = o_proj^i W_UV^i.
inline AbsorbedMlaLayer absorb(const MlaLayer& m) {
    m.validate();
    const int dn = m.qk_nope_head_dim, dr = m.qk_rope_head_dim, dv = m.v_head_dim;
    AbsorbedMlaLayer a;
    a.mla = m;
    const MatrixXd& qsrc = m.q_lora_rank ? m.q_b_proj : m.q_proj;
    const VectorXd& qb = m.q_lora_rank ? m.q_b_bias : m.q_bias;
    for (int i = 0; i < m.n_heads; ++i) {
        const MatrixXd wuk = m.kv_b_proj.middleRows(Eigen::Index(i) * (dn + dv), dn);
        const MatrixXd wuv = m.kv_b_proj.middleRows(Eigen::Index(i) * (dn + dv) + dn, dv);
        a.q_abs.push_back(wuk.transpose() * qsrc.middleRows(Eigen::Index(i) * (dn + dr), dn));
        a.q_abs_bias.push_back(qb.size() ? VectorXd(wuk.transpose() * qb.segment(Eigen::Index(i) * (dn + dr), dn))
                                         : VectorXd());
        a.o_abs.push_back(m.o_proj.middleCols(Eigen::Index(i) * dv, dv) * wuv);
    }
    return a;
}

// ------------------------------------------------------------------------------------------------
// Steps 3–6 in one call
// ------------------------------------------------------------------------------------------------

/// The latent rank of the options for a layer: `rank`, or ρ·2·n_kv·d − d_r from the cache budget.
/// Throws naming the option when neither is usable or the rank is out of range.
inline int resolve_rank(const ConvertOptions& o, int n_kv, int head_dim, int rope_dim) {
    const int L = n_kv * head_dim, nmax = 2 * L - rope_dim;
    int r = o.rank;
    if (r == 0) {
        require(o.cache_budget > 0 && o.cache_budget <= 1, "cache_budget (rho) = ", o.cache_budget,
                " is not allowed: set rank (1..", nmax, ") or a cache_budget in (0, 1]");
        r = int(std::llround(o.cache_budget * 2.0 * L)) - rope_dim;
    }
    require(r >= 1 && r <= nmax, "rank (r) = ", r, " is not allowed: 1 <= r <= 2L - d_r = ", nmax, " (L = ", L,
            ", d_r = ", rope_dim, ")");
    return r;
}

/// Steps 3–6 from the joint moment `jm` of the partial-RoPE layer p (at its current α): α (if
/// o.balance; p is balanced in place, without a copy of its weights), joint PCA at rank `r`,
/// query and scale (low-rank query if o.q_lora_rank, which needs the input statistics
/// `query_stats`), assembly. Fills the report's alpha, pca_energy, key/value errors and cache
/// sizes when given.
inline MlaLayer finish_transmla_in_place(PartialRopeLayer& p, JointMoment jm, int r, const ConvertOptions& o,
                                         const CalibrationStats* query_stats, LayerReport* report = nullptr,
                                         bool take_o_proj = false) {
    p.validate();
    const int L = p.kv_width();
    require(o.q_lora_rank == 0 || query_stats != nullptr, "q_lora_rank = ", o.q_lora_rank,
            " needs the input statistics (CalibrationStats) for the query PCA; key/value statistics have no "
            "query moment: use q_lora_rank = 0");
    if (o.balance && p.rope_dim < L) {
        const double alpha = bkv_alpha(jm, p.rope_dim, p.alpha);
        jm.scale_keys(p.alpha / alpha);
        balance_kv_in_place(p, alpha);
    }
    const JointPca pca = joint_pca(p, jm, r);
    MlaQuery q = build_query(p, o.q_lora_rank, query_stats);
    MatrixXd o_proj = take_o_proj ? std::move(p.wo) : p.wo;
    MlaLayer m = detail::assemble_with(p, pca, std::move(q), std::move(o_proj));
    if (report) {
        report->rope_dim = p.rope_dim;
        report->rank = r;
        report->freqfold = p.freqfold;
        report->rope_energy = p.rope_energy;
        report->alpha = p.alpha;
        report->pca_energy = pca.pca_energy();
        report->key_error = pca.relative_key_error();
        report->value_error = pca.relative_value_error();
        report->cache_original = 2LL * L;
        report->cache_converted = m.cache_per_token();
    }
    return m;
}

/// Steps 3–6 from the joint moment `jm` of the partial-RoPE layer (unchanged; see above).
inline MlaLayer finish_transmla(const PartialRopeLayer& partial, JointMoment jm, int r, const ConvertOptions& o,
                                const CalibrationStats* query_stats, LayerReport* report = nullptr) {
    PartialRopeLayer p = partial;
    return finish_transmla_in_place(p, std::move(jm), r, o, query_stats, report);
}

/// Steps 3–6 on the input statistics of the partial-RoPE model (`after`); see above.
inline MlaLayer finish_transmla(const PartialRopeLayer& partial, const CalibrationStats& after, int r,
                                const ConvertOptions& o, LayerReport* report = nullptr) {
    return finish_transmla(partial, joint_moment(partial, after), r, o, &after, report);
}

/// Steps 3–6 on the key/value statistics of the partial-RoPE layer (`after`: its rotated keys
/// and its values, gathered at its current α); o.q_lora_rank must be 0.
inline MlaLayer finish_transmla(const PartialRopeLayer& partial, const KvStats& after, int r, const ConvertOptions& o,
                                LayerReport* report = nullptr) {
    return finish_transmla(partial, joint_moment(partial, after), r, o, nullptr, report);
}

/// The same, consuming the partial-RoPE layer: its W_O moves into the MLA layer instead of being
/// copied (an engine converting layer by layer holds each weight once).
inline MlaLayer finish_transmla(PartialRopeLayer&& partial, const CalibrationStats& after, int r,
                                const ConvertOptions& o, LayerReport* report = nullptr) {
    return finish_transmla_in_place(partial, joint_moment(partial, after), r, o, &after, report, true);
}
inline MlaLayer finish_transmla(PartialRopeLayer&& partial, const KvStats& after, int r, const ConvertOptions& o,
                                LayerReport* report = nullptr) {
    return finish_transmla_in_place(partial, joint_moment(partial, after), r, o, nullptr, report, true);
}

}  // namespace transmla::convert
