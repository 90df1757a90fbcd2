// Absorbed MLA decode (latent multi-query attention) against reference::mla_latent_attention over
// the test matrix of docs/conventions.md (odd lengths, storage types, paged/contiguous,
// split/unsplit, 1/2 workers, both RoPE pairings), at every ISA level this machine runs.
#include "cpu_test_util.hpp"
#include "transmla/rope.hpp"

#include <span>

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace transmla;
using namespace transmla::test;

namespace {

struct MlaCase {
    cpu::Isa isa;
    int H, r, dr;
    std::int64_t S, T;
    bool paged;
    std::int64_t page_size;
    std::int64_t kv_chunk;
    int workers;
    int head_block;
};

template <class Tq, class Tc, class To>
void run_mla_case(const MlaCase& c) {
    INFO(cpu::isa_name(c.isa) << " H=" << c.H << " r=" << c.r << " dr=" << c.dr << " S=" << c.S << " T=" << c.T
                              << std::string(c.paged ? " paged" : " contiguous") << " chunk=" << c.kv_chunk
                              << " workers=" << c.workers << " head_block=" << c.head_block << " q=" << type_name<Tq>()
                              << " cache=" << type_name<Tc>() << " out=" << type_name<To>());
    const int w = c.r + c.dr;
    TestMlaCache<Tc> cache(c.r, c.dr, c.S, c.paged, c.page_size);
    const auto q = random_vector<Tq>(std::size_t(c.T) * c.H * w, 0.3);
    std::vector<To> out(std::size_t(c.T) * c.H * c.r);
    std::vector<float> lse(std::size_t(c.T) * c.H);
    const float scale = 1.f / std::sqrt(float(128 + c.dr));
    cpu::Options opt;
    opt.isa = c.isa;
    opt.kv_chunk = c.kv_chunk;
    opt.num_workers = c.workers;
#if defined(_OPENMP)
    omp_set_num_threads(c.workers);  // 2 workers: the plan's items really run on 2 OpenMP threads
#endif
    opt.head_block = c.head_block;
    cpu::mla_decode(View3<const Tq>(q.data(), {c.T, c.H, w}), cache.view, scale, View3<To>(out.data(), {c.T, c.H, c.r}),
                    View2<float>(lse.data(), {c.T, c.H}), opt);
    std::vector<double> ref(out.size()), ref_lse(lse.size());
    reference::mla_latent_attention(View3<const Tq>(q.data(), {c.T, c.H, w}), cache.view, double(scale),
                                    reference::Causal{c.S - c.T}, View3<double>(ref.data(), {c.T, c.H, c.r}),
                                    View2<double>(ref_lse.data(), {c.T, c.H}));
    const double tol = kernel_tolerance<To, Tc>(c.isa);
    TRANSMLA_CHECK_CLOSE(out, ref, tol);
    const double le = lse_error(lse, ref_lse);
    INFO("lse error " << le);
    CHECK(le <= 20 * tol);
}

}  // namespace

TEST_CASE("cpu::mla_decode matches the reference latent attention over the shape matrix") {
    const std::int64_t lengths[] = {1, 7, 113, 1025};
    struct Dims {
        int H, r, dr;
    };
    // DeepSeek 512+64 (static kernel), a SmolLM2-like conversion rank, odd ranks (tails).
    const Dims dims[] = {{16, 512, 64}, {9, 96, 32}, {5, 40, 8}, {3, 130, 2}};
    const std::int64_t tokens[] = {1, 2, 8, 4};
    int k = 0;
    for (auto isa : runnable_isas())
        for (auto S : lengths)
            for (const auto& dm : dims) {
                const MlaCase c{isa, dm.H, dm.r, dm.dr, S, std::min(S, tokens[k % 4]), k % 2 == 0, k % 3 == 0 ? 16 : 5,
                                k % 4 == 3 ? 100 : 0, 1 + (k % 3 == 1), (k % 5 == 4) ? 4 : 0};
                switch (k % 3) {
                    case 0: run_mla_case<float, float, float>(c); break;
                    case 1: run_mla_case<half, half, float>(c); break;
                    default: run_mla_case<bfloat16, bfloat16, float>(c); break;
                }
                ++k;
            }
}

TEST_CASE("cpu::mla_decode: every storage type at every level, 128 heads, split and unsplit") {
    for (auto isa : runnable_isas())
        for (int split = 0; split < 2; ++split) {
            const MlaCase c{isa, 128, 512, 64, 77, 1, split == 1, 16, split ? 32 : 0, 2, split ? 48 : 0};
            run_mla_case<float, float, float>(c);
            run_mla_case<half, half, half>(c);
            run_mla_case<bfloat16, bfloat16, bfloat16>(c);
            run_mla_case<float, bfloat16, float>(c);
        }
}

TEST_CASE("cpu::mla_decode with RoPE applied by the caller, both pairings") {
    // Cache rows [c | RoPE(k_pe)] and queries [q̃ | RoPE(q_pe)] rotated with RopeTable at their
    // positions, in the half-split and the interleaved pairing: the kernel sees already-rotated
    // inputs; the reference is fed the same rotated values.
    const int H = 4, r = 64, dr = 16, w = r + dr;
    const std::int64_t S = 113, T = 3;
    for (auto pairing : {RopePairing::half_split, RopePairing::interleaved}) {
        INFO("pairing " << int(pairing));
        RopeSpec spec;
        spec.base = 10000.0;
        spec.pairing = pairing;
        const RopeTable table(spec, dr, S);
        auto rows = random_vector<float>(std::size_t(S) * w);
        for (std::int64_t t = 0; t < S; ++t) table.apply(rows.data() + t * w + r, t);
        auto q = random_vector<float>(std::size_t(T) * H * w, 0.3);
        for (std::int64_t t = 0; t < T; ++t)
            for (int i = 0; i < H; ++i) table.apply(q.data() + (t * H + i) * w + r, S - T + t);
        std::vector<bfloat16> rows_bf(rows.size());
        for (std::size_t i = 0; i < rows.size(); ++i) rows_bf[i] = from_float<bfloat16>(rows[i]);
        const MlaSeqView<bfloat16> view{rows_bf.data(), r, dr, S, w, PageMap{}};
        for (auto isa : runnable_isas()) {
            std::vector<float> out(std::size_t(T) * H * r);
            cpu::Options opt;
            opt.isa = isa;
            cpu::mla_decode(View3<const float>(q.data(), {T, H, w}), view, 0.1f, View3<float>(out.data(), {T, H, r}), {},
                            opt);
            std::vector<double> ref(out.size()), ref_lse(std::size_t(T) * H);
            reference::mla_latent_attention(View3<const float>(q.data(), {T, H, w}), view, 0.1, reference::Causal{S - T},
                                            View3<double>(ref.data(), {T, H, r}), View2<double>(ref_lse.data(), {T, H}));
            TRANSMLA_CHECK_CLOSE(out, ref, (kernel_tolerance<float, bfloat16>(isa)));
        }
    }
}

TEST_CASE("cpu::mla_decode of a batch, paged and contiguous sequences") {
    const int H = 16, r = 512, dr = 64, w = r + dr;
    const std::int64_t lens[] = {1025, 3, 200};
    const std::int64_t Ts[] = {2, 1, 8};
    std::vector<std::unique_ptr<TestMlaCache<half>>> caches;
    std::vector<MlaSeqView<half>> views;
    std::vector<std::int64_t> indptr{0};
    for (int b = 0; b < 3; ++b) {
        caches.push_back(std::make_unique<TestMlaCache<half>>(r, dr, lens[b], b != 1, 64));
        views.push_back(caches.back()->view);
        indptr.push_back(indptr.back() + Ts[b]);
    }
    const std::int64_t tokens = indptr.back();
    const auto q = random_vector<float>(std::size_t(tokens) * H * w, 0.2);
    for (auto isa : runnable_isas()) {
        INFO("isa " << cpu::isa_name(isa));
        std::vector<float> out(std::size_t(tokens) * H * r), lse(std::size_t(tokens) * H);
        cpu::Options opt;
        opt.isa = isa;
        opt.num_workers = 2;
        cpu::mla_decode(View3<const float>(q.data(), {tokens, H, w}), std::span<const std::int64_t>(indptr),
                        std::span<const MlaSeqView<half>>(views), 0.07f, View3<float>(out.data(), {tokens, H, r}),
                        View2<float>(lse.data(), {tokens, H}), opt);
        for (int b = 0; b < 3; ++b) {
            INFO("sequence " << b);
            const std::int64_t T = Ts[b];
            std::vector<double> ref(std::size_t(T) * H * r), ref_lse(std::size_t(T) * H);
            reference::mla_latent_attention(View3<const float>(q.data() + indptr[b] * H * w, {T, H, w}), views[b], 0.07,
                                            reference::Causal{lens[b] - T}, View3<double>(ref.data(), {T, H, r}),
                                            View2<double>(ref_lse.data(), {T, H}));
            std::vector<float> got(out.begin() + indptr[b] * H * r, out.begin() + indptr[b + 1] * H * r);
            std::vector<float> got_lse(lse.begin() + indptr[b] * H, lse.begin() + indptr[b + 1] * H);
            TRANSMLA_CHECK_CLOSE(got, ref, 3e-5);
            CHECK(lse_error(got_lse, ref_lse) <= 1e-4);
        }
    }
}

TEST_CASE("cpu::mla_decode rejects bad input with transmla::error") {
    TestMlaCache<float> cache(32, 8, 10, false, 16);
    std::vector<float> q(std::size_t(2) * 4 * 40), out(std::size_t(2) * 4 * 32);
    CHECK_THROWS_AS(cpu::mla_decode(View3<const float>(q.data(), {2, 4, 39}), cache.view, 0.1f,
                                    View3<float>(out.data(), {2, 4, 32})),
                    transmla::error);  // query width != r + d_r
    CHECK_THROWS_AS(cpu::mla_decode(View3<const float>(q.data(), {2, 4, 40}), cache.view, 0.1f,
                                    View3<float>(out.data(), {2, 4, 40})),
                    transmla::error);  // output width != r
    TestMlaCache<float> tiny(32, 8, 1, false, 16);
    CHECK_THROWS_AS(cpu::mla_decode(View3<const float>(q.data(), {2, 4, 40}), tiny.view, 0.1f,
                                    View3<float>(out.data(), {2, 4, 32})),
                    transmla::error);  // more queries than cached tokens
}
