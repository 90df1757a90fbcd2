// RoPE: frequencies and rotation against the textbook formula in double, both pairings, the
// half-split → interleaved permutation, the scaling variants and the f32 table.
#include "test_util.hpp"
#include "transmla/rope.hpp"

#include <cmath>
#include <numbers>

using namespace transmla;
using transmla::test::normal;

namespace {
// Textbook: pair j = (x_a, x_b) rotated by angle pos·base^(−2j/d).
std::vector<double> textbook(const std::vector<double>& x, RopePairing p, double base, double pos) {
    const int d = int(x.size());
    std::vector<double> y = x;
    for (int j = 0; j < d / 2; ++j) {
        const double th = pos * std::pow(base, -2.0 * j / d);
        const int a = p == RopePairing::half_split ? j : 2 * j;
        const int b = p == RopePairing::half_split ? j + d / 2 : 2 * j + 1;
        y[a] = x[a] * std::cos(th) - x[b] * std::sin(th);
        y[b] = x[a] * std::sin(th) + x[b] * std::cos(th);
    }
    return y;
}
}  // namespace

TEST_CASE("apply_rope equals the textbook rotation for both pairings") {
    for (auto p : {RopePairing::half_split, RopePairing::interleaved})
        for (int d : {2, 8, 64, 128}) {
            RopeSpec spec;
            spec.pairing = p;
            spec.base = 10000.0;
            const auto f = rope_inv_freq(spec, d);
            auto x = test::random_vector<double>(std::size_t(d));
            const double pos = double(test::uniform_int(0, 100000));
            auto y = x;
            apply_rope(y.data(), d, p, f, pos);
            TRANSMLA_CHECK_CLOSE(y, textbook(x, p, spec.base, pos), 1e-13);
        }
}

TEST_CASE("rotation preserves norms and relative positions give the same logits") {
    RopeSpec spec;
    const int d = 64;
    const auto f = rope_inv_freq(spec, d);
    auto q = test::random_vector<double>(d), k = test::random_vector<double>(d);
    auto dot_at = [&](double pq, double pk) {
        auto a = q, b = k;
        apply_rope(a.data(), d, spec.pairing, f, pq);
        apply_rope(b.data(), d, spec.pairing, f, pk);
        double s = 0;
        for (int i = 0; i < d; ++i) s += a[i] * b[i];
        return s;
    };
    const double base = test::uniform(0, 1000);
    CHECK(dot_at(base + 17, base) == doctest::Approx(dot_at(17, 0)).epsilon(1e-9));
}

TEST_CASE("half-split → interleaved permutation commutes with RoPE") {
    RopeSpec hs;
    hs.pairing = RopePairing::half_split;
    RopeSpec il = hs;
    il.pairing = RopePairing::interleaved;
    const int d = 64;
    const auto perm = half_split_to_interleaved(d);
    auto x = test::random_vector<double>(d);
    const double pos = double(test::uniform_int(1, 5000));
    // rotate (half-split) then permute
    auto a = x;
    apply_rope(a.data(), d, hs.pairing, rope_inv_freq(hs, d), pos);
    std::vector<double> pa(d), px(d);
    for (int i = 0; i < d; ++i) pa[perm[i]] = a[i], px[perm[i]] = x[i];
    // permute then rotate (interleaved)
    apply_rope(px.data(), d, il.pairing, rope_inv_freq(il, d), pos);
    TRANSMLA_CHECK_CLOSE(px, pa, 1e-14);
}

TEST_CASE("linear, llama3 and yarn frequency scaling") {
    const int d = 128;
    RopeSpec none;
    none.base = 500000.0;
    const auto f0 = rope_inv_freq(none, d);

    RopeSpec lin = none;
    lin.scaling = RopeScaling::linear;
    lin.factor = 4;
    const auto fl = rope_inv_freq(lin, d);
    for (int j = 0; j < d / 2; ++j) CHECK(fl[j] == doctest::Approx(f0[j] / 4).epsilon(1e-15));

    // llama3 (Llama-3.1 values): high frequencies kept, low ones divided by the factor, the band
    // in between interpolated smoothly.
    RopeSpec l3 = none;
    l3.scaling = RopeScaling::llama3;
    l3.factor = 8;
    l3.low_freq_factor = 1;
    l3.high_freq_factor = 4;
    l3.original_max_position = 8192;
    const auto f3 = rope_inv_freq(l3, d);
    const double two_pi = 2 * std::numbers::pi;
    int kept = 0, divided = 0, blended = 0;
    for (int j = 0; j < d / 2; ++j) {
        const double wl = two_pi / f0[j];
        if (wl < 8192.0 / 4) {
            CHECK(f3[j] == f0[j]);
            ++kept;
        } else if (wl > 8192.0) {
            CHECK(f3[j] == doctest::Approx(f0[j] / 8).epsilon(1e-15));
            ++divided;
        } else {
            CHECK(f3[j] < f0[j]);
            CHECK(f3[j] > f0[j] / 8);
            const double s = (8192.0 / wl - 1) / 3;
            CHECK(f3[j] == doctest::Approx((1 - s) * f0[j] / 8 + s * f0[j]).epsilon(1e-14));
            ++blended;
        }
    }
    CHECK(kept > 0);
    CHECK(divided > 0);
    CHECK(blended > 0);

    // yarn: the first (fast) dims are extrapolated (unchanged), the last (slow) interpolated.
    RopeSpec y = none;
    y.base = 10000;
    y.scaling = RopeScaling::yarn;
    y.factor = 40;
    y.original_max_position = 4096;
    const auto fy = rope_inv_freq(y, 64);
    RopeSpec y0 = y;
    y0.scaling = RopeScaling::none;
    const auto fy0 = rope_inv_freq(y0, 64);
    CHECK(fy[0] == doctest::Approx(fy0[0]));
    CHECK(fy[31] == doctest::Approx(fy0[31] / 40));
    for (int j = 1; j < 32; ++j) CHECK(fy[j] / fy0[j] <= fy[j - 1] / fy0[j - 1] + 1e-15);  // monotone ramp
    CHECK(rope_attention_factor(y) == doctest::Approx(0.1 * std::log(40.0) + 1.0));
    CHECK(rope_attention_factor(none) == 1.0);
}

TEST_CASE("RopeTable (f32) matches apply_rope (double) on every storage type") {
    for (auto p : {RopePairing::half_split, RopePairing::interleaved}) {
        RopeSpec spec;
        spec.pairing = p;
        spec.base = 100000.0;
        const int d = 64;
        RopeTable tab(spec, d, 4096);
        const auto f = rope_inv_freq(spec, d);
        const std::int64_t T = 5, H = 3;
        auto x = test::random_vector<float>(std::size_t(T * H * d));
        std::vector<std::int64_t> pos(T);
        for (auto& q : pos) q = test::uniform_int(0, 4095);
        auto y = x;
        tab.apply(View3<float>(y.data(), {T, H, d}), pos);
        std::vector<double> want(x.begin(), x.end());
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t h = 0; h < H; ++h) apply_rope(&want[(t * H + h) * d], d, p, f, double(pos[t]));
        TRANSMLA_CHECK_CLOSE(y, want, 2e-6);
        std::vector<half> yh(x.begin(), x.end());
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t h = 0; h < H; ++h) tab.apply(&yh[(t * H + h) * d], pos[t]);
        TRANSMLA_CHECK_CLOSE(yh, want, 2e-3);
    }
    RopeSpec s;
    RopeTable tab(s, 8, 16);
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK_THROWS_AS(tab.apply(v, 16), error);
}

TEST_CASE("RopeTable refuses sizes that overflow and positions outside the table") {
    RopeSpec s;
    // max_positions · rotary_dim/2 floats wrap around size_t: refused before anything is allocated.
    CHECK_THROWS_WITH_AS(RopeTable(s, 1 << 30, std::int64_t(1) << 40),
                         doctest::Contains("RopeTable: max_positions=1099511627776 x rotary_dim / 2=536870912"), error);
    CHECK_THROWS_WITH_AS(RopeTable(s, 128, std::numeric_limits<std::int64_t>::max()), doctest::Contains("overflows"),
                         error);
    CHECK_THROWS_WITH_AS(RopeTable(std::vector<double>(4, 0.5), RopePairing::half_split,
                                   std::numeric_limits<std::int64_t>::max() / 2),
                         doctest::Contains("RopeTable"), error);
    CHECK_THROWS_WITH_AS(RopeTable(s, 8, 0), doctest::Contains("max_positions must be positive, got 0"), error);
    CHECK_THROWS_WITH_AS(RopeTable(s, 8, -5), doctest::Contains("got -5"), error);
    CHECK_THROWS_WITH_AS(RopeTable(std::vector<double>{}, RopePairing::half_split, 4), doctest::Contains("0 frequencies"),
                         error);
    CHECK_THROWS_WITH_AS(RopeTable(s, -2, 4), doctest::Contains("rotary dim"), error);
    RopeTable tab(s, 8, 16);
    auto x = test::random_vector<float>(2 * 8);
    std::vector<std::int64_t> pos{3, -1};
    CHECK_THROWS_WITH_AS(tab.apply(View3<float>(x.data(), {2, 1, 8}), pos), doctest::Contains("position -1"), error);
    pos[1] = 16;
    CHECK_THROWS_WITH_AS(tab.apply(View3<float>(x.data(), {2, 1, 8}), pos), doctest::Contains("position 16"), error);
}
