// Calibration accumulators and the eigensolvers.
#include "synthetic.hpp"
#include "transmla/convert/layer.hpp"
#include "transmla/convert/linalg.hpp"

#include <thread>

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

TEST_CASE("subspace iteration finds the top eigenpairs of a decaying spectrum") {
    const int n = 400, k = 40;
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(test::gaussian(n, n));
    const Eigen::MatrixXd u = qr.householderQ() * Eigen::MatrixXd::Identity(n, n);
    Eigen::VectorXd lam(n);
    for (int i = 0; i < n; ++i) lam(i) = 100.0 * std::pow(i + 1.0, -1.2);
    const Eigen::MatrixXd h = u * lam.asDiagonal() * u.transpose();
    const EigenTop full = eigen_full(h, k);
    CHECK(rel_err(full.values, lam.head(k)) <= 1e-12);
    SubspaceOptions tight;
    tight.tolerance = 1e-10;
    tight.energy_tolerance = 0;
    const EigenTop sub = eigen_top_subspace([&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(h * x); }, n, k,
                                            h.trace(), tight);
    INFO("iterations " << sub.iterations << " residual " << sub.max_residual);
    CHECK(sub.iterations > 1);
    CHECK(rel_err(sub.values, lam.head(k)) <= 1e-9);
    // Captured energy and subspace agree with the full solver.
    const Eigen::MatrixXd p = sub.vectors * sub.vectors.transpose(), pf = full.vectors * full.vectors.transpose();
    CHECK((p - pf).norm() <= 1e-4);
    CHECK((h * sub.vectors).cwiseProduct(sub.vectors).sum() == doctest::Approx(lam.head(k).sum()).epsilon(1e-10));
    CHECK((sub.vectors.transpose() * sub.vectors - Eigen::MatrixXd::Identity(k, k)).cwiseAbs().maxCoeff() <= 1e-12);
    // The default (looser) criterion still captures the optimal energy to 1e-7 relative.
    const EigenTop loose = eigen_top_subspace([&](const Eigen::MatrixXd& x) { return Eigen::MatrixXd(h * x); }, n, k,
                                              h.trace());
    CHECK(loose.iterations <= sub.iterations);
    CHECK(loose.values.sum() == doctest::Approx(lam.head(k).sum()).epsilon(1e-7));
    CHECK((h * loose.vectors).cwiseProduct(loose.vectors).sum() == doctest::Approx(lam.head(k).sum()).epsilon(1e-7));
    CHECK_THROWS_AS(eigen_top(h, n + 1), error);
}
