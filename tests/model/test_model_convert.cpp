// Whole-model conversion of the real SmolLM2 file: the exact mode keeps logits and perplexity,
// TransMLA at half the cache gives a finite perplexity with the budgeted cache, and the tokenizer
// reproduces llama.cpp's ids for the fixed prompt. Calibration: /usr/share/common-licenses/GPL-2;
// evaluation: GPL-3 (disjoint files). Short texts keep the test to well under a minute.
#include "model_test_util.hpp"

#include "transmla/io/tokenizer.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/perplexity.hpp"

#include "test_util.hpp"

#include <cmath>

using namespace transmla;

namespace {

struct Texts {
    std::vector<std::int32_t> calib, eval, prompt;
};

const Texts& texts() {
    static const Texts t = [] {
        const io::GgufFile f(*test::smollm2_path());
        const auto tok = io::Tokenizer::from_gguf(f);
        Texts x;
        x.calib = tok.encode(model::read_text_file("/usr/share/common-licenses/GPL-2"), false);
        x.eval = tok.encode(model::read_text_file("/usr/share/common-licenses/GPL-3"), false);
        x.prompt = test::load_json("smollm2_logits_llamacpp.json").at("tokens").get<std::vector<std::int32_t>>();
        return x;
    }();
    return t;
}

std::vector<float> flat(const model::RowMatrixXf& m) { return {m.data(), m.data() + m.size()}; }

constexpr std::int64_t kEvalTokens = 512, kWindow = 256;

}  // namespace

TEST_CASE("The tokenizer gives llama.cpp's ids for the fixed prompt") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto ref = test::load_json("smollm2_logits_llamacpp.json");
    const io::GgufFile f(*test::smollm2_path());
    const auto tok = io::Tokenizer::from_gguf(f);
    const auto ids = tok.encode(ref.at("prompt").get<std::string>(), false);
    CHECK(ids == ref.at("tokens").get<std::vector<std::int32_t>>());
    CHECK(tok.decode(ids) == ref.at("prompt").get<std::string>());
}

TEST_CASE("Exact-mode conversion of SmolLM2 keeps logits and perplexity") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto& t = texts();
    convert::ConvertOptions o;
    o.method = convert::Method::exact;
    const auto conv = model::convert_model(*m, model::make_sequences(t.calib, 2, 128), o);
    for (const auto& L : conv.model.layers) {
        REQUIRE(std::holds_alternative<model::MlaAttention>(L.attn));
        CHECK(model::cache_width(L.attn) == 384);
    }
    const auto p0 = model::perplexity(*m, t.eval, kWindow, kEvalTokens);
    const auto p1 = model::perplexity(conv.model, t.eval, kWindow, kEvalTokens);
    MESSAGE("exact: perplexity " << p0.perplexity << " -> " << p1.perplexity << " (relative change "
                                 << p1.perplexity / p0.perplexity - 1 << ")");
    CHECK(p0.predicted == kEvalTokens - 2);
    CHECK(std::abs(p1.perplexity / p0.perplexity - 1) <= 1e-4);
    auto c0 = m->make_cache(64), c1 = conv.model.make_cache(64);
    const auto l0 = flat(m->forward(t.prompt, c0)), l1 = flat(conv.model.forward(t.prompt, c1));
    const double err = test::rel_error(l1, l0);
    MESSAGE("exact: logits normwise relative difference " << err);
    CHECK(err <= 2e-5);  // fp32 rounding through 30 layers (measured 2.5e-6): equivalent, not identical, arithmetic
}

TEST_CASE("TransMLA at 50% of the cache: budgeted cache, finite perplexity, sane reports") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto& t = texts();
    convert::ConvertOptions o;
    o.method = convert::Method::transmla;
    o.rope_dim = 32, o.freqfold = 4, o.cache_budget = 0.5;
    int lines = 0;
    const auto conv = model::convert_model(*m, model::make_sequences(t.calib, 4, 128), o,
                                           [&](const std::string&) { ++lines; },
                                           std::span(t.calib).subspan(4 * 128, 128));
    CHECK(lines == 2 + 2 * m->config.layers);
    CHECK(conv.calibration_passes == 2);
    for (std::size_t l = 0; l < conv.layers.size(); ++l) {
        CAPTURE(l);
        const auto& r = conv.layers[l];
        CHECK(model::cache_width(conv.model.layers[l].attn) == 192);
        CHECK(r.rank == 160);
        CHECK(r.cache_converted == 192);
        CHECK((r.rope_energy > 0 && r.rope_energy <= 1));
        CHECK((r.pca_energy > 0.5 && r.pca_energy <= 1));
        CHECK((r.alpha > 0 && std::isfinite(r.alpha)));
        CHECK((r.attn_output_error > 0 && r.attn_output_error < 1));
    }
    const auto p0 = model::perplexity(*m, t.eval, kWindow, kEvalTokens);
    const auto p1 = model::perplexity(conv.model, t.eval, kWindow, kEvalTokens);
    MESSAGE("transmla 50%: perplexity " << p0.perplexity << " -> " << p1.perplexity);
    CHECK(std::isfinite(p1.perplexity));
    CHECK(p1.perplexity > p0.perplexity * 0.9);
    CHECK(p1.perplexity < p0.perplexity * 10);
    // Cached absorbed decode of the converted model equals its batched (naive) forward.
    const std::vector<std::int32_t> pr(t.prompt.begin(), t.prompt.begin() + 12);
    auto cb = conv.model.make_cache(16), ci = conv.model.make_cache(16);
    const auto batch = conv.model.forward(pr, cb, model::Logits::all);
    conv.model.forward(std::span(pr).first(6), ci, model::Logits::none);
    std::vector<float> inc, want;
    for (std::size_t k = 6; k < pr.size(); ++k) {
        const auto l = conv.model.forward(std::span(pr).subspan(k, 1), ci, model::Logits::last);
        inc.insert(inc.end(), l.data(), l.data() + l.size());
        want.insert(want.end(), batch.row(std::int64_t(k)).data(), batch.row(std::int64_t(k)).data() + batch.cols());
    }
    TRANSMLA_CHECK_CLOSE(inc, want, 1e-4);
}

TEST_CASE("Output-aware at 50% of the cache: same layout as TransMLA, lower perplexity, per-layer logit errors") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto& t = texts();
    const auto seqs = model::make_sequences(t.calib, 4, 128);
    const auto held = std::span(t.calib).subspan(4 * 128, 128);
    convert::ConvertOptions o;
    o.rope_dim = 32, o.freqfold = 4, o.cache_budget = 0.5;
    o.method = convert::Method::transmla;
    const auto tm = model::convert_model(*m, seqs, o, {}, held);
    o.method = convert::Method::output_aware;
    const auto oa = model::convert_model(*m, seqs, o, {}, held);
    CHECK(oa.calibration_passes == 2);
    double tm_logit = 0, oa_logit = 0;
    for (std::size_t l = 0; l < oa.layers.size(); ++l) {
        CAPTURE(l);
        const auto& r = oa.layers[l];
        CHECK(model::cache_width(oa.model.layers[l].attn) == 192);
        CHECK(r.rank == 160);
        CHECK((r.weighted_error > 0 && r.weighted_error < 1));
        CHECK((r.logit_error > 0 && std::isfinite(r.logit_error)));
        CHECK((r.attn_output_error > 0 && r.attn_output_error < 1));
        tm_logit += tm.layers[l].logit_error, oa_logit += r.logit_error;
    }
    MESSAGE("mean logit error: transmla " << tm_logit / 30 << ", output_aware " << oa_logit / 30);
    CHECK(oa_logit < tm_logit);
    const auto p_tm = model::perplexity(tm.model, t.eval, kWindow, kEvalTokens);
    const auto p_oa = model::perplexity(oa.model, t.eval, kWindow, kEvalTokens);
    MESSAGE("50%: transmla " << p_tm.perplexity << ", output_aware " << p_oa.perplexity);
    CHECK(p_oa.perplexity < p_tm.perplexity);
}
