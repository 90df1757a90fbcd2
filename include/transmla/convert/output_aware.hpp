// transmla/convert/output_aware.hpp — the output-aware conversion (Method::output_aware): the same
// DeepSeek-V3 layout as TransMLA (one shared RoPE key of d_r dims, a latent of rank r, uniform
// across layers), with two steps chosen for what the attention OUTPUT depends on instead of for
// key/value energy (docs/conversion.md, "Output-aware conversion", derives both):
//
//   A. fitted stand-in for the lost rotation. RoPE is kept on the d_r latent dims RoRoPE picks
//      (step 2). An original pair (x, y) of KV head h that loses RoPE contributes
//      a = ⟨R_t q, R_s k⟩ = qᵀ R(−θΔ) k (Δ = t − s, θ its frequency) to the original logit and
//      would contribute qᵀ k with the rotation simply dropped. Any fixed 2×2 matrix C can stand in
//      for R(−θΔ) instead; the best one for the attention that actually happens minimises
//        Σ_{t, s ≤ t} p(t, s) (a(t, s) − qᵀ C k)²      (p the original model's attention)
//      over the 4 entries of C: a 4×4 least-squares problem per (h, pair), from calibration
//      (RotationFitStats). It folds into the KEY weights (k → C k per pair, before the RoRoPE
//      rotation), so the queries, the layout and the engines are unchanged. Dropping the rotation
//      (C = I) is one feasible point, so on the weighted objective the fit is never worse; where
//      all attention sits at one distance Δ₀ the fit is R(−θΔ₀) and those logits are exact.
//   B. weighted reduced-rank regression. The latent reconstructs z = [k̃_nope ; v] (the folded
//      no-RoPE keys and the values) through z ≈ U Vᵀ z (down Vᵀ = kv_a rows, up U = kv_b). The
//      error that reaches the output is, per query head i (softmax scale τ, W_O^i its output
//      columns, S_i its selector):
//        logits:  τ² (S_i e_k)ᵀ Q_i (S_i e_k)       Q_i = E q_i q_iᵀ (the query moment)
//                 which moves the output by about ‖W_O^i (v − v̄)‖ per unit of logit, so it is
//                 weighted by s_i = E‖W_O^i (v − v̄)‖²;
//        values:  ‖W_O^i S_i e_v‖².
//      Summed: E eᵀ W e with W = blockdiag(κ·Σ_i τ² s_i S_iᵀ Q_i S_i, Σ_i S_iᵀ W_O^iᵀ W_O^i S_i).
//      With A = W^½ the minimiser over rank-r maps is U = A⁻¹E, Vᵀ = EᵀA, E the
//      top-r eigenvectors of A H A (H = E z zᵀ): the Eckart–Young solution in the A-weighted
//      metric. Full rank is exact; the weighted error is non-increasing in r; no other rank-r
//      subspace (PCA's included) has a smaller weighted error.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/convert/layer.hpp"
#include "transmla/convert/linalg.hpp"
#include "transmla/convert/transmla.hpp"
#include "transmla/error.hpp"
#include "transmla/rope.hpp"

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace transmla::convert {

// ------------------------------------------------------------------------------------------------
// Statistics: what each RoPE pair contributes to the attended logits
// ------------------------------------------------------------------------------------------------

/// Weighted least-squares statistics for the position-independent stand-in of each original RoPE
/// pair (see A above), per KV head h and pair j: over the calibration (query t, key s ≤ t) pairs
/// of the query heads of h, weighted by the original model's attention p(t, s),
///   G = Σ p f fᵀ, b = Σ p a f,  f = vec(q kᵀ) = (q_x k_x, q_x k_y, q_y k_x, q_y k_y) of the
///   pre-RoPE pair, a = ⟨R_t q, R_s k⟩ its contribution to the rotated logit (attention factor
///   included).
/// fp64; add_head() and merge() are thread-safe (one lock per call).
class RotationFitStats {
public:
    RotationFitStats() = default;
    RotationFitStats(int n_kv, int head_dim)
        : nkv_(n_kv), d_(head_dim), g_(Eigen::MatrixXd::Zero(Eigen::Index(n_kv) * (head_dim / 2), 10)),
          b_(Eigen::MatrixXd::Zero(Eigen::Index(n_kv) * (head_dim / 2), 4)),
          a_(Eigen::VectorXd::Zero(Eigen::Index(n_kv) * (head_dim / 2))) {
        require(n_kv > 0 && head_dim > 0 && head_dim % 2 == 0, "RotationFitStats: bad shape n_kv=", n_kv,
                " head_dim=", head_dim);
    }
    RotationFitStats(const RotationFitStats& o) {
        std::lock_guard<std::mutex> lk(o.mu_);
        nkv_ = o.nkv_, d_ = o.d_, g_ = o.g_, b_ = o.b_, a_ = o.a_, n_ = o.n_;
    }
    RotationFitStats& operator=(const RotationFitStats& o) {
        if (this == &o) return *this;
        const RotationFitStats c(o);
        std::lock_guard<std::mutex> lk(mu_);
        nkv_ = c.nkv_, d_ = c.d_, g_ = c.g_, b_ = c.b_, a_ = c.a_, n_ = c.n_;
        return *this;
    }
    int n_kv() const noexcept { return nkv_; }
    int head_dim() const noexcept { return d_; }
    /// Number of (query, key) samples accumulated.
    std::int64_t samples() const {
        std::lock_guard<std::mutex> lk(mu_);
        return n_;
    }

    /// The query heads of KV head h on one sequence of T tokens: pre-RoPE pair values of the
    /// queries ([m·T][d/2] each, the m query heads stacked, x and y of pair j in column j) and of
    /// the key ([T][d/2]), the rotated ones likewise, and the attention weights p ([m·T][T],
    /// stacked like the queries; zero above the causal diagonal). Every sum over (t, s) factors
    /// into a query-side and a key-side product, so the whole update is one GEMM p·[key products].
    void add_heads(int h, const Eigen::Ref<const Eigen::MatrixXf>& qx, const Eigen::Ref<const Eigen::MatrixXf>& qy,
                   const Eigen::Ref<const Eigen::MatrixXf>& rqx, const Eigen::Ref<const Eigen::MatrixXf>& rqy,
                   const Eigen::Ref<const Eigen::MatrixXf>& kx, const Eigen::Ref<const Eigen::MatrixXf>& ky,
                   const Eigen::Ref<const Eigen::MatrixXf>& rkx, const Eigen::Ref<const Eigen::MatrixXf>& rky,
                   const Eigen::Ref<const Eigen::MatrixXf>& p) {
        const Eigen::Index T = kx.rows(), J = d_ / 2, mT = qx.rows();
        require(h >= 0 && h < nkv_, "RotationFitStats::add_heads: KV head ", h, " outside [0, ", nkv_, ")");
        for (const auto* m : {&kx, &ky, &rkx, &rky})
            require(m->rows() == T && m->cols() == J, "RotationFitStats::add_heads: key pairs must be [T][d/2]");
        for (const auto* m : {&qx, &qy, &rqx, &rqy})
            require(m->rows() == mT && m->cols() == J && T > 0 && mT % T == 0,
                    "RotationFitStats::add_heads: query pairs must be [m·T][d/2]");
        require(p.rows() == mT && p.cols() == T, "RotationFitStats::add_heads: weights must be [m·T][T]");
        // key-side products: kx², kx·ky, ky², kx·rkx, kx·rky, ky·rkx, ky·rky, rkx², rkx·rky, rky²
        Eigen::MatrixXf kp(T, 10 * J);
        kp.middleCols(0 * J, J) = kx.cwiseProduct(kx);
        kp.middleCols(1 * J, J) = kx.cwiseProduct(ky);
        kp.middleCols(2 * J, J) = ky.cwiseProduct(ky);
        kp.middleCols(3 * J, J) = kx.cwiseProduct(rkx);
        kp.middleCols(4 * J, J) = kx.cwiseProduct(rky);
        kp.middleCols(5 * J, J) = ky.cwiseProduct(rkx);
        kp.middleCols(6 * J, J) = ky.cwiseProduct(rky);
        kp.middleCols(7 * J, J) = rkx.cwiseProduct(rkx);
        kp.middleCols(8 * J, J) = rkx.cwiseProduct(rky);
        kp.middleCols(9 * J, J) = rky.cwiseProduct(rky);
        const Eigen::MatrixXf pk = p * kp;  // [m·T][10J]
        auto blk = [&](int i) { return pk.middleCols(Eigen::Index(i) * J, J).cast<double>().array(); };
        auto sum = [](const auto& q, const auto& k) -> Eigen::VectorXd {
            return (q.template cast<double>().array() * k).colwise().sum().transpose();
        };
        const Eigen::MatrixXf qxx = qx.cwiseProduct(qx), qxy = qx.cwiseProduct(qy), qyy = qy.cwiseProduct(qy);
        Eigen::MatrixXd g(J, 10), b(J, 4);
        g.col(0) = sum(qxx, blk(0)), g.col(1) = sum(qxx, blk(1)), g.col(2) = sum(qxy, blk(0));
        g.col(3) = sum(qxy, blk(1)), g.col(4) = sum(qxx, blk(2)), g.col(5) = g.col(3);
        g.col(6) = sum(qxy, blk(2)), g.col(7) = sum(qyy, blk(0)), g.col(8) = sum(qyy, blk(1));
        g.col(9) = sum(qyy, blk(2));
        const Eigen::MatrixXf xrx = qx.cwiseProduct(rqx), xry = qx.cwiseProduct(rqy), yrx = qy.cwiseProduct(rqx),
                              yry = qy.cwiseProduct(rqy);
        b.col(0) = sum(xrx, blk(3)) + sum(xry, blk(4));
        b.col(1) = sum(xrx, blk(5)) + sum(xry, blk(6));
        b.col(2) = sum(yrx, blk(3)) + sum(yry, blk(4));
        b.col(3) = sum(yrx, blk(5)) + sum(yry, blk(6));
        const Eigen::VectorXd aa = sum(Eigen::MatrixXf(rqx.cwiseProduct(rqx)), blk(7)) +
                                   2.0 * sum(Eigen::MatrixXf(rqx.cwiseProduct(rqy)), blk(8)) +
                                   sum(Eigen::MatrixXf(rqy.cwiseProduct(rqy)), blk(9));
        std::lock_guard<std::mutex> lk(mu_);
        a_.segment(Eigen::Index(h) * J, J) += aa;
        g_.middleRows(Eigen::Index(h) * J, J) += g;
        b_.middleRows(Eigen::Index(h) * J, J) += b;
        n_ += mT * (T + 1) / 2;
    }
    void merge(const RotationFitStats& o) {
        require(&o != this, "RotationFitStats::merge: cannot merge into itself");
        const RotationFitStats c(o);
        std::lock_guard<std::mutex> lk(mu_);
        require(c.nkv_ == nkv_ && c.d_ == d_, "RotationFitStats::merge: shapes differ");
        g_ += c.g_, b_ += c.b_, a_ += c.a_, n_ += c.n_;
    }

    /// The least-squares 2×2 stand-in C of pair j of KV head h: ⟨R_t q, R_s k⟩ ≈ qᵀ C k over the
    /// weighted samples (a tiny ridge keeps it defined where a pair carries no signal; C = 0 then).
    Eigen::Matrix2d fit(int h, int j) const { return solve(h, j).first; }

    /// Σ p (a − qᵀ C k)² of the fitted C: the attended logit energy pair j of KV head h loses
    /// when it loses RoPE (the energy of a itself when C = 0).
    double residual(int h, int j) const { return solve(h, j).second; }

private:
    std::pair<Eigen::Matrix2d, double> solve(int h, int j) const {
        std::lock_guard<std::mutex> lk(mu_);
        require(h >= 0 && h < nkv_ && j >= 0 && j < d_ / 2, "RotationFitStats::fit: (", h, ", ", j, ") outside [0, ",
                nkv_, ") x [0, ", d_ / 2, ")");
        const Eigen::Index row = Eigen::Index(h) * (d_ / 2) + j;
        const auto r = g_.row(row);
        Eigen::Matrix4d g;
        g << r(0), r(1), r(2), r(3), r(1), r(4), r(5), r(6), r(2), r(5), r(7), r(8), r(3), r(6), r(8), r(9);
        const double ridge = 1e-9 * g.trace() / 4 + 1e-300;
        g.diagonal().array() += ridge;
        const Eigen::Vector4d rhs = b_.row(row).transpose();
        const Eigen::Vector4d c = g.ldlt().solve(rhs);
        Eigen::Matrix2d out;
        out << c(0), c(1), c(2), c(3);
        return {out, std::max(0.0, a_(row) - c.dot(rhs))};
    }

    int nkv_ = 0, d_ = 0;
    Eigen::MatrixXd g_, b_;
    Eigen::VectorXd a_;  ///< Σ p a² per (h, j)
    std::int64_t n_ = 0;
    mutable std::mutex mu_;
};

// ------------------------------------------------------------------------------------------------
// Step A: fold the fitted stand-in of the no-RoPE pairs into the keys
// ------------------------------------------------------------------------------------------------

/// Replaces the no-RoPE key rows of `p` (the partial-RoPE layer rorope() made of `l`, before
/// balancing) by those of M·C·W_K (and M·C·b_K), C applying the fitted 2×2 stand-in of every
/// original key pair of every KV head (RotationFitStats::fit). The RoPE rows are untouched.
inline void fold_rotation_fit(PartialRopeLayer& p, const GqaLayer& l, const RotationFitStats& fit) {
    p.validate();
    l.validate();
    const int d = l.head_dim, L = l.kv_width(), nk = L - p.rope_dim;
    require(p.n_kv == l.n_kv && p.head_dim == d && p.hidden == l.hidden,
            "fold_rotation_fit: the partial layer does not come from this GQA layer");
    require(p.alpha == 1.0, "fold_rotation_fit: fold before balancing (alpha = ", p.alpha, ")");
    require(fit.n_kv() == l.n_kv && fit.head_dim() == d, "fold_rotation_fit: statistics for ", fit.n_kv(),
            " KV heads of ", fit.head_dim(), ", the layer has ", l.n_kv, " of ", d);
    if (nk == 0) return;
    const FreqFoldMap map(l.n_kv, d, p.rope_dim, p.freqfold, l.rope.pairing);
    MatrixXd wk = l.wk;
    VectorXd bk = l.bk;
    for (int h = 0; h < l.n_kv; ++h)
        for (int j = 0; j < d / 2; ++j) {
            const Eigen::Matrix2d c = fit.fit(h, j);
            const auto [x, y] = rope_pair(l.rope.pairing, d, j);
            const Eigen::Index rx = Eigen::Index(h) * d + x, ry = Eigen::Index(h) * d + y;
            const Eigen::RowVectorXd ux = l.wk.row(rx), uy = l.wk.row(ry);
            wk.row(rx) = c(0, 0) * ux + c(0, 1) * uy;
            wk.row(ry) = c(1, 0) * ux + c(1, 1) * uy;
            if (bk.size()) {
                const double bx = l.bk(rx), by = l.bk(ry);
                bk(rx) = c(0, 0) * bx + c(0, 1) * by;
                bk(ry) = c(1, 0) * bx + c(1, 1) * by;
            }
        }
    p.wk.bottomRows(nk) = rotate_rows(map, p.rotation, wk).bottomRows(nk);
    if (bk.size()) p.bk.tail(nk) = rotate_rows(map, p.rotation, bk).col(0).tail(nk);
}

// ------------------------------------------------------------------------------------------------
// Step B: the output-weighted reduced-rank regression
// ------------------------------------------------------------------------------------------------

/// The weight W (n × n, n = 2L − d_r) of B above for the partial-RoPE layer p, from the input
/// statistics of the partial-RoPE model. `kappa` scales the logit block against the value block.
inline MatrixXd output_aware_weight(const PartialRopeLayer& p, const CalibrationStats& stats, double kappa = 1.0) {
    p.validate();
    require(stats.hidden() == p.hidden && stats.tokens() > 0, "output_aware_weight: statistics of hidden size ",
            stats.hidden(), " with ", stats.tokens(), " tokens for a layer of hidden size ", p.hidden);
    require(kappa > 0 && std::isfinite(kappa), "output_aware_weight: kappa must be positive, got ", kappa);
    const int d = p.head_dim, L = p.kv_width(), nk = L - p.rope_dim, n = nk + L, g = p.group();
    const double N = double(stats.tokens()), tau2 = 1.0 / d;
    // value covariance per KV head (for s_i): E v vᵀ − v̄ v̄ᵀ
    const MatrixXd hx = stats.moment();
    const VectorXd mean_x = hx.col(p.hidden) / N;  // [E x ; 1]
    MatrixXd wv_aug(L, p.hidden + 1);
    wv_aug.leftCols(p.hidden) = p.wv;
    if (p.bv.size()) wv_aug.col(p.hidden) = p.bv;
    else wv_aug.col(p.hidden).setZero();
    const VectorXd vbar = wv_aug * mean_x;
    const MatrixXd vcov = stats.project(p.wv, p.bv) / N - vbar * vbar.transpose();
    MatrixXd w = MatrixXd::Zero(n, n);
    for (int i = 0; i < p.n_q; ++i) {
        const int h = i / g;
        const MatrixXd wo_i = p.wo.middleCols(Eigen::Index(i) * d, d);
        const MatrixXd go = wo_i.transpose() * wo_i;  // d × d
        w.block(nk + Eigen::Index(h) * d, nk + Eigen::Index(h) * d, d, d) += go;
        if (nk == 0) continue;
        const double s_i = (go.cwiseProduct(vcov.block(Eigen::Index(h) * d, Eigen::Index(h) * d, d, d))).sum();
        const MatrixXd qi = stats.project(p.wq.middleRows(Eigen::Index(i) * d, d),
                                          p.bq.size() ? VectorXd(p.bq.segment(Eigen::Index(i) * d, d)) : VectorXd()) /
                            N;
        const MatrixXd s = p.selector(i).rightCols(nk);  // d × nk
        w.topLeftCorner(nk, nk) += (kappa * tau2 * s_i) * (s.transpose() * qi * s);
    }
    return 0.5 * (w + w.transpose());
}

/// The rank-r solution of B for z-moment H and weight W (both n × n, symmetric PSD).
struct WeightedBasis {
    MatrixXd down;        ///< n × r: latent c = downᵀ z
    MatrixXd up;          ///< n × r: z ≈ up · c
    double total = 0;     ///< tr(A H A): the weighted energy of z
    double error = 0;     ///< tr(A H A) − Σ top-r eigenvalues: the weighted error E eᵀ W e (× tokens)
};

/// Weighted error tr(W (I − U Vᵀ) H (I − U Vᵀ)ᵀ) of any rank-r pair (down V, up U).
inline double weighted_error(const MatrixXd& h, const MatrixXd& w, const MatrixXd& down, const MatrixXd& up) {
    const MatrixXd res = MatrixXd::Identity(h.rows(), h.rows()) - up * down.transpose();
    return (w * res * h * res.transpose()).trace();
}

inline WeightedBasis weighted_rrr(const MatrixXd& h, const MatrixXd& w, int r) {
    const Eigen::Index n = h.rows();
    require(h.cols() == n && w.rows() == n && w.cols() == n, "weighted_rrr: H and W must be the same square size");
    require(r >= 1 && r <= n, "weighted_rrr: rank ", r, " outside [1, ", n, "]");
    Eigen::SelfAdjointEigenSolver<MatrixXd> ew(0.5 * (w + w.transpose()));
    require(ew.info() == Eigen::Success, "weighted_rrr: the eigensolver did not converge on W");
    const double top = ew.eigenvalues().cwiseAbs().maxCoeff();
    require(top > 0 && std::isfinite(top), "weighted_rrr: the weight is zero or not finite");
    // W's null directions cost nothing to lose; a floor keeps A invertible (up = A⁻¹E).
    const VectorXd lam = ew.eigenvalues().cwiseMax(1e-10 * top);
    const MatrixXd& u = ew.eigenvectors();
    const MatrixXd a = u * lam.cwiseSqrt().asDiagonal() * u.transpose();
    const MatrixXd ainv = u * lam.cwiseSqrt().cwiseInverse().asDiagonal() * u.transpose();
    MatrixXd m = a * h * a;
    m = (0.5 * (m + m.transpose())).eval();
    const EigenTop e = eigen_top(m, r);
    WeightedBasis out;
    out.down = a * e.vectors;
    out.up = ainv * e.vectors;
    out.total = m.trace();
    out.error = std::max(0.0, out.total - e.values.sum());
    return out;
}

/// H_z = Σ z zᵀ of p on `stats`, explicit n × n.
inline MatrixXd explicit_joint_moment(const PartialRopeLayer& p, const CalibrationStats& stats) {
    const JointMoment jm = joint_moment(p, stats);
    if (!jm.factored()) return jm.h;
    MatrixXd h = MatrixXd::Zero(jm.n, jm.n);
    h.selfadjointView<Eigen::Lower>().rankUpdate(jm.b);
    h.triangularView<Eigen::StrictlyUpper>() = h.transpose();
    return h;
}

/// Step B and the assembly: the MLA layer of the (folded) partial-RoPE layer p at rank r from the
/// input statistics of the partial-RoPE model. Fills the report's rank fields, the unweighted
/// relative key/value errors (as TransMLA's, for comparison), pca_energy (the weighted energy
/// kept) and weighted_error (the weighted error relative to the weighted energy).
inline MlaLayer output_aware_finish(const PartialRopeLayer& p, const CalibrationStats& stats, int r,
                                    double kappa = 1.0, LayerReport* report = nullptr) {
    p.validate();
    const int L = p.kv_width(), nk = L - p.rope_dim, n = nk + L;
    require(r >= 1 && r <= n, "rank (r) = ", r, " is not allowed: 1 <= r <= 2L - d_r = ", n);
    const MatrixXd h = explicit_joint_moment(p, stats);
    const MatrixXd w = output_aware_weight(p, stats, kappa);
    const WeightedBasis wb = weighted_rrr(h, w, r);
    JointPca down, up;
    detail::project_basis(p, wb.down, down);
    detail::project_basis(p, wb.up, up);
    JointPca pca;
    pca.rank = r;
    pca.w_dkv = std::move(down.w_dkv);
    pca.b_dkv = std::move(down.b_dkv);
    pca.kv_b = std::move(up.kv_b);
    MlaLayer m = detail::assemble_with(p, pca, build_query(p), p.wo);
    if (report) {
        // unweighted reconstruction errors, as joint_pca reports them
        const MatrixXd& hu = h;
        const MatrixXd res = MatrixXd::Identity(n, n) - wb.up * wb.down.transpose();
        const MatrixXd err = res * hu * res.transpose();
        const double ek = hu.diagonal().head(nk).sum(), ev = hu.diagonal().tail(L).sum();
        report->rope_dim = p.rope_dim;
        report->rank = r;
        report->freqfold = p.freqfold;
        report->rope_energy = p.rope_energy;
        report->alpha = p.alpha;
        report->pca_energy = wb.total > 0 ? 1.0 - wb.error / wb.total : 1.0;
        report->weighted_error = wb.total > 0 ? wb.error / wb.total : 0.0;
        report->key_error = ek > 0 ? err.diagonal().head(nk).sum() / ek : 0.0;
        report->value_error = ev > 0 ? err.diagonal().tail(L).sum() / ev : 0.0;
        report->cache_original = 2LL * L;
        report->cache_converted = m.cache_per_token();
    }
    return m;
}

}  // namespace transmla::convert
