// Shapes: compile-time and dynamic extents, their checks, and the run-time dispatch.
#include "test_util.hpp"
#include "transmla/shape.hpp"

#include <limits>
#include <string>

using namespace transmla;

TEST_CASE("static GQA shape: derived constants are compile-time") {
    constexpr GqaShape<32, 8, 128> s;
    static_assert(s.group() == 4 && s.kv_width() == 1024 && s.cache_elems_per_token() == 2048);
    static_assert(GqaShape<32, 8, 128>::static_group == 4 && GqaShape<32, 8, 128>::is_static);
    static_assert(sizeof(GqaShape<32, 8, 128>) == 1, "a fully static shape carries no storage");
    static_assert(GqaShape<dynamic, 8, 128>::static_group == dynamic);
    CHECK(s.n_q() == 32);
}

TEST_CASE("dynamic GQA shape validates its values") {
    DynamicGqaShape s(9, 3, 64);
    CHECK(s.group() == 3);
    CHECK(s.cache_elems_per_token() == 384);
    CHECK_THROWS_AS(DynamicGqaShape(9, 2, 64), error);   // group does not divide
    CHECK_THROWS_AS(DynamicGqaShape(8, 2, 63), error);   // odd head dim
    CHECK_THROWS_AS(DynamicGqaShape(0, 1, 64), error);   // non-positive
    CHECK_THROWS_AS((GqaShape<32, 8, dynamic>(32, 4, 128)), error);  // disagrees with the static extent
    try {
        DynamicGqaShape(9, 2, 64);
    } catch (const error& e) {
        CHECK(std::string(e.what()).find("multiple of n_kv") != std::string::npos);
    }
}

TEST_CASE("MLA shape") {
    constexpr MlaShape<128, 512, 64, 128> s;
    static_assert(s.row_width() == 576 && s.cache_elems_per_token() == 576 && s.qk_dim() == 192 && s.v_dim() == 128);
    DynamicMlaShape d(9, 128, 64, 64, 64);
    CHECK(d.row_width() == 192);
    CHECK_THROWS_AS(DynamicMlaShape(9, 128, 63, 64, 64), error);
}

TEST_CASE("dynamic shapes refuse widths that overflow int") {
    constexpr int big = 1 << 20;
    CHECK_THROWS_WITH_AS(DynamicGqaShape(big, big, 4096), doctest::Contains("overflows int"), error);
    CHECK_THROWS_WITH_AS(DynamicGqaShape(64, 8, 1 << 26), doctest::Contains("n_q (64) x head_dim (67108864)"), error);
    CHECK_THROWS_WITH_AS(DynamicMlaShape(8, std::numeric_limits<int>::max() - 1, 64, 128, 128),
                         doctest::Contains("rank (2147483646) + rope_dim (64) overflows int"), error);
    CHECK_THROWS_WITH_AS(DynamicMlaShape(8, 512, 64, std::numeric_limits<int>::max() - 2, 128),
                         doctest::Contains("nope_dim"), error);
}

TEST_CASE("dispatch reaches the static instantiation or names the supported ones") {
    using List = ShapeList<GqaShape<32, 8, 128>, GqaShape<9, 3, 64>>;
    const int d = dispatch(List{}, DynamicGqaShape(9, 3, 64), [](auto s) {
        static_assert(decltype(s)::is_static);
        return decltype(s)::static_head_dim;
    });
    CHECK(d == 64);
    int calls = 0;
    dispatch(List{}, DynamicGqaShape(32, 8, 128), [&](auto) { ++calls; });
    CHECK(calls == 1);
    try {
        dispatch(List{}, DynamicGqaShape(16, 4, 128), [](auto) {});
        FAIL("expected an error");
    } catch (const error& e) {
        const std::string m = e.what();
        CHECK(m.find("n_q=16") != std::string::npos);
        CHECK(m.find("n_q=9, n_kv=3, head_dim=64") != std::string::npos);
    }
    using MList = ShapeList<MlaShape<128, 512, 64, 128>>;
    CHECK(dispatch(MList{}, DynamicMlaShape(128, 512, 64, 128, 128), [](auto s) { return s.row_width(); }) == 576);
}

TEST_CASE("RopeSpec validation names the field") {
    RopeSpec s;
    s.scaling = RopeScaling::llama3;
    s.factor = 8;
    s.low_freq_factor = 4;
    s.high_freq_factor = 1;
    CHECK_THROWS_WITH_AS(s.validate(64), doctest::Contains("high_freq_factor"), error);
    RopeSpec b;
    b.base = 0.5;
    CHECK_THROWS_WITH_AS(b.validate(64), doctest::Contains("base"), error);
    CHECK_THROWS_AS(RopeSpec{}.validate(63), error);
}
