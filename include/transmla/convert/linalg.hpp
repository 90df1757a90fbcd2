// transmla/convert/linalg.hpp — the symmetric eigensolvers of the conversion (fp64):
//   eigen_full:        every eigenpair (Eigen's SelfAdjointEigenSolver), descending;
//   eigen_top_dense:   the top k of an explicit matrix: Householder tridiagonalisation, the
//                      eigenvalues of the tridiagonal matrix, then only k eigenvectors by inverse
//                      iteration and a blocked back-transformation (Eigen computes all n vectors
//                      with Givens rotations, which costs most of its time);
//   eigen_top_lanczos: the top k of a large PSD operator given as y = apply(x): block Lanczos with
//                      full reorthogonalisation, Rayleigh–Ritz by eigen_top_dense of the block
//                      tridiagonal projection;
//   eigen_top:         picks between them for an explicit matrix.
// Eigen has no partial eigensolver; a full 1984² decomposition takes ≈ 3 s on one Zen 3 core.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/error.hpp"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

namespace transmla::convert {

/// Top-k eigenpairs of a symmetric PSD matrix, eigenvalues descending.
struct EigenTop {
    Eigen::MatrixXd vectors;  ///< n × k, orthonormal columns
    Eigen::VectorXd values;   ///< k, descending
    double trace = 0;         ///< trace of the whole matrix (total energy)
    int iterations = 0;       ///< Lanczos block steps (0 for the dense solvers)
    int krylov_dim = 0;       ///< dimension of the final Krylov space (0 for the dense solvers)
    double max_residual = 0;  ///< max_j ‖H u_j − λ_j u_j‖ / λ_1 over the returned pairs (Lanczos)
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

namespace detail {

// The skinny product Aᵀ B of the Lanczos iteration (B has p ≤ a few dozen columns, A is the n×n
// operator or the n×m basis). Eigen's GEMM copies ("packs") its large operand on every call,
// which for these shapes costs as much as the arithmetic; this kernel reads it in place. Register-blocked with
// Eigen's packet primitives (whatever SIMD the translation unit is compiled for) and split over
// OpenMP threads when the build has OpenMP.
using Packet = Eigen::internal::packet_traits<double>::type;
inline constexpr int packet_size = Eigen::internal::packet_traits<double>::size;

/// C = Aᵀ B for A n×m and B n×p (column-major with unit inner stride), C m×p.
inline void gemm_tn(const Eigen::Ref<const Eigen::MatrixXd>& a, const Eigen::Ref<const Eigen::MatrixXd>& b,
                    Eigen::MatrixXd& c) {
    namespace ei = Eigen::internal;
    const Eigen::Index n = a.rows(), m = a.cols(), p = b.cols();
    c.resize(m, p);
    const Eigen::Index nv = n / packet_size * packet_size;
    const Eigen::Index mb = (m + 3) / 4;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n * m * p > (1 << 18))
#endif
    for (Eigen::Index blk = 0; blk < mb; ++blk) {
        const Eigen::Index i0 = blk * 4;
        if (i0 + 4 > m) {  // edge columns of A: plain dot products
            for (Eigen::Index i = i0; i < m; ++i)
                for (Eigen::Index j = 0; j < p; ++j) c(i, j) = a.col(i).dot(b.col(j));
            continue;
        }
        const double* a0 = a.col(i0).data();
        const double* a1 = a.col(i0 + 1).data();
        const double* a2 = a.col(i0 + 2).data();
        const double* a3 = a.col(i0 + 3).data();
        Eigen::Index j = 0;
        for (; j + 2 <= p; j += 2) {
            const double* b0 = b.col(j).data();
            const double* b1 = b.col(j + 1).data();
            Packet s00 = ei::pset1<Packet>(0.0), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00,
                   s31 = s00;
            for (Eigen::Index r = 0; r < nv; r += packet_size) {
                const Packet x0 = ei::ploadu<Packet>(b0 + r), x1 = ei::ploadu<Packet>(b1 + r);
                Packet y = ei::ploadu<Packet>(a0 + r);
                s00 = ei::pmadd(y, x0, s00);
                s01 = ei::pmadd(y, x1, s01);
                y = ei::ploadu<Packet>(a1 + r);
                s10 = ei::pmadd(y, x0, s10);
                s11 = ei::pmadd(y, x1, s11);
                y = ei::ploadu<Packet>(a2 + r);
                s20 = ei::pmadd(y, x0, s20);
                s21 = ei::pmadd(y, x1, s21);
                y = ei::ploadu<Packet>(a3 + r);
                s30 = ei::pmadd(y, x0, s30);
                s31 = ei::pmadd(y, x1, s31);
            }
            double t[4][2] = {{ei::predux(s00), ei::predux(s01)},
                              {ei::predux(s10), ei::predux(s11)},
                              {ei::predux(s20), ei::predux(s21)},
                              {ei::predux(s30), ei::predux(s31)}};
            for (Eigen::Index r = nv; r < n; ++r)
                for (int x = 0; x < 4; ++x) {
                    const double av = a(r, i0 + x);
                    t[x][0] += av * b0[r];
                    t[x][1] += av * b1[r];
                }
            for (int x = 0; x < 4; ++x) c(i0 + x, j) = t[x][0], c(i0 + x, j + 1) = t[x][1];
        }
        for (; j < p; ++j)
            for (int x = 0; x < 4; ++x) c(i0 + x, j) = a.col(i0 + x).dot(b.col(j));
    }
}

/// Householder tridiagonalisation of the symmetric matrix `a` (lower triangle read), in place,
/// in the storage of Eigen::Tridiagonalization: diagonal and subdiagonal of the result on a's
/// diagonals, the essential parts of the Householder vectors below the subdiagonal, their
/// coefficients in `hcoeffs` (Q = HouseholderSequence(a, hcoeffs), length n − 1, shift 1).
/// Eigen's version makes two passes over the trailing matrix per column (a symmetric
/// matrix-vector product, then the rank-2 update) on one thread. Here the rank-2 update of step
/// i is applied while step i + 1's product reads the same column: one pass per column, the
/// columns split over OpenMP threads with per-thread partial products (bandwidth-bound: ≈ 2× on
/// two cores for n ≈ 1000).
inline void tridiagonalize(Eigen::MatrixXd& a, Eigen::VectorXd& hcoeffs) {
    const Eigen::Index n = a.rows();
    hcoeffs.setZero(std::max<Eigen::Index>(n - 1, 0));
    Eigen::VectorXd v = Eigen::VectorXd::Zero(n), w = Eigen::VectorXd::Zero(n);  // pending update A −= v wᵀ + w vᵀ
    Eigen::VectorXd vn = Eigen::VectorXd::Zero(n);
    int threads = 1;
#if defined(_OPENMP)
    threads = std::max(1, omp_get_max_threads());
#endif
    std::vector<Eigen::VectorXd> part(std::size_t(threads), Eigen::VectorXd::Zero(n));
    std::vector<Eigen::Index> cut(std::size_t(threads) + 1);
    bool pending = false;
    for (Eigen::Index i = 0; i + 1 < n; ++i) {
        const Eigen::Index rem = n - i - 1, j0 = i + 1;
        if (pending) a.col(i).tail(n - i) -= v.tail(n - i) * w(i) + w.tail(n - i) * v(i);
        double h = 0, beta = 0;
        a.col(i).tail(rem).makeHouseholderInPlace(h, beta);
        vn.setZero();
        vn(j0) = 1.0;
        vn.tail(rem - 1) = a.col(i).tail(rem - 1);
        // Columns [ja, jb) of the trailing matrix: apply the pending update, accumulate p = A v.
        auto sweep = [&](Eigen::Index ja, Eigen::Index jb, Eigen::VectorXd& p) {
            p.segment(j0, rem).setZero();
            for (Eigen::Index j = ja; j < jb; ++j) {
                const Eigen::Index len = n - j;
                auto col = a.col(j).tail(len);
                if (pending) col -= v.tail(len) * w(j) + w.tail(len) * v(j);
                p(j) += col.dot(vn.tail(len));
                if (len > 1) p.tail(len - 1) += col.tail(len - 1) * vn(j);
            }
        };
        Eigen::VectorXd& p = part[0];
        if (threads == 1 || rem < 192) {
            sweep(j0, n, p);
        } else {
            // contiguous column ranges of equal Σ (n − j)
            cut[0] = j0;
            const double total = 0.5 * double(rem) * double(rem + 1);
            Eigen::Index j = j0;
            double acc = 0;
            for (int t = 1; t < threads; ++t) {
                const double target = total * t / threads;
                while (j < n && acc + double(n - j) <= target) acc += double(n - j++);
                cut[std::size_t(t)] = j;
            }
            cut[std::size_t(threads)] = n;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
            {
                const int t = omp_get_thread_num();
                sweep(cut[std::size_t(t)], cut[std::size_t(t) + 1], part[std::size_t(t)]);
            }
#endif
            for (int t = 1; t < threads; ++t) p.segment(j0, rem) += part[std::size_t(t)].segment(j0, rem);
        }
        // w = h·p − ½·h²·(pᵀv)·v: the next pending update (as Eigen's Tridiagonalization).
        p.segment(j0, rem) *= h;
        p.segment(j0, rem) += (-0.5 * h * p.segment(j0, rem).dot(vn.segment(j0, rem))) * vn.segment(j0, rem);
        v.setZero();
        w.setZero();
        v.segment(j0, rem) = vn.segment(j0, rem);
        w.segment(j0, rem) = p.segment(j0, rem);
        pending = true;
        a(j0, i) = beta;
        hcoeffs(i) = h;
    }
    if (pending) a(n - 1, n - 1) -= 2.0 * v(n - 1) * w(n - 1);
}

/// Gaussian elimination with partial pivoting of S − σI for a symmetric tridiagonal S (diagonal
/// a, off-diagonal b): U has two superdiagonals. Pivots smaller than `tiny` are replaced by ±tiny
/// (S − σI is singular to working precision when σ is an eigenvalue, which is the point).
class TridiagonalLU {
public:
    TridiagonalLU(const Eigen::VectorXd& a, const Eigen::VectorXd& b, double sigma, double tiny)
        : m_(a.size()), d_(std::size_t(m_)), u1_(std::size_t(m_)), u2_(std::size_t(m_)), l_(std::size_t(m_)),
          swap_(std::size_t(m_)) {
        for (Eigen::Index i = 0; i < m_; ++i) {
            d_[std::size_t(i)] = a(i) - sigma;
            u1_[std::size_t(i)] = i + 1 < m_ ? b(i) : 0.0;
            u2_[std::size_t(i)] = 0.0;
        }
        for (Eigen::Index i = 0; i + 1 < m_; ++i) {
            const std::size_t s = std::size_t(i);
            const double sub = b(i);
            if (std::abs(d_[s]) >= std::abs(sub)) {
                if (std::abs(d_[s]) < tiny) d_[s] = std::copysign(tiny, d_[s]);
                l_[s] = sub / d_[s];
                d_[s + 1] -= l_[s] * u1_[s];
                swap_[s] = 0;
            } else {
                l_[s] = d_[s] / sub;
                d_[s] = sub;
                const double t = u1_[s];
                u1_[s] = d_[s + 1];
                d_[s + 1] = t - l_[s] * d_[s + 1];
                if (i + 2 < m_) {
                    u2_[s] = u1_[s + 1];
                    u1_[s + 1] = -l_[s] * u1_[s + 1];
                }
                swap_[s] = 1;
            }
        }
        if (m_ > 0 && std::abs(d_.back()) < tiny) d_.back() = std::copysign(tiny, d_.back());
    }
    /// x ← (S − σI)⁻¹ x.
    void solve(double* x) const {
        for (Eigen::Index i = 0; i + 1 < m_; ++i) {
            const std::size_t s = std::size_t(i);
            if (swap_[s]) std::swap(x[s], x[s + 1]);
            x[s + 1] -= l_[s] * x[s];
        }
        for (Eigen::Index i = m_ - 1; i >= 0; --i) {
            const std::size_t s = std::size_t(i);
            double v = x[s];
            if (i + 1 < m_) v -= u1_[s] * x[s + 1];
            if (i + 2 < m_) v -= u2_[s] * x[s + 2];
            x[s] = v / d_[s];
        }
    }

private:
    Eigen::Index m_;
    std::vector<double> d_, u1_, u2_, l_;
    std::vector<char> swap_;
};

/// Orthonormalises the columns of x in place by Cholesky QR, twice. Returns false when the Gram
/// matrix is numerically singular (nearly dependent columns).
inline bool cholesky_qr2(Eigen::MatrixXd& x) {
    for (int pass = 0; pass < 2; ++pass) {
        Eigen::MatrixXd g = Eigen::MatrixXd::Zero(x.cols(), x.cols());
        g.selfadjointView<Eigen::Lower>().rankUpdate(x.transpose());
        Eigen::LLT<Eigen::MatrixXd> llt(g);
        if (llt.info() != Eigen::Success) return false;
        const Eigen::VectorXd dg = Eigen::MatrixXd(llt.matrixL()).diagonal();
        if (dg.minCoeff() <= 1e-6 * dg.maxCoeff()) return false;
        llt.matrixU().solveInPlace<Eigen::OnTheRight>(x);
    }
    return true;
}

/// Inverse iteration on the symmetric tridiagonal S (diagonal a, off-diagonal b): column j of x
/// becomes the unit eigenvector of S for the accurate eigenvalue theta(j) (three solves from a
/// fixed pseudo-random start). Vectors of nearly equal eigenvalues come out nearly parallel; they
/// are separated (or rejected) by orthonormalise_tridiagonal_vectors. False on a breakdown.
inline bool inverse_iteration(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const Eigen::VectorXd& theta,
                              double norm, Eigen::MatrixXd& x) {
    const Eigen::Index m = a.size(), k = theta.size();
    const double tiny = norm * std::numeric_limits<double>::epsilon();
    x.resize(m, k);
    for (Eigen::Index j = 0; j < k; ++j) {
        const TridiagonalLU lu(a, b, theta(j), tiny);
        double* col = x.col(j).data();
        std::uint64_t s = 0x9e3779b97f4a7c15ull * std::uint64_t(j + 1);
        for (Eigen::Index i = 0; i < m; ++i) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            col[i] = double(std::int64_t(s >> 11) - (std::int64_t(1) << 52)) / double(std::int64_t(1) << 52);
        }
        for (int it = 0; it < 3; ++it) {
            lu.solve(col);
            const double nrm = x.col(j).norm();
            if (!(nrm > 0) || !std::isfinite(nrm)) return false;
            x.col(j) /= nrm;
        }
    }
    return true;
}

/// Cholesky QR of the inverse-iteration vectors, then a check that every column still has a
/// rounding-level residual ‖S x_j − θ_j x_j‖ <= 1e-10·‖S‖. False (the caller then uses the full
/// solver) for clusters of nearly equal eigenvalues, where the vectors are not independent.
inline bool orthonormalise_tridiagonal_vectors(const Eigen::VectorXd& a, const Eigen::VectorXd& b,
                                               const Eigen::VectorXd& theta, double norm, Eigen::MatrixXd& x) {
    if (!cholesky_qr2(x)) return false;
    const Eigen::Index m = a.size();
    for (Eigen::Index j = 0; j < x.cols(); ++j) {
        double r2 = 0;
        for (Eigen::Index i = 0; i < m; ++i) {
            double v = (a(i) - theta(j)) * x(i, j);
            if (i > 0) v += b(i - 1) * x(i - 1, j);
            if (i + 1 < m) v += b(i) * x(i + 1, j);
            r2 += v * v;
        }
        if (!(std::sqrt(r2) <= 1e-10 * norm)) return false;
    }
    return true;
}

/// The top k eigenpairs of an explicit symmetric matrix, in two stages. Construction does the
/// Householder tridiagonalisation, the tridiagonal eigenvalues (implicit QL/QR, no vectors) and
/// k tridiagonal eigenvectors by inverse iteration — enough for bottom_rows(), the last rows of
/// the eigenvectors that a Lanczos residual needs. finish() orthonormalises them (falling back
/// to the full tridiagonal solver on clusters) and back-transforms by the blocked Householder
/// product. (Eigen's own solver accumulates all n vectors with Givens rotations, which is most
/// of its time.)
class DenseTop {
public:
    DenseTop(const Eigen::MatrixXd& h, Eigen::Index k) : packed_(h) {
        const Eigen::Index m = h.rows();
        tridiagonalize(packed_, hcoeffs_);
        a_ = packed_.diagonal();
        b_ = packed_.diagonal(-1);
        es_.computeFromTridiagonal(a_, b_, Eigen::EigenvaluesOnly);
        if (es_.info() != Eigen::Success) {
            // Eigen's implicit QL can exceed its iteration limit on our tridiagonal form (seen on a
            // 208-row Lanczos projection); its own full solver tridiagonalises with other
            // rounding and converges there.
            dense_fallback(h, k);
            return;
        }
        values_ = es_.eigenvalues().reverse().head(k);
        for (Eigen::Index i = 0; i < m; ++i)
            norm_ = std::max(norm_, std::abs(a_(i)) + (i > 0 ? std::abs(b_(i - 1)) : 0.0) +
                                        (i + 1 < m ? std::abs(b_(i)) : 0.0));
        inverse_ok_ = norm_ > 0 && std::isfinite(norm_) && inverse_iteration(a_, b_, values_, norm_, s_);
        if (!inverse_ok_) full_vectors();
    }
    const Eigen::VectorXd& values() const noexcept { return values_; }
    /// The last p rows of the (not yet orthonormalised) eigenvectors, p × k.
    Eigen::MatrixXd bottom_rows(Eigen::Index p) const {
        if (dense_) return dense_vectors_.bottomRows(p);
        const Eigen::Index m = a_.size();
        Eigen::MatrixXd e = Eigen::MatrixXd::Zero(m, p);
        e.bottomRows(p).setIdentity();
        const Eigen::MatrixXd qte = matrix_q().transpose() * e;  // Qᵀ E = (last p rows of Q)ᵀ
        return qte.transpose() * s_;
    }
    /// Orthonormal eigenvectors of the original matrix, m × k.
    Eigen::MatrixXd finish() {
        if (dense_) return dense_vectors_;
        if (inverse_ok_ && !orthonormalise_tridiagonal_vectors(a_, b_, values_, norm_, s_)) full_vectors();
        return matrix_q() * s_;
    }

private:
    void dense_fallback(const Eigen::MatrixXd& h, Eigen::Index k) {
        const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(h);
        require(es.info() == Eigen::Success, "eigen_top: the eigensolver did not converge (n = ", h.rows(), ")");
        values_ = es.eigenvalues().reverse().head(k);
        dense_vectors_ = es.eigenvectors().rowwise().reverse().leftCols(k);
        dense_ = true;
        inverse_ok_ = false;
    }
    void full_vectors() {
        es_.computeFromTridiagonal(a_, b_, Eigen::ComputeEigenvectors);
        require(es_.info() == Eigen::Success, "eigen_top: the tridiagonal eigensolver did not converge (n = ", a_.size(),
                ")");
        const Eigen::Index k = values_.size();
        values_ = es_.eigenvalues().reverse().head(k);
        s_ = es_.eigenvectors().rowwise().reverse().leftCols(k);
        inverse_ok_ = false;
    }
    Eigen::HouseholderSequence<Eigen::MatrixXd, Eigen::VectorXd> matrix_q() const {
        return Eigen::HouseholderSequence<Eigen::MatrixXd, Eigen::VectorXd>(packed_, hcoeffs_)
            .setLength(packed_.rows() - 1)
            .setShift(1);
    }
    Eigen::MatrixXd packed_;   // tridiagonalize() output: S on the diagonals, Householder vectors below
    Eigen::VectorXd hcoeffs_;
    Eigen::VectorXd a_, b_, values_;
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es_;
    Eigen::MatrixXd s_;
    Eigen::MatrixXd dense_vectors_;  // set by dense_fallback()
    double norm_ = 0;
    bool inverse_ok_ = false;
    bool dense_ = false;
};

}  // namespace detail

/// The top k eigenpairs of an explicit symmetric matrix, descending: Householder
/// tridiagonalisation, the tridiagonal eigenvalues, k eigenvectors by inverse iteration (the full
/// tridiagonal solver on clusters of nearly equal eigenvalues), the blocked back-transformation.
inline EigenTop eigen_top_dense(const Eigen::MatrixXd& h, Eigen::Index k) {
    require(h.rows() == h.cols(), "eigen_top_dense: matrix must be square, got ", h.rows(), "x", h.cols());
    const Eigen::Index n = h.rows();
    require(k >= 1 && k <= n, "eigen_top_dense: k = ", k, " must be in [1, ", n, "]");
    for (Eigen::Index i = 0; i < h.size(); ++i)
        require(std::isfinite(h.data()[i]), "eigen_top_dense: the matrix has a non-finite entry");
    if (n <= 2) return eigen_full(h, k);
    detail::DenseTop top(h, k);
    EigenTop out;
    out.vectors = top.finish();
    out.values = top.values();
    out.trace = h.trace();
    return out;
}

/// Options of the block Lanczos solver.
struct EigenOptions {
    int block = 16;            ///< block size p (vectors per operator call)
    double tolerance = 1e-6;   ///< stop when max_j ‖H u_j − θ_j u_j‖ <= tolerance·θ_1 over the top k …
    /// … or when Σ_{j<k} θ_j (the captured energy, what the PCA maximises) changes by less than this
    /// (relative) between two checks
    double energy_tolerance = 1e-10;
    int check_every = 4;       ///< blocks between two convergence checks (the first at dimension ≈ 2k)
    std::uint64_t seed = 0x7a3b9c1du;  ///< start block (deterministic results)
};

/// Top-k eigenpairs of the n×n symmetric PSD operator y = apply(x) (x, y n×p) by block Lanczos
/// with full reorthogonalisation (classical Gram–Schmidt twice against the whole basis). The
/// Rayleigh–Ritz step solves the block tridiagonal projection T with eigen_top_dense; the residual
/// of Ritz pair j is ‖B · y_j[last block]‖ (B the coupling to the next block), so a check costs
/// no operator call. When the Krylov space would exceed n the operator is applied to the identity
/// and the explicit matrix solved densely. `trace` is the operator's trace (reported as-is).
inline EigenTop eigen_top_lanczos(const std::function<Eigen::MatrixXd(const Eigen::MatrixXd&)>& apply,
                                  Eigen::Index n, Eigen::Index k, double trace, EigenOptions opt = {}) {
    require(k >= 1 && k <= n, "eigen_top_lanczos: k = ", k, " must be in [1, n = ", n, "]");
    const Eigen::Index p = std::clamp<Eigen::Index>(opt.block, 1, n);
    auto checked = [&](const Eigen::MatrixXd& x) {
        Eigen::MatrixXd y = apply(x);
        require(y.rows() == n && y.cols() == x.cols(), "eigen_top_lanczos: the operator returned ", y.rows(), "x",
                y.cols(), ", expected ", n, "x", x.cols());
        for (Eigen::Index i = 0; i < y.size(); ++i)
            require(std::isfinite(y.data()[i]), "eigen_top_lanczos: the operator returned a non-finite value");
        return y;
    };
    auto dense = [&] {
        Eigen::MatrixXd h(n, n);
        for (Eigen::Index c = 0; c < n; c += 256) {
            const Eigen::Index w = std::min<Eigen::Index>(256, n - c);
            Eigen::MatrixXd e = Eigen::MatrixXd::Zero(n, w);
            e.middleRows(c, w).setIdentity();
            h.middleCols(c, w) = checked(e);
        }
        h = (0.5 * (h + h.transpose())).eval();
        EigenTop out = eigen_top_dense(h, k);
        out.trace = trace;
        return out;
    };
    if (k + 2 * p >= n) return dense();

    std::mt19937_64 gen(opt.seed);
    std::normal_distribution<double> nd;
    Eigen::Index cap = std::min(n, 2 * k + 8 * p);
    Eigen::MatrixXd v(n, cap), t = Eigen::MatrixXd::Zero(cap, cap);
    {
        Eigen::MatrixXd q0(n, p);
        for (Eigen::Index i = 0; i < q0.size(); ++i) q0.data()[i] = nd(gen);
        Eigen::HouseholderQR<Eigen::MatrixXd> qr(q0);
        v.leftCols(p) = qr.householderQ() * Eigen::MatrixXd::Identity(n, p);
    }
    const Eigen::Index every = std::max(1, opt.check_every) * p;
    Eigen::Index next_check = std::max(k + 2 * p, 2 * k);
    next_check = (next_check + p - 1) / p * p;
    double prev_energy = -1;
    for (Eigen::Index j = 0;; ++j) {
        const Eigen::Index m = (j + 1) * p;  // basis size after this step (blocks 0..j)
        if (m + p > n) return dense();
        if (m + p > cap) {
            const Eigen::Index nc = std::min(n, cap + cap / 2 + p);
            v.conservativeResize(Eigen::NoChange, nc);
            t.conservativeResize(nc, nc);
            t.rightCols(nc - cap).setZero();
            t.bottomRows(nc - cap).setZero();
            cap = nc;
        }
        const auto vj = v.middleCols(j * p, p);
        Eigen::MatrixXd w = checked(vj);
        Eigen::MatrixXd alpha = vj.transpose() * w;
        alpha = (0.5 * (alpha + alpha.transpose())).eval();
        t.block(j * p, j * p, p, p) = alpha;
        w.noalias() -= vj * alpha;
        if (j > 0) w.noalias() -= v.middleCols((j - 1) * p, p) * t.block(j * p, (j - 1) * p, p, p).transpose();
        const auto basis = v.leftCols(m);
        // Classical Gram–Schmidt against the whole basis; a second pass when a column lost more
        // than 30 % of its norm to the first (the DGKS criterion: then it may still carry basis
        // components at the level of rounding relative to its old norm).
        Eigen::MatrixXd c;
        for (int pass = 0; pass < 2; ++pass) {
            const Eigen::VectorXd before = w.colwise().norm();
            detail::gemm_tn(basis, w, c);
            w.noalias() -= basis * c;
            if ((w.colwise().norm().transpose().array() >= 0.7 * before.array()).all()) break;
        }
        // Next block: an orthonormal basis of w; columns w does not determine (rank deficiency:
        // an invariant subspace was found) are completed by a second projection against the basis.
        Eigen::HouseholderQR<Eigen::MatrixXd> qr(w);
        Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(n, p);
        const Eigen::VectorXd rd = qr.matrixQR().diagonal().head(p).cwiseAbs();
        if (rd.minCoeff() <= 1e-8 * std::max(rd.maxCoeff(), alpha.cwiseAbs().maxCoeff())) {
            for (Eigen::Index i = 0; i < q.cols(); ++i)
                if (rd(i) <= 1e-8 * std::max(rd.maxCoeff(), alpha.cwiseAbs().maxCoeff()))
                    for (Eigen::Index r = 0; r < n; ++r) q(r, i) = nd(gen);
            for (int pass = 0; pass < 2; ++pass) {
                detail::gemm_tn(basis, q, c);
                q.noalias() -= basis * c;
                Eigen::HouseholderQR<Eigen::MatrixXd> q2(q);
                q = q2.householderQ() * Eigen::MatrixXd::Identity(n, p);
            }
        }
        const Eigen::MatrixXd beta = q.transpose() * w;  // w = q·beta (to rounding)
        v.middleCols(m, p) = q;
        t.block(m, j * p, p, p) = beta;
        t.block(j * p, m, p, p) = beta.transpose();
        if (m < next_check) continue;
        next_check = m + every;
        // Rayleigh–Ritz on the Krylov space of dimension m.
        detail::DenseTop ritz(t.topLeftCorner(m, m), k);
        const double scale = std::max(ritz.values()(0), std::numeric_limits<double>::min());
        const Eigen::MatrixXd rres = beta * ritz.bottom_rows(p);
        const double res = rres.colwise().norm().maxCoeff() / scale;
        const double energy = ritz.values().sum();
        const bool energy_done = prev_energy >= 0 && std::abs(energy - prev_energy) <= opt.energy_tolerance * energy;
        prev_energy = energy;
        if (res <= opt.tolerance || energy_done) {
            EigenTop out;
            out.vectors = basis * ritz.finish();
            out.values = ritz.values();
            out.trace = trace;
            out.iterations = int(j + 1);
            out.krylov_dim = int(m);
            out.max_residual = res;
            return out;
        }
    }
}

/// Top-k eigenpairs of an explicit symmetric PSD matrix: eigen_top_dense for small matrices or
/// large k, block Lanczos otherwise.
inline EigenTop eigen_top(const Eigen::MatrixXd& h, Eigen::Index k, EigenOptions opt = {}) {
    require(h.rows() == h.cols(), "eigen_top: matrix must be square, got ", h.rows(), "x", h.cols());
    const Eigen::Index n = h.rows();
    require(k >= 1 && k <= n, "eigen_top: k = ", k, " must be in [1, ", n, "]");
    if (n <= 768 || 3 * k > n) return eigen_top_dense(h, k);
    return eigen_top_lanczos(
        [&](const Eigen::MatrixXd& x) {
            Eigen::MatrixXd y;
            detail::gemm_tn(h, x, y);  // h symmetric: hᵀ x = h x
            return y;
        },
        n, k, h.trace(), opt);
}

}  // namespace transmla::convert
