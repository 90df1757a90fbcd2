// convert_model (installed as transmla-convert) — converts every attention layer of a
// Llama-family GGUF model (default: SmolLM2-135M-Instruct) from GQA to MLA, evaluates the
// perplexity before and after, writes a JSON report (per-layer conversion report, perplexities,
// KV bytes per token, timings) and, with --out, the converted model for stock engines: a
// llama.cpp `deepseek2` GGUF (FILE.gguf) or a Hugging Face DeepSeek-V3 directory.
//
//   convert_model --help     (every option, its type, range and default)
//
// Options are parsed with CLI11 and checked before any work: values, ranges, input files (they
// must exist and be UTF-8 text without NUL bytes), the report's directory (it must exist and be
// writable), the model and the options against its shapes. A mistake fails in seconds, not after
// the calibration.
//
// Defaults: TransMLA at 50% of the original cache, d_r = 32, F = 4; calibration on 16 × 256
// tokens of /usr/share/common-licenses/GPL-2 + LGPL-2.1, evaluation on the first 10000 tokens of
// GPL-3 + Apache-2.0 + MPL-2.0 in windows of 512 (disjoint files; give others with --calib / --eval).
// MHA2MLA budgets: --budget RHO sets d_kv = RHO·2·d − r_m per KV head (r_m = --rope-dims, d/8 by
// default) unless --latent-dim is given.
#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/export_gguf.hpp"
#include "transmla/model/export_hf.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/perplexity.hpp"
#include "transmla/model/report.hpp"

#include <CLI/CLI.hpp>

#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
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
    std::string out, format, dtype = "f32", hf_engine = "transformers";
};

/// An option transform that accepts exactly the names of `m` (help and errors list them).
template <class E>
CLI::Validator names_of(const std::map<std::string, E>& m) {
    std::map<std::string, std::string> as_int;
    std::string list;
    for (const auto& [k, v] : m) {
        as_int[k] = std::to_string(static_cast<int>(v));
        list += (list.empty() ? "" : "|") + k;
    }
    CLI::Validator t(
        [as_int, list](std::string& in) -> std::string {
            const auto it = as_int.find(in);
            if (it == as_int.end()) return "'" + in + "' is not one of " + list;
            in = it->second;
            return {};
        },
        "{" + list + "}");
    return t;
}

/// Parses and checks the command line: every option is typed and range-checked, every input file
/// must exist and be readable. Returns the exit code of --help or of an error, or -1 to go on.
int parse(int argc, char** argv, Args& a) {
    a.opt.method = convert::Method::transmla;
    a.opt.rope_dim = 32;
    a.opt.freqfold = 4;
    CLI::App app{"Converts the attention layers of a Llama-family GGUF model from GQA to MLA, evaluates the "
                 "perplexity before and after, and writes a JSON report.",
                 "convert_model"};
    app.get_formatter()->column_width(34);
    const std::map<std::string, convert::Method> methods{
        {"transmla", convert::Method::transmla}, {"mha2mla", convert::Method::mha2mla}, {"exact", convert::Method::exact},
        {"output_aware", convert::Method::output_aware}};
    const std::map<std::string, convert::RopeSelection> selections{{"high", convert::RopeSelection::high},
                                                                   {"low", convert::RopeSelection::low},
                                                                   {"uniform", convert::RopeSelection::uniform},
                                                                   {"two_norm", convert::RopeSelection::two_norm}};
    const std::map<std::string, convert::SvdMode> svds{
        {"joint", convert::SvdMode::joint}, {"split", convert::SvdMode::split}, {"per_head", convert::SvdMode::per_head}};
    app.add_option("--model", a.model, "the GGUF model to convert ($TRANSMLA_MODEL or the fetched SmolLM2 by default)")
        ->check(CLI::ExistingFile)
        ->capture_default_str();
    app.add_option("--method", a.opt.method, "conversion method")
        ->transform(names_of(methods))
        ->default_str("transmla");
    auto* budget = app.add_option("--budget", a.budget, "KV cache size as a fraction of the original, in (0, 1)")
                       ->check(CLI::Range(0.0, 1.0))
                       ->capture_default_str();
    auto* rank = app.add_option("--rank", a.opt.rank, "latent rank r (instead of --budget)")->check(CLI::PositiveNumber);
    budget->excludes(rank);
    app.add_option("--rope-dim", a.opt.rope_dim, "d_r: dimensions that keep RoPE (transmla)")
        ->check(CLI::Range(2, 1 << 16))
        ->capture_default_str();
    app.add_option("--freqfold", a.opt.freqfold, "F: RoPE frequencies folded together (transmla)")
        ->check(CLI::Range(1, 1 << 16))
        ->capture_default_str();
    app.add_option("--logit-weight", a.opt.logit_weight, "kappa: logit against value error (output_aware)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_flag("--no-balance{false}", a.opt.balance, "no key/value balancing before the joint PCA (transmla)");
    app.add_option("--selection", a.opt.selection, "which RoPE pairs MHA2MLA keeps")
        ->transform(names_of(selections))
        ->default_str("two_norm");
    app.add_option("--svd", a.opt.svd, "MHA2MLA SVD of keys and values: joint/split over all KV heads, per_head")
        ->transform(names_of(svds))
        ->default_str("joint");
    app.add_option("--rope-dims", a.opt.mha2mla_rope_dims, "r_m: RoPE dimensions MHA2MLA keeps (default d/8)")
        ->check(CLI::Range(2, 1 << 16));
    app.add_option("--latent-dim", a.opt.mha2mla_latent_dim, "d_kv: MHA2MLA latent size per KV head (default from --budget)")
        ->check(CLI::PositiveNumber);
    app.add_option("--calib", a.calib, "calibration text files (UTF-8; default GPL-2 + LGPL-2.1)")
        ->check(CLI::ExistingFile);
    app.add_option("--calib-seqs", a.calib_seqs, "calibration sequences")->check(CLI::Range(1, 1 << 20))->capture_default_str();
    app.add_option("--calib-len", a.calib_len, "tokens per calibration sequence")
        ->check(CLI::Range(2, 1 << 20))
        ->capture_default_str();
    app.add_option("--eval", a.eval, "evaluation text files (UTF-8; default GPL-3 + Apache-2.0 + MPL-2.0)")
        ->check(CLI::ExistingFile);
    app.add_option("--eval-tokens", a.eval_tokens, "tokens evaluated")
        ->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 40))
        ->capture_default_str();
    app.add_option("--window", a.window, "perplexity window")
        ->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 24))
        ->capture_default_str();
    app.add_option("--report", a.report, "the JSON report to write (atomically)")->capture_default_str();
    app.add_option("--out", a.out,
                   "write the converted model for stock engines: FILE.gguf (llama.cpp deepseek2) or a directory "
                   "(Hugging Face DeepSeek-V3, for transformers / vLLM / SGLang)");
    app.add_option("--format", a.format, "output format (default: from the --out name)")
        ->check(CLI::IsMember({"gguf", "hf"}));
    app.add_option("--dtype", a.dtype, "storage type of the exported matrices (hf: f32 or bf16)")
        ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}))
        ->capture_default_str();
    app.add_option("--hf-engine", a.hf_engine,
                   "engine a Hugging Face directory is for: its latent-norm epsilon (transformers: 1e-6; vllm, "
                   "also SGLang: rms_norm_eps)")
        ->check(CLI::IsMember({"transformers", "vllm"}))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    if (a.calib.empty()) a.calib = {"/usr/share/common-licenses/GPL-2", "/usr/share/common-licenses/LGPL-2.1"};
    if (a.eval.empty())
        a.eval = {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
                  "/usr/share/common-licenses/MPL-2.0"};
    if (rank->count() == 0) a.opt.cache_budget = a.budget;
    return -1;
}

/// The texts, read and checked (existing, non-empty, UTF-8, no NUL) before any work.
std::string read_texts(const std::vector<std::string>& files) {
    std::string all;
    for (const auto& f : files) {
        if (!all.empty()) all += "\n\n";
        all += model::read_text_file(f);
    }
    return all;
}

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// CPU seconds used by this process so far (all threads): with wall time it shows how much of a
/// run the machine actually gave it.
double cpu_now() { return double(std::clock()) / CLOCKS_PER_SEC; }

}  // namespace

int main(int argc, char** argv) try {
    Args a;
    if (const int rc = parse(argc, argv, a); rc >= 0) return rc;
    // Everything that can be checked is checked before the first long step (calibration), so a
    // mistake costs seconds: the output path, the texts, the model, and the options against it.
    model::check_output_file(a.report, "--report");
    const std::string calib_text = read_texts(a.calib), eval_text = read_texts(a.eval);
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
        // Cache per token n_kv·(r_m + d_kv) (joint, per_head) or n_kv·(r_m + 2·d_kv) (split).
        const int left = int(std::lround(a.budget * 2 * cfg.head_dim)) - rm;
        a.opt.mha2mla_latent_dim = a.opt.svd == convert::SvdMode::split ? left / 2 : left;
        require(a.opt.mha2mla_latent_dim > 0, "--budget ", a.budget, " leaves no latent dims after r_m = ", rm);
    }
    model::validate_conversion(original, a.opt);
    // The export's own refusals, before any work: what stock DeepSeek code cannot express.
    bool hf_out = false;
    if (!a.out.empty()) {
        hf_out = a.format.empty() ? !(a.out.size() > 5 && a.out.substr(a.out.size() - 5) == ".gguf") : a.format == "hf";
        if (hf_out) {
            require(a.dtype == "f32" || a.dtype == "bf16", "--dtype ", a.dtype, " is not available for a Hugging Face "
                    "directory: allowed values are f32, bf16 (the scaled latent is below f16's range)");
            model::check_output_file(a.out + ".probe", "--out");  // the parent directory exists and is writable
        } else {
            model::check_output_file(a.out, "--out");
        }
        require(a.opt.method != convert::Method::mha2mla, "--out: an MHA2MLA model keeps a RoPE key per KV head, each with its own "
                "frequencies, which stock DeepSeek code (one shared RoPE key) cannot run; export --method transmla or exact");
        for (std::size_t l = 0; l < original.layers.size(); ++l)
            require(std::get<model::GqaAttention>(original.layers[l].attn).bqkv.size() == 0, "--out: layer ", l,
                    " of the model has q/k/v biases (a Qwen2-style model); stock DeepSeek code has no attention biases, "
                    "so the converted model cannot be exported to it");
        require(a.opt.method != convert::Method::exact || cfg.n_kv == 1, "--out: an exact conversion of a model "
                "with ", cfg.n_kv, " KV heads repeats every RoPE frequency ", cfg.n_kv, " times, which stock DeepSeek "
                "code (one geometric RoPE table) cannot express; use --method transmla");
    }

    const auto calib_tokens = tok.encode(calib_text, false);
    const auto eval_tokens = tok.encode(eval_text, false);
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
    if (!a.out.empty()) {
        const auto t_out = std::chrono::steady_clock::now();
        const auto dt = model::parse_export_dtype(a.dtype);
        if (hf_out) {
            model::HfExportOptions ho;
            ho.dtype = dt;
            ho.engine = a.hf_engine == "vllm" ? model::HfEngine::vllm : model::HfEngine::transformers;
            model::write_deepseek_v3_dir(conv.model, a.out, ho);
        } else {
            model::write_deepseek2_gguf(conv.model, file, a.out, dt);
        }
        std::printf("wrote %s (%s, %s) in %.2f s\n", a.out.c_str(), hf_out ? "Hugging Face DeepSeek-V3" : "GGUF deepseek2",
                    a.dtype.c_str(), since(t_out));
        j["output"] = {{"path", a.out}, {"format", hf_out ? "hf" : "gguf"}, {"dtype", a.dtype}};
    }
    model::write_json_file(a.report, j);
    std::printf("report: %s\n", a.report.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "convert_model: error: %s\n", e.what());
    return 1;
}
