// attention_variants — one Llama-3-8B-shaped attention layer (32 query heads, 8 KV heads, head dim
// 128) and its MLA counterpart (latent 512 + RoPE 64), both with compile-time shapes, on random
// data: KV-cache bytes per token, MLA naive-vs-absorbed agreement, and time per decode step.
//
//   attention_variants [context_tokens]      (default 4096)
#include <transmla/cpu/cpu.hpp>
#include <transmla/cpu/mla.hpp>
#include <transmla/transmla.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

using namespace transmla;

namespace {

template <class T>
std::vector<T> randn(std::size_t n, std::mt19937_64& g, double sd = 1.0) {
    std::normal_distribution<double> N(0.0, sd);
    std::vector<T> v(n);
    for (auto& x : v) x = from_double<T>(N(g));
    return v;
}

template <class F>
double median_ms(F&& f, int reps = 5) {
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        const auto a = std::chrono::steady_clock::now();
        f();
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    const std::int64_t ctx = argc > 1 ? std::atoll(argv[1]) : 4096;
    if (ctx < 1) {
        std::fprintf(stderr, "usage: attention_variants [context_tokens >= 1]\n");
        return 2;
    }
    constexpr GqaShape<32, 8, 128> gqa;             // Llama-3-8B attention
    constexpr MlaShape<32, 512, 64, 128> mla;        // its MLA counterpart (TransMLA, 512 + 64)
    using Store = half;                              // cache storage: f16
    std::mt19937_64 g(12345);

    // --- GQA: cache of ctx tokens, one decode query
    GqaCache<Store> gcache(gqa.n_kv(), gqa.head_dim(), ctx);
    {
        auto k = randn<float>(std::size_t(ctx) * gqa.kv_width(), g), v = randn<float>(k.size(), g);
        gcache.append(View3<const float>(k.data(), {ctx, gqa.n_kv(), gqa.head_dim()}),
                      View3<const float>(v.data(), {ctx, gqa.n_kv(), gqa.head_dim()}));
    }
    auto gq = randn<Store>(std::size_t(gqa.n_q()) * gqa.head_dim(), g);
    const View3<const Store> gqv(gq.data(), {1, gqa.n_q(), gqa.head_dim()});
    std::vector<double> gref(gq.size()), glse(gqa.n_q());
    std::vector<float> gout(gq.size());
    const double gscale = 1.0 / std::sqrt(double(gqa.head_dim()));
    reference::gqa_decode(gqv, gcache.view(), gscale, View3<double>(gref.data(), {1, gqa.n_q(), gqa.head_dim()}),
                          View2<double>(glse.data(), {1, gqa.n_q()}));
    const double gqa_ms = median_ms([&] {
        cpu::gqa_decode(gqv, gcache.view(), float(gscale), View3<float>(gout.data(), {1, gqa.n_q(), gqa.head_dim()}));
    }, 21);

    // --- MLA: cache rows [latent | rope], kv_b_proj, one decode query in both orders
    MlaCache<Store> mcache(mla.rank(), mla.rope_dim(), ctx);
    {
        auto rows = randn<float>(std::size_t(ctx) * mla.row_width(), g);
        mcache.append(View2<const float>(rows.data(), {ctx, mla.row_width()}));
    }
    const std::int64_t H = mla.heads();
    auto kvb = randn<float>(std::size_t(H) * (mla.nope_dim() + mla.v_dim()) * mla.rank(), g,
                            1.0 / std::sqrt(double(mla.rank())));
    auto qn = randn<Store>(std::size_t(H) * mla.nope_dim(), g), qp = randn<Store>(std::size_t(H) * mla.rope_dim(), g);
    View3<const Store> qnv(qn.data(), {1, H, mla.nope_dim()}), qpv(qp.data(), {1, H, mla.rope_dim()});
    View2<const float> w(kvb.data(), {H * (mla.nope_dim() + mla.v_dim()), mla.rank()});
    const double mscale = 1.0 / std::sqrt(double(mla.qk_dim()));
    std::vector<double> on(std::size_t(H) * mla.v_dim()), oa(on.size()), ln(H), la(H);
    const reference::Causal causal{ctx - 1};
    reference::mla_naive(qnv, qpv, mcache.view(), w, mscale, causal, View3<double>(on.data(), {1, H, mla.v_dim()}),
                         View2<double>(ln.data(), {1, H}));
    reference::mla_absorbed(qnv, qpv, mcache.view(), w, mscale, causal, View3<double>(oa.data(), {1, H, mla.v_dim()}),
                            View2<double>(la.data(), {1, H}));
    double num = 0, den = 0;
    for (std::size_t i = 0; i < on.size(); ++i) num = std::max(num, std::abs(oa[i] - on[i])), den = std::max(den, std::abs(on[i]));

    // the absorbed decode step with the CPU kernels: absorb W_UK into q, latent attention, apply W_UV
    std::vector<float> qabs(std::size_t(H) * mla.row_width()), lat(std::size_t(H) * mla.rank()), mout(on.size());
    const auto mla_step = [&] {
        cpu::absorb_query(qnv, qpv, w, mla.v_dim(), View3<float>(qabs.data(), {1, H, mla.row_width()}));
        cpu::mla_decode(View3<const float>(qabs.data(), {1, H, mla.row_width()}), mcache.view(), float(mscale),
                        View3<float>(lat.data(), {1, H, mla.rank()}));
        cpu::apply_uv(View3<const float>(lat.data(), {1, H, mla.rank()}), w, mla.nope_dim(),
                      View3<float>(mout.data(), {1, H, mla.v_dim()}));
    };
    const double mla_ms = median_ms(mla_step, 21);
    auto rel = [](const std::vector<float>& a, const std::vector<double>& b) {
        double n = 0, d = 0;
        for (std::size_t i = 0; i < a.size(); ++i) n = std::max(n, std::abs(a[i] - b[i])), d = std::max(d, std::abs(b[i]));
        return n / d;
    };
    const double gerr = rel(gout, gref), merr = rel(mout, on);

    const auto gbytes = gqa.cache_elems_per_token() * std::int64_t(sizeof(Store));
    const auto mbytes = mla.cache_elems_per_token() * std::int64_t(sizeof(Store));
    std::printf("transmla attention variants: one layer, context %lld tokens, f16 cache, CPU kernels (%s)\n\n",
                static_cast<long long>(ctx), std::string(cpu::isa_name(cpu::best_isa())).c_str());
    std::printf("| variant | shape | KV bytes/token | decode step (ms) | vs reference |\n|---|---|---:|---:|---:|\n");
    std::printf("| GQA | 32 q / 8 kv heads x 128 | %lld | %.3f | %.1e |\n", static_cast<long long>(gbytes), gqa_ms,
                gerr);
    std::printf("| MLA absorbed | 32 heads, latent 512 + RoPE 64 | %lld | %.3f | %.1e |\n",
                static_cast<long long>(mbytes), mla_ms, merr);
    std::printf("\nMLA cache is %.1f%% of the GQA cache.\n", 100.0 * double(mbytes) / double(gbytes));
    std::printf("MLA naive vs absorbed: max relative difference %.2e (%s)\n", num / den,
                num / den <= 1e-10 ? "agree" : "DISAGREE");
    const bool ok = num / den <= 1e-10 && gerr <= 1e-2 && merr <= 1e-2;  // kernels: f16 inputs, f32 accumulation
    return ok ? 0 : 1;
}
