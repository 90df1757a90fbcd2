// GGUF reader and writer: the reader against files assembled byte by byte in the test from the
// format's definition, the writer against the same definition, metadata of every type, tensor
// infos, truncated / corrupt files, and llama.cpp's q/k row permutation.
#include "transmla/io/gguf.hpp"

#include "io_test_util.hpp"
#include "test_util.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace transmla;
using namespace transmla::io;
using transmla::test::check_error;
using transmla::test::TempPath;

namespace {

/// Little-endian byte assembler for hand-built files.
struct Bytes {
    std::vector<std::uint8_t> b;
    template <class T>
    Bytes& put(T v) {
        std::uint8_t tmp[sizeof(T)];
        std::memcpy(tmp, &v, sizeof(T));
        b.insert(b.end(), tmp, tmp + sizeof(T));
        return *this;
    }
    Bytes& str(std::string_view s) {
        put<std::uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    Bytes& raw(const std::vector<std::uint8_t>& v) {
        b.insert(b.end(), v.begin(), v.end());
        return *this;
    }
    Bytes& pad_to(std::size_t a) {
        while (b.size() % a) b.push_back(0);
        return *this;
    }
};


std::vector<float> random_floats(std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = float(transmla::test::normal());
    return v;
}

/// A valid file with one metadata value and two F32 tensors, built by hand.
Bytes small_file(std::uint32_t version = 3) {
    Bytes f;
    f.put<std::uint32_t>(0x46554747u).put<std::uint32_t>(version).put<std::uint64_t>(2).put<std::uint64_t>(1);
    f.str("general.name").put<std::uint32_t>(8).str("tiny");
    f.str("a").put<std::uint32_t>(2).put<std::uint64_t>(4).put<std::uint64_t>(2).put<std::uint32_t>(0).put<std::uint64_t>(0);
    f.str("b").put<std::uint32_t>(1).put<std::uint64_t>(3).put<std::uint32_t>(0).put<std::uint64_t>(32);
    f.pad_to(32);
    for (int i = 0; i < 8; ++i) f.put<float>(float(i) + 0.5f);  // a: 32 bytes at 0
    for (int i = 0; i < 3; ++i) f.put<float>(-float(i) - 1.0f);  // b: 12 bytes at 32
    return f;
}

}  // namespace

TEST_CASE("reader: a hand-built v2 and v3 file") {
    for (std::uint32_t version : {2u, 3u}) {
        CAPTURE(version);
        TempPath p(".gguf");
        transmla::test::write_bytes(p, small_file(version).b);
        const GgufFile f(p);
        CHECK(f.version() == version);
        CHECK(f.alignment() == 32);
        CHECK(f.meta_string("general.name") == "tiny");
        REQUIRE(f.tensors().size() == 2);
        const auto& a = f.tensor("a");
        CHECK(a.n_dims == 2);
        CHECK(a.ne[0] == 4);
        CHECK(a.ne[1] == 2);
        CHECK(a.shape() == std::vector<std::int64_t>{2, 4});
        CHECK(a.type == GgmlType::F32);
        CHECK(a.offset == 0);
        CHECK(a.n_bytes == 32);
        const auto va = f.dequantize("a");
        REQUIRE(va.size() == 8);
        for (int i = 0; i < 8; ++i) CHECK(va[std::size_t(i)] == float(i) + 0.5f);  // row-major [2][4]
        const auto vb = f.dequantize("b");
        CHECK(vb == std::vector<float>{-1.0f, -2.0f, -3.0f});
        CHECK(f.tensor("b").offset == 32);
        CHECK(f.data_offset() % 32 == 0);
        CHECK(f.raw("b").size() == 12);
    }
}

TEST_CASE("reader: general.alignment moves the data section") {
    Bytes f;
    f.put<std::uint32_t>(0x46554747u).put<std::uint32_t>(3).put<std::uint64_t>(1).put<std::uint64_t>(1);
    f.str("general.alignment").put<std::uint32_t>(4).put<std::uint32_t>(256);
    f.str("w").put<std::uint32_t>(1).put<std::uint64_t>(2).put<std::uint32_t>(0).put<std::uint64_t>(0);
    const std::size_t header_end = f.b.size();
    f.pad_to(256);
    CHECK(f.b.size() == 256);
    CHECK(header_end < 256);
    f.put<float>(3.0f).put<float>(-7.25f);
    TempPath p(".gguf");
    transmla::test::write_bytes(p, f.b);
    const GgufFile g(p);
    CHECK(g.alignment() == 256);
    CHECK(g.data_offset() == 256);
    CHECK(g.dequantize("w") == std::vector<float>{3.0f, -7.25f});
}

TEST_CASE("writer: bytes follow the format definition") {
    TempPath p(".gguf");
    GgufWriter w;
    w.set("k", GgufValue::u16(0xBEEF));
    const std::vector<float> x{1.5f, -2.0f};
    w.add_tensor("t", {2}, x);
    w.write(p);
    const auto b = transmla::test::read_bytes(p);
    Bytes e;
    e.put<std::uint32_t>(0x46554747u).put<std::uint32_t>(3).put<std::uint64_t>(1).put<std::uint64_t>(1);
    e.str("k").put<std::uint32_t>(2).put<std::uint16_t>(0xBEEF);
    e.str("t").put<std::uint32_t>(1).put<std::uint64_t>(2).put<std::uint32_t>(0).put<std::uint64_t>(0);
    e.pad_to(32).put<float>(1.5f).put<float>(-2.0f);
    CHECK(b == e.b);
}

TEST_CASE("metadata: every value type round-trips through the writer and reader") {
    const std::int64_t r = transmla::test::uniform_int(1, 1000000);  // random part of the values
    std::vector<std::pair<std::string, GgufValue>> kv = {
        {"u8", GgufValue::u8(std::uint8_t(200 + r % 50))},
        {"i8", GgufValue::i8(std::int8_t(-100 - r % 28))},
        {"u16", GgufValue::u16(std::uint16_t(60000 + r % 5000))},
        {"i16", GgufValue::i16(std::int16_t(-30000 - r % 2000))},
        {"u32", GgufValue::u32(std::uint32_t(4000000000u + std::uint32_t(r)))},
        {"i32", GgufValue::i32(std::int32_t(-2000000000 - std::int32_t(r)))},
        {"u64", GgufValue::u64(std::numeric_limits<std::uint64_t>::max() - std::uint64_t(r))},
        {"i64", GgufValue::i64(std::numeric_limits<std::int64_t>::min() + r)},
        {"f32", GgufValue::f32(float(transmla::test::normal()))},
        {"f64", GgufValue::f64(transmla::test::normal() * 1e300)},
        {"bool_t", GgufValue::boolean(true)},
        {"bool_f", GgufValue::boolean(false)},
        {"str", GgufValue::string("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac " + std::to_string(r))},
        {"str_empty", GgufValue::string("")},
        {"str_nul", GgufValue::string(std::string("a\0b", 3))},
        {"arr_strings", GgufValue::strings({"x", "", "\xf0\x9f\x98\x80", std::to_string(r)})},
        {"arr_i32", GgufValue::i32s({1, -2, std::int32_t(r), std::numeric_limits<std::int32_t>::min()})},
        {"arr_f32", GgufValue::f32s(random_floats(17))},
        {"arr_empty", GgufValue::array(GgufType::UINT64, {})},
        {"arr_bool", GgufValue::array(GgufType::BOOL, {GgufValue::boolean(true), GgufValue::boolean(false)})},
        {"arr_u8", GgufValue::array(GgufType::UINT8, {GgufValue::u8(0), GgufValue::u8(255)})},
        {"arr_i64", GgufValue::array(GgufType::INT64, {GgufValue::i64(-r), GgufValue::i64(r)})},
        {"arr_f64", GgufValue::array(GgufType::FLOAT64, {GgufValue::f64(0.1), GgufValue::f64(-1e-300)})},
        {"nested", GgufValue::array(GgufType::ARRAY,
                                    {GgufValue::strings({"a", "b"}), GgufValue::strings({}),
                                     GgufValue::strings({std::to_string(r)})})},
        {"nested2", GgufValue::array(GgufType::ARRAY,
                                     {GgufValue::array(GgufType::ARRAY, {GgufValue::i32s({1, 2, 3})})})},
    };
    for (std::uint32_t version : {2u, 3u}) {
        CAPTURE(version);
        TempPath p(".gguf");
        GgufWriter w;
        for (const auto& [k, v] : kv) w.set(k, v);
        w.write(p, version);
        const GgufFile f(p);
        CHECK(f.version() == version);
        REQUIRE(f.metadata().size() == kv.size());
        for (std::size_t i = 0; i < kv.size(); ++i) {
            CAPTURE(kv[i].first);
            CHECK(f.metadata()[i].first == kv[i].first);  // file order kept
            CHECK(f.meta(kv[i].first) == kv[i].second);
            CHECK(f.meta(kv[i].first).type() == kv[i].second.type());
        }
        CHECK(f.meta_int("u8") == 200 + r % 50);
        CHECK(f.meta_int("i8") == -100 - r % 28);
        CHECK(f.meta_int("i16") == -30000 - r % 2000);
        CHECK(f.meta_int("u32") == 4000000000LL + r);
        CHECK(f.meta_int("i32") == -2000000000LL - r);
        CHECK(f.meta("u64").as_uint() == std::numeric_limits<std::uint64_t>::max() - std::uint64_t(r));
        CHECK(f.meta_int("i64") == std::numeric_limits<std::int64_t>::min() + r);
        CHECK(f.meta_float("f32") == double(float(kv[8].second.as_float())));
        CHECK(f.meta_float("f64") == kv[9].second.as_float());
        CHECK(f.meta_float("u16") == double(60000 + r % 5000));  // integers read as numbers
        CHECK(f.meta_bool("bool_t"));
        CHECK_FALSE(f.meta_bool("bool_f"));
        CHECK(f.meta_string("str_nul") == std::string("a\0b", 3));
        CHECK(f.meta_strings("arr_strings") == std::vector<std::string>{"x", "", "\xf0\x9f\x98\x80", std::to_string(r)});
        CHECK(f.meta_i32s("arr_i32") == std::vector<std::int32_t>{1, -2, std::int32_t(r), std::numeric_limits<std::int32_t>::min()});
        CHECK(f.meta_i64s("arr_i64") == std::vector<std::int64_t>{-r, r});
        CHECK(f.meta_f32s("arr_f32").size() == 17);
        CHECK(f.meta("arr_empty").size() == 0);
        CHECK(f.meta("arr_empty").elem_type() == GgufType::UINT64);
        CHECK(f.meta("nested").elem_type() == GgufType::ARRAY);
        CHECK(f.meta("nested")[0][1].as_string() == "b");
        CHECK(f.meta("nested2")[0][0][2].as_int() == 3);
    }
}

TEST_CASE("metadata: typed access errors name the file and key") {
    TempPath p(".gguf");
    GgufWriter w;
    w.set("s", GgufValue::string("x"));
    w.set("i", GgufValue::i64(std::int64_t(1) << 40));
    w.set("u", GgufValue::u64(std::numeric_limits<std::uint64_t>::max()));
    w.set("neg", GgufValue::i8(-3));
    w.write(p);
    const GgufFile f(p);
    check_error([&] { f.meta("nope"); }, {p.str(), "'nope'", "not found"});
    check_error([&] { f.meta_int("s"); }, {p.str(), "'s'", "not an integer"});
    check_error([&] { f.meta_string("i"); }, {p.str(), "'i'", "not a string"});
    check_error([&] { f.meta_bool("i"); }, {"'i'", "not a bool"});
    check_error([&] { f.meta_int("u"); }, {"'u'", "does not fit"});
    check_error([&] { f.meta_strings("s"); }, {"'s'", "not an array"});
    check_error([&] { f.meta("neg").as_uint(); }, {"negative"});
    CHECK(f.meta_int_or("nope", 7) == 7);
    CHECK(f.meta_string_or("nope", "d") == "d");
    CHECK(f.meta_int_or("i", 7) == (std::int64_t(1) << 40));
    CHECK(f.find("nope") == nullptr);
    CHECK(f.has("s"));
    check_error([&] { f.tensor("missing.weight"); }, {p.str(), "'missing.weight'", "not found"});
    check_error([&] { GgufValue::array(GgufType::INT32, {GgufValue::u8(1)}); }, {"item 0", "uint8"});
}

TEST_CASE("tensors: writer stores F32, F16, BF16, Q8_0, Q4_1 and the reader returns them") {
    for (std::uint32_t alignment : {32u, 64u, 8u}) {
        CAPTURE(alignment);
        TempPath p(".gguf");
        GgufWriter w(alignment);
        const auto a = random_floats(3 * 64), b = random_floats(7), c = random_floats(2 * 3 * 32),
                   d = random_floats(5 * 64), e = random_floats(4 * 96), g = random_floats(2 * 1 * 3 * 32),
                   h = random_floats(2 * 32);
        w.add_tensor("a.f32", {3, 64}, a);
        w.add_tensor("b.f32", {7}, b);
        w.add_tensor("c.f16", {2, 3, 32}, c, GgmlType::F16);
        w.add_tensor("d.q8_0", {5, 64}, d, GgmlType::Q8_0);
        w.add_tensor("e.q4_1", {4, 96}, e, GgmlType::Q4_1);
        w.add_tensor("g.f32", {2, 1, 3, 32}, g);
        w.add_tensor("h.bf16", {2, 32}, h, GgmlType::BF16);
        w.write(p);
        const GgufFile f(p);
        CHECK(f.alignment() == alignment);
        CHECK(f.data_offset() % alignment == 0);
        REQUIRE(f.tensors().size() == 7);
        for (const auto& t : f.tensors()) {
            CAPTURE(t.name);
            CHECK(t.offset % alignment == 0);
            CHECK(t.n_bytes == ggml_row_bytes(t.type, t.n_elements()));
        }
        CHECK(f.tensor("a.f32").shape() == std::vector<std::int64_t>{3, 64});
        CHECK(f.tensor("a.f32").ne == std::array<std::int64_t, 4>{64, 3, 1, 1});
        CHECK(f.tensor("c.f16").ne == std::array<std::int64_t, 4>{32, 3, 2, 1});
        CHECK(f.tensor("g.f32").ne == std::array<std::int64_t, 4>{32, 3, 1, 2});
        CHECK(f.tensor("g.f32").n_dims == 4);
        CHECK(f.tensor("d.q8_0").type == GgmlType::Q8_0);
        CHECK(f.tensor("e.q4_1").type == GgmlType::Q4_1);
        CHECK(f.dequantize("a.f32") == a);
        CHECK(f.dequantize("b.f32") == b);
        CHECK(f.dequantize("g.f32") == g);
        const auto cc = f.dequantize("c.f16");
        const auto hh = f.dequantize("h.bf16");
        for (std::size_t i = 0; i < c.size(); ++i) CHECK(cc[i] == to_float(from_float<half>(c[i])));
        for (std::size_t i = 0; i < h.size(); ++i) CHECK(hh[i] == to_float(from_float<bfloat16>(h[i])));
        // quantized: within half a step of each block (plus the fp16 rounding of the scales)
        const auto dd = f.dequantize("d.q8_0");
        for (std::size_t blk = 0; blk < d.size() / 32; ++blk) {
            float amax = 0;
            for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(d[blk * 32 + std::size_t(j)]));
            for (int j = 0; j < 32; ++j) {
                const std::size_t i = blk * 32 + std::size_t(j);
                CHECK(std::abs(dd[i] - d[i]) <= amax / 127.0f * 0.5f + amax * 2e-3f);
            }
        }
        const auto ee = f.dequantize("e.q4_1");
        for (std::size_t blk = 0; blk < e.size() / 32; ++blk) {
            float mn = e[blk * 32], mx = mn;
            for (int j = 0; j < 32; ++j) {
                mn = std::min(mn, e[blk * 32 + std::size_t(j)]);
                mx = std::max(mx, e[blk * 32 + std::size_t(j)]);
            }
            for (int j = 0; j < 32; ++j) {
                const std::size_t i = blk * 32 + std::size_t(j);
                CHECK(std::abs(ee[i] - e[i]) <= (mx - mn) / 15.0f * 0.5f + (std::abs(mn) + std::abs(mx)) * 2e-3f);
            }
        }
        // the raw bytes are exactly what the type's encoder produces
        std::vector<std::uint8_t> enc(ggml_row_bytes(GgmlType::Q8_0, std::int64_t(d.size())));
        quantize(GgmlType::Q8_0, d.data(), enc.data(), std::int64_t(d.size()));
        const auto raw = f.raw("d.q8_0");
        REQUIRE(raw.size() == enc.size());
        CHECK(std::memcmp(raw.data(), enc.data(), enc.size()) == 0);
        std::vector<float> into(d.size());
        f.dequantize_into("d.q8_0", into);
        CHECK(into == dd);
        std::vector<float> wrong(d.size() + 1);
        check_error([&] { f.dequantize_into("d.q8_0", wrong); }, {"'d.q8_0'", "destination"});
    }
}

TEST_CASE("writer: misuse is reported and the target is written atomically") {
    GgufWriter w;
    const auto x = random_floats(64);
    w.add_tensor("x", {2, 32}, x, GgmlType::Q4_1);
    check_error([&] { w.add_tensor("x", {2, 32}, x); }, {"duplicate", "'x'"});
    check_error([&] { w.add_tensor("y", {2, 30}, std::span<const float>(x).first(60), GgmlType::Q8_0); },
                {"'y'", "multiple", "32"});
    check_error([&] { w.add_tensor("z", {3, 32}, x); }, {"'z'", "64 values"});
    check_error([&] { w.add_tensor("q", {64}, x, GgmlType::Q6_K); }, {"Q6_K"});
    check_error([&] { w.add_raw_tensor("r", {32}, GgmlType::Q8_0, std::vector<std::uint8_t>(33)); }, {"'r'", "34 bytes"});
    check_error([&] { GgufWriter bad(24); }, {"power of two"});
    std::vector<float> nan = x;
    nan[5] = std::numeric_limits<float>::quiet_NaN();
    check_error([&] { w.add_tensor("n", {64}, nan, GgmlType::Q8_0); }, {"element 5", "not finite"});

    TempPath p(".gguf");
    transmla::test::write_bytes(p, {1, 2, 3});  // replaced by the complete new file
    w.write(p);
    CHECK(GgufFile(p).tensors().size() == 1);
    const std::string missing_dir = p.str() + ".nodir/sub/out.gguf";
    check_error([&] { w.write(missing_dir); }, {missing_dir});
    CHECK_FALSE(std::filesystem::exists(p.str() + ".nodir"));
}

TEST_CASE("reader: truncated files throw naming the file and offset, never crash") {
    GgufWriter w;
    w.set("general.architecture", GgufValue::string("llama"));
    w.set("arr", GgufValue::strings({"a", "bb", "ccc"}));
    const auto x = random_floats(4 * 64);
    w.add_tensor("blk.0.w", {4, 64}, x, GgmlType::Q8_0);
    w.add_tensor("blk.0.n", {64}, std::span<const float>(x).first(64));
    TempPath full(".gguf");
    w.write(full);
    const auto bytes = transmla::test::read_bytes(full);
    const GgufFile ok(full);
    const std::size_t data_start = std::size_t(ok.data_offset());
    TempPath p(".gguf");
    for (std::size_t len = 0; len < bytes.size(); len += (len < data_start + 8 ? 1 : 97)) {
        CAPTURE(len);
        transmla::test::write_bytes(p, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + std::ptrdiff_t(len)));
        bool thrown = false;
        try {
            GgufFile f(p);
        } catch (const transmla::error& e) {
            thrown = true;
            const std::string msg = e.what();
            INFO(msg);
            CHECK(msg.find(p.str()) != std::string::npos);
            CHECK((msg.find("offset") != std::string::npos || msg.find("bad magic") != std::string::npos));
            if (len > data_start) CHECK(msg.find("tensor '") != std::string::npos);
        }
        CHECK(thrown);
    }
}

TEST_CASE("reader: corrupt headers give errors naming what and where") {
    TempPath p(".gguf");
    auto expect = [&](const Bytes& f, std::initializer_list<std::string> parts) {
        transmla::test::write_bytes(p, f.b);
        check_error([&] { GgufFile g(p); }, parts);
    };
    auto header = [](std::uint32_t version, std::uint64_t nt, std::uint64_t nkv) {
        Bytes f;
        f.put<std::uint32_t>(0x46554747u).put<std::uint32_t>(version).put<std::uint64_t>(nt).put<std::uint64_t>(nkv);
        return f;
    };
    {
        Bytes f = small_file();
        f.b[0] = 'X';
        expect(f, {p.str(), "bad magic"});
    }
    expect(header(1, 0, 0), {"version 1", "offset 4"});
    expect(header(4, 0, 0), {"version 4"});
    expect(header(0x03000000u, 0, 0), {"big-endian"});
    expect(header(3, 0, 1).str("k").put<std::uint32_t>(13).put<std::uint32_t>(0), {"'k'", "unknown value type 13", "offset 33"});
    expect(header(3, 0, 1).str("k").put<std::uint32_t>(9).put<std::uint32_t>(42).put<std::uint64_t>(0),
           {"'k'", "unknown array element type 42"});
    expect(header(3, 0, 1).str("k").put<std::uint32_t>(9).put<std::uint32_t>(5).put<std::uint64_t>(1ull << 60),
           {"'k'", "array of"});
    expect(header(3, 0, 1).str("k").put<std::uint32_t>(7).put<std::uint8_t>(2), {"'k'", "bool value 2"});
    expect(header(3, 0, 2).str("k").put<std::uint32_t>(0).put<std::uint8_t>(1).str("k").put<std::uint32_t>(0).put<std::uint8_t>(1),
           {"duplicate metadata key 'k'"});
    expect(header(3, 0, 1).str("k").put<std::uint32_t>(8).put<std::uint64_t>(1000).put<std::uint32_t>(0),
           {"truncated", "string value"});
    expect(header(3, 1ull << 50, 0), {"tensor count"});
    expect(header(3, 0, 1ull << 50), {"metadata count"});
    expect(header(3, 0, 1).str("general.alignment").put<std::uint32_t>(4).put<std::uint32_t>(48), {"general.alignment", "48"});
}

TEST_CASE("reader: corrupt tensor infos give errors naming the tensor and offset") {
    TempPath p(".gguf");
    auto build = [](std::uint32_t nd, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t off,
                    std::size_t data_bytes) {
        Bytes f;
        f.put<std::uint32_t>(0x46554747u).put<std::uint32_t>(3).put<std::uint64_t>(1).put<std::uint64_t>(0);
        f.str("blk.0.x").put<std::uint32_t>(nd);
        for (auto e : ne) f.put<std::uint64_t>(e);
        f.put<std::uint32_t>(type).put<std::uint64_t>(off);
        f.pad_to(32);
        for (std::size_t i = 0; i < data_bytes; ++i) f.put<std::uint8_t>(std::uint8_t(i * 7));
        return f;
    };
    auto expect = [&](const Bytes& f, std::initializer_list<std::string> parts) {
        transmla::test::write_bytes(p, f.b);
        check_error([&] { GgufFile g(p); }, parts);
    };
    // the valid baseline: 4x4 F32 = 64 bytes
    transmla::test::write_bytes(p, build(2, {4, 4}, 0, 0, 64).b);
    CHECK(GgufFile(p).dequantize("blk.0.x").size() == 16);

    expect(build(2, {4, 4}, 0, 0, 63), {"'blk.0.x'", "extends past the end", "data offset 0"});
    expect(build(2, {4, 4}, 0, 32, 64), {"'blk.0.x'", "data offset 32", "extends past the end"});
    expect(build(2, {4, 4}, 0, 1ull << 62, 64), {"'blk.0.x'", "extends past the end"});
    expect(build(2, {4, 4}, 0, 16, 128), {"'blk.0.x'", "not a multiple of the alignment", "offset"});
    expect(build(2, {4, 4}, 99, 0, 64), {"'blk.0.x'", "unknown(99)", "offset"});
    expect(build(2, {4, 4}, 16, 0, 64), {"'blk.0.x'", "IQ2_XXS", "not supported", "offset"});
    expect(build(0, {}, 0, 0, 64), {"'blk.0.x'", "n_dims = 0"});
    expect(build(5, {1, 1, 1, 1, 1}, 0, 0, 64), {"'blk.0.x'", "n_dims = 5"});
    expect(build(2, {4, 0}, 0, 0, 64), {"'blk.0.x'", "ne[1] = 0"});
    expect(build(1, {48}, 8, 0, 64), {"'blk.0.x'", "not a multiple", "Q8_0"});
    expect(build(3, {1ull << 30, 1ull << 30, 1ull << 30}, 0, 0, 64), {"'blk.0.x'", "too many elements"});
    {
        Bytes f;
        f.put<std::uint32_t>(0x46554747u).put<std::uint32_t>(3).put<std::uint64_t>(2).put<std::uint64_t>(0);
        for (int k = 0; k < 2; ++k)
            f.str("dup").put<std::uint32_t>(1).put<std::uint64_t>(4).put<std::uint32_t>(0).put<std::uint64_t>(0);
        f.pad_to(32);
        for (int i = 0; i < 16; ++i) f.put<std::uint8_t>(1);
        expect(f, {"duplicate tensor name 'dup'"});
    }
    check_error([] { GgufFile g("/nonexistent/dir/model.gguf"); }, {"/nonexistent/dir/model.gguf", "cannot open"});
}

TEST_CASE("reader: random byte corruption is either read or rejected with transmla::error") {
    GgufWriter w;
    w.set("general.architecture", GgufValue::string("llama"));
    w.set("n", GgufValue::u32(7));
    w.set("nested", GgufValue::array(GgufType::ARRAY, {GgufValue::strings({"a", "b"}), GgufValue::strings({"c"})}));
    const auto x = random_floats(2 * 64);
    w.add_tensor("t.q", {2, 64}, x, GgmlType::Q4_1);
    w.add_tensor("t.f", {64}, std::span<const float>(x).first(64));
    TempPath full(".gguf");
    w.write(full);
    const auto bytes = transmla::test::read_bytes(full);
    const std::size_t head = std::size_t(GgufFile(full).data_offset());
    TempPath p(".gguf");
    int rejected = 0;
    for (int trial = 0; trial < 300; ++trial) {
        auto b = bytes;
        const int flips = int(transmla::test::uniform_int(1, 3));
        for (int k = 0; k < flips; ++k)
            b[std::size_t(transmla::test::uniform_int(0, std::int64_t(head) - 1))] ^=
                std::uint8_t(1u << transmla::test::uniform_int(0, 7));
        transmla::test::write_bytes(p, b);
        try {
            GgufFile f(p);
            for (const auto& t : f.tensors()) (void)f.dequantize(t);  // must stay inside the mapping
        } catch (const transmla::error&) {
            ++rejected;
        }
    }
    MESSAGE(rejected << " of 300 corrupted headers rejected");
    CHECK(rejected > 0);
}

TEST_CASE("llama q/k permutation: permute matches llama.cpp's reshape definition, unpermute inverts it") {
    const int n_heads = int(transmla::test::uniform_int(1, 4)), in = int(transmla::test::uniform_int(1, 9));
    const int d = 2 * int(transmla::test::uniform_int(1, 8));
    CAPTURE(n_heads);
    CAPTURE(d);
    CAPTURE(in);
    const auto hf = random_floats(std::size_t(n_heads * d * in));
    // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)
    // → gguf[h][j][a][:] = hf[h][a][j][:]
    std::vector<float> expect(hf.size());
    for (int h = 0; h < n_heads; ++h)
        for (int j = 0; j < d / 2; ++j)
            for (int a = 0; a < 2; ++a)
                for (int c = 0; c < in; ++c)
                    expect[std::size_t(((h * (d / 2) + j) * 2 + a) * in + c)] =
                        hf[std::size_t(((h * 2 + a) * (d / 2) + j) * in + c)];
    auto g = hf;
    permute_llama_qk(g, n_heads, d, in);
    CHECK(g == expect);
    unpermute_llama_qk(g, n_heads, d, in);
    CHECK(g == hf);
    // tiny explicit case: one head of width 4, one input: GGUF rows [r0 r1 r2 r3] → HF [r0 r2 r1 r3]
    std::vector<float> t{10, 11, 12, 13};
    unpermute_llama_qk(t, 1, 4, 1);
    CHECK(t == std::vector<float>{10, 12, 11, 13});
    std::vector<float> bad(10);
    check_error([&] { unpermute_llama_qk(bad, 1, 4, 3); }, {"unpermute_llama_qk", "10 values"});
    check_error([&] { permute_llama_qk(bad, 1, 5, 2); }, {"permute_llama_qk", "even"});
}
