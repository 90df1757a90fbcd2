// Split-KV plans: items run in any order, from several std::threads, reused across calls; partial
// states merge by log-sum-exp into the same result as the unsplit kernel and the reference.
#include "cpu_test_util.hpp"

#include <algorithm>
#include <thread>

using namespace transmla;
using namespace transmla::test;

TEST_CASE("cpu plan: items in reverse order, from two std::threads, reused for a second call") {
    const int n_kv = 2, g = 4, d = 128, nq = n_kv * g;
    const std::int64_t S = 1025, T = 2;
    TestGqaCache<half> cache(n_kv, d, S, true, 16);
    for (auto isa : runnable_isas()) {
        INFO("isa " << cpu::isa_name(isa));
        cpu::Options opt;
        opt.isa = isa;
        opt.kv_chunk = 100;  // 11 chunks per KV head, the last one short
        auto q = random_vector<half>(std::size_t(T) * nq * d);
        std::vector<float> out(q.size()), lse(std::size_t(T) * nq);
        cpu::GqaAttention<half, half, float> args{View3<const half>(q.data(), {T, nq, d}), {},
                                                   std::span<const GqaSeqView<half>>(&cache.view, 1), 0.09f,
                                                   View3<float>(out.data(), {T, nq, d}),
                                                   View2<float>(lse.data(), {T, nq})};
        const auto call = cpu::prepare(args, opt);
        const cpu::Plan plan = cpu::make_plan(call, opt);
        CHECK(plan.size() == 11);  // both KV heads in one group (decode), 11 key chunks
        for (std::int64_t i = plan.size() - 1; i >= 0; --i) plan.run(call, i);
        std::vector<double> ref(q.size()), ref_lse(lse.size());
        reference::gqa_decode(View3<const half>(q.data(), {T, nq, d}), cache.view, 0.09,
                              View3<double>(ref.data(), {T, nq, d}), View2<double>(ref_lse.data(), {T, nq}));
        TRANSMLA_CHECK_CLOSE(out, ref, 3e-5);
        CHECK(lse_error(lse, ref_lse) <= 1e-4);

        // Same plan, new query values, items shared by two threads (odd / even).
        const auto fresh = random_vector<half>(q.size());
        std::copy(fresh.begin(), fresh.end(), q.begin());  // same buffer: the prepared views point at it
        std::fill(out.begin(), out.end(), 0.f);
        const auto call2 = cpu::prepare(args, opt);
        std::thread t1([&] { for (std::int64_t i = 0; i < plan.size(); i += 2) plan.run(call2, i); });
        std::thread t2([&] { for (std::int64_t i = 1; i < plan.size(); i += 2) plan.run(call2, i); });
        t1.join();
        t2.join();
        reference::gqa_decode(View3<const half>(q.data(), {T, nq, d}), cache.view, 0.09,
                              View3<double>(ref.data(), {T, nq, d}), View2<double>(ref_lse.data(), {T, nq}));
        TRANSMLA_CHECK_CLOSE(out, ref, 3e-5);
        CHECK(lse_error(lse, ref_lse) <= 1e-4);
    }
}

TEST_CASE("cpu plan: automatic splitting for several workers, MLA with one sequence") {
    const int H = 32, r = 512, dr = 64, w = r + dr;
    const std::int64_t S = 4096;
    TestMlaCache<bfloat16> cache(r, dr, S, false, 16);
    const auto q = random_vector<float>(std::size_t(H) * w, 0.05);
    std::vector<float> out(std::size_t(H) * r), lse(H);
    cpu::MlaAttention<float, bfloat16, float> args{View3<const float>(q.data(), {1, H, w}), {},
                                                    std::span<const MlaSeqView<bfloat16>>(&cache.view, 1), 0.07f,
                                                    View3<float>(out.data(), {1, H, r}), View2<float>(lse.data(), {1, H})};
    cpu::Options opt;
    opt.num_workers = 4;
    const auto call = cpu::prepare(args, opt);
    const cpu::Plan plan = cpu::make_plan(call, opt);
    CHECK(plan.size() >= 4);  // one group, split along the keys
    for (std::int64_t i = 0; i < plan.size(); ++i) plan.run(call, i);
    std::vector<double> ref(out.size()), ref_lse(lse.size());
    reference::mla_latent_attention(View3<const float>(q.data(), {1, H, w}), cache.view, 0.07, reference::Causal{S - 1},
                                    View3<double>(ref.data(), {1, H, r}), View2<double>(ref_lse.data(), {1, H}));
    TRANSMLA_CHECK_CLOSE(out, ref, (kernel_tolerance<float, bfloat16>(cpu::best_isa())));
}

TEST_CASE("cpu plan: misuse is reported") {
    const int n_kv = 1, d = 64;
    TestGqaCache<float> a(n_kv, d, 50, false, 16), b(n_kv, d, 60, false, 16);
    std::vector<float> q(std::size_t(2) * d), out(q.size());
    cpu::GqaAttention<float, float, float> args{View3<const float>(q.data(), {1, 2, d}), {},
                                                 std::span<const GqaSeqView<float>>(&a.view, 1), 0.1f,
                                                 View3<float>(out.data(), {1, 2, d})};
    const auto call = cpu::prepare(args);
    const cpu::Plan plan = cpu::make_plan(call);
    CHECK_THROWS_AS(plan.run(call, plan.size()), transmla::error);  // no such item
    args.kv = std::span<const GqaSeqView<float>>(&b.view, 1);        // a longer sequence
    const auto other = cpu::prepare(args);
    CHECK_THROWS_AS(plan.run(other, 0), transmla::error);
    cpu::Options bad;
    bad.tile = 24;  // not a multiple of 16
    CHECK_THROWS_AS(cpu::make_plan(call, bad), transmla::error);
}
