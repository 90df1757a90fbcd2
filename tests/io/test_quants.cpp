// Dequantisation of every supported ggml type, checked three ways:
//  1. blocks of random bytes decoded by an independent implementation (gguf-py's numpy
//     dequantizers, tests/data/ggml_blocks.json);
//  2. blocks packed in this test from random codes and scales following the block-layout
//     definition, whose values are known by construction;
//  3. quantize → dequantize round trips of the types the writer produces (exact on values that
//     are representable, within half a step otherwise).
#include "transmla/io/ggml_types.hpp"

#include "io_test_util.hpp"
#include "test_util.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

using namespace transmla;
using namespace transmla::io;
using transmla::test::uniform;
using transmla::test::uniform_int;

namespace {

// ---- little packing helpers of the test (little-endian) ----
void put_f16(std::vector<std::uint8_t>& b, std::size_t at, float x) {
    const std::uint16_t h = bits_of(from_float<half>(x));
    b[at] = std::uint8_t(h & 0xFF);
    b[at + 1] = std::uint8_t(h >> 8);
}
/// A random scale, exactly representable in fp16.
float rnd_f16(double lo, double hi) { return to_float(from_float<half>(float(uniform(lo, hi)))); }
int rnd(int lo, int hi) { return int(uniform_int(lo, hi)); }

struct Built {
    std::vector<std::uint8_t> bytes;
    std::vector<float> values;  // what the block means, computed from the codes
};

// Q4_0 / Q4_1: element j < 16 in the low nibble of qs[j], element j + 16 in its high nibble.
Built build_q4(bool with_min) {
    Built r;
    r.bytes.assign(with_min ? 20 : 18, 0);
    const float d = rnd_f16(-1, 1), m = rnd_f16(-2, 2);
    put_f16(r.bytes, 0, d);
    if (with_min) put_f16(r.bytes, 2, m);
    const std::size_t qs = with_min ? 4 : 2;
    int q[32];
    for (int& x : q) x = rnd(0, 15);
    for (int j = 0; j < 16; ++j) r.bytes[qs + std::size_t(j)] = std::uint8_t(q[j] | (q[j + 16] << 4));
    for (int j = 0; j < 32; ++j) r.values.push_back(with_min ? d * float(q[j]) + m : d * float(q[j] - 8));
    return r;
}
// Q5_0 / Q5_1: low 4 bits as Q4, the fifth bit of element j is bit j of the u32 qh.
Built build_q5(bool with_min) {
    Built r;
    r.bytes.assign(with_min ? 24 : 22, 0);
    const float d = rnd_f16(-1, 1), m = rnd_f16(-2, 2);
    put_f16(r.bytes, 0, d);
    if (with_min) put_f16(r.bytes, 2, m);
    const std::size_t qh_at = with_min ? 4 : 2, qs = qh_at + 4;
    int q[32];
    for (int& x : q) x = rnd(0, 31);
    std::uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= std::uint32_t(q[j] >> 4) << j;
    for (int k = 0; k < 4; ++k) r.bytes[qh_at + std::size_t(k)] = std::uint8_t(qh >> (8 * k));
    for (int j = 0; j < 16; ++j) r.bytes[qs + std::size_t(j)] = std::uint8_t((q[j] & 15) | ((q[j + 16] & 15) << 4));
    for (int j = 0; j < 32; ++j) r.values.push_back(with_min ? d * float(q[j]) + m : d * float(q[j] - 16));
    return r;
}
// Q8_0: fp16 d, 32 int8. Q8_1: fp16 d, fp16 s (= d · Σq), 32 int8.
Built build_q8(bool q8_1) {
    Built r;
    r.bytes.assign(q8_1 ? 36 : 34, 0);
    const float d = rnd_f16(-1, 1);
    put_f16(r.bytes, 0, d);
    const std::size_t qs = q8_1 ? 4 : 2;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
        const int q = rnd(-128, 127);
        sum += q;
        r.bytes[qs + std::size_t(j)] = std::uint8_t(std::int8_t(q));
        r.values.push_back(d * float(q));
    }
    if (q8_1) put_f16(r.bytes, 2, d * float(sum));
    return r;
}
// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min, one per 16 weights), qs[64]
// (2-bit codes: weight 128n + 32g + l sits in qs[32n + l] at bits 2g), fp16 d, fp16 dmin.
// value = d·scale·q − dmin·min.
Built build_q2_k() {
    Built r;
    r.bytes.assign(84, 0);
    const float d = rnd_f16(-0.5, 0.5), dmin = rnd_f16(-0.5, 0.5);
    int sc[16], mn[16], q[256];
    for (int i = 0; i < 16; ++i) {
        sc[i] = rnd(0, 15);
        mn[i] = rnd(0, 15);
        r.bytes[std::size_t(i)] = std::uint8_t(sc[i] | (mn[i] << 4));
    }
    for (int e = 0; e < 256; ++e) {
        q[e] = rnd(0, 3);
        const int n = e / 128, g = (e % 128) / 32, l = e % 32;
        r.bytes[16 + std::size_t(32 * n + l)] |= std::uint8_t(q[e] << (2 * g));
    }
    put_f16(r.bytes, 80, d);
    put_f16(r.bytes, 82, dmin);
    for (int e = 0; e < 256; ++e) r.values.push_back(d * float(sc[e / 16]) * float(q[e]) - dmin * float(mn[e / 16]));
    return r;
}
// Q3_K (110 bytes): hmask[32] (high bit of weight 128n + 32g + l: bit 4n + g of hmask[l]),
// qs[64] (low 2 bits, as Q2_K), scales[12] (sixteen 6-bit values s: low 4 bits in the low nibbles
// of bytes 0..7 for s0..s7 and the high nibbles for s8..s15, high 2 bits of s_i at bits 2(i/4)
// of byte 8 + i%4), fp16 d. value = d·(s − 32)·(q3 − 4), q3 in 0..7.
Built build_q3_k() {
    Built r;
    r.bytes.assign(110, 0);
    const float d = rnd_f16(-0.5, 0.5);
    int s[16], q[256];
    for (int i = 0; i < 16; ++i) {
        s[i] = rnd(0, 63);
        const std::size_t lo_byte = 96 + std::size_t(i % 8);
        r.bytes[lo_byte] |= std::uint8_t(i < 8 ? (s[i] & 15) : ((s[i] & 15) << 4));
        r.bytes[96 + 8 + std::size_t(i % 4)] |= std::uint8_t((s[i] >> 4) << (2 * (i / 4)));
    }
    for (int e = 0; e < 256; ++e) {
        q[e] = rnd(0, 7);
        const int n = e / 128, g = (e % 128) / 32, l = e % 32;
        r.bytes[32 + std::size_t(32 * n + l)] |= std::uint8_t((q[e] & 3) << (2 * g));
        if (q[e] & 4) r.bytes[std::size_t(l)] |= std::uint8_t(1u << (4 * n + g));
    }
    put_f16(r.bytes, 108, d);
    for (int e = 0; e < 256; ++e) r.values.push_back(d * float(s[e / 16] - 32) * float(q[e] - 4));
    return r;
}
// The 12-byte packing of eight 6-bit (scale, min) pairs used by Q4_K and Q5_K:
// j < 4: byte j = scale, byte j + 4 = min (low 6 bits each); j >= 4: byte j + 4 holds the low
// nibbles (scale low, min high) and the top 2 bits go to bits 6..7 of byte j − 4 (scale) and
// byte j (min).
void pack_k_scales(std::uint8_t* b, const int* sc, const int* mn) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            b[j] |= std::uint8_t(sc[j]);
            b[j + 4] |= std::uint8_t(mn[j]);
        } else {
            b[j + 4] |= std::uint8_t((sc[j] & 15) | ((mn[j] & 15) << 4));
            b[j - 4] |= std::uint8_t((sc[j] >> 4) << 6);
            b[j] |= std::uint8_t((mn[j] >> 4) << 6);
        }
    }
}
// Q4_K (144 bytes): fp16 d, fp16 dmin, scales[12], qs[128]; 8 sub-blocks of 32 weights; weights
// 64c..64c+31 in the low nibbles of qs[32c..], 64c+32.. in the high nibbles.
// Q5_K (176 bytes): as Q4_K with qh[32] before qs: the fifth bit of weight 64c + 32h + l is bit
// 2c + h of qh[l]. value = d·scale·q − dmin·min.
Built build_q45_k(bool five) {
    Built r;
    r.bytes.assign(five ? 176 : 144, 0);
    const float d = rnd_f16(-0.1, 0.1), dmin = rnd_f16(-0.1, 0.1);
    put_f16(r.bytes, 0, d);
    put_f16(r.bytes, 2, dmin);
    int sc[8], mn[8], q[256];
    for (int j = 0; j < 8; ++j) {
        sc[j] = rnd(0, 63);
        mn[j] = rnd(0, 63);
    }
    pack_k_scales(r.bytes.data() + 4, sc, mn);
    const std::size_t qs = five ? 48 : 16;
    for (int e = 0; e < 256; ++e) {
        q[e] = rnd(0, five ? 31 : 15);
        const int c = e / 64, h = (e % 64) / 32, l = e % 32;
        r.bytes[qs + std::size_t(32 * c + l)] |= std::uint8_t((q[e] & 15) << (4 * h));
        if (five && (q[e] & 16)) r.bytes[16 + std::size_t(l)] |= std::uint8_t(1u << (2 * c + h));
    }
    for (int e = 0; e < 256; ++e) r.values.push_back(d * float(sc[e / 32]) * float(q[e]) - dmin * float(mn[e / 32]));
    return r;
}
// Q6_K (210 bytes): ql[128], qh[64], int8 scales[16] (one per 16 weights), fp16 d. Weight
// 128n + 32k + l (k = 0..3): low 4 bits in ql[64n + l + 32(k&1)] (low nibble for k < 2, high for
// k >= 2), high 2 bits at bits 2k of qh[32n + l]. value = d·scale·(q − 32), q in 0..63.
Built build_q6_k() {
    Built r;
    r.bytes.assign(210, 0);
    const float d = rnd_f16(-0.05, 0.05);
    int sc[16], q[256];
    for (int i = 0; i < 16; ++i) {
        sc[i] = rnd(-128, 127);
        r.bytes[192 + std::size_t(i)] = std::uint8_t(std::int8_t(sc[i]));
    }
    for (int e = 0; e < 256; ++e) {
        q[e] = rnd(0, 63);
        const int n = e / 128, k = (e % 128) / 32, l = e % 32;
        r.bytes[std::size_t(64 * n + l + 32 * (k & 1))] |= std::uint8_t((q[e] & 15) << (k >= 2 ? 4 : 0));
        r.bytes[128 + std::size_t(32 * n + l)] |= std::uint8_t((q[e] >> 4) << (2 * k));
    }
    put_f16(r.bytes, 208, d);
    for (int e = 0; e < 256; ++e) r.values.push_back(d * float(sc[e / 16]) * float(q[e] - 32));
    return r;
}
// Q8_K (292 bytes): f32 d, int8 qs[256], int16 bsums[16] (sums of 16 codes; not used to decode).
Built build_q8_k() {
    Built r;
    r.bytes.assign(292, 0);
    const float d = float(uniform(-0.1, 0.1));
    std::memcpy(r.bytes.data(), &d, 4);
    int sums[16] = {};
    for (int e = 0; e < 256; ++e) {
        const int q = rnd(-127, 127);
        sums[e / 16] += q;
        r.bytes[4 + std::size_t(e)] = std::uint8_t(std::int8_t(q));
        r.values.push_back(d * float(q));
    }
    for (int i = 0; i < 16; ++i) {
        const auto s = std::uint16_t(std::int16_t(sums[i]));
        r.bytes[260 + 2 * std::size_t(i)] = std::uint8_t(s & 0xFF);
        r.bytes[261 + 2 * std::size_t(i)] = std::uint8_t(s >> 8);
    }
    return r;
}

// IQ4_NL (18 bytes): fp16 d, qs[16] as Q4_0; value = d · level[code] with the 16 fixed levels.
Built build_iq4_nl() {
    static const int levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    Built r;
    r.bytes.assign(18, 0);
    const float d = rnd_f16(-0.05, 0.05);
    put_f16(r.bytes, 0, d);
    int q[32];
    for (int& x : q) x = rnd(0, 15);
    for (int j = 0; j < 16; ++j) r.bytes[2 + std::size_t(j)] = std::uint8_t(q[j] | (q[j + 16] << 4));
    for (int j = 0; j < 32; ++j) r.values.push_back(d * float(levels[q[j]]));
    return r;
}
// TQ2_0 (66 bytes): qs[64], fp16 d; weight 128c + 32s + l holds code (t + 1) at bits 2s of
// qs[32c + l]; value = d · t, t in {-1, 0, 1}.
Built build_tq2_0() {
    Built r;
    r.bytes.assign(66, 0);
    const float d = rnd_f16(-1, 1);
    for (int e = 0; e < 256; ++e) {
        const int t = rnd(-1, 1), c = e / 128, s = (e % 128) / 32, l = e % 32;
        r.bytes[std::size_t(32 * c + l)] |= std::uint8_t((t + 1) << (2 * s));
        r.values.push_back(d * float(t));
    }
    put_f16(r.bytes, 64, d);
    return r;
}

std::vector<std::uint8_t> from_hex(const std::string& h) {
    std::vector<std::uint8_t> b(h.size() / 2);
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::uint8_t(std::stoi(h.substr(2 * i, 2), nullptr, 16));
    return b;
}

}  // namespace

TEST_CASE("block geometry of every supported type") {
    struct G {
        GgmlType t;
        std::int64_t elems, bytes;
    };
    // sizes of the block structs: scales + codes
    const G gs[] = {
        {GgmlType::F32, 1, 4},        {GgmlType::F16, 1, 2},
        {GgmlType::BF16, 1, 2},       {GgmlType::F64, 1, 8},
        {GgmlType::I8, 1, 1},         {GgmlType::I16, 1, 2},
        {GgmlType::I32, 1, 4},        {GgmlType::I64, 1, 8},
        {GgmlType::Q4_0, 32, 2 + 32 / 2},
        {GgmlType::Q4_1, 32, 2 * 2 + 32 / 2},
        {GgmlType::Q5_0, 32, 2 + 4 + 32 / 2},
        {GgmlType::Q5_1, 32, 2 * 2 + 4 + 32 / 2},
        {GgmlType::Q8_0, 32, 2 + 32},
        {GgmlType::Q8_1, 32, 2 * 2 + 32},
        {GgmlType::Q2_K, 256, 256 / 16 + 256 / 4 + 2 * 2},
        {GgmlType::Q3_K, 256, 256 / 8 + 256 / 4 + 12 + 2},
        {GgmlType::Q4_K, 256, 2 * 2 + 12 + 256 / 2},
        {GgmlType::Q5_K, 256, 2 * 2 + 12 + 256 / 8 + 256 / 2},
        {GgmlType::Q6_K, 256, 256 / 2 + 256 / 4 + 256 / 16 + 2},
        {GgmlType::Q8_K, 256, 4 + 256 + 16 * 2},
        {GgmlType::IQ4_NL, 32, 2 + 32 / 2},
        {GgmlType::IQ4_XS, 256, 2 + 2 + 256 / 64 + 256 / 2},
        {GgmlType::TQ1_0, 256, (256 - 16) / 5 + 16 / 4 + 2},
        {GgmlType::TQ2_0, 256, 256 / 4 + 2},
        {GgmlType::MXFP4, 32, 1 + 32 / 2},
    };
    for (const auto& g : gs) {
        CAPTURE(ggml_type_name(g.t));
        CHECK(ggml_type_supported(g.t));
        CHECK(ggml_traits(g.t).block_elems == g.elems);
        CHECK(ggml_traits(g.t).block_bytes == g.bytes);
        CHECK(ggml_row_bytes(g.t, 3 * g.elems) == std::uint64_t(3 * g.bytes));
    }
    CHECK_FALSE(ggml_type_supported(GgmlType::IQ2_XXS));
    CHECK(ggml_type_name(GgmlType(77)) == "unknown(77)");
    CHECK_THROWS_AS(ggml_row_bytes(GgmlType::Q4_K, 100), transmla::error);
    float out[32];
    const std::uint8_t zeros[64] = {};
    CHECK_THROWS_AS(dequantize(GgmlType::IQ3_S, zeros, out, 32), transmla::error);
    CHECK_THROWS_AS(dequantize(GgmlType(77), zeros, out, 32), transmla::error);
    CHECK_THROWS_AS(dequantize(GgmlType::Q8_0, zeros, out, 31), transmla::error);
}

TEST_CASE("dequantize agrees with gguf-py on random blocks of every type it decodes") {
    const auto j = transmla::test::load_test_json("ggml_blocks.json");
    MESSAGE("reference: " << j["tool"].get<std::string>());
    int n_types = 0;
    for (const auto& t : j["types"]) {
        const std::string name = t["type"];
        CAPTURE(name);
        const auto type = GgmlType(t["id"].get<std::uint32_t>());
        REQUIRE(ggml_type_name(type) == name);
        const auto bytes = from_hex(t["bytes"]);
        const auto expect = t["values"].get<std::vector<float>>();
        REQUIRE(ggml_row_bytes(type, std::int64_t(expect.size())) == bytes.size());
        std::vector<float> got(expect.size());
        dequantize(type, bytes.data(), got.data(), std::int64_t(got.size()));
        TRANSMLA_CHECK_CLOSE(got, expect, 1e-6);
        ++n_types;
    }
    CHECK(n_types == 17);
}

TEST_CASE("dequantize hand-built blocks of known value") {
    const std::pair<GgmlType, std::function<Built()>> cases[] = {
        {GgmlType::Q4_0, [] { return build_q4(false); }}, {GgmlType::Q4_1, [] { return build_q4(true); }},
        {GgmlType::Q5_0, [] { return build_q5(false); }}, {GgmlType::Q5_1, [] { return build_q5(true); }},
        {GgmlType::Q8_0, [] { return build_q8(false); }}, {GgmlType::Q8_1, [] { return build_q8(true); }},
        {GgmlType::Q2_K, build_q2_k},                     {GgmlType::Q3_K, build_q3_k},
        {GgmlType::Q4_K, [] { return build_q45_k(false); }}, {GgmlType::Q5_K, [] { return build_q45_k(true); }},
        {GgmlType::Q6_K, build_q6_k},                     {GgmlType::Q8_K, build_q8_k},
        {GgmlType::IQ4_NL, build_iq4_nl},                 {GgmlType::TQ2_0, build_tq2_0},
    };
    for (const auto& c : cases) {
        const GgmlType type = c.first;
        const auto& build = c.second;
        CAPTURE(ggml_type_name(type));
        // several blocks in a row, so block strides are exercised too
        std::vector<std::uint8_t> bytes;
        std::vector<float> expect;
        for (int b = 0; b < 3; ++b) {
            const Built blk = build();
            bytes.insert(bytes.end(), blk.bytes.begin(), blk.bytes.end());
            expect.insert(expect.end(), blk.values.begin(), blk.values.end());
        }
        REQUIRE(ggml_row_bytes(type, std::int64_t(expect.size())) == bytes.size());
        std::vector<float> got(expect.size());
        dequantize(type, bytes.data(), got.data(), std::int64_t(got.size()));
        TRANSMLA_CHECK_CLOSE(got, expect, 1e-6);
    }
}

TEST_CASE("dequantize the plain types") {
    const auto x = transmla::test::random_vector<double>(37);
    std::vector<std::uint8_t> f16(2 * x.size()), bf16(2 * x.size()), f64(8 * x.size());
    std::vector<float> e16, ebf, e64;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const std::uint16_t h = bits_of(from_double<half>(x[i])), b = bits_of(from_double<bfloat16>(x[i]));
        std::memcpy(&f16[2 * i], &h, 2);
        std::memcpy(&bf16[2 * i], &b, 2);
        std::memcpy(&f64[8 * i], &x[i], 8);
        e16.push_back(to_float(from_double<half>(x[i])));
        ebf.push_back(to_float(from_double<bfloat16>(x[i])));
        e64.push_back(float(x[i]));
    }
    std::vector<float> got(x.size());
    dequantize(GgmlType::F16, f16.data(), got.data(), std::int64_t(x.size()));
    CHECK(got == e16);
    dequantize(GgmlType::BF16, bf16.data(), got.data(), std::int64_t(x.size()));
    CHECK(got == ebf);
    dequantize(GgmlType::F64, f64.data(), got.data(), std::int64_t(x.size()));
    CHECK(got == e64);
    const std::int8_t i8[3] = {-128, 5, 127};
    const std::int16_t i16[3] = {-32768, -7, 32767};
    const std::int32_t i32[3] = {-100000, 0, 123456};
    const std::int64_t i64[3] = {-(std::int64_t(1) << 40), 9, 77};
    float o[3];
    dequantize(GgmlType::I8, i8, o, 3);
    CHECK(std::vector<float>(o, o + 3) == std::vector<float>{-128, 5, 127});
    dequantize(GgmlType::I16, i16, o, 3);
    CHECK(std::vector<float>(o, o + 3) == std::vector<float>{-32768, -7, 32767});
    dequantize(GgmlType::I32, i32, o, 3);
    CHECK(std::vector<float>(o, o + 3) == std::vector<float>{-100000, 0, 123456});
    dequantize(GgmlType::I64, i64, o, 3);
    CHECK(std::vector<float>(o, o + 3) == std::vector<float>{-float(std::int64_t(1) << 40), 9, 77});
}

TEST_CASE("quantize → dequantize is exact on representable blocks") {
    // blocks whose values are d·(code) (+ min) with a power-of-two d, and that reach the extreme
    // codes, are reproduced exactly by the round-to-nearest quantizers
    for (int trial = 0; trial < 20; ++trial) {
        const float d = std::ldexp(1.0f, rnd(-8, 2)), m = float(rnd(-40, 40)) * d;
        auto check = [&](GgmlType t, std::vector<float> x) {
            CAPTURE(ggml_type_name(t));
            std::vector<std::uint8_t> b(ggml_row_bytes(t, 32));
            quantize(t, x.data(), b.data(), 32);
            std::vector<float> y(32);
            dequantize(t, b.data(), y.data(), 32);
            CHECK(y == x);
        };
        std::vector<float> q8(32), q40(32), q41(32), q50(32), q51(32);
        for (int j = 0; j < 32; ++j) {
            q8[std::size_t(j)] = d * float(rnd(-127, 127));
            q40[std::size_t(j)] = d * float(rnd(-8, 7));
            q41[std::size_t(j)] = d * float(rnd(0, 15)) + m;
            q50[std::size_t(j)] = d * float(rnd(-16, 15));
            q51[std::size_t(j)] = d * float(rnd(0, 31)) + m;
        }
        const std::size_t a = std::size_t(rnd(0, 31)), b = (a + 1 + std::size_t(rnd(0, 30))) % 32;
        q8[a] = (trial % 2 ? 127.0f : -127.0f) * d;  // the largest magnitude
        q40[a] = -8.0f * d;                         // the largest magnitude is negative
        q50[a] = -16.0f * d;
        q41[a] = m;  // min and max present
        q41[b] = m + 15.0f * d;
        q51[a] = m;
        q51[b] = m + 31.0f * d;
        check(GgmlType::Q8_0, q8);
        check(GgmlType::Q4_0, q40);
        check(GgmlType::Q4_1, q41);
        check(GgmlType::Q5_0, q50);
        check(GgmlType::Q5_1, q51);
    }
}

TEST_CASE("quantize → dequantize of random data stays within half a quantisation step") {
    const std::int64_t n = 32 * 40;
    const auto x = transmla::test::random_vector<float>(std::size_t(n), 3.0);
    struct Q {
        GgmlType t;
        int levels;    // steps between the block's extremes
        bool min_max;  // asymmetric (min/max) or symmetric (|max|)
    };
    for (const Q q : {Q{GgmlType::Q8_0, 254, false}, Q{GgmlType::Q4_0, 16, false}, Q{GgmlType::Q4_1, 15, true},
                      Q{GgmlType::Q5_0, 32, false}, Q{GgmlType::Q5_1, 31, true}}) {
        CAPTURE(ggml_type_name(q.t));
        std::vector<std::uint8_t> b(ggml_row_bytes(q.t, n));
        quantize(q.t, x.data(), b.data(), n);
        std::vector<float> y(static_cast<std::size_t>(n));
        dequantize(q.t, b.data(), y.data(), n);
        for (std::int64_t blk = 0; blk < n / 32; ++blk) {
            float amax = 0, mn = x[std::size_t(blk * 32)], mx = mn;
            for (int j = 0; j < 32; ++j) {
                const float v = x[std::size_t(blk * 32 + j)];
                amax = std::max(amax, std::abs(v));
                mn = std::min(mn, v);
                mx = std::max(mx, v);
            }
            const float range = q.min_max ? mx - mn : 2 * amax;
            const float step = range / float(q.levels);
            // half a step, plus the fp16 rounding of the scale (and min) times the largest code
            const float tol = 0.5f * step + 1e-3f * (std::abs(mn) + std::abs(mx) + amax);
            for (int j = 0; j < 32; ++j) {
                const std::size_t i = std::size_t(blk * 32 + j);
                // Q4_0 / Q5_0 have one more negative code than positive ones: the value opposite
                // the block's largest magnitude is clipped to the last code, a full step away
                const bool clipped = !q.min_max && q.levels < 100 && std::abs(x[i]) > amax - 1.5f * step;
                CHECK(std::abs(y[i] - x[i]) <= (clipped ? 2 : 1) * tol);
            }
        }
        TRANSMLA_CHECK_CLOSE(y, x, q.levels > 100 ? 1e-2 : 0.15);
    }
    // f16 / bf16 are round-to-nearest conversions
    for (GgmlType t : {GgmlType::F16, GgmlType::BF16}) {
        std::vector<std::uint8_t> b(ggml_row_bytes(t, n));
        quantize(t, x.data(), b.data(), n);
        std::vector<float> y(static_cast<std::size_t>(n));
        dequantize(t, b.data(), y.data(), n);
        for (std::size_t i = 0; i < y.size(); ++i)
            CHECK(y[i] == (t == GgmlType::F16 ? to_float(from_float<half>(x[i])) : to_float(from_float<bfloat16>(x[i]))));
    }
}
