// transmla/types.hpp — storage types (f32, f16, bf16) and their conversions to and from f32.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include <Eigen/Core>

#include <cstdint>
#include <string_view>
#include <type_traits>

namespace transmla {

using half = Eigen::half;          ///< IEEE binary16, same bits as CUDA __half
using bfloat16 = Eigen::bfloat16;  ///< bfloat16, same bits as CUDA __nv_bfloat16

template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

/// Storage element converted to float (exact for every storage type).
template <class T>
inline float to_float(T x) noexcept {
    static_assert(is_storage_type_v<T>,
                  "transmla: storage type must be float, transmla::half or transmla::bfloat16");
    return static_cast<float>(x);
}

/// Storage element (or double) converted to double, exactly.
template <class T>
inline double to_double(T x) noexcept {
    if constexpr (std::is_same_v<T, double>) return x;
    else return static_cast<double>(to_float(x));
}

/// Float rounded (to nearest even) into a storage element.
template <class T>
inline T from_float(float x) noexcept {
    static_assert(is_storage_type_v<T>,
                  "transmla: storage type must be float, transmla::half or transmla::bfloat16");
    return static_cast<T>(x);
}

/// Double rounded into a storage element (through float for the 16-bit types).
template <class T>
inline T from_double(double x) noexcept {
    if constexpr (std::is_same_v<T, double>) return x;
    else return from_float<T>(static_cast<float>(x));
}

/// Bits of a 16-bit storage element; for bit-exact I/O and tests.
inline std::uint16_t bits_of(half h) noexcept { return Eigen::numext::bit_cast<std::uint16_t>(h); }
inline std::uint16_t bits_of(bfloat16 b) noexcept { return Eigen::numext::bit_cast<std::uint16_t>(b); }
inline half half_from_bits(std::uint16_t u) noexcept { return Eigen::numext::bit_cast<half>(u); }
inline bfloat16 bf16_from_bits(std::uint16_t u) noexcept { return Eigen::numext::bit_cast<bfloat16>(u); }

/// Name of a storage type, for messages and benchmark labels.
template <class T>
constexpr std::string_view type_name() noexcept {
    if constexpr (std::is_same_v<T, float>) return "f32";
    else if constexpr (std::is_same_v<T, half>) return "f16";
    else if constexpr (std::is_same_v<T, bfloat16>) return "bf16";
    else if constexpr (std::is_same_v<T, double>) return "f64";
    else return "unknown";
}

}  // namespace transmla
