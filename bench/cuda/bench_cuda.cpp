// CUDA attention benchmarks (Google Benchmark, CUDA-event timing, warm-up, medians of 5
// repetitions): GQA decode (contiguous and paged), absorbed MLA decode, GQA prefill and MLA naive
// prefill, bf16. Every result carries GB/s and TFLOP/s computed with the formulas of
// docs/performance.md and "%floor" = the time floor max(bytes / bandwidth, FLOPs / peak) over the
// measured time, with both ceilings measured at start-up on this GPU: a device-to-device copy
// (bandwidth) and a large cuBLAS bf16 GEMM with f32 accumulation (compute). Without a GPU it says
// so and exits with 77.
// See bench/cuda/README.md for the commands and the PyTorch side-by-side script.
#include "bench_kernels.hpp"
#include "transmla/cuda/api.hpp"

#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using bf16 = __nv_bfloat16;
namespace tc = transmla::cuda;

/// Measured ceilings of this GPU.
double g_bandwidth_gbs = 0;  // device-to-device copy: (read + write) bytes / s
double g_peak_tflops = 0;    // cuBLAS bf16 GEMM, f32 accumulation

#define BENCH_CUBLAS_CHECK(call)                                                               \
    do {                                                                                       \
        const cublasStatus_t s_ = (call);                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) transmla::fail("cuBLAS error ", int(s_), " in ", #call); \
    } while (0)

/// Device memory that frees itself.
struct Dev {
    void* p = nullptr;
    explicit Dev(std::size_t bytes) {
        if (bytes) TRANSMLA_CUDA_CHECK(cudaMalloc(&p, bytes));
    }
    Dev(const Dev&) = delete;
    Dev& operator=(const Dev&) = delete;
    Dev(Dev&& o) noexcept : p(o.p) { o.p = nullptr; }
    Dev& operator=(Dev&&) = delete;
    ~Dev() {
        if (p) (void)cudaFree(p);
    }
    template <class T>
    T* as() const {
        return static_cast<T*>(p);
    }
};

Dev random_bf16(std::size_t n, std::uint64_t seed, float scale = 1.f) {
    Dev d(n * sizeof(bf16));
    transmla::bench::cuda::fill_random(d.as<bf16>(), n, seed, scale);
    return d;
}

Dev upload_i32(const std::vector<std::int32_t>& v) {
    Dev d(v.size() * sizeof(std::int32_t));
    if (!v.empty()) TRANSMLA_CUDA_CHECK(cudaMemcpy(d.p, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
    return d;
}

struct Events {
    cudaEvent_t a{}, b{};
    Events() {
        TRANSMLA_CUDA_CHECK(cudaEventCreate(&a));
        TRANSMLA_CUDA_CHECK(cudaEventCreate(&b));
    }
    ~Events() {
        (void)cudaEventDestroy(a);
        (void)cudaEventDestroy(b);
    }
    /// Seconds taken by f() on the default stream.
    template <class F>
    double time(F&& f) {
        TRANSMLA_CUDA_CHECK(cudaEventRecord(a));
        f();
        TRANSMLA_CUDA_CHECK(cudaEventRecord(b));
        TRANSMLA_CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        TRANSMLA_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        return ms * 1e-3;
    }
};

/// True (after marking the benchmark skipped) when `bytes` more would not fit on the device.
bool too_big(benchmark::State& st, double bytes) {
    std::size_t free_b = 0, total_b = 0;
    TRANSMLA_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (bytes < 0.9 * double(free_b)) return false;
    st.SkipWithError(("needs " + std::to_string(bytes / 1e9) + " GB of device memory").c_str());
    return true;
}

/// Warm-up, then one timed launch per iteration; counters from the byte and FLOP counts of docs/performance.md.
template <class F>
void run_timed(benchmark::State& st, F&& launch, double bytes, double flops) {
    Events ev;
    for (int i = 0; i < 3; ++i) launch();
    TRANSMLA_CUDA_CHECK(cudaDeviceSynchronize());
    double total = 0;
    for (auto _ : st) {
        const double s = ev.time(launch);
        st.SetIterationTime(s);
        total += s;
    }
    TRANSMLA_CUDA_CHECK(cudaGetLastError());
    const double avg = total / double(std::max<benchmark::IterationCount>(1, st.iterations()));
    st.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["TFLOP/s"] = benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
    const double floor_s = std::max(bytes / (g_bandwidth_gbs * 1e9), flops / (g_peak_tflops * 1e12));
    st.counters["%floor"] = 100.0 * floor_s / avg;
    st.counters["AI"] = flops / bytes;  // arithmetic intensity, FLOP per byte
}

/// CSR page table over a shuffled pool: batch sequences of len tokens each.
struct Pages {
    std::vector<std::int32_t> indptr{0}, indices, last;
    std::int64_t num_pages = 0;
    Pages(int batch, std::int64_t len, std::int64_t page) {
        const std::int64_t per = (len + page - 1) / page;
        num_pages = per * batch;
        std::vector<std::int32_t> perm(std::size_t(num_pages), 0);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), std::mt19937(1234));
        for (int b = 0; b < batch; ++b) {
            indices.insert(indices.end(), perm.begin() + b * per, perm.begin() + (b + 1) * per);
            indptr.push_back(std::int32_t(indices.size()));
            last.push_back(std::int32_t(len - (per - 1) * page));
        }
    }
};

// ---- GQA decode ------------------------------------------------------------------------------

void bm_gqa_decode(benchmark::State& st, int n_q, int n_kv, int d, int batch, std::int64_t ctx, std::int64_t page) {
    const std::int64_t ts = std::int64_t(n_kv) * d;
    const double cache_elems = double(batch) * double(ctx) * double(ts);
    if (too_big(st, 2 * cache_elems * 2 + 1e8)) return;
    Dev k = random_bf16(std::size_t(cache_elems), 1), v = random_bf16(std::size_t(cache_elems), 2);
    Dev q = random_bf16(std::size_t(batch) * n_q * d, 3);
    Dev out(std::size_t(batch) * n_q * d * sizeof(bf16)), lse(std::size_t(batch) * n_q * sizeof(float));
    tc::GqaDecodeParams<bf16> p;
    p.q = q.as<bf16>(), p.q_stride_b = std::int64_t(n_q) * d, p.q_stride_t = std::int64_t(n_q) * d, p.q_stride_h = d;
    p.k = k.as<bf16>(), p.v = v.as<bf16>(), p.head_stride = d;
    p.layout.token_stride = ts;
    Dev lens = upload_i32(std::vector<std::int32_t>(std::size_t(batch), std::int32_t(ctx)));
    Pages pages(page ? batch : 0, ctx, page ? page : 1);
    Dev indptr = upload_i32(pages.indptr), indices = upload_i32(pages.indices), last = upload_i32(pages.last);
    if (page) {
        p.layout.indptr = indptr.as<std::int32_t>(), p.layout.indices = indices.as<std::int32_t>();
        p.layout.last_page_len = last.as<std::int32_t>(), p.layout.page_size = page, p.layout.page_stride = page * ts;
    } else {
        p.layout.seq_stride = ctx * ts, p.layout.seq_lens = lens.as<std::int32_t>();
    }
    p.out = out.as<bf16>(), p.out_stride_b = std::int64_t(n_q) * d, p.out_stride_t = std::int64_t(n_q) * d;
    p.out_stride_h = d, p.lse = lse.as<float>();
    p.batch = batch, p.q_len = 1, p.n_q = n_q, p.n_kv = n_kv, p.head_dim = d, p.scale = 1.f / std::sqrt(float(d));
    const auto plan = tc::plan_gqa_decode(batch, 1, n_q, n_kv, d, ctx);
    Dev ws(plan.workspace_bytes());
    st.counters["splits"] = plan.splits;
    const double bytes = 2.0 * double(ctx) * n_kv * d * 2 * batch;  // 2·ctx·n_kv·d·s per sequence
    const double flops = 4.0 * double(ctx) * n_q * d * batch;        // 4·ctx·n_q·d per sequence
    run_timed(st, [&] { tc::gqa_decode<bf16>(p, plan, ws.p, plan.workspace_bytes()); }, bytes, flops);
}

// ---- MLA absorbed decode ---------------------------------------------------------------------

void bm_mla_decode(benchmark::State& st, int heads, int r, int dr, int batch, std::int64_t ctx, std::int64_t page) {
    const std::int64_t w = r + dr;
    const double cache_elems = double(batch) * double(ctx) * double(w);
    if (too_big(st, cache_elems * 2 + 1e8)) return;
    Dev cache = random_bf16(std::size_t(cache_elems), 4);
    Dev q = random_bf16(std::size_t(batch) * heads * w, 5);
    Dev out(std::size_t(batch) * heads * r * sizeof(bf16)), lse(std::size_t(batch) * heads * sizeof(float));
    tc::MlaDecodeParams<bf16> p;
    p.q = q.as<bf16>(), p.q_stride_b = std::int64_t(heads) * w, p.q_stride_t = std::int64_t(heads) * w, p.q_stride_h = w;
    p.cache = cache.as<bf16>();
    p.layout.token_stride = w;
    Dev lens = upload_i32(std::vector<std::int32_t>(std::size_t(batch), std::int32_t(ctx)));
    Pages pages(page ? batch : 0, ctx, page ? page : 1);
    Dev indptr = upload_i32(pages.indptr), indices = upload_i32(pages.indices), last = upload_i32(pages.last);
    if (page) {
        p.layout.indptr = indptr.as<std::int32_t>(), p.layout.indices = indices.as<std::int32_t>();
        p.layout.last_page_len = last.as<std::int32_t>(), p.layout.page_size = page, p.layout.page_stride = page * w;
    } else {
        p.layout.seq_stride = ctx * w, p.layout.seq_lens = lens.as<std::int32_t>();
    }
    p.out = out.as<bf16>(), p.out_stride_b = std::int64_t(heads) * r, p.out_stride_t = std::int64_t(heads) * r;
    p.out_stride_h = r, p.lse = lse.as<float>();
    p.batch = batch, p.q_len = 1, p.heads = heads, p.rank = r, p.rope_dim = dr, p.scale = 1.f / std::sqrt(192.f);
    const auto plan = tc::plan_mla_decode(batch, 1, heads, r, ctx);
    Dev ws(plan.workspace_bytes());
    st.counters["splits"] = plan.splits;
    const double bytes = double(ctx) * w * 2 * batch;                   // ctx·(r + d_r)·s
    const double flops = 2.0 * double(ctx) * heads * (2.0 * r + dr) * batch;  // 2·ctx·n_q·(2r + d_r)
    run_timed(st, [&] { tc::mla_decode<bf16>(p, plan, ws.p, plan.workspace_bytes()); }, bytes, flops);
}

// ---- prefill ---------------------------------------------------------------------------------

void bm_gqa_prefill(benchmark::State& st, int n_q, int n_kv, int d, int len) {
    Dev q = random_bf16(std::size_t(len) * n_q * d, 6), k = random_bf16(std::size_t(len) * n_kv * d, 7);
    Dev v = random_bf16(std::size_t(len) * n_kv * d, 8), out(std::size_t(len) * n_q * d * sizeof(bf16));
    tc::PrefillParams<bf16> p;
    p.q = q.as<bf16>(), p.q_stride_t = std::int64_t(n_q) * d, p.q_stride_h = d;
    p.k = k.as<bf16>(), p.k_stride_t = std::int64_t(n_kv) * d, p.k_stride_h = d;
    p.v = v.as<bf16>(), p.v_stride_t = std::int64_t(n_kv) * d, p.v_stride_h = d;
    p.out = out.as<bf16>(), p.out_stride_t = std::int64_t(n_q) * d, p.out_stride_h = d;
    p.q_len = len, p.kv_len = len, p.n_q = n_q, p.n_kv = n_kv, p.qk_dim = d, p.v_dim = d;
    p.scale = 1.f / std::sqrt(float(d));
    const double pairs = double(len) * (len + 1) / 2;  // causal (query, key) pairs
    const double bytes = 2.0 * len * (2.0 * n_q * d + 2.0 * n_kv * d);
    const double flops = 2.0 * pairs * n_q * (d + d);
    run_timed(st, [&] { tc::attention_prefill<bf16>(p); }, bytes, flops);
}

void bm_mla_prefill(benchmark::State& st, int heads, int r, int dr, int dn, int dv, int len) {
    const int w = r + dr, qk = dn + dr;
    Dev q = random_bf16(std::size_t(len) * heads * qk, 9), cache = random_bf16(std::size_t(len) * w, 10);
    Dev kv_b = random_bf16(std::size_t(heads) * (dn + dv) * r, 11, 1.f / std::sqrt(float(r)));
    Dev out(std::size_t(len) * heads * dv * sizeof(bf16));
    tc::MlaPrefillParams<bf16> p;
    p.q = q.as<bf16>(), p.q_stride_t = std::int64_t(heads) * qk, p.q_stride_h = qk;
    p.cache = cache.as<bf16>(), p.cache_stride_t = w, p.kv_b = kv_b.as<bf16>();
    p.out = out.as<bf16>(), p.out_stride_t = std::int64_t(heads) * dv, p.out_stride_h = dv;
    p.q_len = len, p.kv_len = len, p.heads = heads, p.rank = r, p.rope_dim = dr, p.nope_dim = dn, p.v_dim = dv;
    p.scale = 1.f / std::sqrt(float(qk));
    Dev ws(tc::mla_prefill_workspace_bytes(p));
    const double pairs = double(len) * (len + 1) / 2;
    const double bytes = 2.0 * (double(len) * w + double(heads) * (dn + dv) * r + double(len) * heads * (qk + dv));
    const double flops = 2.0 * len * double(r) * heads * (dn + dv) + 2.0 * pairs * heads * (qk + dv);
    run_timed(st, [&] { tc::mla_naive_prefill<bf16>(p, ws.p, tc::mla_prefill_workspace_bytes(p)); }, bytes, flops);
}

// ---- ceilings --------------------------------------------------------------------------------

double measure_bandwidth() {
    const std::size_t bytes = std::size_t(1) << 30;
    Dev a(bytes), b(bytes);
    TRANSMLA_CUDA_CHECK(cudaMemset(a.p, 1, bytes));
    Events ev;
    auto copy = [&] { TRANSMLA_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); };
    copy();
    std::vector<double> t;
    for (int i = 0; i < 10; ++i) t.push_back(ev.time(copy));
    std::sort(t.begin(), t.end());
    return 2.0 * double(bytes) / t[t.size() / 2] * 1e-9;  // read + write
}

double measure_gemm_tflops() {
    const int n = 8192;
    Dev a = random_bf16(std::size_t(n) * n, 12), b = random_bf16(std::size_t(n) * n, 13);
    Dev c(std::size_t(n) * n * sizeof(bf16));
    cublasHandle_t h{};
    BENCH_CUBLAS_CHECK(cublasCreate(&h));
    const float alpha = 1.f, beta = 0.f;
    auto gemm = [&] {
        BENCH_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.p, CUDA_R_16BF, n, b.p,
                                        CUDA_R_16BF, n, &beta, c.p, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT));
    };
    Events ev;
    gemm();
    gemm();
    std::vector<double> t;
    for (int i = 0; i < 10; ++i) t.push_back(ev.time(gemm));
    BENCH_CUBLAS_CHECK(cublasDestroy(h));
    std::sort(t.begin(), t.end());
    return 2.0 * double(n) * n * n / t[t.size() / 2] * 1e-12;
}

void add(const std::string& name, std::function<void(benchmark::State&)> f) {
    benchmark::RegisterBenchmark(name.c_str(), [f](benchmark::State& st) { f(st); })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond)
        ->MinTime(0.1)
        ->Repetitions(5)
        ->ReportAggregatesOnly(true);
}

void register_all() {
    const int batches[] = {1, 16, 64, 128};
    const std::int64_t contexts[] = {1024, 4096, 16384, 32768};
    struct Gqa {
        const char* name;
        int n_q, n_kv, d;
    };
    for (const Gqa& s : {Gqa{"llama3_8b", 32, 8, 128}, Gqa{"smollm2_135m", 9, 3, 64}})
        for (int b : batches)
            for (auto ctx : contexts)
                for (std::int64_t page : {std::int64_t(0), std::int64_t(16)})
                    add(std::string("gqa_decode/") + s.name + "/batch:" + std::to_string(b) + "/ctx:" +
                            std::to_string(ctx) + (page ? "/paged16" : "/contiguous"),
                        [=](benchmark::State& st) { bm_gqa_decode(st, s.n_q, s.n_kv, s.d, b, ctx, page); });
    struct Mla {
        const char* name;
        int heads, r, dr;
    };
    for (const Mla& s : {Mla{"deepseek_v2_lite", 16, 512, 64}, Mla{"deepseek_v3", 128, 512, 64},
                         Mla{"smollm2_mla_r128", 9, 128, 64}})
        for (int b : batches)
            for (auto ctx : contexts)
                for (std::int64_t page : {std::int64_t(0), std::int64_t(64)})
                    add(std::string("mla_decode/") + s.name + "/batch:" + std::to_string(b) + "/ctx:" +
                            std::to_string(ctx) + (page ? "/paged64" : "/contiguous"),
                        [=](benchmark::State& st) { bm_mla_decode(st, s.heads, s.r, s.dr, b, ctx, page); });
    for (int len : {1024, 4096, 16384}) {
        add("gqa_prefill/llama3_8b/len:" + std::to_string(len),
            [=](benchmark::State& st) { bm_gqa_prefill(st, 32, 8, 128, len); });
        add("gqa_prefill/smollm2_135m/len:" + std::to_string(len),
            [=](benchmark::State& st) { bm_gqa_prefill(st, 9, 3, 64, len); });
        add("mla_naive_prefill/deepseek_v2_lite/len:" + std::to_string(len),
            [=](benchmark::State& st) { bm_mla_prefill(st, 16, 512, 64, 128, 128, len); });
    }
}

}  // namespace

int main(int argc, char** argv) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        std::printf("bench_cuda: no CUDA GPU available (%s); nothing measured\n",
                    e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    cudaDeviceProp prop{};
    TRANSMLA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    g_bandwidth_gbs = measure_bandwidth();
    g_peak_tflops = measure_gemm_tflops();
    std::printf("bench_cuda: %s (sm_%d%d, %d SMs); measured ceilings: %.0f GB/s (device-to-device copy), %.1f "
                "TFLOP/s (cuBLAS bf16 GEMM 8192^3)\n",
                prop.name, prop.major, prop.minor, prop.multiProcessorCount, g_bandwidth_gbs, g_peak_tflops);
    benchmark::AddCustomContext("gpu", prop.name);
    benchmark::AddCustomContext("ceiling_bandwidth_GBps", std::to_string(g_bandwidth_gbs));
    benchmark::AddCustomContext("ceiling_bf16_TFLOPs", std::to_string(g_peak_tflops));
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
