// MLA prefill in both orders and the absorption helpers against reference/mla.hpp (double):
// naive == absorbed == reference, the automatic choice, W_UV / W_O helpers.
#include "cpu_test_util.hpp"

using namespace transmla;
using namespace transmla::test;

namespace {

template <class T>
void run_prefill(cpu::Isa isa, int H, int dn, int dr, int dv, int r, std::int64_t S, std::int64_t nt, cpu::MlaOrder order,
                 bool paged) {
    INFO(cpu::isa_name(isa) << " H=" << H << " dn=" << dn << " dr=" << dr << " dv=" << dv << " r=" << r << " S=" << S
                            << " nt=" << nt << " order=" << cpu::mla_order_name(order) << " type=" << type_name<T>()
                            << std::string(paged ? " paged" : " contiguous"));
    TestMlaCache<T> cache(r, dr, S, paged, 16);
    const auto q_nope = random_vector<T>(std::size_t(nt) * H * dn, 0.5);
    const auto q_pe = random_vector<T>(std::size_t(nt) * H * dr, 0.5);
    const auto kv_b = random_vector<float>(std::size_t(H) * (dn + dv) * r, 0.15);
    std::vector<float> out(std::size_t(nt) * H * dv), lse(std::size_t(nt) * H);
    const float scale = 1.f / std::sqrt(float(dn + dr));
    cpu::Options opt;
    opt.isa = isa;
    opt.num_workers = 2;
    const auto used = cpu::mla_prefill(View3<const T>(q_nope.data(), {nt, H, dn}), View3<const T>(q_pe.data(), {nt, H, dr}),
                                       cache.view, View2<const float>(kv_b.data(), {std::int64_t(H) * (dn + dv), r}),
                                       scale, View3<float>(out.data(), {nt, H, dv}), View2<float>(lse.data(), {nt, H}),
                                       order, opt);
    if (order != cpu::MlaOrder::automatic) CHECK(used == order);
    std::vector<double> ref(out.size()), ref_lse(lse.size());
    reference::mla_naive(View3<const T>(q_nope.data(), {nt, H, dn}), View3<const T>(q_pe.data(), {nt, H, dr}), cache.view,
                         View2<const float>(kv_b.data(), {std::int64_t(H) * (dn + dv), r}), double(scale),
                         reference::Causal{S - nt}, View3<double>(ref.data(), {nt, H, dv}),
                         View2<double>(ref_lse.data(), {nt, H}));
    // The decompression / absorption GEMMs round their f32 products: a little above the kernel's.
    const double tol = std::max(1e-4, kernel_tolerance<float, T>(isa));
    TRANSMLA_CHECK_CLOSE(out, ref, tol);
    CHECK(lse_error(lse, ref_lse) <= 10 * tol);
}

}  // namespace

TEST_CASE("cpu::mla_prefill: naive and absorbed orders match the reference") {
    for (auto isa : runnable_isas())
        for (auto order : {cpu::MlaOrder::naive, cpu::MlaOrder::absorbed}) {
            run_prefill<float>(isa, 4, 32, 16, 32, 64, 113, 113, order, false);   // full prompt
            run_prefill<half>(isa, 3, 24, 8, 40, 40, 300, 37, order, true);       // chunked prefill
            run_prefill<bfloat16>(isa, 2, 64, 16, 64, 96, 7, 7, order, false);
            run_prefill<float>(isa, 5, 16, 8, 16, 48, 1025, 9, order, true);
        }
}

TEST_CASE("cpu::mla_prefill: the cost model picks absorbed for short prompt chunks against a long cache, naive for long prompts") {
    // DeepSeek-V2-like: H = 128, d_nope = 128, d_r = 64, d_v = 128, r = 512.
    CHECK(cpu::mla_prefill_cost(1, 4096, 128, 128, 64, 128, 512).best() == cpu::MlaOrder::absorbed);
    CHECK(cpu::mla_prefill_cost(16, 4096, 128, 128, 64, 128, 512).best() == cpu::MlaOrder::absorbed);  // chunk of 16
    CHECK(cpu::mla_prefill_cost(512, 4096, 128, 128, 64, 128, 512).best() == cpu::MlaOrder::naive);
    CHECK(cpu::mla_prefill_cost(4096, 4096, 128, 128, 64, 128, 512).best() == cpu::MlaOrder::naive);
    // and the automatic call runs and is correct whichever it picks
    run_prefill<float>(cpu::best_isa(), 4, 32, 16, 32, 64, 200, 200, cpu::MlaOrder::automatic, false);
    run_prefill<float>(cpu::best_isa(), 4, 32, 16, 32, 64, 200, 2, cpu::MlaOrder::automatic, false);
}

TEST_CASE("cpu::absorb_query, apply_uv and apply_uv_o match the reference helpers") {
    const std::int64_t T = 3;
    const int H = 4, dn = 16, dr = 8, dv = 12, r = 24, D = 20;
    const auto q_nope = random_vector<half>(std::size_t(T) * H * dn);
    const auto q_pe = random_vector<half>(std::size_t(T) * H * dr);
    const auto kv_b = random_vector<bfloat16>(std::size_t(H) * (dn + dv) * r, 0.3);
    const View2<const bfloat16> W(kv_b.data(), {std::int64_t(H) * (dn + dv), r});
    std::vector<float> qa(std::size_t(T) * H * (r + dr));
    cpu::absorb_query(View3<const half>(q_nope.data(), {T, H, dn}), View3<const half>(q_pe.data(), {T, H, dr}), W, dv,
                      View3<float>(qa.data(), {T, H, r + dr}));
    const auto ref_qa =
        reference::absorb_query(View3<const half>(q_nope.data(), {T, H, dn}), View3<const half>(q_pe.data(), {T, H, dr}), W, dv);
    TRANSMLA_CHECK_CLOSE(qa, ref_qa, 1e-5);

    const auto lat = random_vector<double>(std::size_t(T) * H * r);
    std::vector<float> latf(lat.begin(), lat.end());
    std::vector<double> latd(latf.begin(), latf.end());
    std::vector<float> o(std::size_t(T) * H * dv);
    cpu::apply_uv(View3<const float>(latf.data(), {T, H, r}), W, dn, View3<float>(o.data(), {T, H, dv}));
    std::vector<double> ref_o(o.size());
    reference::apply_uv(View3<const double>(latd.data(), {T, H, r}), W, dn, View3<double>(ref_o.data(), {T, H, dv}));
    TRANSMLA_CHECK_CLOSE(o, ref_o, 1e-5);

    const auto w_o = random_vector<bfloat16>(std::size_t(D) * H * dv, 0.2);
    std::vector<float> y(std::size_t(T) * D);
    cpu::apply_uv_o(View3<const float>(latf.data(), {T, H, r}), W, dn, View2<const bfloat16>(w_o.data(), {D, std::int64_t(H) * dv}),
                    View2<float>(y.data(), {T, D}));
    std::vector<double> ref_y(y.size(), 0.0);
    for (std::int64_t t = 0; t < T; ++t)
        for (int j = 0; j < D; ++j)
            for (int k = 0; k < H * dv; ++k) ref_y[t * D + j] += to_double(w_o[std::size_t(j) * H * dv + k]) * ref_o[t * H * dv + k];
    TRANSMLA_CHECK_CLOSE(y, ref_y, 1e-5);

    std::vector<float> bad(std::size_t(T) * H * (r + dr + 1));
    CHECK_THROWS_AS(cpu::absorb_query(View3<const half>(q_nope.data(), {T, H, dn}), View3<const half>(q_pe.data(), {T, H, dr}),
                                      W, dv + 1, View3<float>(qa.data(), {T, H, r + dr})),
                    transmla::error);
}
