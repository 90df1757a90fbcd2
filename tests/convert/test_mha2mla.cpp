// MHA2MLA: partial-RoPE selections, per-head 2-norm sets, joint / split / per-head SVD.
#include "synthetic.hpp"
#include "transmla/convert/convert.hpp"
#include "transmla/reference/reference.hpp"

#include <Eigen/SVD>

#include <set>
#include <thread>

using namespace transmla;
using namespace transmla::convert;
using transmla::test::rel_err;

namespace {

test::LayerSpec spec(int D, int nq, int nkv, int d, RopePairing p, bool bias) {
    test::LayerSpec s;
    s.hidden = D, s.n_q = nq, s.n_kv = nkv, s.head_dim = d, s.pairing = p, s.biases = bias;
    return s;
}

/// Independent reference: GQA where only the pairs `pairs[h]` of KV head h (and of its query
/// heads) rotate, through reference::gqa_prefill.
RowMatrix partial_gqa(const GqaLayer& l, const std::vector<std::vector<int>>& pairs, const Eigen::MatrixXd& x,
                      const std::vector<std::int64_t>& pos) {
    const int T = int(x.rows()), d = l.head_dim, g = l.group();
    RowMatrix q = x * l.wq.transpose(), k = x * l.wk.transpose(), v = x * l.wv.transpose();
    if (l.bq.size()) q.rowwise() += l.bq.transpose();
    if (l.bk.size()) k.rowwise() += l.bk.transpose();
    if (l.bv.size()) v.rowwise() += l.bv.transpose();
    const auto f = l.inv_freq();
    auto rot = [&](double* h, int kvh, double p) {
        for (int j : pairs[std::size_t(kvh)]) {
            const int a = l.rope.pairing == RopePairing::half_split ? j : 2 * j;
            const int b = l.rope.pairing == RopePairing::half_split ? j + d / 2 : 2 * j + 1;
            const double c = std::cos(p * f[std::size_t(j)]), s = std::sin(p * f[std::size_t(j)]);
            const double u = h[a], w = h[b];
            h[a] = u * c - w * s;
            h[b] = u * s + w * c;
        }
    };
    for (int t = 0; t < T; ++t) {
        for (int i = 0; i < l.n_q; ++i) rot(q.row(t).data() + i * d, i / g, double(pos[std::size_t(t)]));
        for (int h = 0; h < l.n_kv; ++h) rot(k.row(t).data() + h * d, h, double(pos[std::size_t(t)]));
    }
    std::vector<double> o(std::size_t(T) * l.n_q * d), lse(std::size_t(T) * l.n_q);
    reference::gqa_prefill(View3<const double>(q.data(), {T, l.n_q, d}), View3<const double>(k.data(), {T, l.n_kv, d}),
                           View3<const double>(v.data(), {T, l.n_kv, d}), 0, l.softmax_scale(),
                           View3<double>(o.data(), {T, l.n_q, d}), View2<double>(lse.data(), {T, l.n_q}));
    const RowMatrix om = Eigen::Map<RowMatrix>(o.data(), T, l.n_q * d);
    return om * l.wo.transpose();
}

}  // namespace

TEST_CASE("each selection keeps both halves of every kept pair and exactly r_m dims per head") {
    for (auto pr : {RopePairing::half_split, RopePairing::interleaved}) {
        const GqaLayer l = test::make_layer(spec(32, 4, 2, 16, pr, false));
        PairNormStats norms(4, 2, 16, pr);
        const test::InputGen gen(32);
        const Eigen::MatrixXd x = gen.tokens(50);
        norms.add((x * l.wq.transpose()).eval(), (x * l.wk.transpose()).eval());
        for (auto sel : {RopeSelection::high, RopeSelection::low, RopeSelection::uniform, RopeSelection::two_norm})
            for (int rm : {2, 4, 8}) {
                const auto pairs = select_rope_pairs(sel, 4, 2, 16, rm, &norms, sel == RopeSelection::uniform ? 1 : 0);
                REQUIRE(pairs.size() == 2u);
                for (const auto& pp : pairs) {
                    std::vector<int> kept, nope;
                    mha2mla_dims(16, pr, pp, kept, nope);
                    CHECK(int(kept.size()) == rm);
                    CHECK(int(nope.size()) == 16 - rm);
                    std::set<int> ks(kept.begin(), kept.end());
                    CHECK(int(ks.size()) == rm);
                    for (int j : pp) {
                        const auto [a, b] = rope_pair(pr, 16, j);
                        CHECK(ks.count(a) == 1);
                        CHECK(ks.count(b) == 1);
                    }
                }
                const auto& p0 = pairs[0];
                if (sel == RopeSelection::high) {
                    CHECK(p0.front() == 0);
                    CHECK(p0.back() == rm / 2 - 1);
                }
                if (sel == RopeSelection::low) {
                    CHECK(p0.front() == 8 - rm / 2);
                    CHECK(p0.back() == 7);
                }
                if (sel == RopeSelection::uniform)
                    for (int k = 0; k < rm / 2; ++k) CHECK(p0[std::size_t(k)] == 1 + k * (16 / rm));
            }
    }
}

TEST_CASE("2-norm selection is per KV head and matches E|q|·E|k| computed from the activations") {
    GqaLayer l = test::make_layer(spec(48, 6, 3, 16, RopePairing::half_split, true));
    // Give each KV head its own dominant key pairs.
    const std::vector<std::vector<int>> boosted{{1, 6}, {3, 7}, {2, 5}};
    for (int h = 0; h < 3; ++h)
        for (int j : boosted[std::size_t(h)]) {
            l.wk.row(h * 16 + j) *= 30;
            l.wk.row(h * 16 + j + 8) *= 30;
        }
    const test::InputGen gen(48);
    const Eigen::MatrixXd x = gen.tokens(300);
    Eigen::MatrixXd q = x * l.wq.transpose(), k = x * l.wk.transpose();
    q.rowwise() += l.bq.transpose();
    k.rowwise() += l.bk.transpose();
    // Accumulate from two threads in halves, plus padding rows that must be ignored.
    PairNormStats a(6, 3, 16, RopePairing::half_split), b(6, 3, 16, RopePairing::half_split);
    Eigen::MatrixXd qpad(160, 96), kpad(160, 48);
    qpad.topRows(150) = q.bottomRows(150);
    kpad.topRows(150) = k.bottomRows(150);
    qpad.bottomRows(10).setConstant(1e6);
    kpad.bottomRows(10).setConstant(1e6);
    std::vector<std::uint8_t> mask(160, 1);
    for (int t = 150; t < 160; ++t) mask[std::size_t(t)] = 0;
    std::thread t1([&] { a.add(q.topRows(150), k.topRows(150)); });
    std::thread t2([&] { b.add(qpad, kpad, mask); });
    t1.join();
    t2.join();
    a.merge(b);
    CHECK(a.tokens() == 300);
    // Direct E‖·‖.
    for (int h = 0; h < 3; ++h)
        for (int j = 0; j < 8; ++j) {
            double ek = 0;
            for (int t = 0; t < 300; ++t) ek += std::hypot(k(t, h * 16 + j), k(t, h * 16 + j + 8));
            CHECK(a.k_mean_norms()(h, j) == doctest::Approx(ek / 300).epsilon(1e-12));
        }
    const auto pairs = select_rope_pairs(RopeSelection::two_norm, 6, 3, 16, 4, &a);
    for (int h = 0; h < 3; ++h) {
        std::vector<std::pair<double, int>> sc;
        for (int j = 0; j < 8; ++j) {
            double s = 0;
            for (int i = 2 * h; i < 2 * h + 2; ++i) {
                double eq = 0, ek = 0;
                for (int t = 0; t < 300; ++t) {
                    eq += std::hypot(q(t, i * 16 + j), q(t, i * 16 + j + 8));
                    ek += std::hypot(k(t, h * 16 + j), k(t, h * 16 + j + 8));
                }
                s += (eq / 300) * (ek / 300);
            }
            sc.push_back({-s, j});
        }
        std::sort(sc.begin(), sc.end());
        std::vector<int> want{sc[0].second, sc[1].second};
        std::sort(want.begin(), want.end());
        CHECK(pairs[std::size_t(h)] == want);
        CHECK(pairs[std::size_t(h)] == boosted[std::size_t(h)]);
    }
}

namespace {
/// All KV heads' no-RoPE key rows (head by head, ascending dims), as the SVD modes see them.
Eigen::MatrixXd nope_rows(const GqaLayer& l, const Mha2MlaLayer& m) {
    const int d = l.head_dim, nn = d - m.rope_dims;
    Eigen::MatrixXd wn(l.n_kv * nn, l.hidden);
    for (int h = 0; h < l.n_kv; ++h) {
        std::vector<int> kept, nope;
        mha2mla_dims(d, l.rope.pairing, m.rope_pairs[std::size_t(h)], kept, nope);
        for (int e = 0; e < nn; ++e) wn.row(h * nn + e) = l.wk.row(h * d + nope[std::size_t(e)]);
    }
    return wn;
}
/// The stacked up projections [up_k^0; …; up_k^{n_kv−1}] or the value ones.
Eigen::MatrixXd stacked(const std::vector<Eigen::MatrixXd>& ups) {
    Eigen::Index rows = 0;
    for (const auto& u : ups) rows += u.rows();
    Eigen::MatrixXd s(rows, ups.front().cols());
    for (Eigen::Index r = 0; const auto& u : ups) s.middleRows(r, u.rows()) = u, r += u.rows();
    return s;
}
}  // namespace

TEST_CASE("joint SVD over all KV heads: full rank is exact; truncation error = dropped singular values") {
    for (auto pr : {RopePairing::half_split, RopePairing::interleaved}) {
        const GqaLayer l = test::make_layer(spec(64, 6, 2, 16, pr, true));
        const test::InputGen gen(64);
        const Eigen::MatrixXd x = gen.tokens(19, 4);
        const auto pos = test::iota_positions(19, 4);
        ConvertOptions o;
        o.method = Method::mha2mla;
        o.selection = RopeSelection::uniform;
        o.mha2mla_rope_dims = 4;
        o.mha2mla_latent_dim = 2 * 16 - 4;  // ρ = n_kv·(2d − r_m) = 56 ≤ D: the full rank of the stack
        const Mha2MlaLayer full = mha2mla(l, o);
        CHECK(full.latent_width == 56);
        CHECK(full.cache_per_token() == 2 * 4 + 56);
        CHECK(rel_err(forward(full, x, pos), partial_gqa(l, full.rope_pairs, x, pos)) <= 1e-10);
        // All pairs kept (r_m = d): the GQA layer itself.
        o.mha2mla_rope_dims = 16;
        o.selection = RopeSelection::high;
        o.mha2mla_latent_dim = 16;
        CHECK(rel_err(forward(mha2mla(l, o), x, pos), forward(l, x, pos)) <= 1e-10);
        // Truncation: one latent of ρ = n_kv·d_kv for the stack [W_K,nope of all heads ; W_V].
        o.selection = RopeSelection::low;
        o.mha2mla_rope_dims = 4;
        for (int dkv : {1, 5, 12, 27}) {
            o.mha2mla_latent_dim = dkv;
            const Mha2MlaLayer m = mha2mla(l, o);
            const int rho = 2 * dkv;
            REQUIRE(m.latent_width == rho);
            CHECK(rel_err(forward(m, x, pos), partial_gqa(l, m.rope_pairs, x, pos)) > 1e-8);
            Eigen::MatrixXd w(24 + 32, 64), up(24 + 32, rho);
            w << nope_rows(l, m), l.wv;
            up << stacked(m.w_up_k), stacked(m.w_up_v);
            const double err = (w - up * m.w_down).squaredNorm();
            const Eigen::VectorXd sv = Eigen::JacobiSVD<Eigen::MatrixXd>(w).singularValues();
            const double dropped = sv.tail(56 - rho).squaredNorm();
            INFO("d_kv " << dkv << " err " << err << " dropped " << dropped);
            CHECK(err == doctest::Approx(dropped).epsilon(1e-9).scale(sv(0) * sv(0)));
            // Down projection has orthonormal rows (V_ρᵀ).
            CHECK((m.w_down * m.w_down.transpose() - Eigen::MatrixXd::Identity(rho, rho)).cwiseAbs().maxCoeff() <= 1e-12);
        }
    }
}

TEST_CASE("per-head SVD: block-diagonal latent of the same cache, never a smaller weight error than joint") {
    const GqaLayer l = test::make_layer(spec(64, 6, 3, 16, RopePairing::half_split, false));
    ConvertOptions o;
    o.method = Method::mha2mla;
    o.selection = RopeSelection::high;
    o.mha2mla_rope_dims = 4;
    for (int dkv : {2, 7, 15}) {
        o.mha2mla_latent_dim = dkv;
        o.svd = SvdMode::joint;
        const Mha2MlaLayer joint = mha2mla(l, o);
        o.svd = SvdMode::per_head;
        const Mha2MlaLayer ph = mha2mla(l, o);
        CHECK(ph.cache_per_token() == joint.cache_per_token());
        Eigen::MatrixXd w(3 * 12 + 48, 64);
        w << nope_rows(l, joint), l.wv;
        auto err = [&](const Mha2MlaLayer& m) {
            Eigen::MatrixXd up(w.rows(), m.latent_width);
            up << stacked(m.w_up_k), stacked(m.w_up_v);
            return (w - up * m.w_down).squaredNorm();
        };
        double per_head_dropped = 0;
        for (int h = 0; h < 3; ++h) {
            Eigen::MatrixXd wh(12 + 16, 64);
            wh << nope_rows(l, joint).middleRows(h * 12, 12), l.wv.middleRows(h * 16, 16);
            per_head_dropped += Eigen::JacobiSVD<Eigen::MatrixXd>(wh).singularValues().tail(28 - dkv).squaredNorm();
            // Head h's up projections read only its own block of the latent.
            for (int c = 0; c < ph.latent_width; ++c)
                if (c / dkv != h) {
                    CHECK(ph.w_up_k[std::size_t(h)].col(c).cwiseAbs().maxCoeff() == 0.0);
                    CHECK(ph.w_up_v[std::size_t(h)].col(c).cwiseAbs().maxCoeff() == 0.0);
                }
        }
        INFO("d_kv " << dkv << " joint " << err(joint) << " per head " << err(ph));
        CHECK(err(ph) == doctest::Approx(per_head_dropped).epsilon(1e-9));
        CHECK(err(joint) < err(ph));  // random heads: strictly better
    }
}

TEST_CASE("split SVD (the official convention): rank n_kv·d_kv for the keys and for the values, latent 2·n_kv·d_kv") {
    const GqaLayer l = test::make_layer(spec(64, 4, 2, 16, RopePairing::half_split, false));
    const test::InputGen gen(64);
    const Eigen::MatrixXd x = gen.tokens(9, 0);
    ConvertOptions o;
    o.method = Method::mha2mla;
    o.selection = RopeSelection::high;
    o.mha2mla_rope_dims = 4;
    o.mha2mla_latent_dim = 4;
    o.svd = SvdMode::split;
    const Mha2MlaLayer split = mha2mla(l, o);
    CHECK(split.latent_width == 2 * 2 * 4);
    CHECK(split.cache_per_token() == 2 * 4 + 16);
    CHECK(mha2mla_cache_rows(split, x).cols() == 2 * 4 + 16);
    const Eigen::MatrixXd wn = nope_rows(l, split);  // 24 × 64
    const auto svk = Eigen::JacobiSVD<Eigen::MatrixXd>(wn).singularValues();
    const auto svv = Eigen::JacobiSVD<Eigen::MatrixXd>(l.wv).singularValues();
    CHECK((wn - stacked(split.w_up_k) * split.w_down).squaredNorm() ==
          doctest::Approx(svk.tail(24 - 8).squaredNorm()).epsilon(1e-9));
    CHECK((l.wv - stacked(split.w_up_v) * split.w_down).squaredNorm() ==
          doctest::Approx(svv.tail(32 - 8).squaredNorm()).epsilon(1e-9));
    for (int h = 0; h < 2; ++h) {
        // The key up projections read only the key half of the latent, the value ones the other.
        CHECK(split.w_up_k[std::size_t(h)].rightCols(8).cwiseAbs().maxCoeff() == 0.0);
        CHECK(split.w_up_v[std::size_t(h)].leftCols(8).cwiseAbs().maxCoeff() == 0.0);
    }
    // Through convert_layer: the report's errors are the calibration reconstruction errors.
    CalibrationStats st(64);
    st.add(gen.tokens(200));
    HeldOut held{gen.tokens(10, 0), test::iota_positions(10)};
    const ConvertResult r = convert_layer(l, st, nullptr, o, &held);
    CHECK(r.report.cache_converted == 24);
    CHECK(r.report.rank == 16);
    CHECK(r.report.cache_original == 64);
    CHECK(r.report.key_error > 0);
    CHECK(r.report.key_error < 1);
    CHECK(r.report.value_error > 0);
    CHECK(r.report.value_error < 1);
    CHECK(r.report.attn_output_error > 0);
}
