// convert_model — converts every attention layer of a Llama-family GGUF model (default:
// SmolLM2-135M-Instruct) from GQA to MLA, evaluates the perplexity before and after, and writes a
// JSON report (per-layer conversion report, perplexities, KV bytes per token, timings).
//
//   convert_model [--model FILE.gguf] [--method transmla|mha2mla|exact]
//                 [--budget RHO | --rank R] [--rope-dim D_R] [--freqfold F] [--no-balance]
//                 [--selection high|low|uniform|two_norm] [--svd joint|split]
//                 [--rope-dims R_M] [--latent-dim D_KV]
//                 [--calib FILE]... [--calib-seqs N] [--calib-len L]
//                 [--eval FILE]... [--eval-tokens N] [--window W] [--report OUT.json]
//
// Defaults: TransMLA at 50% of the original cache, d_r = 32, F = 4; calibration on 16 × 256
// tokens of /usr/share/common-licenses/GPL-2 + LGPL-2.1, evaluation on the first 10000 tokens of
// GPL-3 + Apache-2.0 + MPL-2.0 in windows of 512 (disjoint files; give others with --calib / --eval).
// MHA2MLA budgets: --budget RHO sets d_kv = RHO·2·d − r_m per KV head (r_m = --rope-dims, d/8 by
// default) unless --latent-dim is given.
#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/perplexity.hpp"
#include "transmla/model/report.hpp"

#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

using namespace transmla;

namespace {

struct Args {
    std::string model = model::default_model_path();
    convert::ConvertOptions opt;
    double budget = 0.5;
    std::vector<std::string> calib, eval;
    int calib_seqs = 16, calib_len = 256;
    std::int64_t eval_tokens = 10000, window = 512;
    std::string report = "convert_report.json";
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "convert_model: %s\n"
                 "usage: convert_model [--model FILE.gguf] [--method transmla|mha2mla|exact] [--budget RHO | --rank R]\n"
                 "                     [--rope-dim D_R] [--freqfold F] [--no-balance] [--selection high|low|uniform|two_norm]\n"
                 "                     [--svd joint|split] [--rope-dims R_M] [--latent-dim D_KV] [--calib FILE]...\n"
                 "                     [--calib-seqs N] [--calib-len L] [--eval FILE]... [--eval-tokens N] [--window W]\n"
                 "                     [--report OUT.json]\n",
                 msg);
    std::exit(2);
}

Args parse(int argc, char** argv) {
    Args a;
    a.opt.method = convert::Method::transmla;
    a.opt.rope_dim = 32;
    a.opt.freqfold = 4;
    bool rank_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value after " + k).c_str());
            return argv[++i];
        };
        auto num = [&]() -> double {
            const std::string v = val();
            char* end = nullptr;
            const double x = std::strtod(v.c_str(), &end);
            if (end == v.c_str() || *end) usage(("not a number after " + k + ": " + v).c_str());
            return x;
        };
        if (k == "--model") a.model = val();
        else if (k == "--method") {
            const std::string m = val();
            if (m == "transmla") a.opt.method = convert::Method::transmla;
            else if (m == "mha2mla") a.opt.method = convert::Method::mha2mla;
            else if (m == "exact") a.opt.method = convert::Method::exact;
            else usage(("unknown method " + m).c_str());
        } else if (k == "--budget") a.budget = num();
        else if (k == "--rank") a.opt.rank = int(num()), rank_given = true;
        else if (k == "--rope-dim") a.opt.rope_dim = int(num());
        else if (k == "--freqfold") a.opt.freqfold = int(num());
        else if (k == "--no-balance") a.opt.balance = false;
        else if (k == "--selection") {
            const std::string s = val();
            if (s == "high") a.opt.selection = convert::RopeSelection::high;
            else if (s == "low") a.opt.selection = convert::RopeSelection::low;
            else if (s == "uniform") a.opt.selection = convert::RopeSelection::uniform;
            else if (s == "two_norm") a.opt.selection = convert::RopeSelection::two_norm;
            else usage(("unknown selection " + s).c_str());
        } else if (k == "--svd") {
            const std::string s = val();
            if (s == "joint") a.opt.svd = convert::SvdMode::joint;
            else if (s == "split") a.opt.svd = convert::SvdMode::split;
            else usage(("unknown svd mode " + s).c_str());
        } else if (k == "--rope-dims") a.opt.mha2mla_rope_dims = int(num());
        else if (k == "--latent-dim") a.opt.mha2mla_latent_dim = int(num());
        else if (k == "--calib") a.calib.push_back(val());
        else if (k == "--calib-seqs") a.calib_seqs = int(num());
        else if (k == "--calib-len") a.calib_len = int(num());
        else if (k == "--eval") a.eval.push_back(val());
        else if (k == "--eval-tokens") a.eval_tokens = std::int64_t(num());
        else if (k == "--window") a.window = std::int64_t(num());
        else if (k == "--report") a.report = val();
        else if (k == "--help" || k == "-h") usage("help");
        else usage(("unknown option " + k).c_str());
    }
    if (a.calib.empty()) a.calib = {"/usr/share/common-licenses/GPL-2", "/usr/share/common-licenses/LGPL-2.1"};
    if (a.eval.empty())
        a.eval = {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
                  "/usr/share/common-licenses/MPL-2.0"};
    if (!rank_given) a.opt.cache_budget = a.budget;
    return a;
}

std::vector<std::int32_t> tokenize_files(const io::Tokenizer& tok, const std::vector<std::string>& files) {
    std::string all;
    for (const auto& f : files) {
        if (!all.empty()) all += "\n\n";
        all += model::read_text_file(f);
    }
    return tok.encode(all, false);
}

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// CPU seconds used by this process so far (all threads): with wall time it shows how much of a
/// run the machine actually gave it.
double cpu_now() { return double(std::clock()) / CLOCKS_PER_SEC; }

}  // namespace

int main(int argc, char** argv) try {
    Args a = parse(argc, argv);
    const auto t_load = std::chrono::steady_clock::now();
    const io::GgufFile file(a.model);
    const auto original = model::load_gguf(file);
    const auto tok = io::Tokenizer::from_gguf(file);
    const double load_s = since(t_load);
    const auto& cfg = original.config;
    std::printf("model %s: %d layers, hidden %d, %d query / %d KV heads of %d, loaded in %.2f s\n", a.model.c_str(),
                cfg.layers, cfg.hidden, cfg.n_q, cfg.n_kv, cfg.head_dim, load_s);
    if (a.opt.method == convert::Method::mha2mla && a.opt.mha2mla_latent_dim == 0) {
        const int rm = a.opt.mha2mla_rope_dims ? a.opt.mha2mla_rope_dims : std::max(2, cfg.head_dim / 8);
        a.opt.mha2mla_rope_dims = rm;
        a.opt.mha2mla_latent_dim = int(std::lround(a.budget * 2 * cfg.head_dim)) - rm;
        require(a.opt.mha2mla_latent_dim > 0, "--budget ", a.budget, " leaves no latent dims after r_m = ", rm);
    }

    const auto calib_tokens = tokenize_files(tok, a.calib);
    const auto eval_tokens = tokenize_files(tok, a.eval);
    const auto seqs = model::make_sequences(calib_tokens, a.calib_seqs, a.calib_len);
    const std::int64_t used = std::int64_t(a.calib_seqs) * a.calib_len;
    // Held-out tokens for the per-layer attention error: the calibration text after the used part.
    std::span<const std::int32_t> held;
    if (std::int64_t(calib_tokens.size()) >= used + 64)
        held = std::span<const std::int32_t>(calib_tokens).subspan(std::size_t(used),
                                                                 std::size_t(std::min<std::int64_t>(256, std::int64_t(calib_tokens.size()) - used)));
    std::printf("calibration: %d x %d tokens of", a.calib_seqs, a.calib_len);
    for (const auto& f : a.calib) std::printf(" %s", f.c_str());
    std::printf(" (%zu tokens)\nevaluation: first %lld tokens of", calib_tokens.size(), (long long)a.eval_tokens);
    for (const auto& f : a.eval) std::printf(" %s", f.c_str());
    std::printf(" (%zu tokens), windows of %lld\n", eval_tokens.size(), (long long)a.window);

    const double cpu0 = cpu_now();
    const auto conv = model::convert_model(original, seqs, a.opt, [](const std::string& s) {
        std::printf("  %s\n", s.c_str());
        std::fflush(stdout);
    }, held);
    const double conv_cpu = cpu_now() - cpu0;
    std::printf("conversion: %.2f s wall, %.2f s CPU (calibration %.2f s in %d passes, conversion maths %.2f s)\n",
                conv.total_seconds, conv_cpu, conv.calibration_seconds, conv.calibration_passes, conv.conversion_seconds);

    double c0 = cpu_now();
    const auto p0 = model::perplexity(original, eval_tokens, a.window, a.eval_tokens);
    const double p0_cpu = cpu_now() - c0;
    std::printf("perplexity original:  %.4f (%lld tokens, %.2f s wall, %.2f s CPU)\n", p0.perplexity,
                (long long)p0.predicted, p0.seconds, p0_cpu);
    c0 = cpu_now();
    const auto p1 = model::perplexity(conv.model, eval_tokens, a.window, a.eval_tokens);
    const double p1_cpu = cpu_now() - c0;
    std::printf("perplexity converted: %.4f (%+.2f%%, %.2f s wall, %.2f s CPU)\n", p1.perplexity,
                100 * (p1.perplexity / p0.perplexity - 1), p1.seconds, p1_cpu);
    const double kv0 = double(original.cache_values_per_token()) / cfg.layers;
    const double kv1 = double(conv.model.cache_values_per_token()) / cfg.layers;
    std::printf("KV cache per token per layer: %.0f -> %.0f values (%.0f -> %.0f bytes in fp32, %.2f%%)\n", kv0, kv1,
                4 * kv0, 4 * kv1, 100 * kv1 / kv0);

    nlohmann::json j;
    j["model"] = {{"path", a.model},
                  {"name", cfg.name},
                  {"layers", cfg.layers},
                  {"hidden", cfg.hidden},
                  {"n_q", cfg.n_q},
                  {"n_kv", cfg.n_kv},
                  {"head_dim", cfg.head_dim},
                  {"load_seconds", load_s}};
    j["options"] = model::to_json(a.opt);
    j["calibration"] = {{"files", a.calib},
                        {"sequences", a.calib_seqs},
                        {"sequence_length", a.calib_len},
                        {"held_out_tokens", held.size()}};
    j["evaluation"] = {{"files", a.eval}, {"max_tokens", a.eval_tokens}, {"window", a.window}};
    j["conversion"] = model::to_json(conv);
    j["conversion"]["cpu_seconds"] = conv_cpu;
    auto jp0 = model::to_json(p0), jp1 = model::to_json(p1);
    jp0["cpu_seconds"] = p0_cpu, jp1["cpu_seconds"] = p1_cpu;
    j["perplexity"] = {{"original", jp0},
                       {"converted", jp1},
                       {"relative_change", model::json_number(p1.perplexity / p0.perplexity - 1)}};
    j["kv_cache_per_token_per_layer"] = {{"values_original", kv0},
                                         {"values_converted", kv1},
                                         {"bytes_fp32_original", 4 * kv0},
                                         {"bytes_fp32_converted", 4 * kv1},
                                         {"bytes_bf16_original", 2 * kv0},
                                         {"bytes_bf16_converted", 2 * kv1},
                                         {"fraction", kv1 / kv0}};
    model::write_json_file(a.report, j);
    std::printf("report: %s\n", a.report.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "convert_model: error: %s\n", e.what());
    return 1;
}
