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

// Sizes are products of user-given extents: each constructor must refuse a product that wraps
// around (which used to allocate a small buffer and crash on the first append) with a message
// naming the function and the values.
TEST_CASE("cache constructors refuse extents whose product overflows") {
    constexpr std::int64_t big = std::int64_t(1) << 40;
    constexpr int wide = 1 << 30;
    CHECK_THROWS_WITH_AS(GqaCache<float>(wide, wide, big), doctest::Contains("GqaCache: capacity=1099511627776"), error);
    CHECK_THROWS_WITH_AS(GqaCache<half>(8, 128, std::numeric_limits<std::int64_t>::max()),
                         doctest::Contains("overflows"), error);
    // 2^62 elements fit in int64 but not in bytes (2^63 of half).
    CHECK_THROWS_WITH_AS(GqaCache<half>(1 << 20, 1 << 2, std::int64_t(1) << 40), doctest::Contains("overflows"), error);
    CHECK_THROWS_WITH_AS(GqaCache<float>(0, 4, 4), doctest::Contains("n_kv=0"), error);
    CHECK_THROWS_WITH_AS(GqaCache<float>(2, -4, 4), doctest::Contains("head_dim=-4"), error);
    CHECK_THROWS_WITH_AS(GqaCache<float>(2, 4, -1), doctest::Contains("capacity=-1"), error);

    CHECK_THROWS_WITH_AS(MlaCache<bfloat16>(512, 64, std::numeric_limits<std::int64_t>::max() / 64),
                         doctest::Contains("MlaCache"), error);
    CHECK_THROWS_WITH_AS(MlaCache<float>(std::numeric_limits<int>::max(), 64, 1), doctest::Contains("overflows int"),
                         error);
    CHECK_THROWS_WITH_AS(MlaCache<float>(0, 64, 1), doctest::Contains("rank=0"), error);

    CHECK_THROWS_WITH_AS(PagedGqaCache<float>(wide, wide, 1 << 20, 1 << 20), doctest::Contains("PagedGqaCache"), error);
    CHECK_THROWS_WITH_AS(PagedGqaCache<half>(8, 128, std::int64_t(1) << 30, std::int64_t(1) << 30),
                         doctest::Contains("num_pages=1073741824"), error);
    CHECK_THROWS_WITH_AS(PagedGqaCache<half>(8, 128, 16, std::int64_t(1) << 40), doctest::Contains("2^31"), error);
    CHECK_THROWS_WITH_AS(PagedGqaCache<half>(8, 128, -3, 16), doctest::Contains("-3 pages"), error);
    CHECK_THROWS_WITH_AS(PagedMlaCache<half>(512, 64, std::int64_t(1) << 30, std::int64_t(1) << 30),
                         doctest::Contains("PagedMlaCache"), error);
    CHECK_THROWS_WITH_AS(PagedMlaCache<float>(std::numeric_limits<int>::max(), 2, 4, 4),
                         doctest::Contains("overflows int"), error);
    CHECK_THROWS_WITH_AS(PagedMlaCache<float>(4, 2, 4, 0), doctest::Contains("of 0 tokens"), error);
}

TEST_CASE("appends refuse negative and oversized token counts without overflowing") {
    auto k = test::random_vector<float>(2 * 2 * 4);
    GqaCache<float> c(2, 4, 8);
    c.append(View3<const float>(k.data(), {1, 2, 4}), View3<const float>(k.data(), {1, 2, 4}));
    // A negative extent used to pass (the expected extents were taken from it) and shrink the cache.
    CHECK_THROWS_WITH_AS(c.append(View3<const float>(k.data(), {-1, 2, 4}), View3<const float>(k.data(), {-1, 2, 4})),
                         doctest::Contains("negative"), error);
    CHECK(c.size() == 1);
    // len + n would wrap around: must be "do not fit", never accepted.
    constexpr std::int64_t huge = std::numeric_limits<std::int64_t>::max();
    CHECK_THROWS_WITH_AS(c.append(View3<const float>(k.data(), {huge, 2, 4}, {0, 0, 1}),
                                  View3<const float>(k.data(), {huge, 2, 4}, {0, 0, 1})),
                         doctest::Contains("do not fit"), error);
    MlaCache<float> m(6, 2, 4);
    m.append(View2<const float>(k.data(), {1, 8}));
    CHECK_THROWS_WITH_AS(m.append(View2<const float>(k.data(), {-2, 8})), doctest::Contains("negative"), error);
    CHECK_THROWS_WITH_AS(m.append(View2<const float>(k.data(), {huge, 8}, {0, 1})), doctest::Contains("do not fit"),
                         error);
    CHECK(m.size() == 1);

    PagedMlaCache<float> p(6, 2, 4, 4);
    const auto s = p.add_sequence();
    p.append(s, View2<const float>(k.data(), {2, 8}));
    CHECK_THROWS_WITH_AS(p.append(s, View2<const float>(k.data(), {-1, 8})), doctest::Contains("negative"), error);
    CHECK_THROWS_WITH_AS(p.append(s, View2<const float>(k.data(), {huge, 8}, {0, 1})),
                         doctest::Contains("cannot grow"), error);
    CHECK(p.size(s) == 2);
    PagedGqaCache<float> pg(2, 4, 4, 4);
    const auto sg = pg.add_sequence();
    CHECK_THROWS_WITH_AS(pg.append(sg, View3<const float>(k.data(), {-1, 2, 4}), View3<const float>(k.data(), {-1, 2, 4})),
                         doctest::Contains("negative"), error);
    CHECK_THROWS_WITH_AS(pg.append(sg, View3<const float>(k.data(), {huge, 2, 4}, {0, 0, 1}),
                                   View3<const float>(k.data(), {huge, 2, 4}, {0, 0, 1})),
                         doctest::Contains("cannot grow"), error);
    CHECK(pg.size(sg) == 0);
}

TEST_CASE("paged views refuse a page stride that overflows") {
    std::vector<std::int32_t> indptr{0, 1}, idx{0}, last{1};
    const PageTable t{indptr, idx, last, std::int64_t(1) << 40};
    std::vector<float> pool(16);
    CHECK_THROWS_WITH_AS(paged_gqa_view(pool.data(), pool.data(), 1 << 20, 1 << 10, t, 0),
                         doctest::Contains("paged_gqa_view"), error);
    CHECK_THROWS_WITH_AS(paged_mla_view(pool.data(), 1 << 30, 1 << 20, t, 0), doctest::Contains("paged_mla_view"), error);
}
