// GQA decode and prefill kernels against reference::gqa_attention (double) over the test matrix
// of docs/conventions.md, at every ISA level this machine runs.
#include "cpu_test_util.hpp"

#include <span>

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace transmla;
using namespace transmla::test;

namespace {

struct GqaCase {
    cpu::Isa isa;
    int n_kv, g, d;
    std::int64_t S, T;
    bool paged;
    std::int64_t page_size;
    std::int64_t kv_chunk;  // 0: unsplit
    int workers;
};

std::string describe(const GqaCase& c) {
    return std::string(cpu::isa_name(c.isa)) + " n_kv=" + std::to_string(c.n_kv) + " g=" + std::to_string(c.g) +
           " d=" + std::to_string(c.d) + " S=" + std::to_string(c.S) + " T=" + std::to_string(c.T) +
           (c.paged ? " paged/" + std::to_string(c.page_size) : " contiguous") +
           " chunk=" + std::to_string(c.kv_chunk) + " workers=" + std::to_string(c.workers);
}

template <class Tq, class Tkv, class To>
void run_decode_case(const GqaCase& c) {
    INFO(describe(c) << " q=" << type_name<Tq>() << " kv=" << type_name<Tkv>() << " out=" << type_name<To>());
    const int nq = c.n_kv * c.g;
    TestGqaCache<Tkv> cache(c.n_kv, c.d, c.S, c.paged, c.page_size);
    const auto q = random_vector<Tq>(std::size_t(c.T) * nq * c.d);
    std::vector<To> out(q.size());
    std::vector<float> lse(std::size_t(c.T) * nq, 123.f);
    const float scale = 1.f / std::sqrt(float(c.d));
    cpu::Options opt;
    opt.isa = c.isa;
    opt.kv_chunk = c.kv_chunk;
    opt.num_workers = c.workers;
#if defined(_OPENMP)
    omp_set_num_threads(c.workers);  // 2 workers: the plan's items really run on 2 OpenMP threads
#endif
    cpu::gqa_decode(View3<const Tq>(q.data(), {c.T, nq, c.d}), cache.view, scale, View3<To>(out.data(), {c.T, nq, c.d}),
                    View2<float>(lse.data(), {c.T, nq}), opt);

    std::vector<double> ref(q.size()), ref_lse(lse.size());
    reference::gqa_decode(View3<const Tq>(q.data(), {c.T, nq, c.d}), cache.view, double(scale),
                          View3<double>(ref.data(), {c.T, nq, c.d}), View2<double>(ref_lse.data(), {c.T, nq}));
    const double tol = kernel_tolerance<To, Tkv>(c.isa);
    TRANSMLA_CHECK_CLOSE(out, ref, tol);
    const double le = lse_error(lse, ref_lse);
    INFO("lse error " << le);
    CHECK(le <= 20 * tol);
}

}  // namespace

TEST_CASE("cpu::gqa_decode matches the reference over the shape matrix, every ISA level") {
    const std::int64_t lengths[] = {1, 7, 113, 1025};
    const int dims[] = {128, 64, 40};
    const std::int64_t tokens[] = {1, 3, 8, 2};
    int k = 0;
    for (auto isa : runnable_isas())
        for (auto S : lengths)
            for (int g = 1; g <= 8; ++g, ++k) {
                GqaCase c{isa, g <= 4 ? 2 : 1, g, dims[k % 3], S, std::min(S, tokens[k % 4]), k % 2 == 1,
                          k % 4 == 1 ? 16 : 7, (k % 3 == 2) ? 48 : 0, 1 + (k % 5 == 0)};
                switch (k % 3) {
                    case 0: run_decode_case<float, float, float>(c); break;
                    case 1: run_decode_case<half, half, float>(c); break;
                    default: run_decode_case<bfloat16, bfloat16, float>(c); break;
                }
            }
}

TEST_CASE("cpu::gqa_decode: every storage type at every level, split and unsplit, 1 and 2 workers") {
    for (auto isa : runnable_isas())
        for (int split = 0; split < 2; ++split)
            for (int workers = 1; workers <= 2; ++workers) {
                const GqaCase c{isa, 2, 4, 128, 300, 2, split == 1, 16, split ? 64 : 0, workers};
                run_decode_case<float, float, float>(c);
                run_decode_case<half, half, half>(c);
                run_decode_case<bfloat16, bfloat16, bfloat16>(c);
                run_decode_case<float, half, float>(c);
                run_decode_case<float, bfloat16, float>(c);
            }
}

TEST_CASE("cpu::gqa_decode of a batch with ragged query counts and mixed layouts") {
    for (auto isa : runnable_isas()) {
        INFO("isa " << cpu::isa_name(isa));
        const int n_kv = 3, g = 3, d = 64, nq = n_kv * g;
        const std::int64_t lens[] = {5, 1025, 113, 1};
        const std::int64_t Ts[] = {1, 8, 4, 1};
        std::vector<std::unique_ptr<TestGqaCache<half>>> caches;
        std::vector<GqaSeqView<half>> views;
        std::vector<std::int64_t> indptr{0};
        for (int b = 0; b < 4; ++b) {
            caches.push_back(std::make_unique<TestGqaCache<half>>(n_kv, d, lens[b], b % 2 == 1, 32));
            views.push_back(caches.back()->view);
            indptr.push_back(indptr.back() + Ts[b]);
        }
        const std::int64_t tokens = indptr.back();
        const auto q = random_vector<half>(std::size_t(tokens) * nq * d);
        std::vector<float> out(q.size()), lse(std::size_t(tokens) * nq);
        cpu::Options opt;
        opt.isa = isa;
        opt.num_workers = 2;
        const float scale = 0.125f;
        cpu::gqa_decode(View3<const half>(q.data(), {tokens, nq, d}), std::span<const std::int64_t>(indptr),
                        std::span<const GqaSeqView<half>>(views), scale, View3<float>(out.data(), {tokens, nq, d}),
                        View2<float>(lse.data(), {tokens, nq}), opt);
        for (int b = 0; b < 4; ++b) {
            INFO("sequence " << b);
            const std::int64_t T = Ts[b];
            std::vector<double> ref(std::size_t(T) * nq * d), ref_lse(std::size_t(T) * nq);
            reference::gqa_decode(View3<const half>(q.data() + indptr[b] * nq * d, {T, nq, d}), views[b], double(scale),
                                  View3<double>(ref.data(), {T, nq, d}), View2<double>(ref_lse.data(), {T, nq}));
            std::vector<float> got(out.begin() + indptr[b] * nq * d, out.begin() + indptr[b + 1] * nq * d);
            std::vector<float> got_lse(lse.begin() + indptr[b] * nq, lse.begin() + indptr[b + 1] * nq);
            TRANSMLA_CHECK_CLOSE(got, ref, 3e-5);
            CHECK(lse_error(got_lse, ref_lse) <= 1e-4);
        }
    }
}

namespace {

template <class T>
void run_prefill_case(cpu::Isa isa, int n_kv, int g, int d, std::int64_t S, std::int64_t nt, int workers, int q_tile) {
    INFO(cpu::isa_name(isa) << " n_kv=" << n_kv << " g=" << g << " d=" << d << " S=" << S << " nt=" << nt
                            << " workers=" << workers << " q_tile=" << q_tile << " type=" << type_name<T>());
    const int nq = n_kv * g;
    const auto k = random_vector<T>(std::size_t(S) * n_kv * d);
    const auto v = random_vector<T>(std::size_t(S) * n_kv * d);
    const auto q = random_vector<T>(std::size_t(nt) * nq * d);
    std::vector<float> out(q.size()), lse(std::size_t(nt) * nq);
    const float scale = 1.f / std::sqrt(float(d));
    const std::int64_t q_offset = S - nt;
    cpu::Options opt;
    opt.isa = isa;
    opt.num_workers = workers;
    opt.q_tile = q_tile;
    cpu::gqa_prefill(View3<const T>(q.data(), {nt, nq, d}), View3<const T>(k.data(), {S, n_kv, d}),
                     View3<const T>(v.data(), {S, n_kv, d}), scale, View3<float>(out.data(), {nt, nq, d}),
                     View2<float>(lse.data(), {nt, nq}), q_offset, opt);
    std::vector<double> ref(q.size()), ref_lse(lse.size());
    reference::gqa_prefill(View3<const T>(q.data(), {nt, nq, d}), View3<const T>(k.data(), {S, n_kv, d}),
                           View3<const T>(v.data(), {S, n_kv, d}), q_offset, double(scale),
                           View3<double>(ref.data(), {nt, nq, d}), View2<double>(ref_lse.data(), {nt, nq}));
    const double tol = kernel_tolerance<float, T>(isa);
    TRANSMLA_CHECK_CLOSE(out, ref, tol);
    CHECK(lse_error(lse, ref_lse) <= 4 * tol);
}

}  // namespace

TEST_CASE("cpu::gqa_prefill (causal, tiled) matches the reference") {
    for (auto isa : runnable_isas()) {
        run_prefill_case<float>(isa, 2, 4, 64, 113, 113, 1, 0);
        run_prefill_case<half>(isa, 1, 3, 128, 300, 300, 2, 0);
        run_prefill_case<bfloat16>(isa, 3, 1, 40, 257, 257, 2, 5);
        run_prefill_case<float>(isa, 2, 8, 64, 1025, 200, 2, 0);  // chunked prefill: q_offset = 825
        run_prefill_case<half>(isa, 2, 2, 128, 7, 7, 1, 3);
    }
}

TEST_CASE("cpu::gqa_decode rejects bad input with transmla::error") {
    const int n_kv = 2, d = 64;
    TestGqaCache<float> cache(n_kv, d, 10, false, 16);
    std::vector<float> q(std::size_t(3) * 4 * d), out(q.size());
    // more query tokens than cached tokens
    TestGqaCache<float> tiny(n_kv, d, 2, false, 16);
    CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {3, 4, d}), tiny.view, 0.1f,
                                    View3<float>(out.data(), {3, 4, d})),
                    transmla::error);
    // n_q not a multiple of n_kv
    CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {3, 3, d}), cache.view, 0.1f,
                                    View3<float>(out.data(), {3, 3, d})),
                    transmla::error);
    // head dim mismatch
    CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {3, 4, 32}), cache.view, 0.1f,
                                    View3<float>(out.data(), {3, 4, 32})),
                    transmla::error);
    // out of the wrong shape
    CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {3, 4, d}), cache.view, 0.1f,
                                    View3<float>(out.data(), {2, 4, d})),
                    transmla::error);
    // bad scale
    CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {3, 4, d}), cache.view, -1.f,
                                    View3<float>(out.data(), {3, 4, d})),
                    transmla::error);
    // an ISA level this CPU lacks (or a named level without dispatch)
    cpu::Options opt;
    opt.isa = cpu::Isa::avx512bf16;
    if (!cpu::isa_supported(opt.isa))
        CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {3, 4, d}), cache.view, 0.1f,
                                        View3<float>(out.data(), {3, 4, d}), {}, opt),
                        transmla::error);
}
