// Properties of the reference implementations, each against an independent formulation.
#include "test_util.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/reference/reference.hpp"

#include <Eigen/Dense>

#include <cmath>
#include <limits>

using namespace transmla;
namespace ref = transmla::reference;

namespace {

// Plain multi-head attention with dense matrices: softmax(Q Kᵀ · scale + causal mask) V per head.
void mha_dense(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v, int T, int S,
               int H, int d, std::int64_t q_offset, double scale, std::vector<double>& out) {
    out.assign(std::size_t(T) * H * d, 0);
    for (int h = 0; h < H; ++h) {
        Eigen::MatrixXd Q(T, d), K(S, d), V(S, d);
        for (int t = 0; t < T; ++t)
            for (int e = 0; e < d; ++e) Q(t, e) = q[(std::size_t(t) * H + h) * d + e];
        for (int s = 0; s < S; ++s)
            for (int e = 0; e < d; ++e) K(s, e) = k[(std::size_t(s) * H + h) * d + e], V(s, e) = v[(std::size_t(s) * H + h) * d + e];
        Eigen::MatrixXd P = Q * K.transpose() * scale;
        for (int t = 0; t < T; ++t) {
            for (int s = 0; s < S; ++s)
                if (s > q_offset + t) P(t, s) = -INFINITY;
            const double m = P.row(t).maxCoeff();
            P.row(t) = (P.row(t).array() - m).exp().matrix();
            P.row(t) /= P.row(t).sum();
        }
        Eigen::MatrixXd O = P * V;
        for (int t = 0; t < T; ++t)
            for (int e = 0; e < d; ++e) out[(std::size_t(t) * H + h) * d + e] = O(t, e);
    }
}

struct Attn {
    std::vector<double> out, lse;
};

template <class Tq, class Tkv>
Attn run_gqa(const std::vector<Tq>& q, const GqaSeqView<Tkv>& kv, std::int64_t T, int nq, const ref::Causal& c,
             double scale) {
    const int d = kv.head_dim;
    Attn a;
    a.out.resize(std::size_t(T) * nq * d);
    a.lse.resize(std::size_t(T) * nq);
    ref::gqa_attention(View3<const Tq>(q.data(), {T, nq, d}), kv, scale, c, View3<double>(a.out.data(), {T, nq, d}),
                       View2<double>(a.lse.data(), {T, nq}));
    return a;
}

}  // namespace

TEST_CASE("GQA with group 1 equals plain multi-head attention; group g equals MHA on repeated KV") {
    for (int g : {1, 2, 3, 8}) {
        const int nkv = 2, nq = nkv * g, d = 16;
        const std::int64_t S = test::uniform_int(1, 40), T = test::uniform_int(1, S);
        const std::int64_t off = S - T;
        auto q = test::random_vector<double>(std::size_t(T) * nq * d);
        auto k = test::random_vector<double>(std::size_t(S) * nkv * d);
        auto v = test::random_vector<double>(std::size_t(S) * nkv * d);
        const double scale = 1.0 / std::sqrt(double(d));
        std::vector<double> out(q.size()), lse(std::size_t(T) * nq);
        ref::gqa_prefill(View3<const double>(q.data(), {T, nq, d}), View3<const double>(k.data(), {S, nkv, d}),
                         View3<const double>(v.data(), {S, nkv, d}), off, scale, View3<double>(out.data(), {T, nq, d}),
                         View2<double>(lse.data(), {T, nq}));
        // MHA on K/V repeated per query head
        std::vector<double> kr(std::size_t(S) * nq * d), vr(kr.size());
        for (std::int64_t s = 0; s < S; ++s)
            for (int i = 0; i < nq; ++i)
                for (int e = 0; e < d; ++e) {
                    kr[(s * nq + i) * d + e] = k[(s * nkv + i / g) * d + e];
                    vr[(s * nq + i) * d + e] = v[(s * nkv + i / g) * d + e];
                }
        std::vector<double> want;
        mha_dense(q, kr, vr, int(T), int(S), nq, d, off, scale, want);
        INFO("group " << g << " S " << S << " T " << T);
        TRANSMLA_CHECK_CLOSE(out, want, 1e-12);
    }
}

TEST_CASE("decode of token t equals row t of causal prefill (f32, f16, bf16 storage)") {
    const int nkv = 3, g = 3, nq = nkv * g, d = 32;
    for (std::int64_t S : {1, 7, 113}) {
        auto q = test::random_vector<half>(std::size_t(S) * nq * d);
        auto k = test::random_vector<bfloat16>(std::size_t(S) * nkv * d);
        auto v = test::random_vector<bfloat16>(std::size_t(S) * nkv * d);
        std::vector<double> out(std::size_t(S) * nq * d), lse(std::size_t(S) * nq);
        ref::gqa_prefill(View3<const half>(q.data(), {S, nq, d}), View3<const bfloat16>(k.data(), {S, nkv, d}),
                         View3<const bfloat16>(v.data(), {S, nkv, d}), 0, 0.125, View3<double>(out.data(), {S, nq, d}),
                         View2<double>(lse.data(), {S, nq}));
        GqaCache<bfloat16> cache(nkv, d, S);
        for (std::int64_t t = 0; t < S; ++t) {
            cache.append(View3<const bfloat16>(k.data() + t * nkv * d, {1, nkv, d}),
                         View3<const bfloat16>(v.data() + t * nkv * d, {1, nkv, d}));
            std::vector<double> o1(std::size_t(nq) * d), l1(nq);
            ref::gqa_decode(View3<const half>(q.data() + t * nq * d, {1, nq, d}), cache.view(), 0.125,
                            View3<double>(o1.data(), {1, nq, d}), View2<double>(l1.data(), {1, nq}));
            std::vector<double> row(out.begin() + t * nq * d, out.begin() + (t + 1) * nq * d);
            std::vector<double> lrow(lse.begin() + t * nq, lse.begin() + (t + 1) * nq);
            CHECK(test::rel_error(o1, row) == 0.0);  // same arithmetic, same order: bitwise equal
            CHECK(test::rel_error(l1, lrow) == 0.0);
        }
    }
}

TEST_CASE("merging the partial states of a split context equals the unsplit result") {
    const int nkv = 2, g = 4, nq = nkv * g, d = 16;
    const std::int64_t S = 1025, T = 3;
    auto q = test::random_vector<float>(std::size_t(T) * nq * d);
    auto k = test::random_vector<float>(std::size_t(S) * nkv * d);
    auto v = test::random_vector<float>(std::size_t(S) * nkv * d);
    GqaCache<float> cache(nkv, d, S);
    cache.append(View3<const float>(k.data(), {S, nkv, d}), View3<const float>(v.data(), {S, nkv, d}));
    const auto full = run_gqa(q, cache.view(), T, nq, ref::Causal{S - T}, 0.25);
    // chunks of random sizes; the last chunk is partly masked for the first query tokens, and one
    // chunk lies entirely past token 0's position (an empty partial for that row).
    std::vector<std::int64_t> cuts{0};
    while (cuts.back() < S) cuts.push_back(std::min(S, cuts.back() + test::uniform_int(1, 400)));
    cuts.insert(cuts.end() - 1, S - 1);  // a one-token chunk that query token 0 cannot see
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<double> out(full.out.size(), 0.0), lse(full.lse.size(), -INFINITY);
    for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
        const auto part = run_gqa(q, cache.view(), T, nq, ref::Causal{S - T, cuts[c], cuts[c + 1]}, 0.25);
        for (std::int64_t r = 0; r < T * nq; ++r)
            merge_normalized(&out[r * d], lse[r], &part.out[r * d], part.lse[r], d);
    }
    TRANSMLA_CHECK_CLOSE(out, full.out, 1e-12);
    TRANSMLA_CHECK_CLOSE(lse, full.lse, 1e-12);
}

TEST_CASE("paged and contiguous caches give identical attention (GQA and MLA)") {
    const int nkv = 2, nq = 6, d = 8, r = 24, dr = 8, H = 5;
    const std::int64_t page = test::uniform_int(1, 16);
    PagedGqaCache<half> pg(nkv, d, 200, page);
    PagedMlaCache<half> pm(r, dr, 200, page);
    const auto a = pg.add_sequence(), b = pg.add_sequence();
    const auto ma = pm.add_sequence(), mb = pm.add_sequence();
    GqaCache<half> ca(nkv, d, 500), cb(nkv, d, 500);
    MlaCache<half> cma(r, dr, 500);
    // interleave appends of two sequences so their pages are not consecutive
    for (int round = 0; round < 6; ++round) {
        for (auto [seq, cont] : {std::pair{a, &ca}, std::pair{b, &cb}}) {
            const std::int64_t n = test::uniform_int(1, 23);
            auto k = test::random_vector<float>(std::size_t(n) * nkv * d), v = test::random_vector<float>(k.size());
            View3<const float> kv(k.data(), {n, nkv, d}), vv(v.data(), {n, nkv, d});
            pg.append(seq, kv, vv);
            cont->append(kv, vv);
        }
        const std::int64_t n = test::uniform_int(1, 23);
        auto rows = test::random_vector<float>(std::size_t(n) * (r + dr));
        pm.append(ma, View2<const float>(rows.data(), {n, r + dr}));
        cma.append(View2<const float>(rows.data(), {n, r + dr}));
        pm.append(mb, View2<const float>(rows.data(), {1, r + dr}));
    }
    for (auto [seq, cont] : {std::pair{a, &ca}, std::pair{b, &cb}}) {
        CHECK(pg.view(seq).num_runs() == (cont->size() + page - 1) / page);
        auto q = test::random_vector<half>(std::size_t(2) * nq * d);
        const auto p = run_gqa(q, pg.view(seq), 2, nq, ref::Causal{cont->size() - 2}, 0.3);
        const auto c = run_gqa(q, cont->view(), 2, nq, ref::Causal{cont->size() - 2}, 0.3);
        CHECK(test::rel_error(p.out, c.out) == 0.0);
        // the CSR page table of the pool describes the same sequence
        const std::int64_t ids[] = {a, b};
        const auto csr = pg.page_table(ids);
        const auto table = csr.table();
        table.validate(pg.num_pages());
        const auto v2 = paged_gqa_view(pg.k_pool(), pg.v_pool(), nkv, d, table, seq == a ? 0 : 1);
        const auto t2 = run_gqa(q, v2, 2, nq, ref::Causal{cont->size() - 2}, 0.3);
        CHECK(test::rel_error(t2.out, c.out) == 0.0);
    }
    // MLA
    const std::int64_t T = 2, S = cma.size();
    auto qn = test::random_vector<float>(std::size_t(T) * H * r + 0), qp = test::random_vector<float>(std::size_t(T) * H * dr);
    auto qa = test::random_vector<float>(std::size_t(T) * H * (r + dr));
    std::vector<double> o1(std::size_t(T) * H * r), o2(o1.size()), l1(std::size_t(T) * H), l2(l1.size());
    ref::mla_latent_attention(View3<const float>(qa.data(), {T, H, r + dr}), pm.view(ma), 0.1, ref::Causal{S - T},
                              View3<double>(o1.data(), {T, H, r}), View2<double>(l1.data(), {T, H}));
    ref::mla_latent_attention(View3<const float>(qa.data(), {T, H, r + dr}), cma.view(), 0.1, ref::Causal{S - T},
                              View3<double>(o2.data(), {T, H, r}), View2<double>(l2.data(), {T, H}));
    CHECK(test::rel_error(o1, o2) == 0.0);
    CHECK(test::rel_error(l1, l2) == 0.0);
}

TEST_CASE("MLA naive equals absorbed in the reference (relative error <= 1e-10)") {
    for (int trial = 0; trial < 4; ++trial) {
        const int H = int(test::uniform_int(1, 8)), r = int(test::uniform_int(4, 48)), dr = 2 * int(test::uniform_int(1, 8));
        const int dn = int(test::uniform_int(1, 24)), dv = int(test::uniform_int(1, 24));
        const std::int64_t S = test::uniform_int(1, 60), T = test::uniform_int(1, S);
        auto rows = test::random_vector<float>(std::size_t(S) * (r + dr));
        MlaCache<float> cache(r, dr, S);
        cache.append(View2<const float>(rows.data(), {S, r + dr}));
        auto qn = test::random_vector<float>(std::size_t(T) * H * dn), qp = test::random_vector<float>(std::size_t(T) * H * dr);
        auto kvb = test::random_vector<float>(std::size_t(H) * (dn + dv) * r, 1.0 / std::sqrt(double(r)));
        const double scale = 1.0 / std::sqrt(double(dn + dr));
        std::vector<double> on(std::size_t(T) * H * dv), oa(on.size()), ln(std::size_t(T) * H), la(ln.size());
        View3<const float> qnv(qn.data(), {T, H, dn}), qpv(qp.data(), {T, H, dr});
        View2<const float> w(kvb.data(), {std::int64_t(H) * (dn + dv), r});
        ref::mla_naive(qnv, qpv, cache.view(), w, scale, ref::Causal{S - T}, View3<double>(on.data(), {T, H, dv}),
                       View2<double>(ln.data(), {T, H}));
        ref::mla_absorbed(qnv, qpv, cache.view(), w, scale, ref::Causal{S - T}, View3<double>(oa.data(), {T, H, dv}),
                          View2<double>(la.data(), {T, H}));
        INFO("H " << H << " r " << r << " dr " << dr << " dn " << dn << " dv " << dv << " S " << S << " T " << T);
        TRANSMLA_CHECK_CLOSE(oa, on, 1e-10);
        TRANSMLA_CHECK_CLOSE(la, ln, 1e-10);
    }
}

TEST_CASE("reference rejects inconsistent shapes with a message") {
    std::vector<float> q(2 * 5 * 8, 1.0f);
    GqaCache<float> cache(2, 8, 4);
    cache.append(View3<const float>(q.data(), {4, 2, 8}), View3<const float>(q.data(), {4, 2, 8}));
    std::vector<double> o(80), l(10);
    CHECK_THROWS_WITH_AS(ref::gqa_decode(View3<const float>(q.data(), {2, 5, 8}), cache.view(), 1.0,
                                         View3<double>(o.data(), {2, 5, 8}), View2<double>(l.data(), {2, 5})),
                         doctest::Contains("multiple of n_kv"), error);
    std::vector<float> q8(5 * 4 * 8, 1.0f);
    GqaCache<float> small(2, 8, 4);
    small.append(View3<const float>(q8.data(), {1, 2, 8}), View3<const float>(q8.data(), {1, 2, 8}));
    CHECK_THROWS_WITH_AS(ref::gqa_decode(View3<const float>(q8.data(), {2, 4, 8}), small.view(), 1.0,
                                         View3<double>(o.data(), {2, 4, 8}), View2<double>(l.data(), {2, 4})),
                         doctest::Contains("append the new tokens first"), error);
}

TEST_CASE("reference: a non-finite logit makes its row NaN, other rows and rows without keys are unaffected") {
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    const int nkv = 2, g = 2, d = 8, nq = nkv * g;
    const std::int64_t S = 9, T = S;
    auto k = test::random_vector<double>(std::size_t(S) * nkv * d), v = test::random_vector<double>(k.size());
    auto q = test::random_vector<double>(std::size_t(T) * nq * d);
    const std::int64_t tq = test::uniform_int(0, T - 1), tk = test::uniform_int(0, S - 1);
    q[(std::size_t(tq) * nq + 1) * d + 2] = inf;   // query token tq, head 1 (KV head 0)
    k[(std::size_t(tk) * nkv + 1) * d + 5] = -inf; // key tk, KV head 1: rows of heads 2, 3 that see it
    v[(std::size_t(0) * nkv + 0) * d + 4] = nan;   // value 0 of KV head 0: element 4 of heads 0, 1
    const GqaSeqView<double> kv{k.data(), v.data(), nkv, d, S, std::int64_t(nkv) * d, d, PageMap{}};
    std::vector<double> o(q.size()), l(std::size_t(T) * nq);
    ref::gqa_attention(View3<const double>(q.data(), {T, nq, d}), kv, 0.3, ref::Causal{0},
                       View3<double>(o.data(), {T, nq, d}), View2<double>(l.data(), {T, nq}));
    INFO("query token " << tq << ", key " << tk);
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < nq; ++i) {
            INFO("row " << t << " head " << i);
            const bool poisoned = (t == tq && i == 1) || (i >= 2 && t >= tk);
            CHECK(std::isnan(l[t * nq + i]) == poisoned);
            for (int e = 0; e < d; ++e) CHECK(std::isnan(o[(t * nq + i) * d + e]) == (poisoned || (i < 2 && e == 4)));
        }
    // a row that sees no key: 0 and −inf (kv_begin past its causal end)
    std::vector<double> o1(std::size_t(nq) * d, 5.0), l1(nq);
    ref::gqa_attention(View3<const double>(q.data(), {1, nq, d}), kv, 0.3, ref::Causal{0, 3, -1, true},
                       View3<double>(o1.data(), {1, nq, d}), View2<double>(l1.data(), {1, nq}));
    for (int i = 0; i < nq; ++i) CHECK(l1[i] == -inf);
    for (double x : o1) CHECK(x == 0.0);
}
