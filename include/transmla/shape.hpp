// transmla/shape.hpp — attention shapes whose extents are compile-time integers or `dynamic`,
// the RoPE specification, and the run-time → compile-time shape dispatch.
#pragma once

#include "transmla/error.hpp"

#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace transmla {

/// Marks an extent whose value is known only at run time (as Eigen::Dynamic does).
inline constexpr int dynamic = -1;

/// One extent: a compile-time integer (no storage) or a run-time one.
template <int N>
class Extent {
    static_assert(N == dynamic || N > 0,
                  "transmla: a compile-time extent must be a positive integer or transmla::dynamic");

public:
    static constexpr bool is_static = true;
    static constexpr int static_value = N;
    constexpr Extent() noexcept = default;
    /// Checks that a run-time value agrees with the compile-time one.
    constexpr Extent(int v, const char* what) {
        if (v != N) fail(what, " is fixed at compile time to ", N, " but ", v, " was given");
    }
    constexpr int operator()() const noexcept { return N; }
};

template <>
class Extent<dynamic> {
public:
    static constexpr bool is_static = false;
    static constexpr int static_value = dynamic;
    constexpr Extent(int v, const char* what) : v_(v) {
        if (v <= 0) fail(what, " must be positive, got ", v);
    }
    constexpr int operator()() const noexcept { return v_; }

private:
    int v_;
};

namespace detail {
constexpr bool both_static(int a, int b) { return a != dynamic && b != dynamic; }
}  // namespace detail

// ------------------------------------------------------------------------------------------------
// GQA
// ------------------------------------------------------------------------------------------------

/// Grouped-query attention: `NQ` query heads share `NKV` key/value heads of width `HeadDim`.
/// Query head i reads KV head i / group(). Any extent may be `dynamic`.
template <int NQ, int NKV, int HeadDim>
class GqaShape {
    static_assert(!detail::both_static(NQ, NKV) || NQ % NKV == 0,
                  "transmla::GqaShape: the number of query heads must be a multiple of the number "
                  "of KV heads (group size = NQ / NKV)");
    static_assert(HeadDim == dynamic || HeadDim % 2 == 0,
                  "transmla::GqaShape: the head dim must be even (RoPE rotates pairs of dims)");

public:
    static constexpr int static_n_q = NQ;
    static constexpr int static_n_kv = NKV;
    static constexpr int static_head_dim = HeadDim;
    static constexpr int static_group = detail::both_static(NQ, NKV) ? NQ / NKV : dynamic;
    static constexpr bool is_static = NQ != dynamic && NKV != dynamic && HeadDim != dynamic;

    /// Fully compile-time shape.
    constexpr GqaShape() noexcept
        requires(is_static)
        : nq_(), nkv_(), d_() {}

    /// Shape from run-time values; throws transmla::error when they are illegal or disagree with
    /// the compile-time extents.
    constexpr GqaShape(int n_q, int n_kv, int head_dim)
        : nq_(n_q, "GqaShape: n_q (query heads)"),
          nkv_(n_kv, "GqaShape: n_kv (KV heads)"),
          d_(head_dim, "GqaShape: head_dim") {
        require(n_q % n_kv == 0, "GqaShape: n_q (", n_q, ") must be a multiple of n_kv (", n_kv,
                ")");
        require(head_dim % 2 == 0, "GqaShape: head_dim (", head_dim,
                ") must be even (RoPE rotates pairs)");
        // kv_width() and the query row width n_q · d are ints.
        require(std::int64_t(n_q) * head_dim <= std::numeric_limits<int>::max(), "GqaShape: n_q (", n_q,
                ") x head_dim (", head_dim, ") = ", std::int64_t(n_q) * head_dim, " overflows int");
    }

    constexpr int n_q() const noexcept { return nq_(); }
    constexpr int n_kv() const noexcept { return nkv_(); }
    constexpr int head_dim() const noexcept { return d_(); }
    constexpr int group() const noexcept {
        if constexpr (static_group != dynamic) return static_group;
        else return n_q() / n_kv();
    }
    /// Width of all KV heads side by side, `L = n_kv · d`.
    constexpr int kv_width() const noexcept { return n_kv() * head_dim(); }
    /// Cache elements per token (K and V of every KV head): `2 · n_kv · d`.
    constexpr std::int64_t cache_elems_per_token() const noexcept { return 2LL * kv_width(); }

private:
    [[no_unique_address]] Extent<NQ> nq_;
    [[no_unique_address]] Extent<NKV> nkv_;
    [[no_unique_address]] Extent<HeadDim> d_;
};

using DynamicGqaShape = GqaShape<dynamic, dynamic, dynamic>;

// ------------------------------------------------------------------------------------------------
// MLA
// ------------------------------------------------------------------------------------------------

/// DeepSeek-style multi-head latent attention: `NH` heads, latent rank `R`, shared RoPE key of
/// width `DR`, per-head no-RoPE query/key width `DNope` and value width `DV`.
/// The cache holds one row `[latent (R) | rope key (DR)]` per token.
template <int NH, int R, int DR, int DNope, int DV = DNope>
class MlaShape {
    static_assert(DR == dynamic || DR % 2 == 0,
                  "transmla::MlaShape: the RoPE dim must be even (RoPE rotates pairs of dims)");

public:
    static constexpr int static_heads = NH;
    static constexpr int static_rank = R;
    static constexpr int static_rope_dim = DR;
    static constexpr int static_nope_dim = DNope;
    static constexpr int static_v_dim = DV;
    static constexpr bool is_static =
        NH != dynamic && R != dynamic && DR != dynamic && DNope != dynamic && DV != dynamic;
    static constexpr int static_row_width = detail::both_static(R, DR) ? R + DR : dynamic;

    constexpr MlaShape() noexcept
        requires(is_static)
        : h_(), r_(), dr_(), dn_(), dv_() {}

    constexpr MlaShape(int heads, int rank, int rope_dim, int nope_dim, int v_dim)
        : h_(heads, "MlaShape: heads"),
          r_(rank, "MlaShape: rank (kv_lora_rank)"),
          dr_(rope_dim, "MlaShape: rope_dim (qk_rope_head_dim)"),
          dn_(nope_dim, "MlaShape: nope_dim (qk_nope_head_dim)"),
          dv_(v_dim, "MlaShape: v_dim (v_head_dim)") {
        require(rope_dim % 2 == 0, "MlaShape: rope_dim (", rope_dim,
                ") must be even (RoPE rotates pairs)");
        // row_width() and qk_dim() are ints.
        require(std::int64_t(rank) + rope_dim <= std::numeric_limits<int>::max(), "MlaShape: rank (", rank,
                ") + rope_dim (", rope_dim, ") overflows int");
        require(std::int64_t(nope_dim) + rope_dim <= std::numeric_limits<int>::max(), "MlaShape: nope_dim (",
                nope_dim, ") + rope_dim (", rope_dim, ") overflows int");
    }

    constexpr int heads() const noexcept { return h_(); }
    constexpr int rank() const noexcept { return r_(); }
    constexpr int rope_dim() const noexcept { return dr_(); }
    constexpr int nope_dim() const noexcept { return dn_(); }
    constexpr int v_dim() const noexcept { return dv_(); }
    /// Width of one cache row, `r + d_r`: also the width of an absorbed query.
    constexpr int row_width() const noexcept { return rank() + rope_dim(); }
    /// Width of one head's query/key in the naive order, `d_nope + d_r`.
    constexpr int qk_dim() const noexcept { return nope_dim() + rope_dim(); }
    constexpr std::int64_t cache_elems_per_token() const noexcept { return row_width(); }

private:
    [[no_unique_address]] Extent<NH> h_;
    [[no_unique_address]] Extent<R> r_;
    [[no_unique_address]] Extent<DR> dr_;
    [[no_unique_address]] Extent<DNope> dn_;
    [[no_unique_address]] Extent<DV> dv_;
};

using DynamicMlaShape = MlaShape<dynamic, dynamic, dynamic, dynamic, dynamic>;

// ------------------------------------------------------------------------------------------------
// RoPE specification
// ------------------------------------------------------------------------------------------------

/// Which dims of a head form a rotated pair.
enum class RopePairing {
    half_split,   ///< dims j and j + d/2 (HF Llama, GGUF "NEOX")
    interleaved,  ///< dims 2i and 2i + 1 (DeepSeek, GGUF "NORM")
};

/// How the base frequencies are rescaled for long contexts.
enum class RopeScaling { none, linear, llama3, yarn };

inline const char* to_string(RopePairing p) noexcept {
    return p == RopePairing::half_split ? "half_split" : "interleaved";
}
inline const char* to_string(RopeScaling s) noexcept {
    switch (s) {
        case RopeScaling::none: return "none";
        case RopeScaling::linear: return "linear";
        case RopeScaling::llama3: return "llama3";
        case RopeScaling::yarn: return "yarn";
    }
    return "?";
}

/// Everything needed to build a RoPE frequency table (see rope.hpp). Field names follow the
/// Hugging Face `rope_scaling` config.
struct RopeSpec {
    RopePairing pairing = RopePairing::half_split;
    double base = 10000.0;                    ///< rope_theta
    RopeScaling scaling = RopeScaling::none;
    double factor = 1.0;                      ///< linear / llama3 / yarn factor
    int original_max_position = 8192;         ///< llama3 and yarn
    double low_freq_factor = 1.0;             ///< llama3
    double high_freq_factor = 4.0;            ///< llama3
    double beta_fast = 32.0;                  ///< yarn
    double beta_slow = 1.0;                   ///< yarn
    double attention_factor = 0.0;            ///< yarn cos/sin multiplier; 0 = 0.1·ln(factor)+1

    /// Throws transmla::error naming the bad field.
    void validate(int rotary_dim) const {
        require(rotary_dim > 0 && rotary_dim % 2 == 0, "RopeSpec: rotary dim must be positive and even, got ",
                rotary_dim);
        require(base > 1.0, "RopeSpec: base (rope_theta) must be > 1, got ", base);
        if (scaling != RopeScaling::none)
            require(factor >= 1.0, "RopeSpec: scaling factor must be >= 1 for ", to_string(scaling),
                    " scaling, got ", factor);
        if (scaling == RopeScaling::llama3) {
            require(original_max_position > 0, "RopeSpec: original_max_position must be positive, got ",
                    original_max_position);
            require(high_freq_factor > low_freq_factor, "RopeSpec: llama3 needs high_freq_factor (",
                    high_freq_factor, ") > low_freq_factor (", low_freq_factor, ")");
        }
        if (scaling == RopeScaling::yarn) {
            require(original_max_position > 0, "RopeSpec: original_max_position must be positive, got ",
                    original_max_position);
            require(beta_fast > beta_slow, "RopeSpec: yarn needs beta_fast (", beta_fast,
                    ") > beta_slow (", beta_slow, ")");
        }
    }
};

// ------------------------------------------------------------------------------------------------
// Run-time → compile-time dispatch
// ------------------------------------------------------------------------------------------------

/// A list of supported static shapes, e.g.
/// `ShapeList<GqaShape<32, 8, 128>, GqaShape<9, 3, 64>>`. `dispatch` calls `f(Shape{})` with the
/// entry that equals the run-time shape, and throws transmla::error listing the supported ones
/// otherwise. Keep lists short: each entry instantiates the kernels.
template <class... Shapes>
struct ShapeList {
    static_assert(sizeof...(Shapes) > 0, "transmla::ShapeList: list at least one shape");
};

namespace detail {

template <int NQ, int NKV, int D>
std::string describe(const GqaShape<NQ, NKV, D>& s) {
    return concat("GqaShape<n_q=", s.n_q(), ", n_kv=", s.n_kv(), ", head_dim=", s.head_dim(), ">");
}
template <int NH, int R, int DR, int DN, int DV>
std::string describe(const MlaShape<NH, R, DR, DN, DV>& s) {
    return concat("MlaShape<heads=", s.heads(), ", rank=", s.rank(), ", rope_dim=", s.rope_dim(),
                  ", nope_dim=", s.nope_dim(), ", v_dim=", s.v_dim(), ">");
}

template <int NQ, int NKV, int D, int NQ2, int NKV2, int D2>
constexpr bool same_shape(const GqaShape<NQ, NKV, D>& a, const GqaShape<NQ2, NKV2, D2>& b) {
    return a.n_q() == b.n_q() && a.n_kv() == b.n_kv() && a.head_dim() == b.head_dim();
}
template <int A1, int A2, int A3, int A4, int A5, int B1, int B2, int B3, int B4, int B5>
constexpr bool same_shape(const MlaShape<A1, A2, A3, A4, A5>& a, const MlaShape<B1, B2, B3, B4, B5>& b) {
    return a.heads() == b.heads() && a.rank() == b.rank() && a.rope_dim() == b.rope_dim() &&
           a.nope_dim() == b.nope_dim() && a.v_dim() == b.v_dim();
}

}  // namespace detail

/// Calls `f(S{})` for the static shape `S` of `List` equal to `runtime`; returns what `f` returns.
template <class... Shapes, class Runtime, class F>
decltype(auto) dispatch(ShapeList<Shapes...>, const Runtime& runtime, F&& f) {
    static_assert((Shapes::is_static && ...), "transmla::dispatch: every listed shape must be fully static");
    using R = std::invoke_result_t<F, std::tuple_element_t<0, std::tuple<Shapes...>>>;
    if constexpr (std::is_void_v<R>) {
        const bool hit = ((detail::same_shape(runtime, Shapes{}) ? (f(Shapes{}), true) : false) || ...);
        if (hit) return;
    } else {
        // find the first matching index, then call once
        std::optional<R> out;
        (void)((detail::same_shape(runtime, Shapes{}) ? (out.emplace(f(Shapes{})), true) : false) || ...);
        if (out) return R(std::move(*out));
    }
    std::string supported;
    ((supported += (supported.empty() ? "" : ", ") + detail::describe(Shapes{})), ...);
    fail("dispatch: unsupported shape ", detail::describe(runtime), "; supported: ", supported);
}

}  // namespace transmla
