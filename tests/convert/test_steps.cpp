// TransMLA steps 1–7 (docs/conversion.md): each invariant on synthetic layers with structured inputs.
#include "synthetic.hpp"
#include "transmla/convert/forward.hpp"
#include "transmla/convert/transmla.hpp"
#include "transmla/reference/reference.hpp"

#include <set>
#include <sstream>
#include <string>

using namespace transmla;
using namespace transmla::convert;
using transmla::test::rel_err;

namespace {

struct Fixture {
    test::LayerSpec spec;
    GqaLayer layer;
    test::InputGen gen;
    CalibrationStats stats;
    Eigen::MatrixXd held;  // held-out tokens
    std::vector<std::int64_t> pos;

    explicit Fixture(test::LayerSpec s, int calib_tokens = 600, int T = 24, std::int64_t start = 3)
        : spec(s), layer(test::make_layer(s)), gen(s.hidden), stats(s.hidden) {
        for (int b = 0; b < calib_tokens / 100; ++b) stats.add(gen.tokens(100, 0));
        held = gen.tokens(T, start);
        pos = test::iota_positions(T, start);
    }
};

test::LayerSpec spec_of(int D, int nq, int nkv, int d, RopePairing p, bool bias) {
    test::LayerSpec s;
    s.hidden = D, s.n_q = nq, s.n_kv = nkv, s.head_dim = d, s.pairing = p, s.biases = bias;
    return s;
}

}  // namespace

TEST_CASE("GQA reference forward agrees with reference::gqa_prefill") {
    Fixture f(spec_of(48, 6, 2, 16, RopePairing::half_split, true), 100, 13);
    const GqaLayer& l = f.layer;
    const auto out = forward(l, f.held, f.pos);
    // Independent path: q/k/v, RoPE by apply_rope, reference attention, W_O.
    const int T = int(f.held.rows()), d = l.head_dim;
    RowMatrix q = f.held * l.wq.transpose(), k = f.held * l.wk.transpose(), v = f.held * l.wv.transpose();
    q.rowwise() += l.bq.transpose();
    k.rowwise() += l.bk.transpose();
    v.rowwise() += l.bv.transpose();
    const auto fr = l.inv_freq();
    for (int t = 0; t < T; ++t) {
        for (int i = 0; i < l.n_q; ++i) apply_rope(q.row(t).data() + i * d, d, l.rope.pairing, fr, double(f.pos[t]));
        for (int h = 0; h < l.n_kv; ++h) apply_rope(k.row(t).data() + h * d, d, l.rope.pairing, fr, double(f.pos[t]));
    }
    std::vector<double> o(std::size_t(T) * l.n_q * d), lse(std::size_t(T) * l.n_q);
    reference::gqa_prefill(View3<const double>(q.data(), {T, l.n_q, d}), View3<const double>(k.data(), {T, l.n_kv, d}),
                           View3<const double>(v.data(), {T, l.n_kv, d}), 0, l.softmax_scale(),
                           View3<double>(o.data(), {T, l.n_q, d}), View2<double>(lse.data(), {T, l.n_q}));
    const RowMatrix om = Eigen::Map<RowMatrix>(o.data(), T, l.n_q * d);
    CHECK(rel_err(out, om * l.wo.transpose()) <= 1e-12);
}

TEST_CASE("step 1: equivalence is exact") {
    for (auto p : {RopePairing::half_split, RopePairing::interleaved}) {
        Fixture f(spec_of(64, 8, 2, 16, p, p == RopePairing::interleaved), 100);
        const auto e = equivalence(f.layer);
        REQUIRE(e.selectors.size() == 8u);
        CHECK(e.selectors[5].cwiseAbs().sum() == doctest::Approx(16));
        const double err = rel_err(forward(e, f.held, f.pos), forward(f.layer, f.held, f.pos));
        INFO("pairing " << to_string(p) << " error " << err);
        CHECK(err <= 1e-12);
    }
}

TEST_CASE("FreqFold index map is a bijection with the documented closed form") {
    for (auto [nkv, d, dr, F] : {std::tuple{2, 16, 8, 2}, std::tuple{3, 32, 16, 4}, std::tuple{4, 16, 16, 1},
                                 std::tuple{2, 32, 8, 8}, std::tuple{1, 16, 4, 4}}) {
        const FreqFoldMap m(nkv, d, dr, F);
        const int L = nkv * d, c = d / dr, Fc = F / c, G = d / (2 * F);
        CHECK(m.c == c);
        CHECK(m.G == G);
        std::set<int> lat, key;
        for (int a = 0; a < G; ++a)
            for (int p = 0; p < nkv * F; ++p)
                for (int s = 0; s < 2; ++s) {
                    lat.insert(m.latent_index(p, a, s));
                    key.insert(m.key_index(a, p, s));
                    // the textbook formula, written out
                    const int p0 = p / (nkv * Fc), p1 = (p % (nkv * Fc)) / Fc, p2 = p % Fc;
                    CHECK(m.latent_index(p, a, s) == ((((p0 * nkv + p1) * G + a) * Fc + p2) * 2 + s));
                    const int f0 = p / (nkv * Fc), h = (p % (nkv * Fc)) / Fc, f1 = p % Fc;
                    CHECK(m.key_index(a, p, s) == h * d + s * d / 2 + a * F + f1 * c + f0);
                    if (p < Fc) CHECK(m.latent_index(p, a, s) < dr);  // top F/c components keep RoPE
                }
        CHECK(int(lat.size()) == L);
        CHECK(int(key.size()) == L);
        for (int P = 0; P < dr / 2; ++P) CHECK(m.pair_freq(P) == c * P);
    }
}

TEST_CASE("step 2: M is orthogonal with the documented block structure") {
    for (auto [d, dr, F] : {std::tuple{16, 8, 2}, std::tuple{16, 16, 4}, std::tuple{32, 8, 8}}) {
        Fixture f(spec_of(64, 6, 3, d, RopePairing::half_split, false), 300);
        const PartialRopeLayer p = rorope(f.layer, f.stats, dr, F);
        const MatrixXd& M = p.rotation;
        const int L = f.layer.kv_width();
        CHECK((M.transpose() * M - MatrixXd::Identity(L, L)).cwiseAbs().maxCoeff() <= 1e-12);
        const FreqFoldMap map(3, d, dr, F);
        // Row Lidx(p, a, s) is supported on the key indices of group a, half s only.
        MatrixXd mask = MatrixXd::Zero(L, L);
        for (int a = 0; a < map.G; ++a)
            for (int pp = 0; pp < map.group_size(); ++pp)
                for (int phi = 0; phi < map.group_size(); ++phi)
                    for (int s = 0; s < 2; ++s) mask(map.latent_index(pp, a, s), map.key_index(a, phi, s)) = 1;
        CHECK((M.array() * (1 - mask.array())).abs().maxCoeff() == 0.0);
        // Both halves of a pair get the same coefficients (the rotation acts identically on them).
        for (int a = 0; a < map.G; ++a)
            for (int pp = 0; pp < map.group_size(); ++pp)
                for (int phi = 0; phi < map.group_size(); ++phi)
                    CHECK(M(map.latent_index(pp, a, 0), map.key_index(a, phi, 0)) ==
                          M(map.latent_index(pp, a, 1), map.key_index(a, phi, 1)));
        // RoPE energy: the top components hold more than their share of the energy.
        CHECK(p.rope_energy > double(dr) / L);
        CHECK(p.rope_energy <= 1.0);
        CHECK(p.rope_inv_freq.size() == std::size_t(dr / 2));
        const auto theta = f.layer.inv_freq();
        for (int i = 0; i < dr / 2; ++i) CHECK(p.rope_inv_freq[i] == theta[(d / dr) * i]);
    }
}

TEST_CASE("step 2: F = 1 with RoPE kept on all latent dims commutes with RoPE (exact)") {
    for (auto pr : {RopePairing::half_split, RopePairing::interleaved})
        for (bool bias : {false, true}) {
            Fixture f(spec_of(64, 6, 3, 16, pr, bias), 300, 20, 5);
            const PartialRopeLayer p = rorope(f.layer, f.stats, 16, 1, /*keep_all_rope=*/true);
            const double err = rel_err(forward(p, f.held, f.pos), forward(f.layer, f.held, f.pos));
            INFO("pairing " << to_string(pr) << " bias " << bias << " error " << err);
            CHECK(err <= 1e-10);
        }
}

TEST_CASE("step 2: F > 1 does not commute with RoPE; the error grows with the position gap") {
    Fixture f(spec_of(64, 4, 2, 16, RopePairing::half_split, false), 300);
    // Position interpolation (linear scaling by 16) keeps the in-group frequency differences
    // small enough that the mismatch angle gap·Δθ stays below π over the gaps tested.
    f.layer.rope.scaling = RopeScaling::linear;
    f.layer.rope.factor = 16;
    const PartialRopeLayer p = rorope(f.layer, f.stats, 16, 4, /*keep_all_rope=*/true);
    std::vector<double> err;
    const std::vector<int> gaps{0, 1, 2, 4, 8, 16, 32};
    for (int gap : gaps) {
        double e = 0;
        for (int rep = 0; rep < 20; ++rep) {
            const Eigen::MatrixXd x = f.gen.tokens(2, 0);
            const std::vector<std::int64_t> pos{7, 7 + gap};
            for (int i = 0; i < 4; ++i)
                e += std::abs(attention_logits(p, x, pos, i)(1, 0) - attention_logits(f.layer, x, pos, i)(1, 0));
        }
        err.push_back(e / 80);
    }
    std::ostringstream msg;
    for (std::size_t g = 0; g < gaps.size(); ++g) msg << ' ' << gaps[g] << ':' << err[g];
    INFO("mean |logit error| by gap:" << msg.str());
    CHECK(err[0] <= 1e-12);  // same position: RoPE rotates by 0, nothing to mismatch
    CHECK(err[1] > 1e-6);
    // Grows with the gap while the folded frequencies' phase errors are small (up to 16 here);
    // past that the phase differences wrap and the error saturates (a seed gave 0.298 at 16 and
    // 0.278 at 32), so the largest gap is only required to stay well above the smallest.
    for (std::size_t g = 2; g + 1 < gaps.size(); ++g) CHECK(err[g] > err[g - 1]);
    CHECK(err.back() > 4 * err[1]);
    // And F = 1 on the same layer is exact at every gap.
    const PartialRopeLayer p1 = rorope(f.layer, f.stats, 16, 1, true);
    const Eigen::MatrixXd x = f.gen.tokens(2, 0);
    const std::vector<std::int64_t> far{3, 3 + 32};
    CHECK(rel_err(attention_logits(p1, x, far, 1), attention_logits(f.layer, x, far, 1)) <= 1e-10);
}

TEST_CASE("step 3: balanced KV leaves every logit unchanged and α matches the activations") {
    Fixture f(spec_of(64, 6, 2, 16, RopePairing::half_split, true), 0, 16);
    const Eigen::MatrixXd calib = f.gen.tokens(400, 0);
    CalibrationStats st(64);
    st.add(calib);
    const PartialRopeLayer p = rorope(f.layer, st, 8, 2);
    const double alpha = bkv_alpha(p, st);
    // Direct: column norms of the rotated keys and values over the calibration rows.
    RowMatrix k = calib * p.wk.transpose(), v = calib * p.wv.transpose();
    k.rowwise() += p.bk.transpose();
    v.rowwise() += p.bv.transpose();
    const int L = 32, dr = 8;
    const double kn = k.rightCols(L - dr).colwise().norm().mean(), vn = v.rightCols(L - dr).colwise().norm().mean();
    CHECK(alpha == doctest::Approx(kn / vn).epsilon(1e-10));
    CHECK(alpha > 1.2);  // the synthetic keys are larger than the values, as in trained models
    const PartialRopeLayer b = balance_kv(p, alpha);
    CHECK(b.alpha == alpha);
    for (int i = 0; i < 6; ++i)
        CHECK(rel_err(attention_logits(b, f.held, f.pos, i), attention_logits(p, f.held, f.pos, i)) <= 1e-12);
    CHECK(rel_err(forward(b, f.held, f.pos), forward(p, f.held, f.pos)) <= 1e-12);
    // Re-balancing replaces α (it does not compound): balancing back to 1 restores the weights.
    CHECK(rel_err(balance_kv(b, 1.0).wk, p.wk) <= 1e-13);
    CHECK(bkv_alpha(b, st) == doctest::Approx(alpha).epsilon(1e-10));
}

TEST_CASE("step 4: full-rank joint PCA reproduces the partial-RoPE model; truncation error = dropped eigenvalues") {
    for (bool bias : {false, true}) {
        Fixture f(spec_of(64, 4, 2, 16, RopePairing::half_split, bias), 600, 20, 2);
        PartialRopeLayer p = rorope(f.layer, f.stats, 8, 2);
        p = balance_kv(p, bkv_alpha(p, f.stats));
        const int n = 2 * 32 - 8;
        const JointPca full = joint_pca(p, f.stats, n);
        const MlaLayer m = assemble(p, full, build_query(p));
        CHECK(m.cache_per_token() == n + 8);
        const double err = rel_err(forward(m, f.held, f.pos), forward(p, f.held, f.pos));
        INFO("bias " << bias << " error " << err);
        CHECK(err <= 1e-10);
        CHECK(full.key_error + full.value_error <= 1e-9 * full.total_energy);
    }
    // Truncation: error non-increasing in r and equal to the sum of the dropped eigenvalues,
    // checked against an explicit reconstruction of z on the calibration rows.
    Fixture f(spec_of(40, 4, 2, 16, RopePairing::half_split, true), 0);
    const Eigen::MatrixXd calib = f.gen.tokens(300, 0);
    CalibrationStats st(40);
    st.add(calib);
    PartialRopeLayer p = rorope(f.layer, st, 8, 2);
    p = balance_kv(p, bkv_alpha(p, st));
    const int n = 2 * 32 - 8;
    const EigenTop all = eigen_full(st.project([&] {
        MatrixXd a(n, 40);
        a << p.wk.bottomRows(24), p.wv;
        return a;
    }(), [&] {
        VectorXd b(n);
        b << p.bk.tail(24), p.bv;
        return b;
    }()));
    RowMatrix z(300, n);
    z.leftCols(24) = (calib * p.wk.bottomRows(24).transpose()).rowwise() + p.bk.tail(24).transpose();
    z.rightCols(32) = (calib * p.wv.transpose()).rowwise() + p.bv.transpose();
    double prev = std::numeric_limits<double>::infinity();
    for (int r : {1, 2, 5, 10, 20, 30, 41, 50, 56}) {
        const JointPca pc = joint_pca(p, st, r);
        const double e = pc.key_error + pc.value_error;
        const double dropped = all.values.tail(n - r).sum();
        const RowMatrix rec = z * pc.basis * pc.basis.transpose();
        const double direct = (z - rec).squaredNorm();
        const double direct_k = (z - rec).leftCols(24).squaredNorm();
        INFO("r " << r << " error " << e << " dropped " << dropped << " direct " << direct);
        CHECK(e == doctest::Approx(dropped).epsilon(1e-8).scale(all.values(0)));
        CHECK(direct == doctest::Approx(e).epsilon(1e-8).scale(all.values(0)));
        CHECK(direct_k == doctest::Approx(pc.key_error).epsilon(1e-8).scale(all.values(0)));
        CHECK(e <= prev * (1 + 1e-12) + 1e-12 * all.values(0));
        prev = e;
    }
}

TEST_CASE("step 5: the σ scale fix gives identical logits under the MLA scale") {
    Fixture f(spec_of(64, 6, 3, 16, RopePairing::interleaved, true), 600, 12);
    PartialRopeLayer p = rorope(f.layer, f.stats, 8, 4);
    p = balance_kv(p, bkv_alpha(p, f.stats));
    const int n = 2 * 48 - 8;
    const MlaLayer m = assemble(p, joint_pca(p, f.stats, n), build_query(p));
    CHECK(m.softmax_scale == doctest::Approx(1.0 / std::sqrt(24.0)));
    CHECK(mla_sigma(16, 8) == doctest::Approx(std::sqrt(1.5)));
    for (int i = 0; i < 6; ++i)
        CHECK(rel_err(attention_logits(m, f.held, f.pos, i), attention_logits(p, f.held, f.pos, i)) <= 1e-10);
    // Without σ the logits would be off by σ: the fix is not a no-op.
    MlaLayer bad = m;
    bad.q_proj /= mla_sigma(16, 8);
    bad.q_bias /= mla_sigma(16, 8);
    CHECK(rel_err(attention_logits(bad, f.held, f.pos, 0), attention_logits(p, f.held, f.pos, 0)) > 0.1);
}

TEST_CASE("steps 6–7: absorbed equals naive at any rank; MLA forward equals reference::mla_naive") {
    Fixture f(spec_of(64, 4, 2, 16, RopePairing::half_split, true), 600, 17);
    PartialRopeLayer p = rorope(f.layer, f.stats, 8, 2);
    p = balance_kv(p, bkv_alpha(p, f.stats));
    for (int r : {3, 12, 40}) {
        const MlaLayer m = assemble(p, joint_pca(p, f.stats, r), build_query(p));
        const AbsorbedMlaLayer a = absorb(m);
        const auto naive = forward(m, f.held, f.pos);
        CHECK(rel_err(forward(a, f.held, f.pos), naive) <= 1e-11);
        // The shared reference on the same cache rows and queries.
        const int T = int(f.held.rows()), H = 4, dn = 16, dr = 8, dv = 16;
        const RowMatrix cache = mla_cache_rows(m, f.held, f.pos);
        RowMatrix q = mla_query(m, f.held);
        RowMatrix qn(T, H * dn), qp(T, H * dr);
        for (int i = 0; i < H; ++i) {
            qn.middleCols(i * dn, dn) = q.middleCols(i * (dn + dr), dn);
            qp.middleCols(i * dr, dr) = q.middleCols(i * (dn + dr) + dn, dr);
            for (int t = 0; t < T; ++t)
                apply_rope(qp.row(t).data() + i * dr, dr, RopePairing::interleaved, m.rope_inv_freq, double(f.pos[t]));
        }
        const RowMatrix kvb = m.kv_b_proj;
        std::vector<double> o(std::size_t(T) * H * dv), lse(std::size_t(T) * H);
        MlaSeqView<double> cv{cache.data(), r, dr, T, r + dr, {}};
        reference::mla_naive(View3<const double>(qn.data(), {T, H, dn}), View3<const double>(qp.data(), {T, H, dr}), cv,
                             View2<const double>(kvb.data(), {kvb.rows(), r}), m.softmax_scale, reference::Causal{},
                             View3<double>(o.data(), {T, H, dv}), View2<double>(lse.data(), {T, H}));
        const RowMatrix om = Eigen::Map<RowMatrix>(o.data(), T, H * dv);
        CHECK(rel_err(naive, om * m.o_proj.transpose()) <= 1e-11);
    }
}

TEST_CASE("incremental decode equals a full forward; the cache holds r + d_r values per token") {
    Fixture f(spec_of(64, 6, 2, 16, RopePairing::half_split, false), 600, 15, 4);
    PartialRopeLayer p = rorope(f.layer, f.stats, 8, 2);
    p = balance_kv(p, bkv_alpha(p, f.stats));
    const int r = 20;
    const MlaLayer m = assemble(p, joint_pca(p, f.stats, r), build_query(p));
    const AbsorbedMlaLayer a = absorb(m);
    const auto full = forward(m, f.held, f.pos);
    RowMatrix cache(0, r + 8);
    RowMatrix out(f.held.rows(), 64);
    for (Eigen::Index t = 0; t < f.held.rows(); ++t) {
        const std::span<const std::int64_t> pt(&f.pos[std::size_t(t)], 1);
        const RowMatrix row = mla_cache_rows(m, f.held.row(t), pt);
        REQUIRE(row.cols() == r + 8);
        cache.conservativeResize(cache.rows() + 1, Eigen::NoChange);
        cache.bottomRows(1) = row;
        out.row(t) = decode(a, f.held.row(t), pt, cache).row(0);
    }
    CHECK(cache.size() == f.held.rows() * (r + 8));
    CHECK(m.cache_per_token() == r + 8);
    CHECK(rel_err(out, full) <= 1e-11);
}

TEST_CASE("low-rank query: full rank is exact, lower rank approximates") {
    Fixture f(spec_of(48, 4, 2, 16, RopePairing::half_split, true), 600, 12);
    PartialRopeLayer p = rorope(f.layer, f.stats, 8, 2);
    const int n = 2 * 32 - 8;
    const JointPca pc = joint_pca(p, f.stats, n);
    const MlaLayer full = assemble(p, pc, build_query(p, 49, &f.stats));  // W_Q x + b spans <= D + 1 dims
    CHECK(full.q_lora_rank == 49);
    CHECK(rel_err(forward(full, f.held, f.pos), forward(p, f.held, f.pos)) <= 1e-9);
    CHECK(rel_err(forward(absorb(full), f.held, f.pos), forward(full, f.held, f.pos)) <= 1e-11);
    const MlaLayer low = assemble(p, pc, build_query(p, 8, &f.stats));
    CHECK(rel_err(forward(low, f.held, f.pos), forward(p, f.held, f.pos)) > 1e-6);
    CHECK_THROWS_AS(build_query(p, 8, nullptr), error);
}

TEST_CASE("partial_as_mla runs the partial-RoPE layer as an exact MLA layer (no statistics)") {
    Fixture f(spec_of(48, 6, 3, 16, RopePairing::half_split, true), 300, 14, 6);
    PartialRopeLayer p = rorope(f.layer, f.stats, 8, 4);
    p = balance_kv(p, bkv_alpha(p, f.stats));
    const MlaLayer m = partial_as_mla(p);
    CHECK(m.kv_lora_rank == 2 * 48 - 8);
    CHECK(rel_err(forward(m, f.held, f.pos), forward(p, f.held, f.pos)) <= 1e-10);
    CHECK(rel_err(forward(absorb(m), f.held, f.pos), forward(p, f.held, f.pos)) <= 1e-10);
}
