// Caches: appends are bounds-checked, paged pools allocate and release pages, page tables validate.
#include "test_util.hpp"
#include "transmla/kv_cache.hpp"

using namespace transmla;

TEST_CASE("contiguous caches store converted rows and refuse overflow") {
    GqaCache<bfloat16> c(2, 4, 3);
    auto k = test::random_vector<float>(2 * 2 * 4);
    c.append(View3<const float>(k.data(), {2, 2, 4}), View3<const float>(k.data(), {2, 2, 4}));
    CHECK(c.size() == 2);
    CHECK(to_float(c.view().k_at(1, 1)[3]) == doctest::Approx(k[15]).epsilon(1e-2));
    CHECK_THROWS_WITH_AS(c.append(View3<const float>(k.data(), {2, 2, 4}), View3<const float>(k.data(), {2, 2, 4})),
                         doctest::Contains("do not fit"), error);
    CHECK_THROWS_WITH_AS(c.append(View3<const float>(k.data(), {1, 4, 2}), View3<const float>(k.data(), {1, 4, 2})),
                         doctest::Contains("extent"), error);
    c.truncate(1);
    CHECK(c.size() == 1);
    CHECK_THROWS_AS(c.truncate(2), error);
    MlaCache<half> m(6, 2, 2);
    CHECK_THROWS_WITH_AS(m.append(View2<const float>(k.data(), {3, 8})), doctest::Contains("do not fit"), error);
}

TEST_CASE("paged pools allocate, run out with an error, and reuse released pages") {
    PagedMlaCache<float> p(4, 2, 3, 2);
    const auto s = p.add_sequence();
    auto rows = test::random_vector<float>(7 * 6);
    p.append(s, View2<const float>(rows.data(), {5, 6}));
    CHECK(p.view(s).num_runs() == 3);
    CHECK(p.view(s).row_at(4)[1] == rows[4 * 6 + 1]);
    CHECK_THROWS_WITH_AS(p.append(s, View2<const float>(rows.data(), {2, 6})), doctest::Contains("free"), error);
    p.release(s);
    CHECK_THROWS_WITH_AS(p.view(s), doctest::Contains("no sequence"), error);
    const auto t = p.add_sequence();
    p.append(t, View2<const float>(rows.data(), {6, 6}));
    CHECK(p.size(t) == 6);
}

TEST_CASE("page table validation names the inconsistency") {
    std::vector<std::int32_t> indptr{0, 2, 3}, idx{0, 5, 1}, last{3, 4};
    PageTable ok{indptr, idx, last, 4};
    ok.validate(6);
    CHECK(ok.seq_length(0) == 7);
    CHECK(ok.seq_length(1) == 4);
    CHECK_THROWS_WITH_AS(ok.validate(5), doctest::Contains("outside the pool"), error);
    std::vector<std::int32_t> badlast{5, 4};
    CHECK_THROWS_WITH_AS((PageTable{indptr, idx, badlast, 4}.validate(6)), doctest::Contains("last_page_len[0]"), error);
    std::vector<std::int32_t> badptr{0, 3, 2};
    CHECK_THROWS_WITH_AS((PageTable{badptr, idx, last, 4}.validate(6)), doctest::Contains("decreases"), error);
}
