// Online softmax in base 2 and the merges of partial states, including empty ones.
#include "test_util.hpp"
#include "transmla/softmax.hpp"

#include <cmath>
#include <limits>

using namespace transmla;

namespace {
// Direct softmax-weighted average of rows v (n × dv) with natural logits s.
void direct(const std::vector<double>& s, const std::vector<double>& v, int dv, std::vector<double>& o, double& lse) {
    double m = -INFINITY;
    for (double x : s) m = std::max(m, x);
    double l = 0;
    o.assign(dv, 0);
    for (std::size_t j = 0; j < s.size(); ++j) {
        const double p = std::exp(s[j] - m);
        l += p;
        for (int e = 0; e < dv; ++e) o[e] += p * v[j * dv + e];
    }
    for (auto& x : o) x /= l;
    lse = m + std::log(l);
}
// Online state over [b, e) in base 2.
SoftmaxState<double> online(const std::vector<double>& s, const std::vector<double>& v, int dv, std::size_t b,
                            std::size_t e, std::vector<double>& acc) {
    SoftmaxState<double> st;
    acc.assign(dv, 0);
    for (std::size_t j = b; j < e; ++j) {
        const double f = st.rescale_to(s[j] * log2e);
        for (auto& a : acc) a *= f;
        const double p = st.add(s[j] * log2e);
        for (int e2 = 0; e2 < dv; ++e2) acc[e2] += p * v[j * dv + e2];
    }
    return st;
}
}  // namespace

TEST_CASE("online base-2 softmax equals the direct one, and split states merge back") {
    const int n = 97, dv = 5;
    auto s = test::random_vector<double>(n, 3.0);
    auto v = test::random_vector<double>(std::size_t(n) * dv);
    std::vector<double> o_ref;
    double lse_ref;
    direct(s, v, dv, o_ref, lse_ref);

    std::vector<double> acc;
    auto st = online(s, v, dv, 0, n, acc);
    std::vector<double> o(dv);
    const double lse = finalize_state(st, acc.data(), o.data(), dv);
    TRANSMLA_CHECK_CLOSE(o, o_ref, 1e-13);
    CHECK(lse == doctest::Approx(lse_ref).epsilon(1e-13));

    // split at random points (including empty chunks), merge unnormalised and normalised states
    const std::size_t c1 = std::size_t(test::uniform_int(0, n)), c2 = std::size_t(test::uniform_int(std::int64_t(c1), n));
    std::vector<double> a1, a2, a3;
    auto s1 = online(s, v, dv, 0, c1, a1);
    auto s2 = online(s, v, dv, c1, c2, a2);
    auto s3 = online(s, v, dv, c2, n, a3);
    SoftmaxState<double> empty;
    std::vector<double> a0(dv, 0.0);
    merge_state(s2, a2.data(), s3, a3.data(), dv);
    merge_state(s1, a1.data(), s2, a2.data(), dv);
    merge_state(s1, a1.data(), empty, a0.data(), dv);
    finalize_state(s1, a1.data(), o.data(), dv);
    TRANSMLA_CHECK_CLOSE(o, o_ref, 1e-13);

    std::vector<double> oa(dv), ob(dv);
    auto t1 = online(s, v, dv, 0, c1, a1);
    auto t2 = online(s, v, dv, c1, n, a2);
    double la = finalize_state(t1, a1.data(), oa.data(), dv);
    const double lb = finalize_state(t2, a2.data(), ob.data(), dv);
    merge_normalized(oa.data(), la, ob.data(), lb, dv);
    TRANSMLA_CHECK_CLOSE(oa, o_ref, 1e-13);
    CHECK(la == doctest::Approx(lse_ref).epsilon(1e-13));
}

TEST_CASE("empty partial states are NaN-safe") {
    const double ninf = -std::numeric_limits<double>::infinity();
    SoftmaxState<double> a, b;
    double acc_a[2] = {0, 0}, acc_b[2] = {0, 0};
    merge_state(a, acc_a, b, acc_b, 2);
    double o[2] = {7, 7};
    CHECK(finalize_state(a, acc_a, o, 2) == ninf);
    CHECK(o[0] == 0.0);
    CHECK(o[1] == 0.0);
    // rescale from −inf to −inf (a fully masked block) does not produce NaN
    CHECK(a.rescale_to(ninf) == 1.0);
    CHECK(a.add(ninf) == 0.0);
    CHECK(!std::isnan(a.l));
    double oa[2] = {0, 0}, la = ninf;
    const double ob[2] = {1.5, -2};
    merge_normalized(oa, la, ob, 0.25, 2);
    CHECK(oa[0] == 1.5);
    CHECK(la == 0.25);
    merge_normalized(oa, la, ob, ninf, 2);
    CHECK(oa[1] == -2);
    CHECK(la == 0.25);
}

TEST_CASE("a NaN or +inf logit poisons the online state; merges and finishes keep it NaN, never empty") {
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    const int dv = 3;
    const std::size_t n = 12;
    std::vector<double> s(n), v(n * dv);
    for (auto& x : s) x = test::normal();
    for (auto& x : v) x = test::normal();
    for (double bad : {nan, inf}) {
        INFO("bad logit " << bad);
        auto sb = s;
        const auto at = std::size_t(test::uniform_int(0, std::int64_t(n) - 1));
        sb[at] = bad;
        std::vector<double> acc, acc2, o(dv, 7.0);
        // the whole row at once: the bad logit anywhere poisons it, first or last
        SoftmaxState<double> st = online(sb, v, dv, 0, n, acc);
        CHECK(!st.empty());
        CHECK(std::isnan(finalize_state(st, acc.data(), o.data(), dv)));
        for (double x : o) CHECK(std::isnan(x));
        // split at the bad key: the poisoned part must win the merge from either side
        const std::size_t cut = at + 1;
        SoftmaxState<double> a = online(sb, v, dv, 0, cut, acc), b = online(sb, v, dv, cut, n, acc2);
        merge_state(b, acc2.data(), a, acc.data(), dv);
        CHECK(std::isnan(finalize_state(b, acc2.data(), o.data(), dv)));
        CHECK(std::isnan(o[0]));
        a = online(sb, v, dv, 0, cut, acc);
        SoftmaxState<double> empty;
        std::vector<double> acc0(dv, 0.0);
        merge_state(empty, acc0.data(), a, acc.data(), dv);  // into an empty state
        CHECK(std::isnan(empty.lse()));
        // finished partials: NaN lse on either side of merge_normalized, also against an empty one
        double oa[dv] = {1, 2, 3}, la = 0.5;
        const double ob[dv] = {nan, nan, nan};
        merge_normalized(oa, la, ob, nan, dv);
        CHECK(std::isnan(la));
        CHECK(std::isnan(oa[1]));
        double oc[dv] = {0, 0, 0}, lc = -inf;
        merge_normalized(oc, lc, ob, nan, dv);
        CHECK(std::isnan(lc));
        const double od[dv] = {1, 2, 3};
        merge_normalized(oc, lc, od, 0.25, dv);  // a finite partial does not heal it
        CHECK(std::isnan(lc));
        CHECK(std::isnan(oc[2]));
        double oe[dv] = {1, 2, 3}, le = 0.5;
        merge_normalized(oe, le, od, -inf, dv);  // an empty partial changes nothing
        CHECK(le == 0.5);
    }
    // −inf stays a masked key: no poison
    SoftmaxState<double> m;
    CHECK(m.rescale_to(-inf) == 1.0);
    CHECK(m.add(-inf) == 0.0);
    CHECK(m.empty());
    CHECK(m.lse() == -inf);
}
