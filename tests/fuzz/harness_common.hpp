// What every fuzz harness shares: the input as bytes, and "run this; a transmla::error is an
// expected answer to a bad input, anything else escapes and crashes the fuzzer".
#pragma once

#include "transmla/error.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace transmla::fuzz {

inline std::span<const std::byte> as_bytes(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const std::byte*>(data), size};
}

/// Runs f; swallows transmla::error only.
template <class F>
void expect_ok_or_error(F&& f) {
    try {
        f();
    } catch (const ::transmla::error&) {
    }
}

/// Splits "u32 n | n bytes | rest" (n clamped to what is there).
inline void split_prefixed(std::span<const std::byte> in, std::span<const std::byte>& first,
                           std::span<const std::byte>& rest) {
    std::uint32_t n = 0;
    if (in.size() >= 4) std::memcpy(&n, in.data(), 4);
    in = in.size() >= 4 ? in.subspan(4) : std::span<const std::byte>{};
    const std::size_t k = n < in.size() ? n : in.size();
    first = in.first(k);
    rest = in.subspan(k);
}

/// Keeps the optimiser from discarding what a harness computes.
template <class T>
inline void consume(const T& v) {
    asm volatile("" : : "r"(&v) : "memory");
}

}  // namespace transmla::fuzz
