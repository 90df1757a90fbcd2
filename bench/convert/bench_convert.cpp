// Conversion speed: one layer from its calibration statistics, at real model sizes, on synthetic
// statistics (an SPD (D+1)² input moment with a decaying spectrum) and random weights. Two kinds
// of statistics: the input moment (CalibrationStats, (D+1)²) and the key/value moments the same
// inputs give (KvStats, (2L)²: the original layer's keys and values for step 2, the partial-RoPE
// layer's rotated keys and values for steps 3–6 — what an engine records in its two calibration
// passes). Building the KvStats is set-up, not timed.
//   llama3_8b: D 4096, 32 query / 8 KV heads of 128, r 512, d_r 64, F 4  (joint PCA width 1984)
//   llama2_7b: D 4096, 32 query / 32 KV heads of 128, r 512, d_r 64, F 8 (joint PCA width 8128)
// Eigen's GEMMs use OpenMP threads when the build enables OpenMP (OMP_NUM_THREADS).
#include "transmla/convert/convert.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <map>
#include <memory>
#include <random>

namespace {

using namespace transmla;
using namespace transmla::convert;

struct Problem {
    GqaLayer layer;
    CalibrationStats stats;
    ConvertOptions opt;
    KvStats kv_original, kv_after;  // filled for the KvStats benchmarks only
};

Eigen::MatrixXd gaussian(Eigen::Index r, Eigen::Index c, double sd, std::mt19937_64& g) {
    std::normal_distribution<double> nd(0.0, sd);
    Eigen::MatrixXd m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(g);
    return m;
}

const Problem& problem(int n_kv, int freqfold) {
    static std::map<int, std::unique_ptr<Problem>> cache;
    auto& slot = cache[n_kv];
    if (slot) return *slot;
    std::mt19937_64 g(1234 + n_kv);
    const int D = 4096, nq = 32, d = 128;
    auto p = std::make_unique<Problem>();
    GqaLayer& l = p->layer;
    l.hidden = D, l.n_q = nq, l.n_kv = n_kv, l.head_dim = d;
    l.rope.base = 500000.0;
    const double sc = 1.0 / std::sqrt(double(D));
    l.wq = gaussian(nq * d, D, sc, g);
    l.wk = gaussian(n_kv * d, D, sc, g);
    l.wv = gaussian(n_kv * d, D, 0.4 * sc, g);
    l.wo = gaussian(D, nq * d, sc, g);
    // H = B Bᵀ, B = G diag(s), s_k = 30·(k+1)^−0.6: an SPD moment with a decaying spectrum.
    Eigen::MatrixXd b = gaussian(D + 1, D + 1, 1.0, g);
    for (int k = 0; k <= D; ++k) b.col(k) *= 30.0 * std::pow(k + 1.0, -0.6);
    Eigen::MatrixXd h = Eigen::MatrixXd::Zero(D + 1, D + 1);
    h.selfadjointView<Eigen::Lower>().rankUpdate(b);
    h.triangularView<Eigen::StrictlyUpper>() = h.transpose();
    h(D, D) = 32768;  // the token count entry
    p->stats.set_moment(std::move(h));
    p->opt.rope_dim = 64;
    p->opt.rank = 512;
    p->opt.freqfold = freqfold;
    slot = std::move(p);
    return *slot;
}

const Problem& kv_problem(int n_kv, int freqfold) {
    Problem& p = const_cast<Problem&>(problem(n_kv, freqfold));
    if (p.kv_original.kv_width() == 0) {
        const GqaLayer& l = p.layer;
        p.kv_original = KvStats::from_input(p.stats, l.wk, l.bk, l.wv, l.bv);
        const PartialRopeLayer pr = rorope(l, p.kv_original, p.opt.rope_dim, p.opt.freqfold);
        p.kv_after = KvStats::from_input(p.stats, pr.wk, pr.bk, pr.wv, pr.bv);
    }
    return p;
}

void report(benchmark::State& st, const LayerReport& r) {
    st.counters["rope_energy"] = r.rope_energy;
    st.counters["pca_energy"] = r.pca_energy;
    st.counters["alpha"] = r.alpha;
    st.counters["cache"] = double(r.cache_converted);
}

// One body per step for both kinds of statistics (`after` = nullptr: reuse `original`).
template <class Stats>
void run_convert_layer(benchmark::State& st, const Problem& p, const Stats& original, const Stats* after) {
    LayerReport rep;
    for (auto _ : st) {
        const ConvertResult res = convert_layer(p.layer, original, after, p.opt);
        rep = res.report;
        benchmark::DoNotOptimize(res.mla.kv_b_proj.data());
    }
    report(st, rep);
}

template <class Stats>
void run_finish_transmla(benchmark::State& st, const Problem& p, const Stats& original, const Stats& after) {
    const PartialRopeLayer pr = rorope(p.layer, original, p.opt.rope_dim, p.opt.freqfold);
    LayerReport rep;
    for (auto _ : st) {
        const MlaLayer m = finish_transmla(pr, after, p.opt.rank, p.opt, &rep);
        benchmark::DoNotOptimize(m.kv_b_proj.data());
    }
    report(st, rep);
}

void BM_convert_layer(benchmark::State& st, int n_kv, int F) {
    const Problem& p = problem(n_kv, F);
    run_convert_layer(st, p, p.stats, static_cast<const CalibrationStats*>(nullptr));
}

void BM_rorope(benchmark::State& st, int n_kv, int F) {
    const Problem& p = problem(n_kv, F);
    for (auto _ : st) {
        const PartialRopeLayer pr = rorope(p.layer, p.stats, p.opt.rope_dim, p.opt.freqfold);
        benchmark::DoNotOptimize(pr.wk.data());
    }
}

void BM_finish_transmla(benchmark::State& st, int n_kv, int F) {
    const Problem& p = problem(n_kv, F);
    run_finish_transmla(st, p, p.stats, p.stats);
}

void BM_convert_layer_kv(benchmark::State& st, int n_kv, int F) {
    const Problem& p = kv_problem(n_kv, F);
    run_convert_layer(st, p, p.kv_original, &p.kv_after);
}

void BM_finish_transmla_kv(benchmark::State& st, int n_kv, int F) {
    const Problem& p = kv_problem(n_kv, F);
    run_finish_transmla(st, p, p.kv_original, p.kv_after);
}

// What an engine converting a model layer by layer runs: rorope on the moved GQA layer, then
// finish_transmla consuming the partial layer (W_Q, W_V, W_O are handed over, not copied). The
// copy of the input layer each iteration is set-up, outside the timing.
void BM_transmla_kv_moved(benchmark::State& st, int n_kv, int F) {
    const Problem& p = kv_problem(n_kv, F);
    LayerReport rep;
    for (auto _ : st) {
        st.PauseTiming();
        GqaLayer l = p.layer;
        st.ResumeTiming();
        const MlaLayer m = finish_transmla(rorope(std::move(l), p.kv_original, p.opt.rope_dim, p.opt.freqfold),
                                           p.kv_after, p.opt.rank, p.opt, &rep);
        benchmark::DoNotOptimize(m.kv_b_proj.data());
    }
    report(st, rep);
}

}  // namespace

BENCHMARK_CAPTURE(BM_transmla_kv_moved, llama3_8b, 8, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(BM_convert_layer_kv, llama3_8b, 8, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(BM_finish_transmla_kv, llama3_8b, 8, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK_CAPTURE(BM_convert_layer, llama3_8b, 8, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(BM_rorope, llama3_8b, 8, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(BM_finish_transmla, llama3_8b, 8, 4)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK_CAPTURE(BM_convert_layer, llama2_7b, 32, 8)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_CAPTURE(BM_rorope, llama2_7b, 32, 8)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_CAPTURE(BM_finish_transmla, llama2_7b, 32, 8)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);

BENCHMARK_MAIN();
