// Checks of the SIMD layer (cpu/simd.hpp) for one xsimd architecture A; included by a test TU
// compiled for that architecture.
#pragma once

#include "test_util.hpp"
#include "transmla/cpu/simd.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace transmla::test {

template <class A>
void check_simd_layer() {
    using namespace transmla::cpu;
    constexpr int W = simd::width<A>;
    // Every binary16 and bfloat16 bit pattern widens exactly (scalar and vector paths, NaN kept).
    std::vector<half> hs(65536);
    std::vector<bfloat16> bs(65536);
    for (int i = 0; i < 65536; ++i) {
        hs[std::size_t(i)] = half_from_bits(std::uint16_t(i));
        bs[std::size_t(i)] = bf16_from_bits(std::uint16_t(i));
    }
    int bad_h = 0, bad_b = 0;
    for (int i = 0; i < 65536; i += W) {
        alignas(64) float vh[W], vb[W];
        simd::load_f32<A>(hs.data() + i).store_aligned(vh);
        simd::load_f32<A>(bs.data() + i).store_aligned(vb);
        for (int l = 0; l < W; ++l) {
            const float eh = static_cast<float>(hs[std::size_t(i + l)]), eb = static_cast<float>(bs[std::size_t(i + l)]);
            const float sh = simd::elem_to_float<A>(hs.data() + i + l), sb = simd::elem_to_float<A>(bs.data() + i + l);
            auto same = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || Eigen::numext::bit_cast<std::uint32_t>(a) == Eigen::numext::bit_cast<std::uint32_t>(b); };
            bad_h += !same(vh[l], eh) + !same(sh, eh);
            bad_b += !same(vb[l], eb) + !same(sb, eb);
        }
    }
    CHECK(bad_h == 0);
    CHECK(bad_b == 0);
    // Rounding f32 → f16 / bf16 matches Eigen's (round to nearest even), incl. ties, subnormals,
    // overflow and NaN.
    std::vector<float> xs = {0.f, -0.f, 1.f, 65504.f, 65519.f, 65520.f, 1e9f, -1e9f, 6.1e-5f, 5.96e-8f, 2.98e-8f,
                             2.99e-8f, 1e-10f, 1.00048828125f, 1.00146484375f, std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::quiet_NaN(), 3.0e38f, 1.17e-38f};
    for (int i = 0; i < 20000; ++i) xs.push_back(float(normal(1.0) * std::exp2(uniform(-30, 20))));
    int bad_rh = 0, bad_rb = 0;
    for (float x : xs) {
        const auto eh = bits_of(half(x)), eb = bits_of(bfloat16(x));
        const auto gh = simd::float_to_half_bits<A>(x), gb = simd::float_to_bf16_bits<A>(x);
        if (std::isnan(x)) {
            bad_rh += !std::isnan(float(half_from_bits(gh)));
            bad_rb += !std::isnan(float(bf16_from_bits(gb)));
        } else {
            bad_rh += gh != eh;
            bad_rb += gb != eb;
        }
    }
    CHECK(bad_rh == 0);
    CHECK(bad_rb == 0);
    // Tails: a partial load zero-fills, convert_row handles n not a multiple of W.
    const auto src = random_vector<half>(std::size_t(3 * W + 3));
    std::vector<float> dst(src.size(), -7.f);
    simd::convert_row<A>(dst.data(), src.data(), int(src.size()));
    for (std::size_t i = 0; i < src.size(); ++i) CHECK(dst[i] == static_cast<float>(src[i]));
    alignas(64) float part[W];
    simd::load_f32_partial<A>(src.data(), W - 1).store_aligned(part);
    CHECK(part[W - 1] == 0.f);
    CHECK(part[0] == static_cast<float>(src[0]));
    // fmadd, hsum, hmax, hsum_rows against scalar sums in double.
    const auto a = random_vector<float>(std::size_t(W) * W), b = random_vector<float>(std::size_t(W) * W);
    std::vector<simd::vf<A>> rows;
    for (int r = 0; r < W; ++r)
        rows.push_back(simd::fmadd<A>(simd::vf<A>::load_unaligned(a.data() + r * W), simd::vf<A>::load_unaligned(b.data() + r * W),
                                      simd::vf<A>(0.5f)));
    alignas(64) float sums[W];
    simd::hsum_rows<A>(rows.data()).store_aligned(sums);
    for (int r = 0; r < W; ++r) {
        double e = 0, mx = -1e300;
        for (int l = 0; l < W; ++l) {
            const double v = double(a[std::size_t(r * W + l)]) * b[std::size_t(r * W + l)] + 0.5;
            e += v;
            mx = std::max(mx, double(float(v)));
        }
        CHECK(std::abs(sums[r] - e) <= 1e-5 * (1 + std::abs(e)));
        CHECK(std::abs(simd::hsum<A>(rows[std::size_t(r)]) - e) <= 1e-5 * (1 + std::abs(e)));
        CHECK(std::abs(simd::hmax<A>(rows[std::size_t(r)]) - mx) <= 1e-6 * (1 + std::abs(mx)));
    }
}

}  // namespace transmla::test
