// transmla/convert/linalg.hpp — the symmetric eigensolvers of the conversion (fp64): the full
// solver (Eigen's SelfAdjointEigenSolver, eigenvalues sorted descending) and a block subspace
// iteration with Rayleigh–Ritz for the top k eigenpairs of a large PSD operator (Eigen has no
// partial eigensolver; a full 8128² decomposition takes minutes).
#pragma once

#include "transmla/error.hpp"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>

namespace transmla::convert {

/// Top-k eigenpairs of a symmetric PSD matrix, eigenvalues descending.
struct EigenTop {
    Eigen::MatrixXd vectors;  ///< n × k, orthonormal columns
    Eigen::VectorXd values;   ///< k, descending
    double trace = 0;         ///< trace of the whole matrix (total energy)
    int iterations = 0;       ///< subspace iterations used (0 for the full solver)
    double max_residual = 0;  ///< max_j ‖H u_j − λ_j u_j‖ / λ_1 over the returned pairs
};

/// Every eigenpair (or the top k) of a symmetric matrix via the full solver, descending.
inline EigenTop eigen_full(const Eigen::MatrixXd& h, Eigen::Index k = -1) {
    require(h.rows() == h.cols(), "eigen_full: matrix must be square, got ", h.rows(), "x", h.cols());
    const Eigen::Index n = h.rows();
    if (k < 0) k = n;
    require(k <= n, "eigen_full: ", k, " eigenpairs requested of a ", n, "x", n, " matrix");
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(h);
    require(es.info() == Eigen::Success, "eigen_full: the eigensolver did not converge (n = ", n, ")");
    EigenTop out;
    out.values = es.eigenvalues().reverse().head(k);
    out.vectors = es.eigenvectors().rowwise().reverse().leftCols(k);
    out.trace = h.trace();
    return out;
}

/// Options of the subspace iteration.
struct SubspaceOptions {
    int oversample = -1;       ///< extra block columns; −1 = max(32, k/2)
    double tolerance = 1e-6;   ///< stop when max_j ‖H u_j − λ_j u_j‖ <= tolerance·λ_1
    /// … or when Σ_{j<k} λ_j (the captured energy, what the PCA optimises) changes by less than
    /// this (relative) between two Rayleigh–Ritz steps
    double energy_tolerance = 1e-10;
    int max_iterations = 200;
    int rr_every = 5;          ///< Rayleigh–Ritz (and the convergence check) every this many iterations
    std::uint64_t seed = 0x7a3b9c1du;  ///< start block (deterministic results)
};

namespace detail {
/// Orthonormal basis of the columns of y: Cholesky QR `passes` times (two passes give an
/// orthonormal basis to rounding; one suffices to keep a power iteration well conditioned),
/// falling back to Householder QR when the Gram matrix is numerically singular.
inline Eigen::MatrixXd orthonormalize(Eigen::MatrixXd y, int passes = 2) {
    for (int pass = 0; pass < passes; ++pass) {
        Eigen::MatrixXd g = Eigen::MatrixXd::Zero(y.cols(), y.cols());
        g.selfadjointView<Eigen::Lower>().rankUpdate(y.transpose());
        Eigen::LLT<Eigen::MatrixXd> llt(g);
        if (llt.info() != Eigen::Success) {
            Eigen::HouseholderQR<Eigen::MatrixXd> qr(y);
            return qr.householderQ() * Eigen::MatrixXd::Identity(y.rows(), y.cols());
        }
        llt.matrixU().solveInPlace<Eigen::OnTheRight>(y);
    }
    return y;
}
}  // namespace detail

/// Top-k eigenpairs of the n×n PSD operator y = apply(x) (x, y n×b) by block subspace iteration
/// (block b = k + oversample, Cholesky-QR orthonormalisation) with a Rayleigh–Ritz step every
/// `rr_every` iterations, where convergence is checked. `trace` is the operator's trace
/// (reported as-is).
inline EigenTop eigen_top_subspace(const std::function<Eigen::MatrixXd(const Eigen::MatrixXd&)>& apply,
                                   Eigen::Index n, Eigen::Index k, double trace, SubspaceOptions opt = {}) {
    require(k >= 1 && k <= n, "eigen_top_subspace: k = ", k, " must be in [1, n = ", n, "]");
    const Eigen::Index p = opt.oversample >= 0 ? opt.oversample : std::max<Eigen::Index>(32, k / 2);
    const Eigen::Index b = std::min(n, k + p);
    std::mt19937_64 gen(opt.seed);
    std::normal_distribution<double> nd;
    Eigen::MatrixXd q(n, b);
    for (Eigen::Index i = 0; i < q.size(); ++i) q.data()[i] = nd(gen);
    q = detail::orthonormalize(q);
    EigenTop out;
    out.trace = trace;
    double prev_energy = -1;
    for (int it = 1; it <= opt.max_iterations; ++it) {
        const Eigen::MatrixXd y = apply(q);
        require(y.rows() == n && y.cols() == b, "eigen_top_subspace: the operator returned ", y.rows(), "x",
                y.cols(), ", expected ", n, "x", b);
        const bool last = it == opt.max_iterations;
        if (it % std::max(1, opt.rr_every) != 0 && !last && b < n) {
            // Plain power step; the step before a Rayleigh–Ritz one is fully orthonormalised.
            q = detail::orthonormalize(y, (it + 1) % std::max(1, opt.rr_every) == 0 ? 2 : 1);
            continue;
        }
        Eigen::MatrixXd t = q.transpose() * y;
        t = 0.5 * (t + t.transpose()).eval();
        Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(t);
        require(es.info() == Eigen::Success, "eigen_top_subspace: Rayleigh-Ritz eigensolver failed");
        const Eigen::MatrixXd w = es.eigenvectors().rowwise().reverse();
        const Eigen::VectorXd theta = es.eigenvalues().reverse();
        const Eigen::MatrixXd x = q * w.leftCols(k), hx = y * w.leftCols(k);
        double res = 0;
        const double scale = std::max(theta(0), std::numeric_limits<double>::min());
        for (Eigen::Index j = 0; j < k; ++j) res = std::max(res, (hx.col(j) - theta(j) * x.col(j)).norm() / scale);
        const double energy = theta.head(k).sum();
        const bool energy_done = prev_energy >= 0 && std::abs(energy - prev_energy) <= opt.energy_tolerance * energy;
        prev_energy = energy;
        out.vectors = x;
        out.values = theta.head(k);
        out.iterations = it;
        out.max_residual = res;
        if (res <= opt.tolerance || energy_done || b == n) break;
        q = detail::orthonormalize(y * w);
    }
    return out;
}

/// Top-k eigenpairs of an explicit symmetric PSD matrix: the full solver for small matrices or
/// large k, the subspace iteration otherwise.
inline EigenTop eigen_top(const Eigen::MatrixXd& h, Eigen::Index k, SubspaceOptions opt = {}) {
    require(h.rows() == h.cols(), "eigen_top: matrix must be square, got ", h.rows(), "x", h.cols());
    const Eigen::Index n = h.rows();
    require(k >= 1 && k <= n, "eigen_top: k = ", k, " must be in [1, ", n, "]");
    if (n <= 768 || 3 * k > n) return eigen_full(h, k);
    return eigen_top_subspace([&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(h.selfadjointView<Eigen::Lower>() * x); },
                              n, k, h.trace(), opt);
}

}  // namespace transmla::convert
