// The model forward passes on small random models (no file needed): the Llama forward against a
// plain float64 implementation written here, each runtime attention form against convert/'s
// float64 reference forward of the same layer, naive vs absorbed MLA, cached decode vs one batch,
// and the exact whole-model conversion.
#include "transmla/convert/forward.hpp"
#include "transmla/model/convert_model.hpp"
#include "transmla/model/perplexity.hpp"

#include "random_model.hpp"
#include "test_util.hpp"

#include <cmath>
#include <numeric>
#include <vector>

using namespace transmla;
using model::RowMatrixXf;
using test::random_model;
using test::random_tokens;

namespace {

/// Plain float64 forward of an all-GQA model (textbook formulas, loops): logits [T][vocab].
std::vector<double> textbook_logits(const model::Model& m, const std::vector<std::int32_t>& tok) {
    const auto& c = m.config;
    const int D = c.hidden, d = c.head_dim, T = int(tok.size()), I = c.intermediate;
    std::vector<double> x(std::size_t(T) * D);
    for (int t = 0; t < T; ++t)
        for (int e = 0; e < D; ++e) x[std::size_t(t) * D + e] = m.embed(tok[std::size_t(t)], e);
    auto rms = [&](const std::vector<double>& in, const Eigen::VectorXf& g) {
        std::vector<double> y(in.size());
        for (int t = 0; t < T; ++t) {
            double ss = 0;
            for (int e = 0; e < D; ++e) ss += in[std::size_t(t) * D + e] * in[std::size_t(t) * D + e];
            const double inv = 1.0 / std::sqrt(ss / D + c.rms_eps);
            for (int e = 0; e < D; ++e) y[std::size_t(t) * D + e] = in[std::size_t(t) * D + e] * inv * g[e];
        }
        return y;
    };
    auto matvec = [](const RowMatrixXf& w, const double* v, Eigen::Index row0, Eigen::Index rows, double* out) {
        for (Eigen::Index r = 0; r < rows; ++r) {
            double s = 0;
            for (Eigen::Index k = 0; k < w.cols(); ++k) s += double(w(row0 + r, k)) * v[k];
            out[r] = s;
        }
    };
    auto rope = [&](double* v, int pos) {
        for (int j = 0; j < d / 2; ++j) {
            const double th = std::pow(c.rope.base, -2.0 * j / d) * pos;
            const int a = c.rope.pairing == RopePairing::half_split ? j : 2 * j;
            const int b = c.rope.pairing == RopePairing::half_split ? j + d / 2 : 2 * j + 1;
            const double u = v[a], w = v[b];
            v[a] = u * std::cos(th) - w * std::sin(th);
            v[b] = u * std::sin(th) + w * std::cos(th);
        }
    };
    for (const auto& L : m.layers) {
        const auto& a = std::get<model::GqaAttention>(L.attn);
        const auto h = rms(x, L.attn_norm);
        const int nq = a.n_q, nkv = a.n_kv, g = nq / nkv;
        std::vector<double> q(std::size_t(T) * nq * d), k(std::size_t(T) * nkv * d), v(k.size());
        for (int t = 0; t < T; ++t) {
            matvec(a.wqkv, &h[std::size_t(t) * D], 0, nq * d, &q[std::size_t(t) * nq * d]);
            matvec(a.wqkv, &h[std::size_t(t) * D], nq * d, nkv * d, &k[std::size_t(t) * nkv * d]);
            matvec(a.wqkv, &h[std::size_t(t) * D], (nq + nkv) * d, nkv * d, &v[std::size_t(t) * nkv * d]);
            for (int i = 0; i < nq; ++i) rope(&q[(std::size_t(t) * nq + i) * d], t);
            for (int i = 0; i < nkv; ++i) rope(&k[(std::size_t(t) * nkv + i) * d], t);
        }
        std::vector<double> o(std::size_t(T) * nq * d, 0.0);
        for (int t = 0; t < T; ++t)
            for (int i = 0; i < nq; ++i) {
                const int kh = i / g;
                std::vector<double> s(std::size_t(t) + 1);
                double mx = -1e300;
                for (int u = 0; u <= t; ++u) {
                    double dot = 0;
                    for (int e = 0; e < d; ++e) dot += q[(std::size_t(t) * nq + i) * d + e] * k[(std::size_t(u) * nkv + kh) * d + e];
                    s[std::size_t(u)] = dot / std::sqrt(double(d));
                    mx = std::max(mx, s[std::size_t(u)]);
                }
                double z = 0;
                for (auto& e : s) z += (e = std::exp(e - mx));
                for (int u = 0; u <= t; ++u)
                    for (int e = 0; e < d; ++e)
                        o[(std::size_t(t) * nq + i) * d + e] += s[std::size_t(u)] / z * v[(std::size_t(u) * nkv + kh) * d + e];
            }
        std::vector<double> tmp(static_cast<std::size_t>(D));
        for (int t = 0; t < T; ++t) {
            matvec(a.wo, &o[std::size_t(t) * nq * d], 0, D, tmp.data());
            for (int e = 0; e < D; ++e) x[std::size_t(t) * D + e] += tmp[std::size_t(e)];
        }
        const auto h2 = rms(x, L.ffn_norm);
        std::vector<double> gu(static_cast<std::size_t>(2 * I)), act(static_cast<std::size_t>(I));
        for (int t = 0; t < T; ++t) {
            matvec(L.mlp.gate_up, &h2[std::size_t(t) * D], 0, 2 * I, gu.data());
            for (int e = 0; e < I; ++e) act[std::size_t(e)] = gu[std::size_t(e)] / (1 + std::exp(-gu[std::size_t(e)])) * gu[std::size_t(I + e)];
            matvec(L.mlp.down, act.data(), 0, D, tmp.data());
            for (int e = 0; e < D; ++e) x[std::size_t(t) * D + e] += tmp[std::size_t(e)];
        }
    }
    const auto hf = rms(x, m.out_norm);
    std::vector<double> logits(std::size_t(T) * c.vocab);
    for (int t = 0; t < T; ++t) matvec(m.output_matrix(), &hf[std::size_t(t) * D], 0, c.vocab, &logits[std::size_t(t) * c.vocab]);
    return logits;
}

std::vector<float> flat(const RowMatrixXf& m) { return {m.data(), m.data() + m.size()}; }
std::vector<double> flat(const convert::RowMatrix& m) { return {m.data(), m.data() + m.size()}; }

/// My runtime form of layer `at` on X (from an empty cache) against the fp64 reference output.
std::vector<float> run_layer(const model::Model& m, const model::Attention& at, const Eigen::MatrixXd& x) {
    auto c = model::Model::make_layer_cache(at, x.rows());
    return flat(m.attention(at, RowMatrixXf(x.cast<float>()), c));
}

}  // namespace

TEST_CASE("Llama forward equals a float64 textbook implementation (both pairings, tied and untied)") {
    for (const auto pairing : {RopePairing::half_split, RopePairing::interleaved})
        for (const bool tied : {true, false}) {
            auto m = random_model(97, 6, 2, 8, 64, 2, tied, pairing);
            const auto tok = random_tokens(int(test::uniform_int(5, 40)), 97);
            const auto want = textbook_logits(m, tok);
            for (const bool kernels : {true, false}) {
                m.use_cpu_kernels = kernels;
                auto cache = m.make_cache(64);
                const auto got = m.forward(tok, cache);
                CAPTURE(tied);
                CAPTURE(int(pairing));
                CAPTURE(kernels);
                TRANSMLA_CHECK_CLOSE(flat(got), want, 1e-4);
            }
        }
}

TEST_CASE("Runtime partial-RoPE, MLA (naive and absorbed) layers equal convert's float64 forwards") {
    auto m = random_model(50, 6, 2, 16, 32, 1, true, RopePairing::half_split);
    const auto gqa = model::to_convert(std::get<model::GqaAttention>(m.layers[0].attn), m.config.hidden, m.config.rope);
    const int T = 37, D = m.config.hidden;
    Eigen::MatrixXd calib(200, D), x(T, D);
    for (Eigen::Index i = 0; i < calib.size(); ++i) calib.data()[i] = test::normal();
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = test::normal();
    convert::CalibrationStats st(D);
    st.add(calib);
    std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
    std::iota(pos.begin(), pos.end(), 0);

    SUBCASE("original GQA") {
        for (const bool kernels : {true, false}) {
            m.use_cpu_kernels = kernels;
            TRANSMLA_CHECK_CLOSE(run_layer(m, m.layers[0].attn, x), flat(convert::forward(gqa, x, pos)), 2e-5);
        }
    }
    SUBCASE("MHA2MLA, every selection, every SVD mode") {
        convert::PairNormStats norms(gqa.n_q, gqa.n_kv, gqa.head_dim, gqa.rope.pairing);
        Eigen::MatrixXd q = calib * gqa.wq.transpose(), k = calib * gqa.wk.transpose();
        norms.add(q, k);
        for (const auto sel : {convert::RopeSelection::high, convert::RopeSelection::low, convert::RopeSelection::uniform,
                               convert::RopeSelection::two_norm})
            for (const auto svd : {convert::SvdMode::joint, convert::SvdMode::split, convert::SvdMode::per_head}) {
                convert::ConvertOptions o;
                o.method = convert::Method::mha2mla;
                o.selection = sel, o.svd = svd, o.mha2mla_rope_dims = 4, o.mha2mla_latent_dim = 6;
                const auto l = convert::mha2mla(gqa, o, &norms);
                CAPTURE(convert::to_string(sel));
                CAPTURE(convert::to_string(svd));
                const model::Attention at = model::to_runtime(l);
                CHECK(model::cache_width(at) == 2 * (4 + (svd == convert::SvdMode::split ? 12 : 6)));
                for (const bool kernels : {true, false}) {
                    m.use_cpu_kernels = kernels;
                    TRANSMLA_CHECK_CLOSE(run_layer(m, at, x), flat(convert::forward(l, x, pos)), 2e-5);
                }
            }
    }
    const int d_r = 8, F = 2;  // c = 2
    auto partial = convert::rorope(gqa, st, d_r, F);
    SUBCASE("partial RoPE (rotated, then balanced)") {
        TRANSMLA_CHECK_CLOSE(run_layer(m, model::to_runtime(partial), x), flat(convert::forward(partial, x, pos)), 2e-5);
        const auto bal = convert::balance_kv(partial, convert::bkv_alpha(partial, st));
        CHECK(bal.alpha != 1.0);
        TRANSMLA_CHECK_CLOSE(run_layer(m, model::to_runtime(bal), x), flat(convert::forward(bal, x, pos)), 2e-5);
    }
    SUBCASE("MLA, both orders, and cached decode") {
        convert::ConvertOptions o;
        const int r = int(test::uniform_int(4, 2 * gqa.kv_width() - d_r));
        CAPTURE(r);
        const auto mla = convert::finish_transmla(partial, st, r, o);
        const auto want = flat(convert::forward(mla, x, pos));
        const model::Attention at = model::to_runtime(mla);
        for (const auto order : {model::MlaOrder::naive, model::MlaOrder::absorbed})
            for (const bool kernels : {true, false}) {
                m.mla_order = order;
                m.use_cpu_kernels = kernels;
                CAPTURE(kernels);
                TRANSMLA_CHECK_CLOSE(run_layer(m, at, x), want, 2e-5);
            }
        m.use_cpu_kernels = true;
        // Prompt (automatic: naive) then token-by-token decode (automatic: absorbed).
        m.mla_order = model::MlaOrder::automatic;
        auto c = model::Model::make_layer_cache(at, T);
        const int split = int(test::uniform_int(1, T - 1));
        const RowMatrixXf xf = x.cast<float>();
        std::vector<float> got = flat(m.attention(at, RowMatrixXf(xf.topRows(split)), c));
        for (int t = split; t < T; ++t) {
            const auto o1 = flat(m.attention(at, RowMatrixXf(xf.row(t)), c));
            got.insert(got.end(), o1.begin(), o1.end());
        }
        CHECK(c.size == T);
        CHECK(c.width == r + d_r);
        TRANSMLA_CHECK_CLOSE(got, want, 2e-5);
    }
}

TEST_CASE("Exact conversion of a whole random model keeps its logits and perplexity") {
    const auto m = random_model(61, 4, 2, 16, 48, 3, false, RopePairing::half_split);
    std::vector<std::vector<std::int32_t>> calib;
    for (int i = 0; i < 4; ++i) calib.push_back(random_tokens(32, 61));
    convert::ConvertOptions o;
    o.method = convert::Method::exact;
    int lines = 0;
    const auto conv = model::convert_model(m, calib, o, [&](const std::string&) { ++lines; });
    CHECK(lines >= 2 * 3);  // per layer: phase 1 and phase 2
    REQUIRE(conv.layers.size() == 3);
    for (const auto& L : conv.model.layers) {
        CHECK(std::holds_alternative<model::MlaAttention>(L.attn));
        CHECK(model::cache_width(L.attn) == 2 * 2 * 16);  // same cache as the original
    }
    const auto tok = random_tokens(50, 61);
    auto c1 = m.make_cache(64), c2 = conv.model.make_cache(64);
    TRANSMLA_CHECK_CLOSE(flat(conv.model.forward(tok, c2)), flat(m.forward(tok, c1)), 1e-4);
    const auto p0 = model::perplexity(m, tok, 16), p1 = model::perplexity(conv.model, tok, 16);
    CHECK(p0.predicted == p1.predicted);
    CHECK(std::abs(p1.perplexity / p0.perplexity - 1) <= 1e-5);
}

TEST_CASE("TransMLA conversion of a random model gives the budgeted cache and finite perplexity") {
    const auto m = random_model(61, 4, 2, 16, 48, 2, true, RopePairing::half_split);
    std::vector<std::vector<std::int32_t>> calib;
    for (int i = 0; i < 4; ++i) calib.push_back(random_tokens(32, 61));
    convert::ConvertOptions o;
    o.method = convert::Method::transmla;
    o.rope_dim = 8, o.freqfold = 2, o.cache_budget = 0.5;
    const auto conv = model::convert_model(m, calib, o, {}, random_tokens(24, 61));
    CHECK(conv.calibration_passes == 2);
    CHECK(conv.calibration_tokens == 4 * 32);
    for (std::size_t l = 0; l < conv.layers.size(); ++l) {
        CHECK(model::cache_width(conv.model.layers[l].attn) == 32);  // 0.5 · 2 · 2 · 16
        CHECK(conv.layers[l].cache_converted == 32);
        CHECK(conv.layers[l].cache_original == 64);
        CHECK(conv.layers[l].attn_output_error > 0);
        CHECK(conv.layers[l].attn_output_error < 1.5);
    }
    const auto p = model::perplexity(conv.model, random_tokens(40, 61), 20);
    CHECK(std::isfinite(p.perplexity));
    CHECK(p.perplexity > 1.0);
}

TEST_CASE("MHA2MLA conversion of a random model: one calibration pass, budgeted cache, finite perplexity") {
    const auto m = random_model(61, 4, 2, 16, 48, 2, true, RopePairing::half_split);
    std::vector<std::vector<std::int32_t>> calib;
    for (int i = 0; i < 3; ++i) calib.push_back(random_tokens(32, 61));
    convert::ConvertOptions o;
    o.method = convert::Method::mha2mla;
    o.selection = convert::RopeSelection::two_norm;
    o.mha2mla_rope_dims = 4, o.mha2mla_latent_dim = 8;
    const auto conv = model::convert_model(m, calib, o, {}, random_tokens(20, 61));
    CHECK(conv.calibration_passes == 1);
    for (std::size_t l = 0; l < conv.layers.size(); ++l) {
        CHECK(model::cache_width(conv.model.layers[l].attn) == 2 * (4 + 8));
        CHECK(std::isfinite(conv.layers[l].attn_output_error));
    }
    const auto p = model::perplexity(conv.model, random_tokens(40, 61), 20);
    CHECK(std::isfinite(p.perplexity));
}

TEST_CASE("Bad input is refused with transmla::error") {
    const auto m = random_model(20, 2, 1, 8, 16, 1, true, RopePairing::half_split);
    auto c = m.make_cache(8);
    const std::vector<std::int32_t> bad{1, 20};
    CHECK_THROWS_AS(m.forward(bad, c), transmla::error);
    const std::vector<std::int32_t> nine(9, 1);
    CHECK_THROWS_AS(m.forward(nine, c), transmla::error);  // over capacity
    CHECK_THROWS_AS(m.make_cache(10000), transmla::error);
    CHECK_THROWS_AS(model::make_sequences(nine, 2, 8), transmla::error);
    CHECK_THROWS_AS(model::perplexity(m, std::vector<std::int32_t>{3}, 4), transmla::error);
    convert::ConvertOptions o;
    o.rope_dim = 3;  // not a divisor of d
    const std::vector<std::vector<std::int32_t>> calib{std::vector<std::int32_t>(8, 2)};
    CHECK_THROWS_AS(model::convert_model(m, calib, o), transmla::error);
}
