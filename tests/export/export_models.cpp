// export_models OUTDIR [--chunks N] [--ctx N] — writes the models the engine test
// (tests/export/run_export.sh) runs in stock llama.cpp, with this library's own numbers for them:
//   eval.txt            the evaluation text (GPL-3), exactly as scored here
//   original.gguf       SmolLM2 as written by this library's writer: `llama`, F32
//   mqa.gguf            SmolLM2 with its 3 KV heads averaged into one (an MQA model), `llama`, F32
//   mqa-exact.gguf      mqa converted with --method exact, `deepseek2`, F32: the same function
//   transmla50.gguf     SmolLM2, TransMLA at 50 % of the cache (d_r 32, F 4), `deepseek2`, F32
//   transmla31.gguf     the same at 31.25 %
//   output_aware50.gguf SmolLM2, the output-aware method at 50 % (d_r 32, F 4), `deepseek2`, F32
//   transmla50-hf/      transmla50 as a Hugging Face DeepSeek-V3 directory (transformers' ε)
//   transmla50.logits.f32, tokens.txt   this library's logits [T][vocab] of those T tokens
//   reference.json      this library's perplexity of each model, scored as llama-perplexity scores
//                       (windows of --ctx tokens, BOS first when the model asks for it, only the
//                       second half of each window), and the round-trip errors
// Exact conversions of models with more than one KV head cannot be written as stock DeepSeek
// (every RoPE frequency repeats once per KV head; stock code has one geometric table), hence the
// MQA variant for the exact check. Round trip: every deepseek2 file is read back by
// load_deepseek2_gguf and must reproduce the in-memory model's logits to 1e-4 of the largest logit
// (fp32 rounding through 30 layers: the folded softmax scale rounds every query weight once); a
// miss exits non-zero.
#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/export_gguf.hpp"
#include "transmla/model/export_hf.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/perplexity.hpp"
#include "transmla/model/report.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace transmla;

namespace {

/// llama-perplexity's score: windows of n_ctx tokens; position 0 of each becomes BOS when `bos`
/// >= 0; the logits of positions n_ctx/2 .. n_ctx−2 predict the next token.
double llama_style_perplexity(const model::Model& m, std::vector<std::int32_t> tokens, int n_ctx, int chunks,
                              int bos) {
    double nll = 0;
    std::int64_t count = 0;
    const int first = n_ctx / 2;
    for (int i = 0; i < chunks; ++i) {
        std::vector<std::int32_t> w(tokens.begin() + std::ptrdiff_t(i) * n_ctx,
                                    tokens.begin() + std::ptrdiff_t(i + 1) * n_ctx);
        const std::vector<std::int32_t> target = w;
        if (bos >= 0) w[0] = bos;
        auto cache = m.make_cache(n_ctx);
        const auto logits = m.forward(w, cache);
        for (int j = first; j < n_ctx - 1; ++j) {
            const auto row = logits.row(j);
            const double mx = row.maxCoeff();
            double s = 0;
            for (Eigen::Index v = 0; v < row.size(); ++v) s += std::exp(double(row[v]) - mx);
            nll += std::log(s) + mx - double(row[target[std::size_t(j + 1)]]);
            ++count;
        }
    }
    return std::exp(nll / double(count));
}

double rel_diff(const model::Model& a, const model::Model& b, const std::vector<std::int32_t>& tok) {
    auto ca = a.make_cache(std::int64_t(tok.size())), cb = b.make_cache(std::int64_t(tok.size()));
    const auto la = a.forward(tok, ca), lb = b.forward(tok, cb);
    return double((la - lb).cwiseAbs().maxCoeff()) / double(lb.cwiseAbs().maxCoeff());
}

/// SmolLM2 with its KV heads averaged into one: a real-weight MQA model.
model::Model merge_kv_heads(model::Model m) {
    const int nq = m.config.n_q, nkv = m.config.n_kv, d = m.config.head_dim, D = m.config.hidden;
    for (auto& L : m.layers) {
        auto& a = std::get<model::GqaAttention>(L.attn);
        model::RowMatrixXf w(Eigen::Index(nq + 2) * d, D);
        w.topRows(Eigen::Index(nq) * d) = a.wqkv.topRows(Eigen::Index(nq) * d);
        for (int part = 0; part < 2; ++part) {
            model::RowMatrixXf s = model::RowMatrixXf::Zero(d, D);
            for (int h = 0; h < nkv; ++h) s += a.wqkv.middleRows(Eigen::Index(nq + part * nkv + h) * d, d);
            w.middleRows(Eigen::Index(nq + part) * d, d) = s / float(nkv);
        }
        a.wqkv = std::move(w);
        a.n_kv = 1;
    }
    m.config.n_kv = 1;
    m.validate();
    return m;
}

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) try {
    require(argc >= 2, "usage: export_models OUTDIR [--chunks N] [--ctx N] [--calib-seqs N]");
    const std::filesystem::path out = argv[1];
    int chunks = 4, n_ctx = 512, calib_seqs = 16, hf_tokens = 256;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string k = argv[i];
        const int v = std::atoi(argv[i + 1]);
        require(v > 0, "export_models: ", k, " needs a positive value");
        if (k == "--chunks") chunks = v;
        else if (k == "--ctx") n_ctx = v;
        else if (k == "--calib-seqs") calib_seqs = v;
        else if (k == "--hf-tokens") hf_tokens = v;
        else fail("export_models: unknown option ", k);
    }
    std::filesystem::create_directories(out);
    const auto t0 = std::chrono::steady_clock::now();
    const io::GgufFile file(model::default_model_path());
    const auto original = model::load_gguf(file);
    const auto tok = io::Tokenizer::from_gguf(file);
    const int bos = file.meta_bool_or("tokenizer.ggml.add_bos_token", false) ? tok.bos_id() : -1;
    const std::string eval_text = model::read_text_file("/usr/share/common-licenses/GPL-3");
    {
        std::ofstream f(out / "eval.txt", std::ios::binary);
        f << eval_text;
        require(f.good(), "export_models: cannot write ", (out / "eval.txt").string());
    }
    const auto eval_tokens = tok.encode(eval_text, true);
    require(std::int64_t(eval_tokens.size()) >= std::int64_t(chunks) * n_ctx, "export_models: eval text has only ",
            eval_tokens.size(), " tokens");
    const auto calib_text = model::read_text_file("/usr/share/common-licenses/GPL-2") + "\n\n" +
                            model::read_text_file("/usr/share/common-licenses/LGPL-2.1");
    const auto seqs = model::make_sequences(tok.encode(calib_text, false), calib_seqs, 256);
    const std::vector<std::int32_t> probe(eval_tokens.begin(), eval_tokens.begin() + 64);
    const auto path = [&](const char* n) { return (out / n).string(); };

    nlohmann::json j;
    j["eval"] = {{"file", path("eval.txt")}, {"tokens", eval_tokens.size()}, {"ctx", n_ctx}, {"chunks", chunks},
                 {"bos", bos}};
    bool ok = true;
    auto record = [&](const std::string& name, const model::Model& m, const char* gguf, double roundtrip) {
        const double ppl = llama_style_perplexity(m, eval_tokens, n_ctx, chunks, bos);
        j["models"][name] = {{"file", path(gguf)}, {"perplexity", ppl},
                             {"kv_values_per_token", m.cache_values_per_token()}};
        if (roundtrip >= 0) {
            j["models"][name]["roundtrip_rel_diff"] = roundtrip;
            if (!(roundtrip <= 1e-4)) ok = false;
        }
        std::printf("%-12s ppl %.4f  KV values/token %lld%s  (%.0f s)\n", name.c_str(), ppl,
                    (long long)m.cache_values_per_token(),
                    roundtrip >= 0 ? ("  round trip " + std::to_string(roundtrip)).c_str() : "", since(t0));
        std::fflush(stdout);
    };
    auto export_mla = [&](const std::string& name, const model::Model& m, const char* gguf) {
        model::write_deepseek2_gguf(m, file, path(gguf));
        const auto back = model::load_deepseek2_gguf(path(gguf));
        record(name, m, gguf, rel_diff(back, m, probe));
    };

    model::write_llama_gguf(original, file, path("original.gguf"));
    record("original", original, "original.gguf", rel_diff(model::load_gguf(path("original.gguf")), original, probe));

    const auto mqa = merge_kv_heads(original);
    model::write_llama_gguf(mqa, file, path("mqa.gguf"));
    record("mqa", mqa, "mqa.gguf", -1);
    convert::ConvertOptions ex;
    ex.method = convert::Method::exact;
    export_mla("mqa-exact", model::convert_model(mqa, seqs, ex).model, "mqa-exact.gguf");

    for (const auto& [name, budget] : {std::pair{"transmla50", 0.5}, std::pair{"transmla31", 0.3125}}) {
        convert::ConvertOptions o;
        o.method = convert::Method::transmla;
        o.rope_dim = 32, o.freqfold = 4, o.cache_budget = budget;
        const auto conv = model::convert_model(original, seqs, o).model;
        export_mla(name, conv, (std::string(name) + ".gguf").c_str());
        if (budget == 0.5) {
            // the same model for transformers: a DeepSeek-V3 directory, the library's logits of
            // the first `hf_tokens` evaluation tokens, and the round trip through its reader
            const std::string hf = path("transmla50-hf");
            model::write_deepseek_v3_dir(conv, hf);
            const std::vector<std::int32_t> t(eval_tokens.begin(), eval_tokens.begin() + hf_tokens);
            auto cache = conv.make_cache(hf_tokens);
            const auto logits = conv.forward(t, cache);
            std::ofstream lf(path("transmla50.logits.f32"), std::ios::binary);
            lf.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
            std::ofstream tf(path("tokens.txt"));
            for (const auto x : t) tf << x << '\n';
            require(lf.good() && tf.good(), "export_models: cannot write the logits / tokens");
            const double rt = rel_diff(model::load_deepseek_v3_dir(hf), conv, probe);
            j["models"]["transmla50-hf"] = {{"dir", hf}, {"roundtrip_rel_diff", rt}, {"logits_tokens", hf_tokens}};
            if (!(rt <= 1e-4)) ok = false;
            std::printf("%-12s DeepSeek-V3 directory, round trip %.2e (%.0f s)\n", "transmla50", rt, since(t0));
        }
    }
    {
        // the output-aware method yields the same layout: it must run in stock engines unchanged
        convert::ConvertOptions o;
        o.method = convert::Method::output_aware;
        o.rope_dim = 32, o.freqfold = 4, o.cache_budget = 0.5;
        export_mla("output_aware50", model::convert_model(original, seqs, o).model, "output_aware50.gguf");
    }
    model::write_json_file(path("reference.json"), j);
    std::printf("wrote %s (%.0f s)%s\n", path("reference.json").c_str(), since(t0), ok ? "" : ": ROUND TRIP FAILED");
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "export_models: error: %s\n", e.what());
    return 1;
}
