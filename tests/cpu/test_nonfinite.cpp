// NaN and Inf in queries, keys and values: every CPU kernel path (GQA decode — streaming and
// tiled —, GQA prefill, absorbed MLA decode, MLA prefill in both orders; unsplit and split-KV) at
// every ISA level this machine runs and every storage type must give what reference/ gives: a NaN
// output row and lse exactly where a logit the row sees is not finite (NaN or Inf in its query or
// in a key it attends to, Inf·0), NaN output elements where a value it attends to is NaN, and the
// ordinary result everywhere else — a bad query row must not poison the other rows, a bad key
// poisons exactly the rows that see it, and a poisoned row never comes out as "no keys" (0, −inf).
#include "cpu_test_util.hpp"

#include <limits>
#include <span>
#include <sstream>

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace transmla;
using namespace transmla::test;

namespace {

// ---- GQA -----------------------------------------------------------------------------------------

struct GqaCfg {
    int n_kv, g, d;
    std::int64_t S, T;
    bool paged;
};

template <class T>
void gqa_case(cpu::Isa isa, const GqaCfg& c, Spot spot, std::int64_t kv_chunk) {
    const int nq = c.n_kv * c.g;
    TestGqaCache<T> cache(c.n_kv, c.d, c.S, c.paged, 16);
    auto q = random_vector<T>(std::size_t(c.T) * nq * c.d);
    const std::int64_t t = uniform_int(0, c.T - 1), j = uniform_int(0, c.S - 1);
    const int i = int(uniform_int(0, nq - 1)), h = int(uniform_int(0, c.n_kv - 1)), e = int(uniform_int(0, c.d - 1));
    const auto& v = cache.view;
    switch (spot) {
        case Spot::q_nan: q[(std::size_t(t) * nq + i) * c.d + e] = from_double<T>(nan_v); break;
        case Spot::q_inf: q[(std::size_t(t) * nq + i) * c.d + e] = from_double<T>(inf_v); break;
        case Spot::k_nan: put(v.k_at(j, h) + e, nan_v); break;
        case Spot::k_neg_inf: put(v.k_at(j, h) + e, -inf_v); break;
        case Spot::k_rope_inf: put(v.k_at(j, h) + c.d - 1, inf_v); break;
        case Spot::inf_times_zero:  // one query row of head h's group meets Inf·0; the others ±Inf
            put(v.k_at(j, h) + e, inf_v);
            q[(std::size_t(t) * nq + h * c.g) * c.d + e] = from_double<T>(0.0);
            break;
        case Spot::v_nan: put(v.v_at(j, h) + e, nan_v); break;
    }
    std::vector<float> out(q.size()), lse(std::size_t(c.T) * nq);
    const float scale = 1.f / std::sqrt(float(c.d));
    cpu::Options opt;
    opt.isa = isa;
    opt.kv_chunk = kv_chunk;
    opt.num_workers = kv_chunk > 0 ? 2 : 1;
    cpu::gqa_decode(View3<const T>(q.data(), {c.T, nq, c.d}), v, scale, View3<float>(out.data(), {c.T, nq, c.d}),
                    View2<float>(lse.data(), {c.T, nq}), opt);
    std::vector<double> ref(out.size()), ref_lse(lse.size());
    reference::gqa_decode(View3<const T>(q.data(), {c.T, nq, c.d}), v, double(scale),
                          View3<double>(ref.data(), {c.T, nq, c.d}), View2<double>(ref_lse.data(), {c.T, nq}));
    std::ostringstream what;
    what << cpu::isa_name(isa) << " gqa n_kv=" << c.n_kv << " g=" << c.g << " d=" << c.d << " S=" << c.S
         << " T=" << c.T << (c.paged ? " paged" : " contiguous") << " chunk=" << kv_chunk << " type=" << type_name<T>()
         << ": " << spot_name(spot) << " (query token " << t << " head " << i << ", key " << j << " kv head " << h
         << ", element " << e << ")";
    check_like_reference(out, lse, ref, ref_lse, kernel_tolerance<float, T>(isa), what.str());
}

template <class T>
void gqa_all(cpu::Isa isa) {
    const GqaCfg cfgs[] = {
        {2, 4, 64, 133, 1, false},   // decode, streaming kernel (static width)
        {1, 2, 32, 77, 2, true},     // two query tokens, streaming kernel: rows end at different keys
        {2, 3, 40, 97, 3, false},    // three query tokens, tiled kernel (run-time width)
        {2, 3, 64, 150, 150, false}, // full causal prefill (transposed Q·Kᵀ)
        {1, 1, 128, 200, 37, true},  // chunked prefill, one query head per KV head (ragged row blocks)
    };
    for (const auto& c : cfgs)
        for (auto spot : {Spot::q_nan, Spot::q_inf, Spot::k_nan, Spot::k_neg_inf, Spot::k_rope_inf,
                          Spot::inf_times_zero, Spot::v_nan})
            for (std::int64_t chunk : {std::int64_t(0), std::int64_t(48)}) gqa_case<T>(isa, c, spot, chunk);
}

// ---- MLA decode (latent attention) ---------------------------------------------------------------

struct MlaCfg {
    int H, r, dr;
    std::int64_t S, T;
    bool paged;
};

template <class T>
void mla_case(cpu::Isa isa, const MlaCfg& c, Spot spot, std::int64_t kv_chunk) {
    const int w = c.r + c.dr;
    TestMlaCache<T> cache(c.r, c.dr, c.S, c.paged, 16);
    auto q = random_vector<T>(std::size_t(c.T) * c.H * w, 0.3);
    const std::int64_t t = uniform_int(0, c.T - 1), j = uniform_int(0, c.S - 1);
    const int i = int(uniform_int(0, c.H - 1)), e = int(uniform_int(0, c.r - 1));
    const auto& v = cache.view;
    switch (spot) {
        case Spot::q_nan: q[(std::size_t(t) * c.H + i) * w + e] = from_double<T>(nan_v); break;
        case Spot::q_inf: q[(std::size_t(t) * c.H + i) * w + c.r + int(uniform_int(0, c.dr - 1))] = from_double<T>(inf_v); break;
        case Spot::k_nan:
        case Spot::v_nan: put(v.row_at(j) + e, nan_v); break;  // the latent is key and value
        case Spot::k_neg_inf: put(v.row_at(j) + e, -inf_v); break;
        case Spot::k_rope_inf: put(v.row_at(j) + c.r + int(uniform_int(0, c.dr - 1)), inf_v); break;
        case Spot::inf_times_zero:
            put(v.row_at(j) + e, inf_v);
            q[(std::size_t(t) * c.H + i) * w + e] = from_double<T>(0.0);
            break;
    }
    std::vector<float> out(std::size_t(c.T) * c.H * c.r), lse(std::size_t(c.T) * c.H);
    const float scale = 1.f / std::sqrt(float(128 + c.dr));
    cpu::Options opt;
    opt.isa = isa;
    opt.kv_chunk = kv_chunk;
    opt.num_workers = kv_chunk > 0 ? 2 : 1;
    cpu::mla_decode(View3<const T>(q.data(), {c.T, c.H, w}), v, scale, View3<float>(out.data(), {c.T, c.H, c.r}),
                    View2<float>(lse.data(), {c.T, c.H}), opt);
    std::vector<double> ref(out.size()), ref_lse(lse.size());
    reference::mla_latent_attention(View3<const T>(q.data(), {c.T, c.H, w}), v, double(scale),
                                    reference::Causal{c.S - c.T}, View3<double>(ref.data(), {c.T, c.H, c.r}),
                                    View2<double>(ref_lse.data(), {c.T, c.H}));
    std::ostringstream what;
    what << cpu::isa_name(isa) << " mla_decode H=" << c.H << " r=" << c.r << " dr=" << c.dr << " S=" << c.S
         << " T=" << c.T << (c.paged ? " paged" : " contiguous") << " chunk=" << kv_chunk << " type=" << type_name<T>()
         << ": " << spot_name(spot) << " (query token " << t << " head " << i << ", key " << j << ", element " << e
         << ")";
    check_like_reference(out, lse, ref, ref_lse, kernel_tolerance<float, T>(isa), what.str());
}

template <class T>
void mla_all(cpu::Isa isa) {
    const MlaCfg cfgs[] = {
        {4, 64, 16, 121, 1, false},  // decode
        {3, 40, 8, 90, 5, true},     // five query tokens: rows end at different keys (V = latent)
        {2, 32, 16, 70, 70, false},  // absorbed prefill of a whole prompt
    };
    for (const auto& c : cfgs)
        for (auto spot : {Spot::q_nan, Spot::q_inf, Spot::k_nan, Spot::k_neg_inf, Spot::k_rope_inf,
                          Spot::inf_times_zero})
            for (std::int64_t chunk : {std::int64_t(0), std::int64_t(32)}) mla_case<T>(isa, c, spot, chunk);
}

// ---- MLA prefill (naive and absorbed orders) -----------------------------------------------------

template <class T>
void mla_prefill_case(cpu::Isa isa, cpu::MlaOrder order, std::int64_t S, std::int64_t nt, Spot spot, std::int64_t kv_chunk) {
    const int H = 3, dn = 24, dr = 8, dv = 16, r = 40;
    TestMlaCache<T> cache(r, dr, S, true, 16);
    auto q_nope = random_vector<T>(std::size_t(nt) * H * dn, 0.5);
    auto q_pe = random_vector<T>(std::size_t(nt) * H * dr, 0.5);
    const auto kv_b = random_vector<float>(std::size_t(H) * (dn + dv) * r, 0.15);
    const std::int64_t t = uniform_int(0, nt - 1), j = uniform_int(0, S - 1);
    const int i = int(uniform_int(0, H - 1));
    const auto& v = cache.view;
    switch (spot) {
        case Spot::q_nan: q_nope[(std::size_t(t) * H + i) * dn + uniform_int(0, dn - 1)] = from_double<T>(nan_v); break;
        case Spot::q_inf: q_pe[(std::size_t(t) * H + i) * dr + uniform_int(0, dr - 1)] = from_double<T>(inf_v); break;
        case Spot::k_nan: put(v.row_at(j) + uniform_int(0, r - 1), nan_v); break;  // decompresses to NaN k and v
        case Spot::k_rope_inf: put(v.row_at(j) + r + uniform_int(0, dr - 1), inf_v); break;
        default: FAIL("unused spot"); return;
    }
    std::vector<float> out(std::size_t(nt) * H * dv), lse(std::size_t(nt) * H);
    const float scale = 1.f / std::sqrt(float(dn + dr));
    cpu::Options opt;
    opt.isa = isa;
    opt.kv_chunk = kv_chunk;
    opt.num_workers = kv_chunk > 0 ? 2 : 1;
    const View2<const float> W(kv_b.data(), {std::int64_t(H) * (dn + dv), r});
    cpu::mla_prefill(View3<const T>(q_nope.data(), {nt, H, dn}), View3<const T>(q_pe.data(), {nt, H, dr}), v, W, scale,
                     View3<float>(out.data(), {nt, H, dv}), View2<float>(lse.data(), {nt, H}), order, opt);
    std::vector<double> ref(out.size()), ref_lse(lse.size());
    reference::mla_naive(View3<const T>(q_nope.data(), {nt, H, dn}), View3<const T>(q_pe.data(), {nt, H, dr}), v, W,
                         double(scale), reference::Causal{S - nt}, View3<double>(ref.data(), {nt, H, dv}),
                         View2<double>(ref_lse.data(), {nt, H}));
    std::ostringstream what;
    what << cpu::isa_name(isa) << " mla_prefill " << cpu::mla_order_name(order) << " S=" << S << " nt=" << nt
         << " chunk=" << kv_chunk << " type=" << type_name<T>() << ": " << spot_name(spot) << " (query token " << t
         << " head " << i << ", key " << j << ")";
    check_like_reference(out, lse, ref, ref_lse, std::max(1e-4, kernel_tolerance<float, T>(isa)), what.str());
}

template <class T>
void mla_prefill_all(cpu::Isa isa) {
    for (auto order : {cpu::MlaOrder::naive, cpu::MlaOrder::absorbed})
        for (auto [S, nt] : {std::pair<std::int64_t, std::int64_t>{130, 130}, {200, 37}})
            for (auto spot : {Spot::q_nan, Spot::q_inf, Spot::k_nan, Spot::k_rope_inf})
                for (std::int64_t chunk : {std::int64_t(0), std::int64_t(64)}) mla_prefill_case<T>(isa, order, S, nt, spot, chunk);
}

}  // namespace

TEST_CASE("cpu::gqa_decode / prefill: NaN and Inf propagate exactly as in the reference") {
#if defined(_OPENMP)
    omp_set_num_threads(2);
#endif
    for (auto isa : runnable_isas()) {
        gqa_all<float>(isa);
        gqa_all<half>(isa);
        gqa_all<bfloat16>(isa);
    }
}

TEST_CASE("cpu::mla_decode: NaN and Inf propagate exactly as in the reference") {
#if defined(_OPENMP)
    omp_set_num_threads(2);
#endif
    for (auto isa : runnable_isas()) {
        mla_all<float>(isa);
        mla_all<half>(isa);
        mla_all<bfloat16>(isa);
    }
}

TEST_CASE("cpu::mla_prefill: NaN and Inf propagate exactly as in the reference, in both orders") {
#if defined(_OPENMP)
    omp_set_num_threads(2);
#endif
    for (auto isa : runnable_isas()) {
        mla_prefill_all<float>(isa);
        mla_prefill_all<half>(isa);
        mla_prefill_all<bfloat16>(isa);
    }
}

TEST_CASE("rows without keys still give 0 and -inf next to poisoned rows") {
    // Split-KV: in the chunks after a row's last key the row has no key; its empty partials must
    // merge away, while a poisoned partial of another row must stay NaN.
    for (auto isa : runnable_isas()) {
        const int nkv = 1, g = 1, d = 32;
        const std::int64_t S = 96, T = 96;
        TestGqaCache<float> cache(nkv, d, S, false, 16);
        auto q = random_vector<float>(std::size_t(T) * d);
        q[std::size_t(5) * d + 3] = std::numeric_limits<float>::quiet_NaN();  // query token 5
        put(cache.view.k_at(80, 0) + 7, nan_v);                               // key 80: rows 80.. see it
        std::vector<float> out(q.size()), lse(static_cast<std::size_t>(T));
        cpu::Options opt;
        opt.isa = isa;
        opt.kv_chunk = 16;
        cpu::gqa_prefill(View3<const float>(q.data(), {T, g, d}), cache.view, 0.2f, View3<float>(out.data(), {T, g, d}),
                         View2<float>(lse.data(), {T, g}), opt);
        INFO(cpu::isa_name(isa));
        for (std::int64_t t = 0; t < T; ++t) {
            INFO("row " << t);
            const bool bad = t == 5 || t >= 80;
            CHECK(std::isnan(lse[t]) == bad);
            CHECK(std::isnan(out[t * d]) == bad);
            if (!bad) CHECK(std::isfinite(lse[t]));
        }
    }
}
