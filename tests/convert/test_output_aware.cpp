// The output-aware method (convert/output_aware.hpp): the rotation fit, its fold into the keys,
// the weighted reduced-rank latent, each against its stated invariant on synthetic layers.
#include "synthetic.hpp"
#include "transmla/convert/convert.hpp"
#include "transmla/convert/forward.hpp"
#include "transmla/convert/output_aware.hpp"

#include <Eigen/QR>

#include <cmath>
#include <limits>
#include <vector>

using namespace transmla;
using namespace transmla::convert;
using transmla::test::rel_err;

namespace {

test::LayerSpec spec_of(int D, int nq, int nkv, int d, RopePairing p, bool bias) {
    test::LayerSpec s;
    s.hidden = D, s.n_q = nq, s.n_kv = nkv, s.head_dim = d, s.pairing = p, s.biases = bias;
    return s;
}

/// The pair values of head block `col` (width d) of y as [T][d/2] float matrices.
void pair_cols(const RowMatrix& y, Eigen::Index col, int d, RopePairing pr, Eigen::MatrixXf& x, Eigen::MatrixXf& w) {
    x.resize(y.rows(), d / 2), w.resize(y.rows(), d / 2);
    for (int j = 0; j < d / 2; ++j) {
        const auto [a, b] = rope_pair(pr, d, j);
        x.col(j) = y.col(col + a).cast<float>();
        w.col(j) = y.col(col + b).cast<float>();
    }
}

/// RotationFitStats of layer l on inputs x (positions 0..T−1) with attention weights `p`
/// ([T][T], the same for every query head).
void add_fit(RotationFitStats& s, const GqaLayer& l, const Eigen::MatrixXd& x, const Eigen::MatrixXf& p) {
    const int d = l.head_dim, g = l.group(), T = int(x.rows());
    const auto pos = test::iota_positions(T);
    const RowMatrix q = convert::detail::linear(x, l.wq, l.bq), k = convert::detail::linear(x, l.wk, l.bk);
    RowMatrix rq = q, rk = k;
    for (int i = 0; i < l.n_q; ++i) convert::detail::rope_block(rq, Eigen::Index(i) * d, d, l.rope.pairing, l.inv_freq(), pos, 1.0);
    for (int h = 0; h < l.n_kv; ++h) convert::detail::rope_block(rk, Eigen::Index(h) * d, d, l.rope.pairing, l.inv_freq(), pos, 1.0);
    for (int h = 0; h < l.n_kv; ++h) {
        Eigen::MatrixXf kx, ky, rkx, rky, qx(g * T, d / 2), qy(g * T, d / 2), rqx(g * T, d / 2), rqy(g * T, d / 2),
            pp(g * T, T);
        pair_cols(k, Eigen::Index(h) * d, d, l.rope.pairing, kx, ky);
        pair_cols(rk, Eigen::Index(h) * d, d, l.rope.pairing, rkx, rky);
        for (int m = 0; m < g; ++m) {
            Eigen::MatrixXf a, b;
            const Eigen::Index i = Eigen::Index(h) * g + m;
            pair_cols(q, i * d, d, l.rope.pairing, a, b);
            qx.middleRows(m * T, T) = a, qy.middleRows(m * T, T) = b;
            pair_cols(rq, i * d, d, l.rope.pairing, a, b);
            rqx.middleRows(m * T, T) = a, rqy.middleRows(m * T, T) = b;
            pp.middleRows(m * T, T) = p;
        }
        s.add_heads(h, qx, qy, rqx, rqy, kx, ky, rkx, rky, pp);
    }
}
RotationFitStats fit_stats(const GqaLayer& l, const Eigen::MatrixXd& x, const Eigen::MatrixXf& p) {
    RotationFitStats s(l.n_kv, l.head_dim);
    add_fit(s, l, x, p);
    return s;
}

/// All attention of query t on key t − delta (t ≥ delta).
Eigen::MatrixXf at_distance(int T, int delta) {
    Eigen::MatrixXf p = Eigen::MatrixXf::Zero(T, T);
    for (int t = delta; t < T; ++t) p(t, t - delta) = 1.f;
    return p;
}

/// A random causal softmax-like weight matrix (rows sum to 1 over s ≤ t).
Eigen::MatrixXf random_attention(int T) {
    Eigen::MatrixXf p = Eigen::MatrixXf::Zero(T, T);
    for (int t = 0; t < T; ++t) {
        for (int s = 0; s <= t; ++s) p(t, s) = float(std::exp(test::normal(1.0)));
        p.row(t) /= p.row(t).sum();
    }
    return p;
}

}  // namespace

TEST_CASE("rotation fit: with all attention at one distance the fitted stand-in is that rotation") {
    for (RopePairing pr : {RopePairing::half_split, RopePairing::interleaved}) {
        const GqaLayer l = test::make_layer(spec_of(48, 4, 2, 16, pr, true));
        test::InputGen gen(48);
        const int T = 96, delta = 5;
        const RotationFitStats s = fit_stats(l, gen.tokens(T), at_distance(T, delta));
        CHECK(s.samples() > 0);
        const auto theta = l.inv_freq();
        double worst = 0;
        for (int h = 0; h < l.n_kv; ++h)
            for (int j = 0; j < l.head_dim / 2; ++j) {
                const double a = theta[std::size_t(j)] * delta;
                Eigen::Matrix2d want;  // R(−θΔ): qᵀ R(−θΔ) k = ⟨R_t q, R_{t−Δ} k⟩
                want << std::cos(a), std::sin(a), -std::sin(a), std::cos(a);
                worst = std::max(worst, (s.fit(h, j) - want).cwiseAbs().maxCoeff());
                CHECK(s.residual(h, j) >= 0);
            }
        INFO("pairing " << int(pr) << " worst entry error " << worst);
        CHECK(worst <= 2e-3);  // float sums of ~100 samples
    }
}

TEST_CASE("rotation fit: the fold makes every logit at the fitted distance exact (F = 1)") {
    const GqaLayer l = test::make_layer(spec_of(48, 4, 2, 16, RopePairing::half_split, false));
    test::InputGen gen(48);
    const int T = 96, delta = 7;
    const Eigen::MatrixXd x = gen.tokens(T);
    CalibrationStats st(48);
    st.add(x);
    const RotationFitStats s = fit_stats(l, x, at_distance(T, delta));
    PartialRopeLayer p = rorope(l, st, 16, 1);  // d_r = d: RoPE rows exact, L − d no-RoPE rows
    const PartialRopeLayer unfolded = p;
    fold_rotation_fit(p, l, s);
    CHECK((p.wk.topRows(16) - unfolded.wk.topRows(16)).norm() == 0.0);  // RoPE rows untouched
    const Eigen::MatrixXd held = gen.tokens(40);
    const auto pos = test::iota_positions(40);
    double folded_err = 0, dropped_err = 0, scale = 0;
    for (int i = 0; i < l.n_q; ++i) {
        const RowMatrix ref = attention_logits(l, held, pos, i), got = attention_logits(p, held, pos, i),
                        raw = attention_logits(unfolded, held, pos, i);
        for (int t = delta; t < 40; ++t) {
            folded_err = std::max(folded_err, std::abs(got(t, t - delta) - ref(t, t - delta)));
            dropped_err = std::max(dropped_err, std::abs(raw(t, t - delta) - ref(t, t - delta)));
            scale = std::max(scale, std::abs(ref(t, t - delta)));
        }
    }
    INFO("folded " << folded_err << " dropped " << dropped_err << " scale " << scale);
    CHECK(folded_err <= 5e-3 * scale);
    CHECK(dropped_err >= 0.05 * scale);  // dropping the rotation is visibly wrong at Δ = 7
}

TEST_CASE("rotation fit: merge equals accumulating everything in one; shapes are checked") {
    const GqaLayer l = test::make_layer(spec_of(32, 2, 1, 8, RopePairing::interleaved, false));
    test::InputGen gen(32);
    const Eigen::MatrixXd x1 = gen.tokens(30), x2 = gen.tokens(30);
    const Eigen::MatrixXf p = random_attention(30);
    RotationFitStats a = fit_stats(l, x1, p);
    const RotationFitStats b = fit_stats(l, x2, p);
    a.merge(b);
    RotationFitStats one(1, 8);
    add_fit(one, l, x1, p);
    add_fit(one, l, x2, p);
    CHECK(a.samples() == one.samples());
    for (int j = 0; j < 4; ++j) {
        CHECK(rel_err(a.fit(0, j), one.fit(0, j)) <= 1e-12);
        CHECK(a.residual(0, j) == doctest::Approx(one.residual(0, j)).epsilon(1e-9));
        CHECK(rel_err(a.fit(0, j), b.fit(0, j)) > 1e-6);  // the two halves do differ
    }
    RotationFitStats c(1, 8);
    CHECK_THROWS_AS(c.merge(RotationFitStats(2, 8)), transmla::error);
    CHECK_THROWS_AS(c.fit(1, 0), transmla::error);
    Eigen::MatrixXf bad(3, 4);
    bad.setOnes();
    CHECK_THROWS_AS(c.add_heads(0, bad, bad, bad, bad, bad, bad, bad, bad, Eigen::MatrixXf::Ones(2, 2)), transmla::error);
}

TEST_CASE("weighted RRR: full rank exact, error non-increasing in r, beats PCA and random subspaces") {
    const int n = 24;
    const Eigen::MatrixXd zf = test::gaussian(200, n) * test::gaussian(n, n);
    const Eigen::MatrixXd h = zf.transpose() * zf;
    const Eigen::MatrixXd wf = test::gaussian(n, n);
    const Eigen::MatrixXd w = wf.transpose() * wf + 0.1 * Eigen::MatrixXd::Identity(n, n);
    const WeightedBasis full = weighted_rrr(h, w, n);
    CHECK(rel_err(full.up * full.down.transpose(), Eigen::MatrixXd::Identity(n, n)) <= 1e-9);
    CHECK(full.error <= 1e-9 * full.total);
    double prev = std::numeric_limits<double>::infinity();
    for (int r : {1, 3, 6, 10, 16, 23}) {
        const WeightedBasis wb = weighted_rrr(h, w, r);
        const double direct = weighted_error(h, w, wb.down, wb.up);
        INFO("r " << r << " error " << wb.error << " direct " << direct);
        CHECK(direct == doctest::Approx(wb.error).epsilon(1e-8).scale(wb.total));
        CHECK(wb.error <= prev * (1 + 1e-12));
        prev = wb.error;
        // PCA of H (down = up = its top-r eigenvectors) and a random orthonormal basis
        const EigenTop pca = eigen_full(h, r);
        Eigen::HouseholderQR<Eigen::MatrixXd> qr(test::gaussian(n, r));
        const Eigen::MatrixXd rnd = qr.householderQ() * Eigen::MatrixXd::Identity(n, r);
        CHECK(wb.error <= weighted_error(h, w, pca.vectors, pca.vectors) * (1 + 1e-9));
        CHECK(wb.error <= weighted_error(h, w, rnd, rnd) * (1 + 1e-9));
        if (r == 6) CHECK(wb.error < 0.99 * weighted_error(h, w, pca.vectors, pca.vectors));  // strictly, here
    }
    CHECK_THROWS_AS(weighted_rrr(h, w, 0), transmla::error);
    CHECK_THROWS_AS(weighted_rrr(h, Eigen::MatrixXd::Zero(n, n), 3), transmla::error);
}

TEST_CASE("output-aware finish: full rank reproduces the (folded) partial-RoPE layer; truncation is graded") {
    for (bool bias : {false, true}) {
        const GqaLayer l = test::make_layer(spec_of(64, 4, 2, 16, RopePairing::half_split, bias));
        test::InputGen gen(64);
        CalibrationStats st(64);
        const Eigen::MatrixXd x = gen.tokens(400);
        st.add(x);
        PartialRopeLayer p = rorope(l, st, 8, 2);
        fold_rotation_fit(p, l, fit_stats(l, x.topRows(64), random_attention(64)));
        const Eigen::MatrixXd held = gen.tokens(20, 3);
        const auto pos = test::iota_positions(20, 3);
        const int n = 2 * 32 - 8;
        LayerReport rep;
        const MlaLayer m = output_aware_finish(p, st, n, 1.0, &rep);
        CHECK(m.cache_per_token() == n + 8);
        const double err = rel_err(forward(m, held, pos), forward(p, held, pos));
        INFO("bias " << bias << " error " << err);
        CHECK(err <= 1e-8);
        CHECK(rep.weighted_error <= 1e-9);
        double prev = 2;
        for (int r : {4, 12, 24, 40}) {
            LayerReport rr;
            (void)output_aware_finish(p, st, r, 1.0, &rr);
            CHECK(rr.weighted_error <= prev);
            CHECK(rr.weighted_error > 0);
            prev = rr.weighted_error;
        }
    }
}

TEST_CASE("output-aware conversion of one layer: layout, report, and the options it refuses") {
    const GqaLayer l = test::make_layer(spec_of(64, 4, 2, 16, RopePairing::half_split, false));
    test::InputGen gen(64);
    CalibrationStats st(64);
    const Eigen::MatrixXd x = gen.tokens(400);
    st.add(x);
    const RotationFitStats fit = fit_stats(l, x.topRows(64), random_attention(64));
    ConvertOptions o;
    o.method = Method::output_aware;
    o.rope_dim = 8, o.freqfold = 2, o.cache_budget = 0.5;
    HeldOut ho{gen.tokens(24, 5), test::iota_positions(24, 5)};
    const ConvertResult res = convert_output_aware(l, st, nullptr, fit, o, &ho);
    CHECK(res.mla.cache_per_token() == 32);
    CHECK(res.mla.qk_rope_head_dim == 8);
    CHECK(res.report.method == Method::output_aware);
    CHECK(std::isfinite(res.report.logit_error));
    CHECK(std::isfinite(res.report.attn_output_error));
    CHECK(res.report.attn_output_error < 1.0);
    CHECK(std::string(to_string(Method::output_aware)) == "output_aware");
    ConvertOptions q = o;
    q.q_lora_rank = 8;
    CHECK_THROWS_WITH_AS(convert_output_aware(l, st, nullptr, fit, q), doctest::Contains("q_lora_rank"), transmla::error);
    CHECK_THROWS_WITH_AS(convert_layer(l, st, nullptr, o), doctest::Contains("convert_output_aware"), transmla::error);
    CHECK_THROWS_AS(convert_output_aware(l, st, nullptr, RotationFitStats(1, 16), o), transmla::error);
}
