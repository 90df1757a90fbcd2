// Calibration accumulators and the eigensolvers.
#include "synthetic.hpp"
#include "transmla/convert/layer.hpp"
#include "transmla/convert/linalg.hpp"

#include <algorithm>
#include <functional>
#include <thread>
#include <vector>

using namespace transmla;
using namespace transmla::convert;
using transmla::test::rel_err;

TEST_CASE("CalibrationStats: uncentred moment of [x; 1], padding excluded, thread-safe merge") {
    const int D = 24;
    const test::InputGen gen(D);
    const Eigen::MatrixXd x = gen.tokens(300);
    Eigen::MatrixXd aug(300, D + 1);
    aug << x, Eigen::VectorXd::Ones(300);
    const Eigen::MatrixXd want = aug.transpose() * aug;
    // One accumulator fed concurrently from 3 threads, batches padded with garbage rows.
    CalibrationStats s(D);
    std::vector<std::thread> th;
    for (int k = 0; k < 3; ++k)
        th.emplace_back([&, k] {
            for (int b = 0; b < 5; ++b) {
                Eigen::MatrixXd batch(25, D);
                batch.topRows(20) = x.middleRows(k * 100 + b * 20, 20);
                batch.bottomRows(5).setConstant(1e9);  // padding
                std::vector<std::uint8_t> mask(25, 1);
                for (int t = 20; t < 25; ++t) mask[std::size_t(t)] = 0;
                s.add(batch, mask);
            }
        });
    for (auto& t : th) t.join();
    CHECK(s.tokens() == 300);
    CHECK(rel_err(s.moment(), want) <= 1e-12);
    // Per-thread accumulators merged.
    CalibrationStats a(D), b(D);
    a.add(x.topRows(120));
    std::vector<float> f(std::size_t(180) * D);
    for (int t = 0; t < 180; ++t)
        for (int j = 0; j < D; ++j) f[std::size_t(t) * D + j] = float(x(120 + t, j));
    b.add(std::span<const float>(f), 180);
    a.merge(b);
    CHECK(a.tokens() == 300);
    CHECK(rel_err(a.moment(), want) <= 1e-6);  // the float rows are rounded
    // Projections: the moment of y = W x + b and its diagonal.
    const Eigen::MatrixXd w = test::gaussian(7, D);
    const Eigen::VectorXd bias = test::gaussian_vec(7);
    Eigen::MatrixXd y = x * w.transpose();
    y.rowwise() += bias.transpose();
    CHECK(rel_err(s.project(w, bias), y.transpose() * y) <= 1e-12);
    CHECK(rel_err(s.project_diag(w, bias), y.colwise().squaredNorm().transpose()) <= 1e-12);
    CHECK(rel_err(s.project(w), (x * w.transpose()).transpose() * (x * w.transpose())) <= 1e-12);
    // Errors.
    CHECK_THROWS_AS(s.add(test::gaussian(3, D + 1)), error);
    std::vector<std::uint8_t> short_mask(2, 1);
    CHECK_THROWS_AS(s.add(test::gaussian(3, D), short_mask), error);
    CHECK_THROWS_AS(a.merge(a), error);
    CalibrationStats other(D + 2);
    CHECK_THROWS_AS(a.merge(other), error);
    Eigen::MatrixXd nan = test::gaussian(2, D);
    nan(1, 3) = std::nan("");
    CHECK_THROWS_AS(s.add(nan), error);
    CHECK_THROWS_AS(s.project(test::gaussian(3, D - 1)), error);
}

namespace {
/// A symmetric matrix U diag(lam) Uᵀ with a random orthogonal U.
Eigen::MatrixXd with_spectrum(const Eigen::VectorXd& lam) {
    const Eigen::Index n = lam.size();
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(test::gaussian(n, n));
    const Eigen::MatrixXd u = qr.householderQ() * Eigen::MatrixXd::Identity(n, n);
    Eigen::MatrixXd h = u * lam.asDiagonal() * u.transpose();
    return (0.5 * (h + h.transpose())).eval();
}
double orthonormality_error(const Eigen::MatrixXd& v) {
    return (v.transpose() * v - Eigen::MatrixXd::Identity(v.cols(), v.cols())).cwiseAbs().maxCoeff();
}
double eigen_residual(const Eigen::MatrixXd& h, const EigenTop& e) {
    return (h * e.vectors - e.vectors * e.values.asDiagonal()).norm() / std::max(1.0, e.values.cwiseAbs().maxCoeff());
}
}  // namespace

TEST_CASE("tridiagonalize: same tridiagonal matrix as Eigen's, Q S Qᵀ = H") {
    for (int n : {3, 40, 400}) {  // 400: the threaded sweep runs for the first columns
        const Eigen::MatrixXd g = test::gaussian(n, n);
        const Eigen::MatrixXd h = g + g.transpose();
        Eigen::MatrixXd a = h;
        Eigen::VectorXd hc;
        transmla::convert::detail::tridiagonalize(a, hc);
        const Eigen::Tridiagonalization<Eigen::MatrixXd> ref(h);
        // same reflectors, different rounding order (forward error); the backward error below is
        // the stability check
        CHECK(rel_err(Eigen::VectorXd(a.diagonal()), ref.diagonal()) <= 1e-10);
        CHECK(rel_err(Eigen::VectorXd(a.diagonal(-1)), ref.subDiagonal()) <= 1e-10);
        Eigen::MatrixXd s = Eigen::MatrixXd::Zero(n, n);
        s.diagonal() = a.diagonal();
        s.diagonal(-1) = a.diagonal(-1);
        s.diagonal(1) = a.diagonal(-1);
        const Eigen::MatrixXd q = Eigen::HouseholderSequence<Eigen::MatrixXd, Eigen::VectorXd>(a, hc).setLength(n - 1).setShift(1);
        CHECK(rel_err(Eigen::MatrixXd(q * s * q.transpose()), h) <= 1e-13);
        CHECK(orthonormality_error(q) <= 1e-13);
    }
}

TEST_CASE("eigen_top_dense: the top k of the full solver, with and without clusters") {
    const int n = 300, k = 60;
    // (a) a random symmetric matrix (eigenvalues of both signs): inverse-iteration path
    Eigen::MatrixXd g = test::gaussian(n, n);
    const Eigen::MatrixXd h = 0.5 * (g + g.transpose());
    const EigenTop full = eigen_full(h, k);
    const EigenTop top = eigen_top_dense(h, k);
    CHECK(rel_err(top.values, full.values) <= 1e-12);
    CHECK(orthonormality_error(top.vectors) <= 1e-12);
    CHECK(eigen_residual(h, top) <= 1e-10);
    CHECK((top.vectors * top.vectors.transpose() - full.vectors * full.vectors.transpose()).norm() <= 1e-8);
    // (b) exact multiplicities inside the top k (inverse iteration cannot separate them; the
    // fallback must still return an orthonormal eigenbasis)
    Eigen::VectorXd lam(n);
    for (int i = 0; i < n; ++i) lam(i) = 100.0 * std::pow(i + 1.0, -1.0);
    lam.segment(10, 4).setConstant(7.0);
    lam.segment(40, 3).setConstant(2.0);
    const Eigen::MatrixXd hc = with_spectrum(lam);
    const EigenTop tc = eigen_top_dense(hc, k);
    Eigen::VectorXd want = lam;
    std::sort(want.data(), want.data() + n, std::greater<double>());
    CHECK(rel_err(tc.values, want.head(k)) <= 1e-12);
    CHECK(orthonormality_error(tc.vectors) <= 1e-12);
    CHECK(eigen_residual(hc, tc) <= 1e-10);
    // (c) Wilkinson's W21+: its top eigenvalues come in pairs equal to ~1e-14 in an unreduced
    // tridiagonal matrix, the hard case for inverse iteration
    Eigen::MatrixXd w = Eigen::MatrixXd::Zero(21, 21);
    for (int i = 0; i < 21; ++i) {
        w(i, i) = std::abs(10 - i);
        if (i + 1 < 21) w(i, i + 1) = w(i + 1, i) = 1.0;
    }
    const EigenTop tw = eigen_top_dense(w, 6);
    CHECK(rel_err(tw.values, eigen_full(w, 6).values) <= 1e-14);
    CHECK(tw.values(0) - tw.values(1) < 1e-12);
    CHECK(orthonormality_error(tw.vectors) <= 1e-12);
    CHECK(eigen_residual(w, tw) <= 1e-12);
    CHECK_THROWS_AS(eigen_top_dense(h, n + 1), error);
    CHECK_THROWS_AS(eigen_top_dense(test::gaussian(3, 4), 1), error);
}

TEST_CASE("block Lanczos finds the top eigenpairs of a decaying spectrum") {
    const int n = 400, k = 40;
    Eigen::VectorXd lam(n);
    for (int i = 0; i < n; ++i) lam(i) = 100.0 * std::pow(i + 1.0, -1.2);
    const Eigen::MatrixXd h = with_spectrum(lam);
    const auto op = [&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(h * x); };
    const EigenTop full = eigen_full(h, k);
    CHECK(rel_err(full.values, lam.head(k)) <= 1e-12);
    EigenOptions tight;
    tight.tolerance = 1e-10;
    tight.energy_tolerance = 0;
    const EigenTop lz = eigen_top_lanczos(op, n, k, h.trace(), tight);
    INFO("block steps " << lz.iterations << " Krylov dim " << lz.krylov_dim << " residual " << lz.max_residual);
    CHECK(lz.krylov_dim > k);
    CHECK(lz.krylov_dim < n);
    CHECK(lz.max_residual <= 1e-10);
    CHECK(rel_err(lz.values, lam.head(k)) <= 1e-12);
    CHECK(eigen_residual(h, lz) <= 1e-8);
    CHECK((lz.vectors * lz.vectors.transpose() - full.vectors * full.vectors.transpose()).norm() <= 1e-6);
    CHECK(orthonormality_error(lz.vectors) <= 1e-12);
    // The default criterion captures the optimal energy to 1e-7 relative, in fewer dimensions.
    const EigenTop loose = eigen_top_lanczos(op, n, k, h.trace());
    CHECK(loose.krylov_dim <= lz.krylov_dim);
    CHECK((h * loose.vectors).cwiseProduct(loose.vectors).sum() == doctest::Approx(lam.head(k).sum()).epsilon(1e-7));
    // eigen_top on an explicit matrix of this size goes through the same solver.
    const EigenTop et = eigen_top(with_spectrum(Eigen::VectorXd(lam.replicate(2, 1))), 40);  // n = 800
    CHECK(et.krylov_dim > 0);
    CHECK(et.values(0) == doctest::Approx(100.0).epsilon(1e-10));
}

TEST_CASE("block Lanczos: rank-deficient operators, the dense fallback, bad operators") {
    // Rank 20 < k = 40: the Krylov space becomes invariant after two blocks; the solver must
    // complete the basis and return the 20 non-zero pairs and 20 orthonormal null vectors.
    const int n = 300, k = 40;
    Eigen::VectorXd lam = Eigen::VectorXd::Zero(n);
    for (int i = 0; i < 20; ++i) lam(i) = 50.0 / (i + 1);
    const Eigen::MatrixXd h = with_spectrum(lam);
    const auto op = [&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(h * x); };
    const EigenTop e = eigen_top_lanczos(op, n, k, h.trace());
    CHECK(rel_err(e.values.head(20), lam.head(20)) <= 1e-10);
    CHECK(e.values.tail(20).cwiseAbs().maxCoeff() <= 1e-10);
    CHECK(orthonormality_error(e.vectors) <= 1e-10);
    CHECK(eigen_residual(h, e) <= 1e-9);
    // k + 2·block >= n: the operator is applied to the identity and solved densely.
    const Eigen::MatrixXd small = with_spectrum(Eigen::VectorXd::LinSpaced(50, 10.0, 1.0));
    const EigenTop d = eigen_top_lanczos([&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(small * x); }, 50, 30,
                                         small.trace());
    CHECK(d.krylov_dim == 0);
    CHECK(rel_err(d.values, Eigen::VectorXd::LinSpaced(50, 10.0, 1.0).head(30)) <= 1e-12);
    // An operator that returns the wrong shape or a non-finite value is reported, not used.
    CHECK_THROWS_AS(eigen_top_lanczos([&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(x.topRows(n - 1)); }, n, k,
                                      1.0),
                    error);
    CHECK_THROWS_AS(eigen_top_lanczos(
                        [&](const Eigen::MatrixXd& x) {
                            Eigen::MatrixXd y = h * x;
                            y(0, 0) = std::nan("");
                            return y;
                        },
                        n, k, 1.0),
                    error);
    CHECK_THROWS_AS(eigen_top_lanczos(op, n, 0, 1.0), error);
    CHECK_THROWS_AS(eigen_top(h, n + 1), error);
}

TEST_CASE("KvStats: moment of [k; v], padding excluded, thread-safe, equal to the input-moment projection") {
    const int D = 24, L = 12;
    const test::InputGen gen(D);
    const Eigen::MatrixXd x = gen.tokens(240);
    const Eigen::MatrixXd wk = test::gaussian(L, D), wv = test::gaussian(L, D, 0.5);
    const Eigen::VectorXd bk = test::gaussian_vec(L), bv = test::gaussian_vec(L);
    Eigen::MatrixXd k = x * wk.transpose(), v = x * wv.transpose();
    k.rowwise() += bk.transpose();
    v.rowwise() += bv.transpose();
    Eigen::MatrixXd kv(240, 2 * L);
    kv << k, v;
    const Eigen::MatrixXd want = kv.transpose() * kv;
    KvStats s(L);
    std::vector<std::thread> th;
    for (int t = 0; t < 3; ++t)
        th.emplace_back([&, t] {
            for (int b = 0; b < 4; ++b) {
                Eigen::MatrixXd kb(24, L), vb(24, L);
                kb.topRows(20) = k.middleRows(t * 80 + b * 20, 20);
                vb.topRows(20) = v.middleRows(t * 80 + b * 20, 20);
                kb.bottomRows(4).setConstant(1e9);  // padding
                vb.bottomRows(4).setConstant(-1e9);
                std::vector<std::uint8_t> mask(24, 1);
                for (int r = 20; r < 24; ++r) mask[std::size_t(r)] = 0;
                s.add(kb, vb, mask);
            }
        });
    for (auto& t : th) t.join();
    CHECK(s.tokens() == 240);
    CHECK(rel_err(s.moment(), want) <= 1e-12);
    CHECK(rel_err(s.leading_block(L), k.transpose() * k) <= 1e-12);
    CHECK(rel_err(s.trailing_block(L), v.transpose() * v) <= 1e-12);
    CHECK(rel_err(s.trailing_block(3), want.bottomRightCorner(2 * L - 3, 2 * L - 3)) <= 1e-12);
    CHECK_THROWS_AS(s.leading_block(2 * L + 1), error);
    CHECK_THROWS_AS(s.trailing_block(2 * L), error);
    // The projection of the input moment gives the same statistics.
    CalibrationStats in(D);
    in.add(x);
    const KvStats p = KvStats::from_input(in, wk, bk, wv, bv);
    CHECK(p.tokens() == 240);
    CHECK(rel_err(p.moment(), want) <= 1e-12);
    // Float rows and merge.
    KvStats a(L), b(L);
    a.add(k.topRows(100), v.topRows(100));
    std::vector<float> kf(std::size_t(140) * L), vf(std::size_t(140) * L);
    for (int t = 0; t < 140; ++t)
        for (int j = 0; j < L; ++j) {
            kf[std::size_t(t) * L + j] = float(k(100 + t, j));
            vf[std::size_t(t) * L + j] = float(v(100 + t, j));
        }
    b.add(std::span<const float>(kf), std::span<const float>(vf), 140);
    a.merge(b);
    CHECK(a.tokens() == 240);
    CHECK(rel_err(a.moment(), want) <= 1e-6);
    // Errors.
    CHECK_THROWS_AS(s.add(test::gaussian(3, L + 1), test::gaussian(3, L)), error);
    CHECK_THROWS_AS(s.add(test::gaussian(3, L), test::gaussian(4, L)), error);
    std::vector<std::uint8_t> short_mask(2, 1);
    CHECK_THROWS_AS(s.add(test::gaussian(3, L), test::gaussian(3, L), short_mask), error);
    Eigen::MatrixXd nan = test::gaussian(2, L);
    nan(1, 1) = std::nan("");
    CHECK_THROWS_AS(s.add(nan, test::gaussian(2, L)), error);
    CHECK_THROWS_AS(a.merge(a), error);
    KvStats other(L + 1);
    CHECK_THROWS_AS(a.merge(other), error);
    CHECK_THROWS_AS(KvStats(0), error);
    KvStats set;
    CHECK_THROWS_AS(set.set_moment(test::gaussian(6, 6), 10), error);  // not symmetric
    CHECK_THROWS_AS(set.set_moment(want, 0), error);
    CHECK_THROWS_AS(KvStats::from_input(in, wk, bk, test::gaussian(L + 1, D), bv), error);
}
