// CPU attention benchmarks: decode of GQA and absorbed MLA over the model shapes,
// contexts, batch sizes, thread counts and storage types, GQA causal prefill, and the Llama-2-7B
// MHA-vs-MLA side-by-side case. Each case reports time, GB/s and GFLOP/s by the formulas of
// docs/performance.md and the % of its floor = max(bytes / read bandwidth, FLOPs / peak) computed
// from the ceilings this binary measures at start-up (the "probe/..." rows) for the same number of
// threads.
//
//   bench_cpu_attention --benchmark_filter='gqa_decode/32x8x128/f16/ctx:4096/b:1/thr:2'
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include "probe.hpp"

#include "transmla/cpu/cpu.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <utility>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace transmla;

namespace {

const bench::Ceilings& ceilings(int threads) {
    static std::map<int, bench::Ceilings> cache;
    auto it = cache.find(threads);
    if (it == cache.end()) it = cache.emplace(threads, bench::measure_ceilings(threads)).first;
    return it->second;
}

void set_threads(int t) {
#if defined(_OPENMP)
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

/// Options of a case; TRANSMLA_BENCH_TILE / _PREFETCH / _QTILE / _HEADBLOCK / _DIRECT / _TRANSPOSED /
/// _KVCHUNK / _ISA override the automatic
/// choices (for tuning experiments).
cpu::Options bench_options(int threads) {
    cpu::Options o;
    o.num_workers = threads;
    if (const char* e = std::getenv("TRANSMLA_BENCH_TILE")) o.tile = std::atoi(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_PREFETCH")) o.prefetch = std::atoi(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_QTILE")) o.q_tile = std::atoi(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_HEADBLOCK")) o.head_block = std::atoi(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_DIRECT")) o.direct = std::atoi(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_TRANSPOSED")) o.transposed = std::atoi(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_KVCHUNK")) o.kv_chunk = std::atoll(e);
    if (const char* e = std::getenv("TRANSMLA_BENCH_ISA")) {  // sse2, avx2, avx512, avx512bf16
        for (auto i : {cpu::Isa::sse2, cpu::Isa::avx2, cpu::Isa::avx512, cpu::Isa::avx512bf16})
            if (cpu::isa_name(i) == e) o.isa = i;
    }
    return o;
}

/// Fast pseudo-random fill (uniform with standard deviation sd): caches of up to a GB are built
/// per case, so std::normal_distribution would dominate the run.
template <class T>
std::vector<T> random_data(std::size_t n, float sd, unsigned seed) {
    std::uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
    std::vector<T> v(n);
    for (auto& e : v) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        e = from_float<T>((float(x >> 40) * (1.f / 16777216.f) - 0.5f) * 3.4641f * sd);
    }
    return v;
}

/// Counters of docs/performance.md and the % of floor. `dot_bf16`: the FLOPs run on the bf16 dot unit.
void report(benchmark::State& st, double bytes, double flops, int threads, bool dot_bf16) {
    const auto& c = ceilings(threads);
    const double peak = dot_bf16 ? c.bf16_gflops : c.fma_gflops;
    const double floor_s = std::max(bytes / (c.read_gbs * 1e9), flops / (peak * 1e9));
    st.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    // % of floor = floor time / measured time, as a rate: floor_s·100 per iteration per second.
    st.counters["%floor"] = benchmark::Counter(floor_s * 100, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["floor_us"] = floor_s * 1e6;
    st.counters["bound"] = bytes / (c.read_gbs * 1e9) >= flops / (peak * 1e9) ? 0 : 1;  // 0 memory, 1 compute
}

// ---- GQA decode ------------------------------------------------------------------------------

template <class T>
void bm_gqa_decode(benchmark::State& st, int nq, int nkv, int d, std::int64_t ctx, int batch, int threads, int nt) {
    set_threads(threads);
    const std::int64_t per = ctx * nkv * d;
    std::vector<std::vector<T>> k, v;
    std::vector<GqaSeqView<T>> views;
    for (int b = 0; b < batch; ++b) {
        k.push_back(random_data<T>(std::size_t(per), 1.f, 1 + b));
        v.push_back(random_data<T>(std::size_t(per), 1.f, 100 + b));
    }
    for (int b = 0; b < batch; ++b)
        views.push_back({k[b].data(), v[b].data(), nkv, d, ctx, std::int64_t(nkv) * d, d, PageMap{}});
    std::vector<std::int64_t> indptr;
    for (int b = 0; b <= batch; ++b) indptr.push_back(std::int64_t(b) * nt);
    const std::int64_t tokens = std::int64_t(batch) * nt;
    const auto q = random_data<T>(std::size_t(tokens) * nq * d, 1.f, 7);
    std::vector<float> out(q.size());
    cpu::GqaAttention<T, T, float> args{View3<const T>(q.data(), {tokens, nq, d}), indptr,
                                        std::span<const GqaSeqView<T>>(views), 1.f / std::sqrt(float(d)),
                                        View3<float>(out.data(), {tokens, nq, d})};
    cpu::Options opt = bench_options(threads);
    const auto call = cpu::prepare(args, opt);
    const cpu::Plan plan = cpu::make_plan(call, opt);
    for (auto _ : st) {
        cpu::run_all(plan, call);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    const double bytes = 2.0 * ctx * nkv * d * sizeof(T) * batch;
    const double flops = 4.0 * ctx * nq * d * batch * nt;
    report(st, bytes, flops, threads, false);
    st.SetLabel(std::string(cpu::isa_name(plan.isa())) + " items=" + std::to_string(plan.size()));
}

// ---- MLA absorbed decode ---------------------------------------------------------------------

template <class T>
void bm_mla_decode(benchmark::State& st, int H, int r, int dr, std::int64_t ctx, int batch, int threads, int nt) {
    set_threads(threads);
    const int w = r + dr;
    std::vector<std::vector<T>> rows;
    std::vector<MlaSeqView<T>> views;
    for (int b = 0; b < batch; ++b) rows.push_back(random_data<T>(std::size_t(ctx) * w, 1.f, 11 + b));
    for (int b = 0; b < batch; ++b) views.push_back({rows[b].data(), r, dr, ctx, w, PageMap{}});
    std::vector<std::int64_t> indptr;
    for (int b = 0; b <= batch; ++b) indptr.push_back(std::int64_t(b) * nt);
    const std::int64_t tokens = std::int64_t(batch) * nt;
    const auto q = random_data<T>(std::size_t(tokens) * H * w, 0.05f, 9);
    std::vector<float> out(std::size_t(tokens) * H * r);
    cpu::MlaAttention<T, T, float> args{View3<const T>(q.data(), {tokens, H, w}), indptr,
                                        std::span<const MlaSeqView<T>>(views), 1.f / std::sqrt(float(128 + dr)),
                                        View3<float>(out.data(), {tokens, H, r})};
    cpu::Options opt = bench_options(threads);
    const auto call = cpu::prepare(args, opt);
    const cpu::Plan plan = cpu::make_plan(call, opt);
    for (auto _ : st) {
        cpu::run_all(plan, call);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    const double bytes = double(ctx) * w * sizeof(T) * batch;
    const double flops = 2.0 * ctx * H * (2.0 * r + dr) * batch * nt;
    const bool bf16_dot = std::is_same_v<T, bfloat16> && plan.isa() == cpu::Isa::avx512bf16;
    report(st, bytes, flops, threads, bf16_dot);
    if (bf16_dot) {
        // The floor of the exact pair-dot kernel: P·V needs two pair dots (P's bf16 hi and lo
        // parts) per pair of keys, so its FLOPs count twice against the dot peak.
        const auto& c = ceilings(threads);
        const double pv = 2.0 * ctx * H * r * batch * nt;
        const double fl = std::max(bytes / (c.read_gbs * 1e9), (flops + pv) / (c.bf16_gflops * 1e9));
        st.counters["%floor_exact"] = benchmark::Counter(fl * 100, benchmark::Counter::kIsIterationInvariantRate);
    }
    st.SetLabel(std::string(cpu::isa_name(plan.isa())) + " items=" + std::to_string(plan.size()));
}

// ---- GQA causal prefill ----------------------------------------------------------------------

template <class T>
void bm_gqa_prefill(benchmark::State& st, int nq, int nkv, int d, std::int64_t len, int threads) {
    set_threads(threads);
    const auto k = random_data<T>(std::size_t(len) * nkv * d, 1.f, 3);
    const auto v = random_data<T>(std::size_t(len) * nkv * d, 1.f, 4);
    const auto q = random_data<T>(std::size_t(len) * nq * d, 1.f, 5);
    std::vector<float> out(q.size());
    const GqaSeqView<T> kv{k.data(), v.data(), nkv, d, len, std::int64_t(nkv) * d, d, PageMap{}};
    cpu::GqaAttention<T, T, float> args{View3<const T>(q.data(), {len, nq, d}), {},
                                        std::span<const GqaSeqView<T>>(&kv, 1), 1.f / std::sqrt(float(d)),
                                        View3<float>(out.data(), {len, nq, d})};
    cpu::Options opt = bench_options(threads);
    const auto call = cpu::prepare(args, opt);
    const cpu::Plan plan = cpu::make_plan(call, opt);
    for (auto _ : st) {
        cpu::run_all(plan, call);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    // Causal: query t sees t + 1 keys; QK and PV are 2·d FLOPs each per (row, key).
    const double pairs = double(len) * (len + 1) / 2;
    const double flops = 4.0 * d * nq * pairs;
    const double bytes = (2.0 * nkv + nq) * len * d * sizeof(T);
    report(st, bytes, flops, threads, false);
    st.SetLabel(std::string(cpu::isa_name(plan.isa())) + " items=" + std::to_string(plan.size()));
}

// ---- MLA prefill: naive vs absorbed order (DeepSeek-V2-Lite-like heads: 16 × (128 + 64), v 128, r 512) ---

template <class T>
void bm_mla_prefill(benchmark::State& st, cpu::MlaOrder order, std::int64_t nt, std::int64_t len, int threads) {
    set_threads(threads);
    const int H = 16, dn = 128, dr = 64, dv = 128, r = 512, w = r + dr;
    const auto rows = random_data<T>(std::size_t(len) * w, 1.f, 31);
    const auto qn = random_data<T>(std::size_t(nt) * H * dn, 0.3f, 32);
    const auto qp = random_data<T>(std::size_t(nt) * H * dr, 0.3f, 33);
    const auto kv_b = random_data<float>(std::size_t(H) * (dn + dv) * r, 0.05f, 34);
    std::vector<float> out(std::size_t(nt) * H * dv);
    const MlaSeqView<T> view{rows.data(), r, dr, len, w, PageMap{}};
    const cpu::Options opt = bench_options(threads);
    cpu::MlaOrder used = order;
    for (auto _ : st) {
        used = cpu::mla_prefill(View3<const T>(qn.data(), {nt, H, dn}), View3<const T>(qp.data(), {nt, H, dr}), view,
                                View2<const float>(kv_b.data(), {std::int64_t(H) * (dn + dv), r}), 0.072f,
                                View3<float>(out.data(), {nt, H, dv}), {}, order, opt);
        benchmark::DoNotOptimize(out.data());
    }
    const auto cost = cpu::mla_prefill_cost(nt, len, H, dn, dr, dv, r);
    st.counters["model_naive/absorbed"] = cost.naive / cost.absorbed;
    st.SetLabel(std::string(cpu::mla_order_name(used)));
}

// ---- side by side: Llama-2-7B layer before (MHA 32/32/128) and after (MLA 32 × 512+64) ----------

template <class T>
void bm_side_by_side(benchmark::State& st, std::int64_t ctx, int threads) {
    set_threads(threads);
    const int nh = 32, d = 128, r = 512, dr = 64, w = r + dr;
    const auto k = random_data<T>(std::size_t(ctx) * nh * d, 1.f, 21);
    const auto v = random_data<T>(std::size_t(ctx) * nh * d, 1.f, 22);
    const auto rows = random_data<T>(std::size_t(ctx) * w, 1.f, 23);
    const auto qg = random_data<T>(std::size_t(nh) * d, 1.f, 24);
    const auto qm = random_data<T>(std::size_t(nh) * w, 0.05f, 25);
    std::vector<float> og(std::size_t(nh) * d), om(std::size_t(nh) * r);
    const GqaSeqView<T> kv{k.data(), v.data(), nh, d, ctx, std::int64_t(nh) * d, d, PageMap{}};
    const MlaSeqView<T> mv{rows.data(), r, dr, ctx, w, PageMap{}};
    cpu::Options opt = bench_options(threads);
    cpu::GqaAttention<T, T, float> ga{View3<const T>(qg.data(), {1, nh, d}), {}, std::span<const GqaSeqView<T>>(&kv, 1),
                                      0.088f, View3<float>(og.data(), {1, nh, d})};
    cpu::MlaAttention<T, T, float> ma{View3<const T>(qm.data(), {1, nh, w}), {}, std::span<const MlaSeqView<T>>(&mv, 1),
                                      0.072f, View3<float>(om.data(), {1, nh, r})};
    const auto gcall = cpu::prepare(ga, opt);
    const auto mcall = cpu::prepare(ma, opt);
    const cpu::Plan gplan = cpu::make_plan(gcall, opt), mplan = cpu::make_plan(mcall, opt);
    auto median_time = [](auto&& f) {
        std::vector<double> t;
        for (int i = 0; i < 7; ++i) {
            const double t0 = bench::detail::now_s();
            f();
            t.push_back(bench::detail::now_s() - t0);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    };
    double tg = 0, tm = 0;
    for (auto _ : st) {
        tg = median_time([&] { cpu::run_all(gplan, gcall); });
        tm = median_time([&] { cpu::run_all(mplan, mcall); });
        benchmark::DoNotOptimize(og.data());
        benchmark::DoNotOptimize(om.data());
    }
    st.counters["mha_ms"] = tg * 1e3;
    st.counters["mla_ms"] = tm * 1e3;
    st.counters["speedup"] = tg / tm;
    st.counters["mha_cache_MB"] = 2.0 * ctx * nh * d * sizeof(T) * 1e-6;
    st.counters["mla_cache_MB"] = double(ctx) * w * sizeof(T) * 1e-6;
    std::printf("side-by-side %s ctx=%lld threads=%d: MHA 32/32/128 %.3f ms, MLA 32x(512+64) %.3f ms, speedup %.2fx\n",
                std::string(type_name<T>()).c_str(), static_cast<long long>(ctx), threads, tg * 1e3, tm * 1e3, tg / tm);
}

// ---- the probe as benchmark rows -------------------------------------------------------------

void bm_probe(benchmark::State& st, int threads) {
    for (auto _ : st) benchmark::DoNotOptimize(ceilings(threads).read_gbs);
    const auto& c = ceilings(threads);
    st.counters["read_GB/s"] = c.read_gbs;
    st.counters["fma_GFLOP/s"] = c.fma_gflops;
    st.counters["bf16dot_GFLOP/s"] = c.bf16_gflops;
    st.SetLabel(c.has_bf16_dot ? "bf16 dot: AVX-512-BF16" : "bf16 dot: none (bf16 widened to f32, FMA peak)");
}

template <class F>
void reg(const std::string& name, F f) {
    benchmark::RegisterBenchmark(name.c_str(), f)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

template <class T>
void register_type() {
    const std::string tn(type_name<T>());
    struct G {
        int nq, nkv, d;
        const char* name;
    };
    const G gqa[] = {{32, 8, 128, "32x8x128"}, {9, 3, 64, "9x3x64"}, {32, 32, 128, "32x32x128"}};
    struct M {
        int H, r, dr;
        const char* name;
    };
    // SmolLM2-135M conversion: 9 heads, rank 192 (= n_kv·d) + RoPE 64.
    const M mla[] = {{128, 512, 64, "128x512+64"}, {16, 512, 64, "16x512+64"}, {32, 512, 64, "32x512+64"},
                     {9, 192, 64, "9x192+64"}};
    const std::int64_t ctxs[] = {1024, 4096, 16384, 32768};
    for (int thr : {1, 2})
        for (int batch : {1, 8})
            for (auto ctx : ctxs) {
                const std::string tail = "/ctx:" + std::to_string(ctx) + "/b:" + std::to_string(batch) +
                                         "/thr:" + std::to_string(thr);
                for (const auto& g : gqa)
                    reg("gqa_decode/" + std::string(g.name) + "/" + tn + tail, [=](benchmark::State& st) {
                        bm_gqa_decode<T>(st, g.nq, g.nkv, g.d, ctx, batch, thr, 1);
                    });
                for (const auto& m : mla)
                    reg("mla_decode/" + std::string(m.name) + "/" + tn + tail, [=](benchmark::State& st) {
                        bm_mla_decode<T>(st, m.H, m.r, m.dr, ctx, batch, thr, 1);
                    });
            }
    for (int thr : {1, 2}) {
        for (int nt : {4, 8})
            reg("gqa_decode_multitoken/32x8x128/" + tn + "/ctx:4096/b:1/T:" + std::to_string(nt) + "/thr:" +
                    std::to_string(thr),
                [=](benchmark::State& st) { bm_gqa_decode<T>(st, 32, 8, 128, 4096, 1, thr, nt); });
        for (std::int64_t len : {512, 2048})
            reg("gqa_prefill/32x8x128/" + tn + "/len:" + std::to_string(len) + "/thr:" + std::to_string(thr),
                [=](benchmark::State& st) { bm_gqa_prefill<T>(st, 32, 8, 128, len, thr); });
        for (auto [nt, len] : {std::pair<std::int64_t, std::int64_t>{16, 4096}, {512, 512}, {2048, 2048}})
            for (auto order : {cpu::MlaOrder::naive, cpu::MlaOrder::absorbed, cpu::MlaOrder::automatic})
                reg("mla_prefill/16x(128+64)r512/" + tn + "/T:" + std::to_string(nt) + "/ctx:" + std::to_string(len) +
                        "/" + std::string(cpu::mla_order_name(order)) + "/thr:" + std::to_string(thr),
                    [=](benchmark::State& st) { bm_mla_prefill<T>(st, order, nt, len, thr); });
        reg("side_by_side/llama2_7b/" + tn + "/ctx:8192/thr:" + std::to_string(thr),
            [=](benchmark::State& st) { bm_side_by_side<T>(st, 8192, thr); });
    }
}

}  // namespace

int main(int argc, char** argv) {
    for (int thr : {1, 2}) reg("probe/thr:" + std::to_string(thr), [=](benchmark::State& st) { bm_probe(st, thr); });
    register_type<half>();
    register_type<bfloat16>();
    register_type<float>();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    std::printf("transmla CPU attention: isa=%s (dispatch %s)\n", std::string(cpu::isa_name(cpu::best_isa())).c_str(),
                cpu::dispatch_enabled() ? "on" : "off");
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
