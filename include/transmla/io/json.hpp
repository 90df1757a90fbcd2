// transmla/io/json.hpp — JSON from untrusted files (safetensors headers, index files,
// config.json): parsed with a nesting limit, and numbers read into C++ types with range checks.
//
// nlohmann::json parses iteratively, but dump() (used for error messages and metadata) and some
// conversions recurse once per nesting level, so a file of a few megabytes of '[' could exhaust the
// stack. parse_json() therefore scans the text first and rejects anything nested deeper than
// `max_depth` (64 by default; the formats read here need 4) before nlohmann sees it.
// json_int<T>() converts a JSON number to an integer type only when it is an integer in range:
// nlohmann's get<int>() truncates a uint64 silently and converts a float with a plain cast, which
// is undefined behaviour when the value does not fit.
#pragma once

#include "transmla/error.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

namespace transmla::io {

/// Deepest nesting of arrays / objects parse_json() accepts by default.
inline constexpr int json_default_max_depth = 64;

/// Throws transmla::error ("<what>: JSON nested deeper than N levels at offset K") when `text`
/// opens more than `max_depth` arrays/objects at once (brackets inside strings do not count).
inline void json_check_depth(std::string_view text, const std::string& what, int max_depth = json_default_max_depth) {
    int depth = 0;
    bool in_string = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char ch = text[i];
        if (in_string) {
            if (ch == '\\') ++i;  // the escaped character cannot end the string
            else if (ch == '"') in_string = false;
            continue;
        }
        if (ch == '"') {
            in_string = true;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max_depth)
                fail(what, ": JSON nested deeper than ", max_depth, " levels at offset ", i);
        } else if (ch == ']' || ch == '}') {
            --depth;  // unbalanced text is the parser's to reject
        }
    }
}

/// Parses `text` (depth-limited, see above); errors start with `what` (the file and part of it).
inline nlohmann::json parse_json(std::string_view text, const std::string& what,
                                 int max_depth = json_default_max_depth) {
    json_check_depth(text, what, max_depth);
    try {
        return nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception& e) {
        fail(what, ": JSON does not parse: ", e.what());
    }
}

/// The JSON number `v` as integer type T when it is an integer (or an integral float) within T's
/// range; otherwise throws "<what>: ... is not an integer in [min, max]".
template <class T>
T json_int(const nlohmann::json& v, const std::string& what) {
    static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
    constexpr auto lo = std::numeric_limits<T>::min();
    constexpr auto hi = std::numeric_limits<T>::max();
    auto out_of_range = [&](const auto& shown) {
        fail(what, " = ", shown, " is not an integer in [", +lo, ", ", +hi, "]");
    };
    if (v.is_number_unsigned()) {
        const auto u = v.get<std::uint64_t>();
        if (u > static_cast<std::uint64_t>(hi)) out_of_range(u);
        return static_cast<T>(u);
    }
    if (v.is_number_integer()) {
        const auto s = v.get<std::int64_t>();
        if constexpr (std::is_signed_v<T>) {
            if (s < static_cast<std::int64_t>(lo) || s > static_cast<std::int64_t>(hi)) out_of_range(s);
        } else {
            if (s < 0 || static_cast<std::uint64_t>(s) > static_cast<std::uint64_t>(hi)) out_of_range(s);
        }
        return static_cast<T>(s);
    }
    if (v.is_number_float()) {
        const double d = v.get<double>();
        // compare in double before converting: the conversion itself is UB out of range
        const double top = std::ldexp(1.0, std::numeric_limits<T>::digits);  // hi + 1, exact
        const double bottom = std::is_signed_v<T> ? -top : 0.0;                // lo, exact
        if (!std::isfinite(d) || d != std::floor(d) || d < bottom || d >= top) out_of_range(d);
        return static_cast<T>(d);
    }
    fail(what, " has the wrong type: expected an integer, got ", v.type_name());
}

}  // namespace transmla::io
