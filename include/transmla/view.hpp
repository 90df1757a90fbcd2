// transmla/view.hpp — non-owning strided views (pointer, extents, strides in elements).
#pragma once

#include "transmla/error.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>

namespace transmla {

/// A non-owning rank-`Rank` view of `T` with explicit strides (in elements). Nothing assumes
/// contiguity. `T` may be const.
template <class T, int Rank>
struct TensorView {
    static_assert(Rank >= 1 && Rank <= 4, "transmla::TensorView: rank must be 1..4");
    using element_type = T;
    using value_type = std::remove_cv_t<T>;

    T* data = nullptr;
    std::array<std::int64_t, Rank> extent{};
    std::array<std::int64_t, Rank> stride{};

    constexpr TensorView() = default;
    constexpr TensorView(T* p, std::array<std::int64_t, Rank> ext, std::array<std::int64_t, Rank> str)
        : data(p), extent(ext), stride(str) {}
    /// Row-major contiguous view of the given extents.
    constexpr TensorView(T* p, std::array<std::int64_t, Rank> ext) : data(p), extent(ext) {
        std::int64_t s = 1;
        for (int i = Rank - 1; i >= 0; --i) {
            stride[i] = s;
            s *= ext[i];
        }
    }
    /// Implicit conversion to a view of const.
    template <class U>
        requires(std::is_same_v<T, const U>)
    constexpr TensorView(const TensorView<U, Rank>& o) : data(o.data), extent(o.extent), stride(o.stride) {}

    constexpr std::int64_t size(int i) const noexcept { return extent[i]; }
    constexpr std::int64_t numel() const noexcept {
        std::int64_t n = 1;
        for (auto e : extent) n *= e;
        return n;
    }
    template <class... I>
        requires(sizeof...(I) == Rank)
    constexpr std::int64_t offset(I... idx) const noexcept {
        const std::array<std::int64_t, Rank> ix{static_cast<std::int64_t>(idx)...};
        std::int64_t o = 0;
        for (int i = 0; i < Rank; ++i) o += ix[i] * stride[i];
        return o;
    }
    template <class... I>
        requires(sizeof...(I) == Rank)
    constexpr T& operator()(I... idx) const noexcept {
        return data[offset(idx...)];
    }
    /// Pointer to the start of the innermost row at the given outer indices.
    template <class... I>
        requires(sizeof...(I) == Rank - 1)
    constexpr T* row(I... idx) const noexcept {
        return data + offset(idx..., 0);
    }
    /// True when the innermost dimension is unit-stride.
    constexpr bool inner_contiguous() const noexcept { return stride[Rank - 1] == 1 || extent[Rank - 1] <= 1; }
};

template <class T> using View1 = TensorView<T, 1>;
template <class T> using View2 = TensorView<T, 2>;
template <class T> using View3 = TensorView<T, 3>;
template <class T> using View4 = TensorView<T, 4>;

namespace detail {

/// One user-given extent and its name, for size_product's messages.
struct NamedExtent {
    const char* name;
    std::int64_t value;
};

/// The number of elements of an allocation whose extents are given, checked: every extent must be
/// at least `min_extent`, and the product (and its size in bytes, `elem_bytes` each) must fit in
/// std::int64_t / std::ptrdiff_t (the index types of the views and kernels) — otherwise throws
/// transmla::error naming `where` and every extent. Guards constructors that would otherwise
/// allocate a wrapped-around size and then write far beyond it.
inline std::int64_t size_product(const char* where, std::initializer_list<NamedExtent> extents,
                                 std::size_t elem_bytes, std::int64_t min_extent = 0) {
    auto describe = [&] {
        std::string s;
        for (const auto& e : extents) s += concat(s.empty() ? "" : " x ", e.name, "=", e.value);
        return s;
    };
    for (const auto& e : extents)
        if (e.value < min_extent)
            fail(where, ": ", e.name, " must be at least ", min_extent, ", got ", e.value, " (", describe(), ")");
    std::int64_t n = 1;
    const auto max_elems = std::int64_t(std::numeric_limits<std::ptrdiff_t>::max() / std::ptrdiff_t(elem_bytes));
    for (const auto& e : extents) {
        if (e.value != 0 && n > max_elems / e.value)
            fail(where, ": ", describe(), " overflows: more than ", max_elems, " elements of ", elem_bytes, " bytes");
        n *= e.value;
    }
    return n;
}

/// Throws unless view `v` (named `what`) has the expected extents.
template <class T, int Rank>
void check_extents(const TensorView<T, Rank>& v, const std::array<std::int64_t, Rank>& want, const char* where,
                   const char* what) {
    require(v.data != nullptr || v.numel() == 0, where, ": ", what, " is a null view");
    for (int i = 0; i < Rank; ++i)
        require(v.extent[i] == want[i], where, ": ", what, " has extent ", v.extent[i], " in dim ", i,
                ", expected ", want[i]);
    require(v.inner_contiguous(), where, ": ", what, " must have a unit stride in its last dim");
}
}  // namespace detail

}  // namespace transmla
