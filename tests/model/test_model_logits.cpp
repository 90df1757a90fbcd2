// The original SmolLM2 forward against two independent implementations on the same file (see
// tests/data/smollm2_logits.md for how they were produced and why the tolerances are what they are).
#include "model_test_util.hpp"

#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

using namespace transmla;

namespace {

std::vector<std::int32_t> json_tokens(const nlohmann::json& j) { return j.at("tokens").get<std::vector<std::int32_t>>(); }

double logsumexp(const float* x, int n) {
    double m = -INFINITY;
    for (int i = 0; i < n; ++i) m = std::max(m, double(x[i]));
    double s = 0;
    for (int i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
    return m + std::log(s);
}

}  // namespace

TEST_CASE("SmolLM2 logits match a float64 numpy forward of the same file") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto ref = test::load_json("smollm2_logits_numpy.json");
    const auto tokens = json_tokens(ref);
    auto cache = m->make_cache(std::int64_t(tokens.size()));
    const auto logits = m->forward(tokens, cache);
    REQUIRE(logits.rows() == std::int64_t(tokens.size()));
    const auto probe = ref.at("probe_ids").get<std::vector<int>>();
    double worst = 0, worst_lse = 0;
    for (const auto& p : ref.at("positions")) {
        const int t = p.at("pos").get<int>();
        const float* row = logits.row(t).data();
        auto check = [&](int id, double want) {
            const double err = std::abs(double(row[id]) - want) / (1.0 + std::abs(want));
            worst = std::max(worst, err);
        };
        const auto top = p.at("top_ids").get<std::vector<int>>();
        const auto topv = p.at("top_logits").get<std::vector<double>>();
        for (std::size_t k = 0; k < top.size(); ++k) check(top[k], topv[k]);
        const auto pv = p.at("probe_logits").get<std::vector<double>>();
        for (std::size_t k = 0; k < probe.size(); ++k) check(probe[k], pv[k]);
        worst_lse = std::max(worst_lse, std::abs(logsumexp(row, int(logits.cols())) - p.at("logsumexp").get<double>()));
        // Same argmax (the numpy top-1 is not a near-tie at any position of this prompt).
        const int am = int(std::max_element(row, row + logits.cols()) - row);
        CHECK_MESSAGE(am == top[0], "position " << t << ": argmax " << am << " vs numpy " << top[0]);
    }
    INFO("max |Δ logit|/(1+|logit|) = " << worst << ", max |Δ logsumexp| = " << worst_lse);
    MESSAGE("numpy: max |Δ logit|/(1+|logit|) = " << worst << ", max |Δ logsumexp| = " << worst_lse);
    CHECK(worst <= 2e-4);  // measured 3.6e-5: fp32 accumulation over 30 layers vs float64
    CHECK(worst_lse <= 1e-3);
}

TEST_CASE("SmolLM2 log-probabilities match llama.cpp within its activation rounding") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto ref = test::load_json("smollm2_logits_llamacpp.json");
    const auto tokens = json_tokens(ref);
    REQUIRE(ref.at("vocab").get<int>() == m->config.vocab);
    auto cache = m->make_cache(std::int64_t(tokens.size()));
    const auto logits = m->forward(tokens, cache);
    const auto probe = ref.at("probe_ids").get<std::vector<int>>();
    double worst = 0;
    int top1_equal = 0, positions = 0;
    for (const auto& p : ref.at("positions")) {
        const int t = p.at("pos").get<int>();
        const float* row = logits.row(t).data();
        const double lse = logsumexp(row, int(logits.cols()));
        const double ref_lse = p.at("logsumexp").get<double>();
        const auto top = p.at("top_ids").get<std::vector<int>>();
        const auto topv = p.at("top_logits").get<std::vector<double>>();
        const auto pv = p.at("probe_logits").get<std::vector<double>>();
        for (std::size_t k = 0; k < top.size(); ++k)
            worst = std::max(worst, std::abs((row[top[k]] - lse) - (topv[k] - ref_lse)));
        for (std::size_t k = 0; k < probe.size(); ++k)
            worst = std::max(worst, std::abs((row[probe[k]] - lse) - (pv[k] - ref_lse)));
        const int am = int(std::max_element(row, row + logits.cols()) - row);
        top1_equal += am == top[0];
        ++positions;
        CHECK_MESSAGE(std::find(top.begin(), top.begin() + 3, am) != top.begin() + 3,
                      "position " << t << ": our argmax " << am << " is not in llama.cpp's top 3");
    }
    MESSAGE("llama.cpp: max |Δ log p| = " << worst << ", top-1 equal at " << top1_equal << "/" << positions);
    CHECK(worst <= 1.5);
    CHECK(top1_equal >= positions * 4 / 5);
}

TEST_CASE("GGUF row order with interleaved RoPE gives the same logits as un-permuted half-split") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto path = test::smollm2_path();
    const auto raw = model::load_gguf(*path, {.keep_gguf_order = true});
    CHECK(raw.config.rope.pairing == RopePairing::interleaved);
    CHECK(m->config.rope.pairing == RopePairing::half_split);
    const auto tokens = json_tokens(test::load_json("smollm2_logits_llamacpp.json"));
    auto c1 = m->make_cache(64), c2 = raw.make_cache(64);
    const auto a = m->forward(tokens, c1, model::Logits::all);
    const auto b = raw.forward(tokens, c2, model::Logits::all);
    const std::vector<float> va(a.data(), a.data() + a.size()), vb(b.data(), b.data() + b.size());
    TRANSMLA_CHECK_CLOSE(va, vb, 1e-4);
}

TEST_CASE("Incremental decode with the KV cache equals one batched forward") {
    const auto* m = test::smollm2();
    if (!m) return;
    const auto tokens = json_tokens(test::load_json("smollm2_logits_llamacpp.json"));
    const std::int64_t n = std::int64_t(tokens.size());
    auto full_cache = m->make_cache(n);
    const auto full = m->forward(tokens, full_cache, model::Logits::all);
    const std::int64_t split = 1 + std::int64_t(test::uniform_int(1, n - 3));
    auto cache = m->make_cache(n);
    const auto first = m->forward(std::span(tokens).first(std::size_t(split)), cache, model::Logits::last);
    std::vector<float> got(first.data(), first.data() + first.size()), want;
    for (std::int64_t t = split; t < n; ++t) {
        const auto l = m->forward(std::span(tokens).subspan(std::size_t(t), 1), cache, model::Logits::last);
        got.insert(got.end(), l.data(), l.data() + l.size());
    }
    CHECK(cache.size() == n);
    for (std::int64_t t = split - 1; t < n; ++t) want.insert(want.end(), full.row(t).data(), full.row(t).data() + full.cols());
    INFO("prompt split at " << split);
    TRANSMLA_CHECK_CLOSE(got, want, 1e-4);
}
