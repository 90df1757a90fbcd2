// transmla/convert/shape_link.hpp — the compile-time link between a GQA shape and the MLA shape
// it converts to (TransMLA: heads n_q, rank r, RoPE dim d_r, nope = v = d), with static_asserts
// on the conversion constraints, and the run-time twin for dynamic shapes.
#pragma once

#include "transmla/error.hpp"
#include "transmla/shape.hpp"

namespace transmla::convert {

/// The MLA shape a static GQA shape converts to with RoPE dim DR, latent rank R and FreqFold F:
/// `ConvertedShape<GqaShape<32, 8, 128>, 64, 512, 4>::type` is `MlaShape<32, 512, 64, 128, 128>`.
/// Exact = true is the exact mode (d_r = L, r = L, F = 1; the cache stays 2L): pass DR = R = L.
template <class Gqa, int DR, int R, int F, bool Exact = false>
struct ConvertedShape {
    static_assert(Gqa::is_static, "transmla::convert::ConvertedShape: the GQA shape must be fully static "
                                  "(use converted_shape() for dynamic shapes)");
    static constexpr int n_q = Gqa::static_n_q;
    static constexpr int n_kv = Gqa::static_n_kv;
    static constexpr int d = Gqa::static_head_dim;
    static constexpr int L = n_kv * d;

    static_assert(DR > 0 && DR % 2 == 0, "transmla::convert::ConvertedShape: the RoPE dim d_r must be positive and even");
    static_assert(Exact || d % DR == 0, "transmla::convert::ConvertedShape: the RoPE dim d_r must divide the head dim d");
    static_assert(!Exact || (DR == L && R == L && F == 1),
                  "transmla::convert::ConvertedShape: the exact mode keeps RoPE on all L = n_kv·d latent dims at full "
                  "rank: DR = R = L and F = 1");
    static constexpr int c = Exact ? 1 : d / DR;
    static_assert(F > 0 && F % c == 0, "transmla::convert::ConvertedShape: FreqFold F must be a multiple of c = d/d_r");
    static_assert((d / 2) % F == 0, "transmla::convert::ConvertedShape: FreqFold F must divide d/2");
    static_assert(R >= 1 && R <= 2 * L - DR, "transmla::convert::ConvertedShape: the latent rank r must satisfy "
                                             "1 <= r <= 2L - d_r (L = n_kv·d)");
    static_assert(Exact || R + DR < 2 * L, "transmla::convert::ConvertedShape: the converted cache r + d_r must be "
                                           "smaller than the GQA cache 2·n_kv·d (use the exact mode for a full-size one)");

    using type = MlaShape<n_q, R, DR, d, d>;
    static constexpr int cache_per_token = R + DR;
    static constexpr int original_cache_per_token = 2 * L;
};

template <class Gqa, int DR, int R, int F, bool Exact = false>
using converted_shape_t = typename ConvertedShape<Gqa, DR, R, F, Exact>::type;

/// The MLA shape of the exact mode of a static GQA shape.
template <class Gqa>
using exact_shape_t = converted_shape_t<Gqa, Gqa::static_n_kv * Gqa::static_head_dim,
                                        Gqa::static_n_kv * Gqa::static_head_dim, 1, true>;

/// Run-time twin of ConvertedShape: the same checks, as transmla::error naming the value.
inline DynamicMlaShape converted_shape(const DynamicGqaShape& g, int d_r, int r, int F, bool exact = false) {
    const int d = g.head_dim(), L = g.kv_width();
    if (exact) {
        require(d_r == L && r == L && F == 1, "converted_shape: the exact mode needs rope_dim = rank = L = ", L,
                " and freqfold 1, got rope_dim ", d_r, ", rank ", r, ", freqfold ", F);
    } else {
        require(d_r > 0 && d_r % 2 == 0 && d % d_r == 0, "converted_shape: rope_dim (d_r) = ", d_r,
                " must be even and divide head_dim ", d);
        const int c = d / d_r;
        require(F > 0 && F % c == 0 && (d / 2) % F == 0, "converted_shape: freqfold (F) = ", F,
                " must be a multiple of c = d/d_r = ", c, " that divides d/2 = ", d / 2);
        require(r + d_r < 2 * L, "converted_shape: the cache r + d_r = ", r + d_r,
                " must be smaller than the GQA cache 2L = ", 2 * L);
    }
    require(r >= 1 && r <= 2 * L - d_r, "converted_shape: rank (r) = ", r, " must be in [1, 2L - d_r = ", 2 * L - d_r,
            "]");
    return DynamicMlaShape(g.n_q(), r, d_r, d, d);
}

}  // namespace transmla::convert
