// The kernels without run-time dispatch: compiled inline for this test's own architecture
// (xsimd::default_arch), selected as Isa::native; named levels are refused with an error.
#include "cpu_test_util.hpp"

using namespace transmla;
using namespace transmla::test;

static_assert(!cpu::dispatch_enabled(), "this test must be built without transmla_cpu_kernels");

TEST_CASE("cpu native build: GQA and MLA decode match the reference") {
    CHECK(cpu::best_isa() == cpu::Isa::native);
    CHECK(cpu::isa_supported(cpu::Isa::native));
    CHECK_FALSE(cpu::isa_supported(cpu::Isa::avx2));
    {
        TestGqaCache<half> cache(2, 64, 113, true, 16);
        const auto q = random_vector<float>(std::size_t(3) * 6 * 64);
        std::vector<float> out(q.size()), lse(3 * 6);
        cpu::gqa_decode(View3<const float>(q.data(), {3, 6, 64}), cache.view, 0.125f, View3<float>(out.data(), {3, 6, 64}),
                        View2<float>(lse.data(), {3, 6}));
        std::vector<double> ref(q.size()), ref_lse(lse.size());
        reference::gqa_decode(View3<const float>(q.data(), {3, 6, 64}), cache.view, 0.125,
                              View3<double>(ref.data(), {3, 6, 64}), View2<double>(ref_lse.data(), {3, 6}));
        TRANSMLA_CHECK_CLOSE(out, ref, 3e-5);
        CHECK(lse_error(lse, ref_lse) <= 1e-4);
    }
    {
        TestMlaCache<bfloat16> cache(96, 32, 1025, false, 16);
        const auto q = random_vector<float>(std::size_t(2) * 9 * 128, 0.2);
        std::vector<float> out(std::size_t(2) * 9 * 96);
        cpu::mla_decode(View3<const float>(q.data(), {2, 9, 128}), cache.view, 0.1f, View3<float>(out.data(), {2, 9, 96}));
        std::vector<double> ref(out.size()), ref_lse(18);
        reference::mla_latent_attention(View3<const float>(q.data(), {2, 9, 128}), cache.view, 0.1,
                                        reference::Causal{1023}, View3<double>(ref.data(), {2, 9, 96}),
                                        View2<double>(ref_lse.data(), {2, 9}));
        TRANSMLA_CHECK_CLOSE(out, ref, 3e-5);
    }
    cpu::Options opt;
    opt.isa = cpu::Isa::avx2;
    TestGqaCache<float> c(1, 64, 4, false, 16);
    std::vector<float> q(64), out(64);
    CHECK_THROWS_AS(cpu::gqa_decode(View3<const float>(q.data(), {1, 1, 64}), c.view, 0.1f,
                                    View3<float>(out.data(), {1, 1, 64}), {}, opt),
                    transmla::error);
}
