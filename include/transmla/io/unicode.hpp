// transmla/io/unicode.hpp — the little Unicode the tokenizer needs: UTF-8 decoding that never
// fails (invalid bytes come back one at a time, flagged), UTF-8 encoding, and the classes \p{L}
// (letter), \p{N} (number) and \s (White_Space) of regex engines.
#pragma once

#include "transmla/io/detail/unicode_ranges.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace transmla::io {

/// One decoded code point and the bytes of the text it came from.
struct CodePoint {
    std::uint32_t cp = 0;      ///< the code point; for an invalid byte, that byte's value
    std::uint32_t offset = 0;  ///< byte offset in the text
    std::uint8_t length = 0;   ///< bytes it spans (1..4)
    bool valid = true;         ///< false for a byte that does not start a valid UTF-8 sequence
};

/// Decodes UTF-8. Overlong forms, surrogates, code points above U+10FFFF and truncated
/// sequences are not errors: each offending byte is returned on its own with valid = false, so
/// byte-level tokenizers still see every byte.
inline std::vector<CodePoint> utf8_decode(std::string_view s) {
    std::vector<CodePoint> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
        const unsigned char c = p[i];
        std::uint32_t cp = 0;
        std::size_t len = 0;
        if (c < 0x80) {
            cp = c;
            len = 1;
        } else if (c >= 0xC2 && c <= 0xDF) {
            cp = c & 0x1Fu;
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            cp = c & 0x0Fu;
            len = 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            cp = c & 0x07u;
            len = 4;
        }
        bool ok = len > 0 && i + len <= n;
        for (std::size_t k = 1; ok && k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) ok = false;
            else cp = (cp << 6) | (p[i + k] & 0x3Fu);
        }
        if (ok) {
            if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
                (cp >= 0xD800 && cp <= 0xDFFF))
                ok = false;
        }
        if (ok) {
            out.push_back({cp, std::uint32_t(i), std::uint8_t(len), true});
            i += len;
        } else {
            out.push_back({c, std::uint32_t(i), 1, false});
            i += 1;
        }
    }
    return out;
}

/// Appends the UTF-8 encoding of a code point (<= U+10FFFF).
inline void utf8_append(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xC0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += char(0xE0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    } else {
        out += char(0xF0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3F));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    }
}

namespace detail {
inline int unicode_kind(std::uint32_t cp) noexcept {
    std::size_t lo = 0, hi = sizeof(unicode_ranges) / sizeof(unicode_ranges[0]);
    while (lo < hi) {
        const std::size_t mid = (lo + hi) / 2;
        if (unicode_ranges[mid].last < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < sizeof(unicode_ranges) / sizeof(unicode_ranges[0]) && unicode_ranges[lo].first <= cp) return unicode_ranges[lo].kind;
    return 0;
}
}  // namespace detail

/// \p{L}: general category Lu, Ll, Lt, Lm or Lo.
inline bool is_letter(std::uint32_t cp) noexcept {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return detail::unicode_kind(cp) == 1;
}
/// \p{N}: general category Nd, Nl or No.
inline bool is_number(std::uint32_t cp) noexcept {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return detail::unicode_kind(cp) == 2;
}
/// \s of Unicode regex engines: the White_Space property.
inline bool is_whitespace(std::uint32_t cp) noexcept {
    switch (cp) {
        case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
        case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000: return true;
        default: return cp >= 0x2000 && cp <= 0x200A;
    }
}

}  // namespace transmla::io
