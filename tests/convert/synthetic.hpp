// Synthetic GQA layers and attention inputs for the conversion tests: inputs with a decaying
// spectrum, a non-zero mean and positional structure (sinusoids of the position), keys whose
// low-frequency RoPE pairs carry more energy than the high-frequency ones (as in real models).
#pragma once

#include "test_util.hpp"
#include "transmla/convert/layer.hpp"

#include <Eigen/Core>
#include <Eigen/QR>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace transmla::test {

inline Eigen::MatrixXd gaussian(Eigen::Index r, Eigen::Index c, double sd = 1.0) {
    Eigen::MatrixXd m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(sd);
    return m;
}
inline Eigen::VectorXd gaussian_vec(Eigen::Index n, double sd = 1.0) { return gaussian(n, 1, sd).col(0); }

struct LayerSpec {
    int hidden = 64, n_q = 4, n_kv = 2, head_dim = 16;
    RopePairing pairing = RopePairing::half_split;
    double base = 10000.0;
    bool biases = false;
};

/// A GQA layer whose key dims of pair j scale with 0.3 + 2·j/(d/2) (low frequencies carry more
/// energy) and whose KV heads are correlated (a shared component), as in trained models.
inline convert::GqaLayer make_layer(const LayerSpec& s) {
    convert::GqaLayer l;
    l.hidden = s.hidden, l.n_q = s.n_q, l.n_kv = s.n_kv, l.head_dim = s.head_dim;
    l.rope.pairing = s.pairing;
    l.rope.base = s.base;
    const int d = s.head_dim, D = s.hidden;
    const double sc = 1.0 / std::sqrt(double(D));
    auto pair_scale = [&](Eigen::MatrixXd& w, int heads) {
        for (int h = 0; h < heads; ++h)
            for (int j = 0; j < d / 2; ++j) {
                const auto [a, b] = rope_pair(s.pairing, d, j);
                const double f = 0.3 + 2.0 * j / (d / 2);
                w.row(h * d + a) *= f;
                w.row(h * d + b) *= f;
            }
    };
    l.wq = gaussian(Eigen::Index(s.n_q) * d, D, sc);
    const Eigen::MatrixXd shared = gaussian(d, D, sc);
    l.wk = gaussian(Eigen::Index(s.n_kv) * d, D, sc);
    for (int h = 0; h < s.n_kv; ++h) l.wk.middleRows(Eigen::Index(h) * d, d) += 0.8 * shared;
    pair_scale(l.wq, s.n_q);
    pair_scale(l.wk, s.n_kv);
    l.wv = gaussian(Eigen::Index(s.n_kv) * d, D, 0.4 * sc);  // values smaller than keys, as in trained models
    l.wo = gaussian(D, Eigen::Index(s.n_q) * d, 1.0 / std::sqrt(double(s.n_q * d)));
    if (s.biases) {
        l.bq = gaussian_vec(Eigen::Index(s.n_q) * d, 0.3);
        l.bk = gaussian_vec(Eigen::Index(s.n_kv) * d, 0.3);
        l.bv = gaussian_vec(Eigen::Index(s.n_kv) * d, 0.3);
    }
    return l;
}

/// Generator of attention inputs: x_t = μ + Σ_k z_k·(k+1)^−0.8·q_k + Σ_m sin(ω_m·pos + φ_m)·u_m.
struct InputGen {
    int hidden;
    Eigen::MatrixXd basis;  // D×D orthogonal
    Eigen::VectorXd mean;
    Eigen::MatrixXd pos_dirs;  // D×P
    std::vector<double> omega, phase;

    explicit InputGen(int D, int P = 4) : hidden(D) {
        Eigen::HouseholderQR<Eigen::MatrixXd> qr(gaussian(D, D));
        basis = qr.householderQ() * Eigen::MatrixXd::Identity(D, D);
        mean = gaussian_vec(D, 0.3);
        pos_dirs = gaussian(D, P, 0.5);
        for (int m = 0; m < P; ++m) {
            omega.push_back(0.5 / (m + 1));
            phase.push_back(uniform(0, 6.28));
        }
    }
    /// T rows at positions start, start+1, …
    Eigen::MatrixXd tokens(int T, std::int64_t start = 0) const {
        Eigen::MatrixXd z = gaussian(T, hidden);
        for (int k = 0; k < hidden; ++k) z.col(k) *= std::pow(k + 1.0, -0.8);
        Eigen::MatrixXd x = z * basis.transpose();
        for (int t = 0; t < T; ++t) {
            x.row(t) += mean.transpose();
            for (std::size_t m = 0; m < omega.size(); ++m)
                x.row(t) += std::sin(omega[m] * double(start + t) + phase[m]) * pos_dirs.col(Eigen::Index(m)).transpose();
        }
        return x;
    }
};

inline std::vector<std::int64_t> iota_positions(int T, std::int64_t start = 0) {
    std::vector<std::int64_t> p(static_cast<std::size_t>(T));
    std::iota(p.begin(), p.end(), start);
    return p;
}

/// Normwise relative error of two matrices (+inf on NaN).
template <class A, class B>
double rel_err(const A& a, const B& b) {
    const Eigen::MatrixXd x = a, y = b;
    if (x.rows() != y.rows() || x.cols() != y.cols() || !x.allFinite()) return std::numeric_limits<double>::infinity();
    const double den = y.cwiseAbs().maxCoeff();
    const double num = (x - y).cwiseAbs().maxCoeff();
    return den > 0 ? num / den : num;
}

}  // namespace transmla::test
