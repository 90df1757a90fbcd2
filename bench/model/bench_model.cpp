// SmolLM2 forward passes and decode attention, original vs converted (results in bench/RESULTS.md).
//   bench_model [--benchmark_filter=...]
// Fixtures are built once (load, and a TransMLA 50% conversion on 4 × 256 calibration tokens of
// GPL-2 for the MLA rows) outside the timed loops.
#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/perplexity.hpp"
#include "transmla/model/report.hpp"

#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <random>

using namespace transmla;

namespace {

struct Fixture {
    model::Model original, transmla50, exact;
    std::vector<std::int32_t> text;
};

const Fixture* fixture() {
    static const std::unique_ptr<Fixture> f = []() -> std::unique_ptr<Fixture> {
        const auto path = model::default_model_path();
        if (!std::filesystem::exists(path)) return nullptr;
        auto x = std::make_unique<Fixture>();
        const io::GgufFile file(path);
        x->original = model::load_gguf(file, {.max_positions = 16384});
        const auto tok = io::Tokenizer::from_gguf(file);
        x->text = tok.encode(model::read_text_file("/usr/share/common-licenses/GPL-3"), false);
        const auto calib = tok.encode(model::read_text_file("/usr/share/common-licenses/GPL-2"), false);
        const auto seqs = model::make_sequences(calib, 4, 256);
        convert::ConvertOptions o;
        o.method = convert::Method::transmla, o.rope_dim = 32, o.freqfold = 4, o.cache_budget = 0.5;
        x->transmla50 = model::convert_model(x->original, seqs, o).model;
        o.method = convert::Method::exact;
        x->exact = model::convert_model(x->original, seqs, o).model;
        return x;
    }();
    return f.get();
}

const model::Model& pick(const Fixture& f, int which) {
    return which == 0 ? f.original : which == 1 ? f.transmla50 : f.exact;
}
const char* name_of(int which) { return which == 0 ? "gqa_original" : which == 1 ? "mla_transmla50" : "mla_exact"; }

/// A window of `n` tokens with logits for every token (what perplexity does per window).
void BM_PrefillWindow(benchmark::State& st) {
    const auto* f = fixture();
    if (!f) return st.SkipWithError("SmolLM2 file not found (scripts/fetch-model.sh)");
    const auto& m = pick(*f, int(st.range(1)));
    const std::int64_t n = st.range(0);
    auto cache = m.make_cache(n);
    const std::span<const std::int32_t> w(f->text.data(), std::size_t(n));
    for (auto _ : st) {
        cache.clear();
        auto l = m.forward(w, cache, model::Logits::all);
        benchmark::DoNotOptimize(l.data());
    }
    st.SetLabel(name_of(int(st.range(1))));
    st.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PrefillWindow)->Args({512, 0})->Args({512, 1})->Args({512, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

/// One decode step (one token, logits) after a prompt of `n` tokens.
void BM_DecodeStep(benchmark::State& st) {
    const auto* f = fixture();
    if (!f) return st.SkipWithError("SmolLM2 file not found (scripts/fetch-model.sh)");
    const auto& m = pick(*f, int(st.range(1)));
    const std::int64_t n = st.range(0);
    auto cache = m.make_cache(n + 1);
    m.forward(std::span<const std::int32_t>(f->text.data(), std::size_t(n)), cache, model::Logits::none);
    const std::int32_t next = f->text[std::size_t(n)];
    for (auto _ : st) {
        auto l = m.forward(std::span<const std::int32_t>(&next, 1), cache, model::Logits::last);
        benchmark::DoNotOptimize(l.data());
        for (auto& c : cache.layers) c.size = n;  // roll back the appended token
    }
    st.SetLabel(name_of(int(st.range(1))));
}
BENCHMARK(BM_DecodeStep)->Args({1024, 0})->Args({1024, 1})->Unit(benchmark::kMillisecond)->UseRealTime();

/// One layer's attention block for one decode token at `context` cached tokens (random cache).
void BM_DecodeAttentionLayer(benchmark::State& st) {
    const auto* f = fixture();
    if (!f) return st.SkipWithError("SmolLM2 file not found (scripts/fetch-model.sh)");
    const auto& m = pick(*f, int(st.range(1)));
    const std::int64_t ctx = st.range(0);
    const auto& at = m.layers[0].attn;
    auto c = model::Model::make_layer_cache(at, ctx + 1);
    std::mt19937 g(7);
    std::normal_distribution<float> nd;
    for (auto& v : c.rows) v = nd(g);
    c.size = ctx;
    model::RowMatrixXf x(1, m.config.hidden);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = nd(g);
    for (auto _ : st) {
        auto o = m.attention(at, x, c);
        benchmark::DoNotOptimize(o.data());
        c.size = ctx;
    }
    st.SetLabel(name_of(int(st.range(1))));
    const double bytes = double(ctx) * model::cache_width(at) * sizeof(float);
    st.counters["cache_bytes"] = bytes;
    st.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DecodeAttentionLayer)
    ->ArgsProduct({{1024, 4096, 16384}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
