// transmla/io/ggml_types.hpp — the ggml tensor types stored in GGUF files: ids, block sizes,
// dequantisation to fp32 and (for the simple block formats) quantisation from fp32.
//
// The block layouts are those of ggml (ggml-common.h); every multi-byte field is little-endian.
// fp16 fields are IEEE binary16. "QK_K" formats use super-blocks of 256 weights.
#pragma once

#include "transmla/error.hpp"
#include "transmla/types.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace transmla::io {

static_assert(std::endian::native == std::endian::little,
              "transmla/io: the ggml block decoders assume a little-endian host");

/// ggml tensor type ids as written in GGUF tensor infos.
enum class GgmlType : std::uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
};

/// Block geometry of a type: `block_elems` weights are stored in `block_bytes` bytes.
/// `supported` is false for ids this library knows by name but cannot decode (the grid-based
/// IQ1/IQ2/IQ3 families) and for ids it does not know at all.
struct GgmlTypeTraits {
    const char* name = "unknown";
    std::int64_t block_elems = 0;
    std::int64_t block_bytes = 0;
    bool supported = false;
};

namespace detail {

inline constexpr std::int64_t qk_k = 256;

inline GgmlTypeTraits ggml_traits_of(std::uint32_t id) noexcept {
    switch (id) {
        case 0: return {"F32", 1, 4, true};
        case 1: return {"F16", 1, 2, true};
        case 2: return {"Q4_0", 32, 2 + 16, true};
        case 3: return {"Q4_1", 32, 2 + 2 + 16, true};
        case 6: return {"Q5_0", 32, 2 + 4 + 16, true};
        case 7: return {"Q5_1", 32, 2 + 2 + 4 + 16, true};
        case 8: return {"Q8_0", 32, 2 + 32, true};
        case 9: return {"Q8_1", 32, 2 + 2 + 32, true};
        case 10: return {"Q2_K", qk_k, 16 + 64 + 2 + 2, true};
        case 11: return {"Q3_K", qk_k, 32 + 64 + 12 + 2, true};
        case 12: return {"Q4_K", qk_k, 2 + 2 + 12 + 128, true};
        case 13: return {"Q5_K", qk_k, 2 + 2 + 12 + 32 + 128, true};
        case 14: return {"Q6_K", qk_k, 128 + 64 + 16 + 2, true};
        case 15: return {"Q8_K", qk_k, 4 + 256 + 32, true};
        case 16: return {"IQ2_XXS", 0, 0, false};
        case 17: return {"IQ2_XS", 0, 0, false};
        case 18: return {"IQ3_XXS", 0, 0, false};
        case 19: return {"IQ1_S", 0, 0, false};
        case 20: return {"IQ4_NL", 32, 2 + 16, true};
        case 21: return {"IQ3_S", 0, 0, false};
        case 22: return {"IQ2_S", 0, 0, false};
        case 23: return {"IQ4_XS", qk_k, 2 + 2 + 4 + 128, true};
        case 24: return {"I8", 1, 1, true};
        case 25: return {"I16", 1, 2, true};
        case 26: return {"I32", 1, 4, true};
        case 27: return {"I64", 1, 8, true};
        case 28: return {"F64", 1, 8, true};
        case 29: return {"IQ1_M", 0, 0, false};
        case 30: return {"BF16", 1, 2, true};
        case 34: return {"TQ1_0", qk_k, 48 + 4 + 2, true};
        case 35: return {"TQ2_0", qk_k, 64 + 2, true};
        case 39: return {"MXFP4", 32, 1 + 16, true};
        default: return {};
    }
}

inline std::uint16_t load_u16(const std::uint8_t* p) noexcept { return std::uint16_t(p[0] | (p[1] << 8)); }
inline std::uint32_t load_u32(const std::uint8_t* p) noexcept {
    return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
           (std::uint32_t(p[3]) << 24);
}
inline std::uint64_t load_u64(const std::uint8_t* p) noexcept {
    return std::uint64_t(load_u32(p)) | (std::uint64_t(load_u32(p + 4)) << 32);
}
inline float load_f16(const std::uint8_t* p) noexcept { return to_float(half_from_bits(load_u16(p))); }
inline float load_f32(const std::uint8_t* p) noexcept { return std::bit_cast<float>(load_u32(p)); }
inline void store_u16(std::uint8_t* p, std::uint16_t v) noexcept {
    p[0] = std::uint8_t(v);
    p[1] = std::uint8_t(v >> 8);
}
inline void store_u32(std::uint8_t* p, std::uint32_t v) noexcept {
    for (int i = 0; i < 4; ++i) p[i] = std::uint8_t(v >> (8 * i));
}
/// Stores x rounded to fp16 and returns the rounded value (what a reader will see).
inline float store_f16(std::uint8_t* p, float x) noexcept {
    const half h = from_float<half>(x);
    store_u16(p, bits_of(h));
    return to_float(h);
}

// ---- decoders of one block (dst receives block_elems floats) -----------------------------------

inline void dequant_q4_0(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b);
    const std::uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
        y[j] = float((qs[j] & 0x0F) - 8) * d;
        y[j + 16] = float((qs[j] >> 4) - 8) * d;
    }
}
inline void dequant_q4_1(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b), m = load_f16(b + 2);
    const std::uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) {
        y[j] = float(qs[j] & 0x0F) * d + m;
        y[j + 16] = float(qs[j] >> 4) * d + m;
    }
}
inline void dequant_q5_0(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b);
    const std::uint32_t qh = load_u32(b + 2);
    const std::uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
        const int lo = (qs[j] & 0x0F) | int(((qh >> j) & 1u) << 4);
        const int hi = (qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
        y[j] = float(lo - 16) * d;
        y[j + 16] = float(hi - 16) * d;
    }
}
inline void dequant_q5_1(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b), m = load_f16(b + 2);
    const std::uint32_t qh = load_u32(b + 4);
    const std::uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
        const int lo = (qs[j] & 0x0F) | int(((qh >> j) & 1u) << 4);
        const int hi = (qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
        y[j] = float(lo) * d + m;
        y[j + 16] = float(hi) * d + m;
    }
}
inline void dequant_q8_0(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b);
    for (int j = 0; j < 32; ++j) y[j] = float(static_cast<std::int8_t>(b[2 + j])) * d;
}
inline void dequant_q8_1(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b);  // b + 2 holds s = d * sum(q), not needed to decode
    for (int j = 0; j < 32; ++j) y[j] = float(static_cast<std::int8_t>(b[4 + j])) * d;
}
inline void dequant_q2_k(const std::uint8_t* b, float* y) noexcept {
    const std::uint8_t* scales = b;
    const std::uint8_t* q = b + 16;
    const float d = load_f16(b + 80), dmin = load_f16(b + 82);
    int is = 0;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half_ = 0; half_ < 2; ++half_) {
                const std::uint8_t sc = scales[is++];
                const float dl = d * float(sc & 0x0F), ml = dmin * float(sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * half_] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}
inline void dequant_q3_k(const std::uint8_t* b, float* y) noexcept {
    const std::uint8_t* hmask = b;
    const std::uint8_t* q = b + 32;
    const std::uint8_t* sc = b + 96;
    const float d = load_f16(b + 108);
    // sixteen 6-bit scales: low 4 bits in sc[0..7] (low nibbles, then high nibbles), high 2 bits
    // in sc[8..11] (scale i uses bits 2*(i/4) of byte 8 + i%4)
    int scale[16];
    for (int i = 0; i < 16; ++i) {
        const int lo = i < 8 ? (sc[i] & 0x0F) : (sc[i - 8] >> 4);
        const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        scale[i] = (lo | (hi << 4)) - 32;
    }
    int is = 0;
    std::uint8_t m = 1;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half_ = 0; half_ < 2; ++half_) {
                const float dl = d * float(scale[is++]);
                for (int l = 0; l < 16; ++l) {
                    const int k = l + 16 * half_;
                    const int v = int((q[k] >> shift) & 3) - ((hmask[k] & m) ? 0 : 4);
                    *y++ = dl * float(v);
                }
            }
            m = std::uint8_t(m << 1);
        }
        q += 32;
    }
}
/// The eight 6-bit (scale, min) pairs of Q4_K / Q5_K super-blocks, packed in 12 bytes.
inline void kquant_scale_min(int j, const std::uint8_t* q, int& sc, int& mn) noexcept {
    if (j < 4) {
        sc = q[j] & 63;
        mn = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}
inline void dequant_q4_k(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b), dmin = load_f16(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* q = b + 16;
    for (int j = 0; j < 8; j += 2) {
        int sc1, m1, sc2, m2;
        kquant_scale_min(j, scales, sc1, m1);
        kquant_scale_min(j + 1, scales, sc2, m2);
        const float d1 = d * float(sc1), mm1 = dmin * float(m1), d2 = d * float(sc2), mm2 = dmin * float(m2);
        for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0x0F) - mm1;
        for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - mm2;
        q += 32;
    }
}
inline void dequant_q5_k(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b), dmin = load_f16(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* qh = b + 16;
    const std::uint8_t* ql = b + 48;
    std::uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 8; j += 2) {
        int sc1, m1, sc2, m2;
        kquant_scale_min(j, scales, sc1, m1);
        kquant_scale_min(j + 1, scales, sc2, m2);
        const float d1 = d * float(sc1), mm1 = dmin * float(m1), d2 = d * float(sc2), mm2 = dmin * float(m2);
        for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - mm1;
        for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - mm2;
        ql += 32;
        u1 = std::uint8_t(u1 << 2);
        u2 = std::uint8_t(u2 << 2);
    }
}
inline void dequant_q6_k(const std::uint8_t* b, float* y) noexcept {
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const std::int8_t* sc = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = load_f16(b + 208);
    for (int n = 0; n < 256; n += 128) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * float(sc[is + 0]) * float(q1);
            y[l + 32] = d * float(sc[is + 2]) * float(q2);
            y[l + 64] = d * float(sc[is + 4]) * float(q3);
            y[l + 96] = d * float(sc[is + 6]) * float(q4);
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}
inline void dequant_q8_k(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f32(b);
    for (int j = 0; j < 256; ++j) y[j] = d * float(static_cast<std::int8_t>(b[4 + j]));
}

/// The 16 non-linear 4-bit levels of IQ4_NL / IQ4_XS.
inline constexpr std::int8_t iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                               1,    13,   25,  38,  53,  69,  89,  113};
inline void dequant_iq4_nl(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b);
    for (int j = 0; j < 16; ++j) {
        y[j] = d * float(iq4_levels[b[2 + j] & 0x0F]);
        y[j + 16] = d * float(iq4_levels[b[2 + j] >> 4]);
    }
}
/// IQ4_XS: fp16 d, u16 scales_h, scales_l[4], qs[128]; eight sub-blocks of 32 with 6-bit scales
/// (low 4 bits: nibble ib%2 of scales_l[ib/2]; high 2 bits: bits 2ib of scales_h) minus 32.
inline void dequant_iq4_xs(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b);
    const std::uint16_t sh = load_u16(b + 2);
    const std::uint8_t* sl = b + 4;
    const std::uint8_t* qs = b + 8;
    for (int ib = 0; ib < 8; ++ib) {
        const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((sh >> (2 * ib)) & 3) << 4);
        const float dl = d * float(ls - 32);
        for (int j = 0; j < 16; ++j) {
            y[32 * ib + j] = dl * float(iq4_levels[qs[16 * ib + j] & 0x0F]);
            y[32 * ib + 16 + j] = dl * float(iq4_levels[qs[16 * ib + j] >> 4]);
        }
    }
}
/// TQ1_0 (ternary): qs[48], qh[4], fp16 d. Each byte packs base-3 digits as a fixed-point
/// fraction: digit n of byte x is ((uint8)(x·3^n) · 3) >> 8, value digit − 1. Weights 0..159 come
/// from qs[0..32) (digit n of byte l → weight 32n + l), 160..239 from qs[32..48) (16n + l), 240..255
/// from qh (4n + l, four digits).
inline void dequant_tq1_0(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b + 52);
    static constexpr std::uint8_t pow3[5] = {1, 3, 9, 27, 81};
    auto digit = [](std::uint8_t x, int n) {
        const std::uint8_t v = std::uint8_t(x * pow3[n]);
        return int((std::uint16_t(v) * 3) >> 8) - 1;
    };
    for (int n = 0; n < 5; ++n)
        for (int l = 0; l < 32; ++l) y[32 * n + l] = d * float(digit(b[l], n));
    for (int n = 0; n < 5; ++n)
        for (int l = 0; l < 16; ++l) y[160 + 16 * n + l] = d * float(digit(b[32 + l], n));
    for (int n = 0; n < 4; ++n)
        for (int l = 0; l < 4; ++l) y[240 + 4 * n + l] = d * float(digit(b[48 + l], n));
}
/// TQ2_0 (ternary): qs[64], fp16 d; weight 128c + 32s + l is ((qs[32c + l] >> 2s) & 3) − 1.
inline void dequant_tq2_0(const std::uint8_t* b, float* y) noexcept {
    const float d = load_f16(b + 64);
    for (int c = 0; c < 2; ++c)
        for (int s = 0; s < 4; ++s)
            for (int l = 0; l < 32; ++l) y[128 * c + 32 * s + l] = d * float(int((b[32 * c + l] >> (2 * s)) & 3) - 1);
}
/// MXFP4: one E8M0 exponent byte e and 16 bytes of FP4 (E2M1) codes; scale 2^(e − 127) / 2 against
/// the doubled E2M1 levels (so subnormal e = 0, 1 are handled as ggml does).
inline void dequant_mxfp4(const std::uint8_t* b, float* y) noexcept {
    static constexpr std::int8_t levels[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    const std::uint32_t e = b[0];
    const float d = std::bit_cast<float>(e < 2 ? (std::uint32_t(0x00200000) << e) : ((e - 1) << 23));
    for (int j = 0; j < 16; ++j) {
        y[j] = d * float(levels[b[1 + j] & 0x0F]);
        y[j + 16] = d * float(levels[b[1 + j] >> 4]);
    }
}

}  // namespace detail

/// Geometry and name of a type id (including ids unknown to this library: name "unknown").
inline GgmlTypeTraits ggml_traits(GgmlType t) noexcept { return detail::ggml_traits_of(std::uint32_t(t)); }

/// Name of a type id ("Q4_1", ...; "unknown(N)" for unknown ids).
inline std::string ggml_type_name(GgmlType t) {
    const auto tr = ggml_traits(t);
    if (tr.block_elems == 0 && std::string(tr.name) == "unknown") return "unknown(" + std::to_string(std::uint32_t(t)) + ")";
    return tr.name;
}

/// True when this library can decode tensors of type t.
inline bool ggml_type_supported(GgmlType t) noexcept { return ggml_traits(t).supported; }

/// Bytes taken by n consecutive weights of type t. Throws when t is unsupported or n is not a
/// multiple of the type's block size.
inline std::uint64_t ggml_row_bytes(GgmlType t, std::int64_t n) {
    const auto tr = ggml_traits(t);
    require(tr.supported, "ggml type ", ggml_type_name(t), " (id ", std::uint32_t(t), ") is not supported");
    require(n >= 0 && n % tr.block_elems == 0, "ggml type ", tr.name, ": element count ", n,
            " is not a multiple of its block size ", tr.block_elems);
    return std::uint64_t(n / tr.block_elems) * std::uint64_t(tr.block_bytes);
}

/// Decodes n weights of type t (n a multiple of the block size) starting at src into dst.
inline void dequantize(GgmlType t, const void* src, float* dst, std::int64_t n) {
    const auto tr = ggml_traits(t);
    require(tr.supported, "cannot dequantize ggml type ", ggml_type_name(t), " (id ", std::uint32_t(t),
            "): not supported");
    require(n >= 0 && n % tr.block_elems == 0, "dequantize ", tr.name, ": element count ", n,
            " is not a multiple of its block size ", tr.block_elems);
    const auto* p = static_cast<const std::uint8_t*>(src);
    const std::int64_t nb = n / tr.block_elems;
    auto blocks = [&](auto&& fn) {
        for (std::int64_t i = 0; i < nb; ++i) fn(p + i * tr.block_bytes, dst + i * tr.block_elems);
    };
    switch (t) {
        case GgmlType::F32:
            if (n > 0) std::memcpy(dst, p, std::size_t(n) * 4);
            break;
        case GgmlType::F16:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = detail::load_f16(p + 2 * i);
            break;
        case GgmlType::BF16:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(std::uint32_t(detail::load_u16(p + 2 * i)) << 16);
            break;
        case GgmlType::F64:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = float(std::bit_cast<double>(detail::load_u64(p + 8 * i)));
            break;
        case GgmlType::I8:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<std::int8_t>(p[i]));
            break;
        case GgmlType::I16:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<std::int16_t>(detail::load_u16(p + 2 * i)));
            break;
        case GgmlType::I32:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<std::int32_t>(detail::load_u32(p + 4 * i)));
            break;
        case GgmlType::I64:
            for (std::int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<std::int64_t>(detail::load_u64(p + 8 * i)));
            break;
        case GgmlType::Q4_0: blocks(detail::dequant_q4_0); break;
        case GgmlType::Q4_1: blocks(detail::dequant_q4_1); break;
        case GgmlType::Q5_0: blocks(detail::dequant_q5_0); break;
        case GgmlType::Q5_1: blocks(detail::dequant_q5_1); break;
        case GgmlType::Q8_0: blocks(detail::dequant_q8_0); break;
        case GgmlType::Q8_1: blocks(detail::dequant_q8_1); break;
        case GgmlType::Q2_K: blocks(detail::dequant_q2_k); break;
        case GgmlType::Q3_K: blocks(detail::dequant_q3_k); break;
        case GgmlType::Q4_K: blocks(detail::dequant_q4_k); break;
        case GgmlType::Q5_K: blocks(detail::dequant_q5_k); break;
        case GgmlType::Q6_K: blocks(detail::dequant_q6_k); break;
        case GgmlType::Q8_K: blocks(detail::dequant_q8_k); break;
        case GgmlType::IQ4_NL: blocks(detail::dequant_iq4_nl); break;
        case GgmlType::IQ4_XS: blocks(detail::dequant_iq4_xs); break;
        case GgmlType::TQ1_0: blocks(detail::dequant_tq1_0); break;
        case GgmlType::TQ2_0: blocks(detail::dequant_tq2_0); break;
        case GgmlType::MXFP4: blocks(detail::dequant_mxfp4); break;
        default: fail("cannot dequantize ggml type ", ggml_type_name(t), ": not supported");
    }
}

// ---- quantisation (round to nearest, as ggml's reference quantizers) ----------------------------

/// True when `quantize` can write type t: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
inline bool ggml_can_quantize(GgmlType t) noexcept {
    switch (t) {
        case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_0:
        case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0: return true;
        default: return false;
    }
}

/// Encodes n floats (n a multiple of the block size) as type t into dst, which must hold
/// ggml_row_bytes(t, n) bytes. Non-finite inputs are rejected.
inline void quantize(GgmlType t, const float* src, void* dst, std::int64_t n) {
    require(ggml_can_quantize(t), "cannot quantize to ggml type ", ggml_type_name(t),
            ": only F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are written");
    const auto tr = ggml_traits(t);
    require(n >= 0 && n % tr.block_elems == 0, "quantize ", tr.name, ": element count ", n,
            " is not a multiple of its block size ", tr.block_elems);
    for (std::int64_t i = 0; i < n; ++i)
        require(std::isfinite(src[i]), "quantize ", tr.name, ": element ", i, " is not finite (", src[i], ")");
    auto* out = static_cast<std::uint8_t*>(dst);
    using detail::store_f16;
    using detail::store_u16;
    using detail::store_u32;
    switch (t) {
        case GgmlType::F32:
            for (std::int64_t i = 0; i < n; ++i) store_u32(out + 4 * i, std::bit_cast<std::uint32_t>(src[i]));
            return;
        case GgmlType::F16:
            for (std::int64_t i = 0; i < n; ++i) store_f16(out + 2 * i, src[i]);
            return;
        case GgmlType::BF16:
            for (std::int64_t i = 0; i < n; ++i) store_u16(out + 2 * i, bits_of(from_float<bfloat16>(src[i])));
            return;
        default: break;
    }
    for (std::int64_t blk = 0; blk < n / 32; ++blk) {
        const float* x = src + 32 * blk;
        std::uint8_t* b = out + tr.block_bytes * blk;
        float amax = 0, maxv = 0, mn = x[0], mx = x[0];  // maxv: the value of largest magnitude
        for (int j = 0; j < 32; ++j) {
            if (std::abs(x[j]) > amax) {
                amax = std::abs(x[j]);
                maxv = x[j];
            }
            mn = std::min(mn, x[j]);
            mx = std::max(mx, x[j]);
        }
        switch (t) {
            case GgmlType::Q8_0: {
                const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
                store_f16(b, d);
                for (int j = 0; j < 32; ++j) b[2 + j] = std::uint8_t(static_cast<std::int8_t>(std::lround(x[j] * id)));
                break;
            }
            case GgmlType::Q4_0: {
                const float d = maxv / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
                store_f16(b, d);
                for (int j = 0; j < 16; ++j) {
                    const int q0 = std::min(15, int(x[j] * id + 8.5f));
                    const int q1 = std::min(15, int(x[j + 16] * id + 8.5f));
                    b[2 + j] = std::uint8_t(q0 | (q1 << 4));
                }
                break;
            }
            case GgmlType::Q4_1: {
                const float d = (mx - mn) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
                store_f16(b, d);
                store_f16(b + 2, mn);
                for (int j = 0; j < 16; ++j) {
                    const int q0 = std::min(15, int((x[j] - mn) * id + 0.5f));
                    const int q1 = std::min(15, int((x[j + 16] - mn) * id + 0.5f));
                    b[4 + j] = std::uint8_t(q0 | (q1 << 4));
                }
                break;
            }
            case GgmlType::Q5_0: {
                const float d = maxv / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
                store_f16(b, d);
                std::uint32_t qh = 0;
                for (int j = 0; j < 16; ++j) {
                    const int q0 = std::min(31, int(x[j] * id + 16.5f));
                    const int q1 = std::min(31, int(x[j + 16] * id + 16.5f));
                    b[6 + j] = std::uint8_t((q0 & 0x0F) | ((q1 & 0x0F) << 4));
                    qh |= std::uint32_t((q0 >> 4) & 1) << j;
                    qh |= std::uint32_t((q1 >> 4) & 1) << (j + 16);
                }
                store_u32(b + 2, qh);
                break;
            }
            case GgmlType::Q5_1: {
                const float d = (mx - mn) / 31.0f, id = d != 0 ? 1.0f / d : 0.0f;
                store_f16(b, d);
                store_f16(b + 2, mn);
                std::uint32_t qh = 0;
                for (int j = 0; j < 16; ++j) {
                    const int q0 = std::min(31, int((x[j] - mn) * id + 0.5f));
                    const int q1 = std::min(31, int((x[j + 16] - mn) * id + 0.5f));
                    b[8 + j] = std::uint8_t((q0 & 0x0F) | ((q1 & 0x0F) << 4));
                    qh |= std::uint32_t((q0 >> 4) & 1) << j;
                    qh |= std::uint32_t((q1 >> 4) & 1) << (j + 16);
                }
                store_u32(b + 4, qh);
                break;
            }
            default: break;
        }
    }
}

}  // namespace transmla::io
