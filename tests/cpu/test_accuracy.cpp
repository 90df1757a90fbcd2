// The accuracy table: every CPU attention kernel × storage type × query type × ISA level this
// machine runs, against the double-precision reference/, as max |error| / max |reference output|.
// The inputs are stored values (the reference reads the same ones), so the only error is the
// kernels' own arithmetic: f32 accumulation, and on AVX-512-BF16 the pair dot product. One bound
// for all: 1e-5 (a bf16 query rounding to bf16, the regression this table was written against,
// gives 3e-4 to 7e-4 here). The table is printed (`test_cpu_accuracy -s`) for bench/RESULTS.md.
#include "cpu_test_util.hpp"

#include <cstdio>
#include <sstream>

using namespace transmla;
using namespace transmla::test;

namespace {

constexpr double kBound = 1e-5;

std::ostringstream& table() {
    static std::ostringstream t;
    return t;
}

void row(const char* kernel, cpu::Isa isa, const char* q, const char* kv, double err) {
    char line[160];
    std::snprintf(line, sizeof line, "| %-22s | %-10s | %-4s | %-4s | %.1e |\n", kernel, std::string(cpu::isa_name(isa)).c_str(),
                  q, kv, err);
    table() << line;
}

template <class Tq, class Tkv>
void gqa_decode_row(cpu::Isa isa) {
    const int n_kv = 4, g = 4, d = 128, nq = n_kv * g;
    const std::int64_t S = 777, T = 1;
    TestGqaCache<Tkv> cache(n_kv, d, S, false, 0);
    const auto q = random_vector<Tq>(std::size_t(T) * nq * d);
    std::vector<float> out(q.size());
    cpu::Options opt;
    opt.isa = isa;
    opt.num_workers = 1;
    const float scale = 1.f / std::sqrt(float(d));
    cpu::gqa_decode(View3<const Tq>(q.data(), {T, nq, d}), cache.view, scale, View3<float>(out.data(), {T, nq, d}), {},
                    opt);
    std::vector<double> ref(q.size()), ref_lse(std::size_t(T) * nq);
    reference::gqa_decode(View3<const Tq>(q.data(), {T, nq, d}), cache.view, double(scale),
                          View3<double>(ref.data(), {T, nq, d}), View2<double>(ref_lse.data(), {T, nq}));
    const double e = rel_error(out, ref);
    row("gqa_decode 16/4/128", isa, std::string(type_name<Tq>()).c_str(), std::string(type_name<Tkv>()).c_str(), e);
    INFO("gqa_decode " << cpu::isa_name(isa) << " q=" << type_name<Tq>() << " kv=" << type_name<Tkv>());
    CHECK(e <= kBound);
}

template <class Tkv>
void gqa_prefill_row(cpu::Isa isa) {
    const int n_kv = 2, g = 4, d = 64, nq = n_kv * g;
    const std::int64_t L = 300;
    TestGqaCache<Tkv> cache(n_kv, d, L, false, 0);
    const auto q = random_vector<Tkv>(std::size_t(L) * nq * d);
    std::vector<float> out(q.size());
    cpu::Options opt;
    opt.isa = isa;
    opt.num_workers = 1;
    const float scale = 1.f / std::sqrt(float(d));
    cpu::gqa_prefill(View3<const Tkv>(q.data(), {L, nq, d}), cache.view, scale, View3<float>(out.data(), {L, nq, d}), {},
                     opt);
    std::vector<double> ref(q.size()), ref_lse(std::size_t(L) * nq);
    reference::gqa_decode(View3<const Tkv>(q.data(), {L, nq, d}), cache.view, double(scale),
                          View3<double>(ref.data(), {L, nq, d}), View2<double>(ref_lse.data(), {L, nq}));
    const double e = rel_error(out, ref);
    const std::string tn(type_name<Tkv>());
    row("gqa_prefill 8/2/64", isa, tn.c_str(), tn.c_str(), e);
    INFO("gqa_prefill " << cpu::isa_name(isa) << " kv=" << tn);
    CHECK(e <= kBound);
}

template <class Tq, class Tc>
void mla_decode_row(cpu::Isa isa) {
    const int H = 32, r = 512, dr = 64, w = r + dr;
    const std::int64_t S = 777, T = 1;
    TestMlaCache<Tc> cache(r, dr, S, false, 0);
    const auto q = random_vector<Tq>(std::size_t(T) * H * w, 0.3);
    std::vector<float> out(std::size_t(T) * H * r);
    cpu::Options opt;
    opt.isa = isa;
    opt.num_workers = 1;
    const float scale = 1.f / std::sqrt(float(128 + dr));
    cpu::mla_decode(View3<const Tq>(q.data(), {T, H, w}), cache.view, scale, View3<float>(out.data(), {T, H, r}), {}, opt);
    std::vector<double> ref(out.size()), ref_lse(std::size_t(T) * H);
    reference::mla_latent_attention(View3<const Tq>(q.data(), {T, H, w}), cache.view, double(scale),
                                    reference::Causal{S - T}, View3<double>(ref.data(), {T, H, r}),
                                    View2<double>(ref_lse.data(), {T, H}));
    const double e = rel_error(out, ref);
    row("mla_decode 32x(512+64)", isa, std::string(type_name<Tq>()).c_str(), std::string(type_name<Tc>()).c_str(), e);
    INFO("mla_decode " << cpu::isa_name(isa) << " q=" << type_name<Tq>() << " cache=" << type_name<Tc>());
    CHECK(e <= kBound);
}

template <class Tc>
void mla_prefill_row(cpu::Isa isa) {
    // Absorbed latent attention over a prompt: 8 query tokens, causal.
    const int H = 16, r = 512, dr = 64, w = r + dr;
    const std::int64_t S = 300, T = 8;
    TestMlaCache<Tc> cache(r, dr, S, false, 0);
    const auto q = random_vector<Tc>(std::size_t(T) * H * w, 0.3);
    std::vector<float> out(std::size_t(T) * H * r);
    cpu::Options opt;
    opt.isa = isa;
    opt.num_workers = 1;
    const float scale = 1.f / std::sqrt(float(128 + dr));
    cpu::mla_decode(View3<const Tc>(q.data(), {T, H, w}), cache.view, scale, View3<float>(out.data(), {T, H, r}), {}, opt);
    std::vector<double> ref(out.size()), ref_lse(std::size_t(T) * H);
    reference::mla_latent_attention(View3<const Tc>(q.data(), {T, H, w}), cache.view, double(scale),
                                    reference::Causal{S - T}, View3<double>(ref.data(), {T, H, r}),
                                    View2<double>(ref_lse.data(), {T, H}));
    const double e = rel_error(out, ref);
    const std::string tn(type_name<Tc>());
    row("mla_latent T=8 16x576", isa, tn.c_str(), tn.c_str(), e);
    INFO("mla latent prefill " << cpu::isa_name(isa) << " cache=" << tn);
    CHECK(e <= kBound);
}

}  // namespace

TEST_CASE("accuracy of every CPU kernel x storage type x ISA level against the reference") {
    table() << "| kernel                 | isa        | q    | kv   | max err / max out |\n"
               "|------------------------|------------|------|------|-------------------|\n";
    for (auto isa : runnable_isas()) {
        gqa_decode_row<float, float>(isa);
        gqa_decode_row<half, half>(isa);
        gqa_decode_row<bfloat16, bfloat16>(isa);
        gqa_decode_row<float, half>(isa);
        gqa_decode_row<float, bfloat16>(isa);
        gqa_prefill_row<float>(isa);
        gqa_prefill_row<half>(isa);
        gqa_prefill_row<bfloat16>(isa);
        mla_decode_row<float, float>(isa);
        mla_decode_row<half, half>(isa);
        mla_decode_row<bfloat16, bfloat16>(isa);
        mla_decode_row<float, half>(isa);
        mla_decode_row<float, bfloat16>(isa);
        mla_prefill_row<float>(isa);
        mla_prefill_row<half>(isa);
        mla_prefill_row<bfloat16>(isa);
    }
    MESSAGE("\n" << table().str());
}
