// End-to-end decode steps, original GQA vs its MLA conversion, on random weights of the real
// shapes (speed does not depend on the values; results in bench/RESULTS.md, "End-to-end decode").
//   bench_decode_step [--benchmark_filter=...] [--benchmark_repetitions=3]
//
//   model/smollm2/{gqa,mla50,mla31}/<context>
//       a whole decode step of a SmolLM2-135M-shaped model::Model (30 layers, D 576, 9 q / 3 kv
//       heads × 64, MLP 1536, vocab 49152, tied): embedding, per layer RMSNorm, projections, RoPE,
//       attention over the cache (cpu:: kernels), W_O, MLP, then the last token's logits. The MLA
//       rows are TransMLA conversions at 50 % (r 160 + d_r 32) and 31.25 % (r 88 + d_r 32) of the
//       KV cache: H 9, d_nope = d_v = 64; absorbed decode with prepared weights (cpu::MlaWeights).
//   model/{llama3_8b,llama2_7b}/{gqa,mla}/<context>
//       one layer of that shape as a 1-layer model::Model (RMSNorms, projections, RoPE, attention,
//       W_O, SwiGLU MLP of 14336 / 11008; no logits): GQA 32/8/128 or MHA 32/32/128 (D 4096)
//       vs the MLA conversion 32 heads × (512 + 64), d_nope = d_v = 128.
//   attn_bf16/{llama3_8b,llama2_7b}/{gqa,mla}/<context>
//       the same layer's attention block only (projections, RoPE, cache append, attention, W_O)
//       through the cpu:: kernels directly with a bf16 cache (model::Model holds an f32 cache):
//       GqaCache<bfloat16> + cpu::gqa_decode, or MlaCache<bfloat16> + cpu::MlaWeights + cpu::mla_decode.
//
// <context> is the number of keys the step attends to (the cache holds context − 1 tokens before
// it). Counters: tokens/s (decode steps per second) and kv_bytes/token (bytes of KV cache read
// per step, all layers). The projection GEMVs are Eigen's (single-threaded for one token); the
// attention kernels use OMP_NUM_THREADS workers.
#include "transmla/cpu/cpu.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/model/model.hpp"
#include "transmla/rope.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

using namespace transmla;
using model::RowMatrixXf;

namespace {

/// Uniform values in [−a, a] from a fast xorshift (values do not matter for speed; this keeps
/// the fixtures' set-up short for GB-sized layers).
struct Fill {
    std::uint64_t s = 0x9E3779B97F4A7C15ull;
    float next(float a) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        return a * (float(s >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
    RowMatrixXf matrix(Eigen::Index r, Eigen::Index c) {
        RowMatrixXf m(r, c);
        const float a = std::sqrt(3.0f / float(c));  // unit-variance outputs for unit inputs
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = next(a);
        return m;
    }
    Eigen::VectorXf ones(int n) { return Eigen::VectorXf::Constant(n, 1.0f); }
};

struct Shape {
    const char* name;
    int layers, D, n_q, n_kv, d, inter, vocab;
    bool logits;
    std::int64_t max_context;  // cache capacity
};
constexpr Shape smollm2{"smollm2", 30, 576, 9, 3, 64, 1536, 49152, true, 8192};
constexpr Shape llama3{"llama3_8b", 1, 4096, 32, 8, 128, 14336, 256, false, 16384};
constexpr Shape llama2{"llama2_7b", 1, 4096, 32, 32, 128, 11008, 256, false, 16384};

struct Mla {
    const char* name;
    int r, dr;  // H = n_q, d_nope = d_v = d
};

model::Model make_model(const Shape& s, const Mla* mla, std::int64_t max_positions) {
    Fill f;
    model::Model m;
    auto& c = m.config;
    c.name = s.name;
    c.vocab = s.vocab, c.hidden = s.D, c.layers = s.layers, c.n_q = s.n_q, c.n_kv = s.n_kv, c.head_dim = s.d;
    c.intermediate = s.inter, c.max_positions = max_positions, c.tied_embeddings = true;
    c.rope.base = 10000.0;
    m.embed = f.matrix(s.vocab, s.D);
    m.out_norm = f.ones(s.D);
    for (int l = 0; l < s.layers; ++l) {
        model::Layer L;
        L.attn_norm = f.ones(s.D);
        L.ffn_norm = f.ones(s.D);
        if (mla == nullptr) {
            model::GqaAttention a;
            a.n_q = s.n_q, a.n_kv = s.n_kv, a.head_dim = s.d, a.inv_freq = rope_inv_freq(c.rope, s.d);
            a.wqkv = f.matrix(Eigen::Index(s.n_q + 2 * s.n_kv) * s.d, s.D);
            a.wo = f.matrix(s.D, Eigen::Index(s.n_q) * s.d);
            L.attn = std::move(a);
        } else {
            model::MlaAttention a;
            a.n_heads = s.n_q, a.rank = mla->r, a.rope_dim = mla->dr, a.nope_dim = s.d, a.v_dim = s.d;
            a.inv_freq = rope_inv_freq(c.rope, mla->dr);
            a.softmax_scale = float(1.0 / std::sqrt(double(s.d + mla->dr)));
            a.wq = f.matrix(Eigen::Index(s.n_q) * (s.d + mla->dr), s.D);
            a.kv_a = f.matrix(mla->r + mla->dr, s.D);
            a.kv_b = f.matrix(Eigen::Index(s.n_q) * 2 * s.d, mla->r);
            a.wo = f.matrix(s.D, Eigen::Index(s.n_q) * s.d);
            a.prepare();  // once per layer, as to_runtime() does for a converted model
            L.attn = std::move(a);
        }
        L.mlp.gate_up = f.matrix(2 * Eigen::Index(s.inter), s.D);
        L.mlp.down = f.matrix(s.D, s.inter);
        m.layers.push_back(std::move(L));
    }
    m.validate();
    return m;
}

/// One model and a full random cache of `capacity` tokens, kept while consecutive benchmarks use
/// the same key (they run in registration order), so at most one GB-sized fixture lives at a time.
struct ModelFixture {
    std::string key;
    model::Model m;
    model::KvCache cache;
};
ModelFixture& model_fixture(const Shape& s, const Mla* mla, std::int64_t capacity) {
    static std::unique_ptr<ModelFixture> cur;
    const std::string key = std::string(s.name) + "/" + (mla ? mla->name : "gqa");
    if (!cur || cur->key != key) {
        cur.reset();
        auto x = std::make_unique<ModelFixture>();
        x->key = key;
        x->m = make_model(s, mla, capacity);
        x->cache = x->m.make_cache(capacity);
        Fill f;
        for (auto& l : x->cache.layers)
            for (auto& v : l.rows) v = f.next(1.0f);
        cur = std::move(x);
    }
    return *cur;
}

void BM_ModelDecodeStep(benchmark::State& st, const Shape* s, const Mla* mla) {
    const std::int64_t ctx = st.range(0);
    auto& f = model_fixture(*s, mla, s->max_context);
    const model::Model& m = f.m;
    const std::int32_t token = 17;
    const auto want = s->logits ? model::Logits::last : model::Logits::none;
    for (auto& l : f.cache.layers) l.size = ctx - 1;
    for (auto _ : st) {
        auto y = m.forward(std::span<const std::int32_t>(&token, 1), f.cache, want);
        benchmark::DoNotOptimize(y.data());
        for (auto& l : f.cache.layers) l.size = ctx - 1;  // roll back the appended token
    }
    const double bytes = double(ctx) * double(f.cache.values_per_token()) * sizeof(float);
    st.counters["tokens/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["kv_bytes/token"] = bytes;
    st.SetLabel(std::string(mla ? "mla " : "gqa ") + "f32 cache");
}

// ---- the attention block through the cpu:: kernels with a bf16 cache -----------------------------

struct AttnFixture {
    std::string key;
    RowMatrixXf w_in, w_o;  // GQA: wqkv; MLA: [wq ; kv_a]
    std::unique_ptr<RopeTable> rope;
    std::unique_ptr<GqaCache<bfloat16>> gqa;
    std::unique_ptr<MlaCache<bfloat16>> mla;
    std::unique_ptr<cpu::MlaWeights> weights;
    cpu::MlaWorkspace ws;
    std::vector<float> filler;  // random rows appended in chunks
    static constexpr std::int64_t chunk = 256;

    /// Appends random rows until the cache holds `n` tokens (truncate only shrinks it).
    void fill_to(std::int64_t n) {
        if (gqa) {
            const int nkv = gqa->n_kv(), d = gqa->head_dim();
            while (gqa->size() < n) {
                const std::int64_t k = std::min(chunk, n - gqa->size());
                const View3<const float> kv(filler.data(), {k, nkv, d});
                gqa->append(kv, kv);
            }
        } else {
            const auto v = mla->view();
            while (mla->size() < n) {
                const std::int64_t k = std::min(chunk, n - mla->size());
                mla->append(View2<const float>(filler.data(), {k, v.rank + v.rope_dim}));
            }
        }
    }
};

AttnFixture& attn_fixture(const Shape& s, const Mla* mla, std::int64_t capacity) {
    static std::unique_ptr<AttnFixture> cur;
    const std::string key = std::string(s.name) + "/" + (mla ? mla->name : "gqa");
    if (cur && cur->key == key) return *cur;
    cur.reset();
    auto x = std::make_unique<AttnFixture>();
    x->key = key;
    Fill f;
    const int H = s.n_q, d = s.d;
    x->w_o = f.matrix(s.D, Eigen::Index(H) * d);
    const std::int64_t chunk = AttnFixture::chunk;
    if (mla == nullptr) {
        x->w_in = f.matrix(Eigen::Index(s.n_q + 2 * s.n_kv) * d, s.D);
        x->rope = std::make_unique<RopeTable>(RopeSpec{}, d, capacity);
        x->gqa = std::make_unique<GqaCache<bfloat16>>(s.n_kv, d, capacity);
        x->filler.resize(std::size_t(chunk) * s.n_kv * d);
    } else {
        const int r = mla->r, dr = mla->dr;
        x->w_in = f.matrix(Eigen::Index(H) * (d + dr) + r + dr, s.D);
        const RowMatrixXf kv_b = f.matrix(Eigen::Index(H) * 2 * d, r);
        x->weights = std::make_unique<cpu::MlaWeights>(View2<const float>(kv_b.data(), {kv_b.rows(), kv_b.cols()}), H,
                                                       d, d, View2<const float>(x->w_o.data(), {s.D, Eigen::Index(H) * d}));
        x->ws = x->weights->make_workspace(1);
        x->rope = std::make_unique<RopeTable>(RopeSpec{.pairing = RopePairing::interleaved}, dr, capacity);
        x->mla = std::make_unique<MlaCache<bfloat16>>(r, dr, capacity);
        x->filler.resize(std::size_t(chunk) * (r + dr));
    }
    for (auto& v : x->filler) v = f.next(1.0f);
    cur = std::move(x);
    return *cur;
}

void BM_AttnBf16(benchmark::State& st, const Shape* s, const Mla* mla) {
    const std::int64_t ctx = st.range(0);
    auto& f = attn_fixture(*s, mla, s->max_context);
    f.fill_to(ctx - 1);
    const int H = s->n_q, nkv = s->n_kv, d = s->d, D = s->D;
    Fill g;
    RowMatrixXf x(1, D), y(1, D);
    for (int i = 0; i < D; ++i) x(0, i) = g.next(1.0f);
    const std::int64_t pos = ctx - 1;
    const std::int64_t at[] = {pos};
    RowMatrixXf p(1, f.w_in.rows());
    std::vector<float> o(std::size_t(H) * d), lse(static_cast<std::size_t>(H));
    double bytes = 0;
    if (mla == nullptr) {
        const float scale = float(1.0 / std::sqrt(double(d)));
        for (auto _ : st) {
            f.gqa->truncate(ctx - 1);
            p.noalias() = x * f.w_in.transpose();  // [q | k | v]
            f.rope->apply(View3<float>(p.data(), {1, H + nkv, d}), at);
            f.gqa->append(View3<const float>(p.data() + H * d, {1, nkv, d}),
                          View3<const float>(p.data() + (H + nkv) * d, {1, nkv, d}));
            cpu::gqa_decode(View3<const float>(p.data(), {1, H, d}), f.gqa->view(), scale,
                            View3<float>(o.data(), {1, H, d}), View2<float>(lse.data(), {1, H}));
            y.noalias() = Eigen::Map<const RowMatrixXf>(o.data(), 1, Eigen::Index(H) * d) * f.w_o.transpose();
            benchmark::DoNotOptimize(y.data());
        }
        bytes = double(ctx) * 2 * nkv * d * sizeof(bfloat16);
    } else {
        const int r = mla->r, dr = mla->dr, qw = d + dr;
        const float scale = float(1.0 / std::sqrt(double(d + dr)));
        std::vector<float> qa(std::size_t(H) * (r + dr)), lat(std::size_t(H) * r);
        for (auto _ : st) {
            f.mla->truncate(ctx - 1);
            p.noalias() = x * f.w_in.transpose();  // [q_nope_i | q_pe_i]_i, then [c | k_pe]
            float* kv = p.data() + std::int64_t(H) * qw;
            f.rope->apply(View3<float>(p.data() + d, {1, H, dr}, {std::int64_t(H) * qw, qw, 1}), at);
            f.rope->apply(kv + r, pos);
            f.mla->append(View2<const float>(kv, {1, r + dr}));
            f.weights->absorb(View3<const float>(p.data(), {1, H, d}, {std::int64_t(H) * qw, qw, 1}),
                              View3<const float>(p.data() + d, {1, H, dr}, {std::int64_t(H) * qw, qw, 1}),
                              View3<float>(qa.data(), {1, H, r + dr}));
            cpu::mla_decode(View3<const float>(qa.data(), {1, H, r + dr}), f.mla->view(), scale,
                            View3<float>(lat.data(), {1, H, r}), View2<float>(lse.data(), {1, H}));
            f.weights->up_project(View3<const float>(lat.data(), {1, H, r}), View2<float>(y.data(), {1, D}), f.ws);
            benchmark::DoNotOptimize(y.data());
        }
        bytes = double(ctx) * (r + dr) * sizeof(bfloat16);
    }
    st.counters["tokens/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["kv_bytes/token"] = bytes;
    st.SetLabel(std::string(mla ? "mla " : "gqa ") + "bf16 cache, attention block");
}

const Mla mla50{"mla50", 160, 32}, mla31{"mla31", 88, 32}, mla_big{"mla", 512, 64};

void register_all() {
    auto add = [](const std::string& name, auto fn, const Shape* s, const Mla* m, std::initializer_list<int> ctxs) {
        auto* b = benchmark::RegisterBenchmark(name.c_str(), fn, s, m);
        for (int c : ctxs) b->Arg(c);
        b->ArgName("context")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.3);
    };
    for (const Mla* m : {static_cast<const Mla*>(nullptr), &mla50, &mla31})
        add(std::string("model/smollm2/") + (m ? m->name : "gqa"), BM_ModelDecodeStep, &smollm2, m, {1024, 4096, 8192});
    for (const Shape* s : {&llama3, &llama2})
        for (const Mla* m : {static_cast<const Mla*>(nullptr), &mla_big}) {
            add(std::string("model/") + s->name + "/" + (m ? m->name : "gqa"), BM_ModelDecodeStep, s, m,
                {1024, 2048, 4096, 8192, 16384});
            add(std::string("attn_bf16/") + s->name + "/" + (m ? m->name : "gqa"), BM_AttnBf16, s, m,
                {1024, 2048, 4096, 8192, 16384});
        }
}

}  // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
