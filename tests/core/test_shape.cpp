#include "test_util.hpp"
#include "transmla/shape.hpp"
using namespace transmla;
TEST_CASE("static GQA shape") {
    constexpr GqaShape<32, 8, 128> s;
    static_assert(s.group() == 4 && s.cache_elems_per_token() == 2 * 8 * 128);
    CHECK(s.kv_width() == 1024);
}
