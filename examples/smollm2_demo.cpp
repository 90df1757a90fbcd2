// smollm2_demo — the real-model demo: SmolLM2-135M-Instruct converted from GQA to MLA by
// TransMLA, the output-aware method and MHA2MLA at two cache budgets, and by the exact mode, with a table of
// KV bytes per token, perplexity, its change, conversion time and decode-attention time at a
// long context; then greedy generation from one prompt by the original and by the 50% TransMLA
// model side by side. None of the converted models is fine-tuned.
//
//   smollm2_demo [--model FILE.gguf] [--calib-seqs N] [--calib-len L] [--eval-tokens N]
//                [--window W] [--context C] [--new-tokens N] [--threads N] [--report demo_report.json]
//
// Texts (Debian's /usr/share/common-licenses, disjoint files): calibration GPL-2 + LGPL-2.1,
// evaluation GPL-3 + Apache-2.0 (the first 4096 tokens by default, to keep the demo to minutes on
// two cores; convert_model evaluates 10000 by default).
//
// Progress goes to stderr (model/progress.hpp): a live bar on a terminal, one line per step
// otherwise, each with the whole demo's ETA. The table goes to stdout; the JSON report holds every
// number of it plus what scripts/plot-demo.py draws (per-layer errors, the decode-time curve, the
// machine and date).
//
// Threads. The last digits of the table depend on the OpenMP team size (the order of summation,
// Eigen's GEMM blocking among it, changes with it: one thread prints 61.4148 where two print
// 61.4149, a relative difference of 4e-7), so the demo runs a team of 2,
// the size of the published table, whatever the core count. Before each row it looks at how busy
// the CPUs were since the last look (/proc/stat, less this process's own CPU time): when fewer
// than 1.5 CPUs were free it runs that row on one thread instead of letting a team of 2 wait on a
// CPU that another program holds (Eigen's parallel GEMM spin-waits for its partner thread). With
// one of two cores kept busy, a shortened run of this demo took 2.05x its quiet time with a team
// of 2 (OMP_WAIT_POLICY=passive) and 1.21x with one thread (bench/RESULTS.md). Such rows are
// marked * in the table. OMP_NUM_THREADS or --threads N fixes the team and turns the check off.
//
// The rows are one list in main() (`rows`): a new conversion method is one more entry there, and
// the report and scripts/plot-demo.py pick it up by its method and budget.
#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/perplexity.hpp"
#include "transmla/model/progress.hpp"
#include "transmla/model/report.hpp"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

using namespace transmla;

namespace {

using clock_type = std::chrono::steady_clock;
double since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

/// One row of the table. The rows are a list in main(): a new method is one more entry there.
struct Row {
    std::string method, budget;    ///< the table's first two columns
    convert::ConvertOptions opt{}; ///< how the original is converted (unused when !convert)
    bool convert = true;           ///< false: the original model itself
    bool curve = false;            ///< decode time at every context of the curve (the third plot)
    bool generate = false;         ///< greedy generation from the prompt, shown side by side
};

std::string one_line(std::string s) {
    for (auto& c : s)
        if (c == '\n' || c == '\r') c = ' ';
    return s;
}

/// Splits text into lines of at most `w` bytes at spaces (for the side-by-side print).
std::vector<std::string> wrap(const std::string& s, std::size_t w) {
    std::vector<std::string> out;
    std::string cur;
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t j = s.find(' ', i);
        if (j == std::string::npos) j = s.size();
        const std::string word = s.substr(i, j - i);
        if (!cur.empty() && cur.size() + 1 + word.size() > w) out.push_back(cur), cur.clear();
        cur += (cur.empty() ? "" : " ") + word;
        i = j + 1;
    }
    if (!cur.empty()) out.push_back(cur);
    return out;
}

// ---- threads -----------------------------------------------------------------------------------

/// CPUs this process may run on.
int allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return int(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
}

/// Busy CPU-seconds of the CPUs in this process's affinity set (/proc/stat), and this process's
/// own CPU seconds, at one instant: two samples give how many CPUs other programs kept busy.
struct CpuSample {
    double busy = 0, self = 0, wall = 0;
    bool ok = false;
};
CpuSample sample_cpu() {
    CpuSample s;
    cpu_set_t set;
    CPU_ZERO(&set);
    const bool have_set = sched_getaffinity(0, sizeof set, &set) == 0;
    std::ifstream f("/proc/stat");
    const double tick = double(sysconf(_SC_CLK_TCK));
    std::string line;
    while (f && std::getline(f, line)) {
        if (line.rfind("cpu", 0) != 0 || line.size() < 4 || !std::isdigit(static_cast<unsigned char>(line[3])))
            continue;
        std::istringstream ss(line.substr(3));
        int cpu = 0;
        double user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
        ss >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq >> steal;
        if (have_set && (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &set))) continue;
        s.busy += (user + nice + sys + irq + softirq + steal) / tick;
        s.ok = true;
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    s.self = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    s.wall = std::chrono::duration<double>(clock_type::now().time_since_epoch()).count();
    return s;
}

/// The thread count of each row: `team` unless the CPUs were too busy since the last call.
class ThreadPolicy {
public:
    ThreadPolicy(int forced, int team) : forced_(forced > 0), team_(forced > 0 ? forced : team) {
        last_ = sample_cpu();
    }
    /// Threads for the next piece of work (and sets them). `free_cpus` says what was seen.
    int choose() {
        int n = team_;
        if (!forced_ && team_ > 1) {
            CpuSample now = sample_cpu();
            if (now.wall - last_.wall < 0.15) {  // too short to tell (the first row): look for a moment
                usleep(200000);
                now = sample_cpu();
            }
            const double dt = now.wall - last_.wall;
            if (now.ok && last_.ok && dt > 0) {
                const double others = std::max(0.0, (now.busy - last_.busy) - (now.self - last_.self)) / dt;
                free_cpus_ = double(allowed_cpus()) - others;
                if (free_cpus_ < team_ - 0.5) n = std::max(1, int(free_cpus_ + 0.5));
            }
            last_ = now;
        }
#if defined(_OPENMP)
        omp_set_num_threads(n);
#endif
        return n;
    }
    int team() const noexcept { return team_; }
    bool forced() const noexcept { return forced_; }
    double free_cpus() const noexcept { return free_cpus_; }

private:
    bool forced_;
    int team_;
    CpuSample last_;
    double free_cpus_ = -1;
};

// ---- decode timing -------------------------------------------------------------------------------

/// What the decode time of a layer depends on: its form and every dimension of it.
std::string shape_key(const model::Attention& a) {
    std::ostringstream s;
    s << model::attention_kind(a) << ':';
    std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, model::GqaAttention>)
                s << x.n_q << ',' << x.n_kv << ',' << x.head_dim << ',' << x.bqkv.size();
            else if constexpr (std::is_same_v<T, model::PartialRopeAttention>)
                s << x.n_q << ',' << x.n_kv << ',' << x.head_dim << ',' << x.rope_dim << ',' << x.b.size();
            else if constexpr (std::is_same_v<T, model::MlaAttention>)
                s << x.n_heads << ',' << x.rank << ',' << x.rope_dim << ',' << x.nope_dim << ',' << x.v_dim << ','
                  << x.q_lora_rank << ',' << (x.prepared && x.prepared->fused()) << ',' << x.kv_norm.size() << ','
                  << x.q_norm.size();
            else
                s << x.n_q << ',' << x.n_kv << ',' << x.head_dim << ',' << x.rope_dims << ',' << x.latent_width;
        },
        a);
    return s.str();
}

/// Decode-attention seconds per token (all layers summed) of `m` at each of `contexts`: per
/// layer the median of `reps` steps on a random cache; one cache per layer shape serves all
/// layers and contexts. One progress step per context.
std::vector<double> decode_seconds(const model::Model& m, const std::vector<std::int64_t>& contexts, int reps,
                                   const std::string& label) {
    const std::int64_t cap = *std::max_element(contexts.begin(), contexts.end()) + 1;
    std::vector<double> w;
    for (const auto c : contexts) w.push_back(double(c));
    model::Progress p(label, w);
    std::map<std::string, model::LayerCache> scratch;
    std::vector<std::string> keys;
    for (const auto& L : m.layers) {
        keys.push_back(shape_key(L.attn));
        if (!scratch.count(keys.back())) scratch.emplace(keys.back(), model::random_layer_cache(L.attn, cap));
    }
    std::vector<double> out;
    for (const auto c : contexts) {
        double s = 0;
        for (std::size_t l = 0; l < m.layers.size(); ++l)
            s += model::decode_attention_seconds(m, l, scratch.at(keys[l]), c, reps);
        out.push_back(s);
        char b[64];
        std::snprintf(b, sizeof b, "context %lld: %.2f ms/token", (long long)c, s * 1e3);
        p.step(b);
    }
    p.finish();
    return out;
}

/// Progress weights of model::convert_model's steps (one per progress line): calibration passes
/// and per-layer phases, in rough seconds on two quiet cores (2026-12, Sapphire Rapids; only the
/// ETAs use them). Pass 1 includes the held-out inputs and the model copies before it.
std::vector<double> conversion_steps(const convert::ConvertOptions& opt, int layers) {
    const double pass = 6.5;
    std::vector<double> w{pass};  // pass 1 (original model)
    auto add = [&](int n, double each) { w.insert(w.end(), std::size_t(n), each); };
    switch (opt.method) {
        case convert::Method::mha2mla: add(layers, 0.55); break;                   // one line per layer
        case convert::Method::exact: add(layers, 0.05), add(layers, 0.1); break;  // RoRoPE, then PCA (no pass 2)
        case convert::Method::output_aware:  // pass 1 also gathers the rotation fit
            w.front() += 4.0, add(layers, 0.05), w.push_back(pass), add(layers, 0.08);
            break;
        default: add(layers, 0.03), w.push_back(pass), add(layers, 0.06); break;  // RoRoPE, pass 2, PCA
    }
    return w;
}

/// Rough seconds of one whole row on two quiet cores (the overall ETA only).
double row_seconds(const Row& r, int layers) {
    double s = 7.0 + (r.curve ? 0.8 : 0.3) + (r.generate ? 1.5 : 0.0);  // perplexity, decode timing, generation
    if (r.convert)
        for (const double w : conversion_steps(r.opt, layers)) s += w;
    return s;
}

// ---- the machine, for the report ----------------------------------------------------------------

nlohmann::json machine_json() {
    std::ifstream f("/proc/cpuinfo");
    std::string line, model_name, flags;
    while (f && std::getline(f, line)) {
        auto value = [&] { const auto c = line.find(':'); return c == std::string::npos ? std::string() : line.substr(c + 2); };
        if (model_name.empty() && line.rfind("model name", 0) == 0) model_name = value();
        if (flags.empty() && line.rfind("flags", 0) == 0) flags = " " + value() + " ";
    }
    nlohmann::json isa = nlohmann::json::array();
    for (const char* x : {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"})
        if (flags.find(std::string(" ") + x + " ") != std::string::npos) isa.push_back(x);
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    return {{"cpu", model_name}, {"isa", isa}, {"cpus", allowed_cpus()}, {"date", date}};
}

}  // namespace

int main(int argc, char** argv) try {
    const auto t_start = clock_type::now();
    std::string path = model::default_model_path(), report = "smollm2_demo_report.json";
    int calib_seqs = 16, calib_len = 256, new_tokens = 40, threads = 0;
    std::int64_t eval_tokens = 4096, window = 512, context = 4096;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "smollm2_demo: missing value after %s\n", k.c_str());
            return 2;
        }
        const std::string v = argv[++i];
        if (k == "--model") path = v;
        else if (k == "--calib-seqs") calib_seqs = std::atoi(v.c_str());
        else if (k == "--calib-len") calib_len = std::atoi(v.c_str());
        else if (k == "--eval-tokens") eval_tokens = std::atoll(v.c_str());
        else if (k == "--window") window = std::atoll(v.c_str());
        else if (k == "--context") context = std::atoll(v.c_str());
        else if (k == "--new-tokens") new_tokens = std::atoi(v.c_str());
        else if (k == "--threads") threads = std::atoi(v.c_str());
        else if (k == "--report") report = v;
        else {
            std::fprintf(stderr,
                         "usage: smollm2_demo [--model FILE.gguf] [--calib-seqs N] [--calib-len L] [--eval-tokens N] "
                         "[--window W] [--context C] [--new-tokens N] [--threads N] [--report FILE.json]\n");
            return 2;
        }
    }
    if (context < 1 || window < 2 || threads < 0) {
        std::fprintf(stderr, "smollm2_demo: --context must be >= 1, --window >= 2, --threads >= 0\n");
        return 2;
    }
    model::check_output_file(report, "--report");
    // A team of 2 (the published table's) unless the user fixed it.
    int forced = threads;
#if defined(_OPENMP)
    if (const char* e = std::getenv("OMP_NUM_THREADS"); forced == 0 && e && *e) forced = omp_get_max_threads();
#else
    forced = 1;  // no OpenMP: one thread whatever was asked
#endif
    ThreadPolicy policy(forced, std::min(2, allowed_cpus()));
#if defined(_OPENMP)
    omp_set_num_threads(policy.team());
#endif

    const io::GgufFile file(path);
    auto original = model::load_gguf(file, {.max_positions = std::max<std::int64_t>(8192, context + 1)});
    const auto tok = io::Tokenizer::from_gguf(file);
    const auto& cfg = original.config;
    const std::string lic = "/usr/share/common-licenses/";
    auto text = [&](const char* a, const char* b) {
        return tok.encode(model::read_text_file(lic + a) + "\n\n" + model::read_text_file(lic + b), false);
    };
    const auto calib_tok = text("GPL-2", "LGPL-2.1");
    const auto eval_tok = text("GPL-3", "Apache-2.0");
    const auto seqs = model::make_sequences(calib_tok, calib_seqs, calib_len);
    const std::int64_t used = std::int64_t(calib_seqs) * calib_len;
    const auto held = std::span<const std::int32_t>(calib_tok).subspan(
        std::size_t(std::min<std::int64_t>(used, std::int64_t(calib_tok.size()))),
        std::size_t(std::clamp<std::int64_t>(std::int64_t(calib_tok.size()) - used, 0, 256)));
    const double load_seconds = since(t_start);
    std::printf("SmolLM2 GQA -> MLA demo (%s)\n", path.c_str());
    std::printf("model: %d layers, hidden %d, %d query heads, %d KV heads of dim %d; original KV cache %d values "
                "per token per layer\n",
                cfg.layers, cfg.hidden, cfg.n_q, cfg.n_kv, cfg.head_dim, 2 * cfg.n_kv * cfg.head_dim);
    std::printf("calibration: %d sequences x %d tokens of %sGPL-2 + LGPL-2.1 (%zu tokens available)\n", calib_seqs,
                calib_len, lic.c_str(), calib_tok.size());
    std::printf("evaluation:  first %lld tokens of %sGPL-3 + Apache-2.0 (%zu tokens), windows of %lld\n\n",
                (long long)eval_tokens, lic.c_str(), eval_tok.size(), (long long)window);
    std::printf("No fine-tuning: each converted model is the original's weights rotated and compressed from the\n"
                "calibration statistics alone, evaluated as converted (what that means: the note after the table).\n\n");

    auto transmla = [](double rho) {
        convert::ConvertOptions o;
        o.method = convert::Method::transmla;
        o.rope_dim = 32, o.freqfold = 4, o.cache_budget = rho;
        return o;
    };
    auto output_aware = [](double rho) {
        convert::ConvertOptions o;
        o.method = convert::Method::output_aware;
        o.rope_dim = 32, o.freqfold = 4, o.cache_budget = rho;
        return o;
    };
    auto mha2mla = [&](int latent) {
        convert::ConvertOptions o;
        o.method = convert::Method::mha2mla;
        o.selection = convert::RopeSelection::two_norm, o.svd = convert::SvdMode::joint;
        o.mha2mla_rope_dims = cfg.head_dim / 8, o.mha2mla_latent_dim = latent;
        return o;
    };
    convert::ConvertOptions exact;
    exact.method = convert::Method::exact;
    const int d = cfg.head_dim;
    // The rows, in table order. A new method is one more entry (its options built like the ones
    // above); curve and generate are optional, and the plots (scripts/plot-demo.py) pick every row
    // up from the report by its method and budget.
    const std::vector<Row> rows = {
        {.method = "original (GQA)", .budget = "100%", .convert = false, .curve = true, .generate = true},
        {.method = "exact", .budget = "100%", .opt = exact},
        {.method = "TransMLA d_r=32 F=4", .budget = "50%", .opt = transmla(0.5), .curve = true, .generate = true},
        {.method = "TransMLA d_r=32 F=4", .budget = "31.25%", .opt = transmla(0.3125)},
        {.method = "OutputAware d_r=32 F=4", .budget = "50%", .opt = output_aware(0.5)},
        {.method = "OutputAware d_r=32 F=4", .budget = "31.25%", .opt = output_aware(0.3125)},
        {.method = "MHA2MLA 2-norm joint", .budget = "50%", .opt = mha2mla(d - d / 8)},             // r_m + d_kv = d
        {.method = "MHA2MLA 2-norm joint", .budget = "31.25%", .opt = mha2mla(5 * d / 8 - d / 8)},  // r_m + d_kv = 5d/8
    };
    // Decode-time curve (the third plot): the rows marked `curve` at these contexts; every other
    // row at `context` only.
    std::vector<std::int64_t> curve{512, 1024, 2048, 4096, 8192};
    if (std::find(curve.begin(), curve.end(), context) == curve.end()) curve.push_back(context), std::sort(curve.begin(), curve.end());
    const int reps = 9;

    // Greedy generation from one plain-text prompt (a text continuation: no chat template, so no
    // model is asked to end its turn), by the rows marked `generate`. A converted model generates
    // as soon as it exists, so no second model is kept.
    const std::string prompt = "Once upon a time, in a small village by the sea, there lived";
    const auto ids = tok.encode(prompt, false);
    const std::int32_t stop = cfg.eos_token;
    struct Generated {
        std::string label, text;
    };
    std::vector<Generated> generated;

    nlohmann::json jrows = nlohmann::json::array(), jcurves = nlohmann::json::array();
    std::printf("%-22s %7s %9s %10s %11s %9s %9s %12s\n", "method", "budget", "KV vals", "KV bytes", "perplexity",
                "change", "convert", "decode attn");
    std::printf("%-22s %7s %9s %10s %11s %9s %9s %12s\n", "", "", "/tok/layer", "/tok/layer", "", "", "s",
                "us/token");
    std::fflush(stdout);
    double ppl0 = 0, t_convert = 0, t_calib = 0, t_ppl = 0, t_decode = 0, t_generate = 0;
    std::map<std::string, std::vector<double>> decode_by_shape;  // rows of one shape are timed once
    std::vector<std::string> fewer_threads;
    double rows_weight = 0, rows_done_weight = 0;
    for (const auto& r : rows) rows_weight += row_seconds(r, cfg.layers);
    const auto t_rows = clock_type::now();
    for (std::size_t ri = 0; ri < rows.size(); ++ri) {
        const auto& r = rows[ri];
        const int nt = policy.choose();
        // The label of this row's progress: its place, the whole demo's ETA (rough costs scaled
        // by the speed seen so far), the row.
        std::string name = "[" + std::to_string(ri + 1) + "/" + std::to_string(rows.size());
        if (rows_done_weight > 0)
            name += ", demo ETA " + model::Progress::format_seconds(since(t_rows) / rows_done_weight *
                                                                     (rows_weight - rows_done_weight));
        name += "] " + r.method + " " + r.budget;
        if (nt != policy.team()) name += " (" + std::to_string(nt) + " thread" + (nt == 1 ? "" : "s") + ", CPUs busy)";
        model::ModelConversion conv;
        const model::Model* m = &original;
        if (r.convert) {
            model::Progress p(name + ": convert", conversion_steps(r.opt, cfg.layers));
            conv = model::convert_model(original, seqs, r.opt, p.callback(), held);
            p.finish();
            m = &conv.model;
            t_convert += conv.total_seconds;
            t_calib += conv.calibration_seconds;
        }
        model::PerplexityResult pr;
        {
            const std::int64_t n = eval_tokens > 0 ? std::min<std::int64_t>(eval_tokens, std::int64_t(eval_tok.size()))
                                                   : std::int64_t(eval_tok.size());
            model::Progress p(name + ": perplexity", (n + window - 2) / window);  // windows of >= 2 tokens
            pr = model::perplexity(*m, eval_tok, window, eval_tokens, [&](std::int64_t, std::int64_t) { p.step(); });
            p.finish();
            t_ppl += pr.seconds;
        }
        if (!r.convert) ppl0 = pr.perplexity;
        // Decode timing: the curve or one context; once per shape.
        const auto t_dec = clock_type::now();
        std::string key;
        for (const auto& L : m->layers) key += shape_key(L.attn) + ";";
        key += r.curve ? "curve" : std::to_string(context);
        auto it = decode_by_shape.find(key);
        const bool shared = it != decode_by_shape.end();
        if (!shared)
            it = decode_by_shape
                     .emplace(key, decode_seconds(*m, r.curve ? curve : std::vector<std::int64_t>{context}, reps,
                                                  name + ": decode timing"))
                     .first;
        const std::vector<double>& dec = it->second;
        const double attn = r.curve ? dec[std::size_t(std::find(curve.begin(), curve.end(), context) - curve.begin())]
                                    : dec.front();
        const double vals = double(m->cache_values_per_token()) / cfg.layers;
        if (r.curve) {
            nlohmann::json us = nlohmann::json::array();
            for (const double s : dec) us.push_back(s * 1e6);
            jcurves.push_back({{"method", r.method},
                               {"budget", r.budget},
                               {"attention", model::attention_kind(m->layers.front().attn)},
                               {"kv_values_per_token_per_layer", vals},
                               {"us_per_token", us}});
        }
        t_decode += since(t_dec);
        if (r.generate) {
            const auto t_gen = clock_type::now();
            const auto g = model::generate_greedy(*m, ids, new_tokens, stop);
            char label[160];
            std::snprintf(label, sizeof label, "%s %s (%.0f values/token/layer)", r.method.c_str(), r.budget.c_str(),
                          vals);
            generated.push_back({label, one_line(tok.decode(g, true))});
            t_generate += since(t_gen);
        }
        if (nt != policy.team()) fewer_threads.push_back(r.method + " " + r.budget);
        std::printf("%-22s %7s %9.0f %10.0f %10.4f%s %+8.2f%% %9.2f %12.1f%s\n", r.method.c_str(), r.budget.c_str(),
                    vals, 4 * vals, pr.perplexity, nt != policy.team() ? "*" : " ", 100 * (pr.perplexity / ppl0 - 1),
                    r.convert ? conv.total_seconds : 0.0, attn * 1e6, shared ? " (=)" : "");
        std::fflush(stdout);
        nlohmann::json j{{"method", r.method},
                         {"budget", r.budget},
                         {"attention", model::attention_kind(m->layers.front().attn)},
                         {"options", model::to_json(r.opt)},
                         {"kv_values_per_token_per_layer", vals},
                         {"kv_bytes_per_token_per_layer_fp32", 4 * vals},
                         {"kv_bytes_per_token_fp32", 4 * vals * cfg.layers},
                         {"perplexity", model::to_json(pr)},
                         {"perplexity_change", model::json_number(pr.perplexity / ppl0 - 1)},
                         {"decode_attention_us_per_token", attn * 1e6},
                         {"decode_context", context},
                         {"decode_timing_shared", shared},
                         {"threads", nt}};
        if (r.convert) j["conversion"] = model::to_json(conv);
        jrows.push_back(std::move(j));
        rows_done_weight += row_seconds(r, cfg.layers);
    }
    std::printf("\nKV bytes: fp32 cache as this implementation stores it (halve for fp16/bf16). Decode attention: "
                "one token's attention blocks of all %d layers (projections, RoPE, cache append, attention) at "
                "%lld cached tokens, per layer the median of %d steps (wall clock; (=): same shapes as a row above, "
                "timed once). MHA2MLA rows: this implementation decompresses the cached latents of every past token "
                "at each decode step (no absorbed MHA2MLA kernel), so their decode time reflects that, not the "
                "method.\n",
                cfg.layers, (long long)context, reps);
    if (policy.forced())
        std::printf("Threads: %d, as set by %s; the published table used 2, and the last digit may differ.\n",
                    policy.team(), threads > 0 ? "--threads" : "OMP_NUM_THREADS");
    else if (!fewer_threads.empty())
        std::printf("*: run on fewer than %d threads because other programs kept the CPUs busy (%zu rows): the "
                    "last digit can differ from the %d-thread table (rounding order), and decode times are not "
                    "comparable.\n",
                    policy.team(), fewer_threads.size(), policy.team());
    std::printf("\nWhat these numbers are: conversions WITHOUT fine-tuning. Exact mode reproduces the original (same\n"
                "perplexity, same cache). The compressed rows are the training-free starting points: their\n"
                "perplexity rises because the conversion alone discards information (TransMLA about doubles it at\n"
                "half the cache; MHA2MLA, an initialisation meant for fine-tuning, loses far more). The published\n"
                "methods recover most of that loss with a short fine-tune, which this demo does not run.\n\n");

    std::printf("greedy generation, %d new tokens, prompt: \"%s\"\n", new_tokens, prompt.c_str());
    const std::size_t w = 50;
    for (std::size_t g = 0; g < generated.size(); g += 2) {  // two columns at a time
        const bool two = g + 1 < generated.size();
        const auto l0 = wrap(generated[g].text, w), l1 = two ? wrap(generated[g + 1].text, w) : std::vector<std::string>{};
        std::printf("  %-*s | %s\n", int(w), generated[g].label.c_str(), two ? generated[g + 1].label.c_str() : "");
        std::printf("  %s-+-%s\n", std::string(w, '-').c_str(), std::string(w, '-').c_str());
        for (std::size_t i = 0; i < std::max(l0.size(), l1.size()); ++i)
            std::printf("  %-*s | %s\n", int(w), i < l0.size() ? l0[i].c_str() : "", i < l1.size() ? l1[i].c_str() : "");
    }

    nlohmann::json jgen = nlohmann::json::array();
    for (const auto& g : generated) jgen.push_back({{"label", g.label}, {"text", g.text}});
    const double total = since(t_start);
    std::printf("\ntime: %.0f s = load and tokenize %.1f s, conversions %.1f s (of which calibration passes %.1f s), "
                "perplexity %.1f s, decode timing %.1f s, generation %.1f s, other %.1f s\n",
                total, load_seconds, t_convert, t_calib, t_ppl, t_decode, t_generate,
                total - load_seconds - t_convert - t_ppl - t_decode - t_generate);
    nlohmann::json out{{"model", path},
                       {"machine", machine_json()},
                       {"calibration", {{"files", {lic + "GPL-2", lic + "LGPL-2.1"}}, {"sequences", calib_seqs}, {"length", calib_len}}},
                       {"evaluation", {{"files", {lic + "GPL-3", lic + "Apache-2.0"}}, {"max_tokens", eval_tokens}, {"window", window}}},
                       {"layers", cfg.layers},
                       {"fine_tuned", false},
                       {"threads", {{"team", policy.team()}, {"forced", policy.forced()}, {"rows_on_fewer", fewer_threads}}},
                       {"rows", jrows},
                       {"decode_curve", {{"contexts", curve}, {"reps", reps}, {"curves", jcurves}}},
                       {"generation", {{"prompt", prompt}, {"new_tokens", new_tokens}, {"outputs", jgen}}},
                       {"seconds",
                        {{"total", total},
                         {"load_and_tokenize", load_seconds},
                         {"conversions", t_convert},
                         {"calibration_passes", t_calib},
                         {"perplexity", t_ppl},
                         {"decode_timing", t_decode},
                         {"generation", t_generate}}}};
    model::write_json_file(report, out);
    std::printf("report: %s\n", report.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "smollm2_demo: error: %s\n", e.what());
    return 1;
}
