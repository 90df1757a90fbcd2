// convert_layer (exact / transmla), its report, bad options, and the compile-time shape link.
#include "synthetic.hpp"
#include "transmla/convert/convert.hpp"

#include <string>
#include <type_traits>

using namespace transmla;
using namespace transmla::convert;
using transmla::test::rel_err;

namespace {

struct Setup {
    GqaLayer layer;
    test::InputGen gen;
    CalibrationStats stats;
    HeldOut held;
    Setup(int D, int nq, int nkv, int d, RopePairing p, bool bias, int T = 20)
        : layer(test::make_layer([&] {
              test::LayerSpec s;
              s.hidden = D, s.n_q = nq, s.n_kv = nkv, s.head_dim = d, s.pairing = p, s.biases = bias;
              return s;
          }())),
          gen(D), stats(D) {
        for (int b = 0; b < 6; ++b) stats.add(gen.tokens(100, 0));
        held.x = gen.tokens(T, 11);
        held.positions = test::iota_positions(T, 11);
    }
};

/// The message of the transmla::error thrown by f ("" when none is thrown).
template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const error& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("exact mode reproduces the GQA layer end to end (MLA naive and absorbed)") {
    for (auto p : {RopePairing::half_split, RopePairing::interleaved})
        for (bool bias : {false, true}) {
            Setup s(64, 6, 3, 16, p, bias);
            ConvertOptions o;
            o.method = Method::exact;
            const ConvertResult res = convert_layer(s.layer, s.stats, nullptr, o, &s.held);
            const MlaLayer& m = res.mla;
            CHECK(m.kv_lora_rank == 48);
            CHECK(m.qk_rope_head_dim == 48);
            CHECK(m.cache_per_token() == 2 * 48);
            const auto ref = forward(s.layer, s.held.x, s.held.positions);
            const double e1 = rel_err(forward(m, s.held.x, s.held.positions), ref);
            const double e2 = rel_err(forward(absorb(m), s.held.x, s.held.positions), ref);
            INFO("pairing " << to_string(p) << " bias " << bias << " naive " << e1 << " absorbed " << e2);
            CHECK(e1 <= 1e-10);
            CHECK(e2 <= 1e-10);
            CHECK(res.report.attn_output_error <= 1e-10);
            CHECK(res.report.key_error <= 1e-10);
            CHECK(res.report.value_error <= 1e-10);
        }
}

TEST_CASE("TransMLA convert_layer: report and rank from a cache budget") {
    Setup s(96, 8, 4, 16, RopePairing::half_split, true);
    ConvertOptions o;
    o.rope_dim = 8;
    o.freqfold = 4;
    o.cache_budget = 0.5;  // r = 0.5·2·64 − 8 = 56
    // stats after RoRoPE: here a second, independent batch of calibration tokens
    CalibrationStats after(96);
    after.add(s.gen.tokens(500, 0));
    const ConvertResult res = convert_layer(s.layer, s.stats, &after, o, &s.held);
    const LayerReport& rep = res.report;
    CHECK(rep.rank == 56);
    CHECK(res.mla.kv_lora_rank == 56);
    CHECK(rep.cache_converted == 64);
    CHECK(rep.cache_original == 128);
    CHECK(rep.rope_energy > 8.0 / 64);
    CHECK(rep.rope_energy < 1.0);
    CHECK(rep.pca_energy > 56.0 / 120);
    CHECK(rep.pca_energy < 1.0);
    CHECK(rep.alpha > 0);
    CHECK(rep.key_error > 0);
    CHECK(rep.key_error < 1);
    CHECK(rep.value_error > 0);
    CHECK(rep.value_error < 1);
    CHECK(rep.attn_output_error > 0);
    CHECK(rep.attn_output_error < 1);
    // The report's output error is what it says.
    const auto ref = forward(s.layer, s.held.x, s.held.positions);
    const auto got = forward(res.mla, s.held.x, s.held.positions);
    CHECK(rep.attn_output_error == doctest::Approx((got - ref).norm() / ref.norm()).epsilon(1e-12));
    // The returned partial layer is balanced with the report's α and matches the MLA at full rank.
    CHECK(res.partial.alpha == rep.alpha);
    // A larger rank never reconstructs worse.
    ConvertOptions o2 = o;
    o2.cache_budget = 0, o2.rank = 100;
    const ConvertResult res2 = convert_layer(s.layer, s.stats, &after, o2);
    CHECK(res2.report.key_error + res2.report.value_error <= rep.key_error + rep.value_error);
    CHECK(std::isnan(res2.report.attn_output_error));
    // Balance off: α reported as 1, same rope energy.
    ConvertOptions o3 = o;
    o3.balance = false;
    const ConvertResult res3 = convert_layer(s.layer, s.stats, &after, o3);
    CHECK(res3.report.alpha == 1.0);
    CHECK(res3.report.rope_energy == doctest::Approx(rep.rope_energy));
}

namespace {
/// KvStats of a layer's own keys and values (W x + b, biases included) on the rows of x.
KvStats kv_of(const Eigen::MatrixXd& wk, const Eigen::VectorXd& bk, const Eigen::MatrixXd& wv, const Eigen::VectorXd& bv,
              const Eigen::MatrixXd& x) {
    Eigen::MatrixXd k = x * wk.transpose(), v = x * wv.transpose();
    if (bk.size()) k.rowwise() += bk.transpose();
    if (bv.size()) v.rowwise() += bv.transpose();
    KvStats s(int(wk.rows()));
    s.add(k, v);
    return s;
}
}  // namespace

TEST_CASE("convert_layer from KvStats equals convert_layer from the input moment of the same tokens") {
    for (bool bias : {false, true}) {
        Setup s(96, 8, 4, 16, RopePairing::half_split, bias);
        // Two calibration passes on different tokens, as a whole-model converter has them.
        const Eigen::MatrixXd x1 = s.gen.tokens(600, 0), x2 = s.gen.tokens(500, 3);
        CalibrationStats in1(96), in2(96);
        in1.add(x1);
        in2.add(x2);
        const GqaLayer& l = s.layer;
        const KvStats kv1 = kv_of(l.wk, l.bk, l.wv, l.bv, x1);
        ConvertOptions o;
        o.rope_dim = 8, o.freqfold = 4, o.rank = 40;
        const PartialRopeLayer pr = rorope(l, kv1, o.rope_dim, o.freqfold);
        const KvStats kv2 = kv_of(pr.wk, pr.bk, pr.wv, pr.bv, x2);  // the partial-RoPE layer's own keys
        const ConvertResult a = convert_layer(l, in1, &in2, o, &s.held);
        const ConvertResult b = convert_layer(l, kv1, &kv2, o, &s.held);
        INFO("bias " << bias << " output errors " << a.report.attn_output_error << " / " << b.report.attn_output_error);
        CHECK(b.report.rope_energy == doctest::Approx(a.report.rope_energy).epsilon(1e-10));
        CHECK(b.report.alpha == doctest::Approx(a.report.alpha).epsilon(1e-10));
        CHECK(b.report.pca_energy == doctest::Approx(a.report.pca_energy).epsilon(1e-10));
        CHECK(b.report.key_error == doctest::Approx(a.report.key_error).epsilon(1e-8));
        CHECK(b.report.value_error == doctest::Approx(a.report.value_error).epsilon(1e-8));
        CHECK(b.report.attn_output_error == doctest::Approx(a.report.attn_output_error).epsilon(1e-8));
        CHECK(rel_err(forward(b.mla, s.held.x, s.held.positions), forward(a.mla, s.held.x, s.held.positions)) <= 1e-9);
        CHECK(b.partial.alpha == doctest::Approx(a.partial.alpha).epsilon(1e-10));
        // Without statistics of the partial-RoPE model both reuse the first pass's tokens.
        const ConvertResult a1 = convert_layer(l, in1, nullptr, o, &s.held);
        const ConvertResult b1 = convert_layer(l, kv1, nullptr, o, &s.held);
        CHECK(b1.report.pca_energy == doctest::Approx(a1.report.pca_energy).epsilon(1e-10));
        CHECK(rel_err(forward(b1.mla, s.held.x, s.held.positions), forward(a1.mla, s.held.x, s.held.positions)) <= 1e-9);
        // Exact mode from KvStats reproduces the GQA layer.
        ConvertOptions ex;
        ex.method = Method::exact;
        const ConvertResult e = convert_layer(l, kv1, nullptr, ex, &s.held);
        CHECK(e.report.attn_output_error <= 1e-10);
        CHECK(rel_err(forward(absorb(e.mla), s.held.x, s.held.positions), forward(l, s.held.x, s.held.positions)) <= 1e-10);
    }
}

TEST_CASE("engine path (README): moved layers give the same MLA layer as convert_layer") {
    Setup s(96, 8, 4, 16, RopePairing::interleaved, true);
    const GqaLayer& l = s.layer;
    const Eigen::MatrixXd x1 = s.gen.tokens(400, 0), x2 = s.gen.tokens(400, 5);
    const KvStats first = kv_of(l.wk, l.bk, l.wv, l.bv, x1);
    ConvertOptions opt;
    opt.rope_dim = 8, opt.freqfold = 4, opt.rank = 48;
    GqaLayer moved = l;
    PartialRopeLayer partial = rorope(std::move(moved), first, opt.rope_dim, opt.freqfold);
    CHECK(moved.wq.size() == 0);  // handed over, not copied
    CHECK(rel_err(partial.wq, l.wq) == 0.0);
    CHECK(rel_err(partial.wo, l.wo) == 0.0);
    const KvStats second = kv_of(partial.wk, partial.bk, partial.wv, partial.bv, x2);
    LayerReport report;
    const MlaLayer mla = finish_transmla(std::move(partial), second, opt.rank, opt, &report);
    CHECK(partial.wo.size() == 0);
    CHECK(rel_err(mla.o_proj, l.wo) == 0.0);
    const ConvertResult ref = convert_layer(l, first, &second, opt);
    CHECK(report.alpha == ref.report.alpha);
    CHECK(report.pca_energy == ref.report.pca_energy);
    CHECK(rel_err(mla.kv_a_proj_with_mqa, ref.mla.kv_a_proj_with_mqa) == 0.0);
    CHECK(rel_err(mla.kv_b_proj, ref.mla.kv_b_proj) == 0.0);
    CHECK(rel_err(mla.q_proj, ref.mla.q_proj) == 0.0);
    CHECK(rel_err(forward(absorb(mla), s.held.x, s.held.positions), forward(ref.mla, s.held.x, s.held.positions)) <=
          1e-10);
}

TEST_CASE("KvStats conversion: what needs the input moment says so") {
    Setup s(64, 6, 3, 16, RopePairing::half_split, false);
    const GqaLayer& l = s.layer;
    const KvStats kv = kv_of(l.wk, l.bk, l.wv, l.bv, s.gen.tokens(300, 0));
    ConvertOptions o;
    o.rope_dim = 8, o.freqfold = 2, o.rank = 30;
    ConvertOptions mh = o;
    mh.method = Method::mha2mla;
    CHECK(contains(error_of([&] { convert_layer(l, kv, nullptr, mh); }), "mha2mla needs the input statistics"));
    ConvertOptions ql = o;
    ql.q_lora_rank = 32;
    CHECK(contains(error_of([&] { convert_layer(l, kv, nullptr, ql); }), "q_lora_rank = 32 needs the input statistics"));
    const KvStats wrong(l.kv_width() + 16);
    CHECK(contains(error_of([&] { convert_layer(l, wrong, nullptr, o); }), "kv width"));
    const KvStats empty(l.kv_width());
    CHECK(contains(error_of([&] { convert_layer(l, empty, nullptr, o); }), "no tokens"));
}

TEST_CASE("bad options throw transmla::error naming the option and the allowed values") {
    Setup s(48, 4, 2, 16, RopePairing::half_split, false, 4);
    auto run = [&](ConvertOptions o) { return error_of([&] { convert_layer(s.layer, s.stats, nullptr, o); }); };
    ConvertOptions o;
    o.rank = 10;
    o.rope_dim = 6;  // 16 % 6 != 0
    std::string m = run(o);
    CHECK(contains(m, "rope_dim"));
    CHECK(contains(m, "allowed: 2, 4, 8, 16"));
    o.rope_dim = 8;
    o.freqfold = 3;  // c = 2
    m = run(o);
    CHECK(contains(m, "freqfold"));
    CHECK(contains(m, "allowed: 2, 4, 8"));
    o.freqfold = 1;  // not a multiple of c = 2
    CHECK(contains(run(o), "freqfold"));
    o.freqfold = 2;
    o.rank = 57;  // > 2L − d_r = 56
    m = run(o);
    CHECK(contains(m, "rank"));
    CHECK(contains(m, "56"));
    o.rank = 56;  // cache not smaller than the original
    m = run(o);
    CHECK(contains(m, "rank"));
    CHECK(contains(m, "1..55"));
    o.rank = 0;
    o.cache_budget = 0;
    CHECK(contains(run(o), "cache_budget"));
    o.cache_budget = 1.5;
    CHECK(contains(run(o), "cache_budget"));
    o.cache_budget = 0;
    o.rank = 10;
    o.q_lora_rank = 1000;
    CHECK(contains(run(o), "q_lora_rank"));
    o.q_lora_rank = 0;
    CHECK(run(o).empty());
    // Shapes that do not match the weights.
    GqaLayer bad = s.layer;
    bad.wk.conservativeResize(bad.wk.rows() - 1, Eigen::NoChange);
    m = error_of([&] { convert_layer(bad, s.stats, nullptr, o); });
    CHECK(contains(m, "wk"));
    bad = s.layer;
    bad.bq = Eigen::VectorXd::Ones(5);
    CHECK(contains(error_of([&] { convert_layer(bad, s.stats, nullptr, o); }), "bq"));
    bad = s.layer;
    bad.n_q = 5;
    CHECK(!error_of([&] { convert_layer(bad, s.stats, nullptr, o); }).empty());
    CalibrationStats wrong(40);
    wrong.add(test::gaussian(10, 40));
    CHECK(contains(error_of([&] { convert_layer(s.layer, wrong, nullptr, o); }), "hidden"));
    CalibrationStats empty(48);
    CHECK(contains(error_of([&] { convert_layer(s.layer, empty, nullptr, o); }), "no tokens"));
    HeldOut h{test::gaussian(3, 48), {0, 1}};
    CHECK(contains(error_of([&] { convert_layer(s.layer, s.stats, nullptr, o, &h); }), "held-out"));
    // MHA2MLA options.
    o.method = Method::mha2mla;
    o.mha2mla_rope_dims = 3;
    CHECK(contains(run(o), "mha2mla_rope_dims"));
    o.mha2mla_rope_dims = 6;
    o.selection = RopeSelection::uniform;  // 16 % 6 != 0
    CHECK(contains(run(o), "mha2mla_rope_dims"));
    o.mha2mla_rope_dims = 4;
    o.uniform_start = 4;  // Δ = 4
    CHECK(contains(run(o), "uniform_start"));
    o.uniform_start = 1;
    o.mha2mla_latent_dim = 1000;  // joint: n_kv·d_kv <= min(n_kv·(2d - r_m), D) = min(56, 48)
    m = run(o);
    CHECK(contains(m, "mha2mla_latent_dim"));
    CHECK(contains(m, "1 <= d_kv <= 24"));
    o.svd = SvdMode::per_head;  // d_kv <= min(2d - r_m, D) = 28
    o.mha2mla_latent_dim = 29;
    CHECK(contains(run(o), "1 <= d_kv <= 28"));
    o.svd = SvdMode::split;  // n_kv·d_kv <= min(n_kv·(d - r_m), D): d_kv <= 12
    o.mha2mla_latent_dim = 13;
    CHECK(contains(run(o), "1 <= d_kv <= 12"));
    o.selection = RopeSelection::two_norm;
    o.mha2mla_latent_dim = 8;
    CHECK(contains(run(o), "PairNormStats"));
}

TEST_CASE("compile-time shape link and its run-time twin") {
    using Llama3 = GqaShape<32, 8, 128>;
    using M = converted_shape_t<Llama3, 64, 512, 4>;
    static_assert(std::is_same_v<M, MlaShape<32, 512, 64, 128, 128>>);
    static_assert(ConvertedShape<Llama3, 64, 512, 4>::cache_per_token == 576);
    static_assert(ConvertedShape<Llama3, 64, 512, 4>::original_cache_per_token == 2048);
    static_assert(M::static_row_width == 576);
    using Smol = GqaShape<9, 3, 64>;
    static_assert(std::is_same_v<exact_shape_t<Smol>, MlaShape<9, 192, 192, 64, 64>>);
    static_assert(std::is_same_v<converted_shape_t<Smol, 32, 128, 4>, MlaShape<9, 128, 32, 64, 64>>);
    const DynamicMlaShape d = converted_shape(DynamicGqaShape(32, 8, 128), 64, 512, 4);
    CHECK(d.rank() == 512);
    CHECK(d.rope_dim() == 64);
    CHECK(d.heads() == 32);
    CHECK(d.nope_dim() == 128);
    CHECK(d.cache_elems_per_token() == 576);
    CHECK(converted_shape(DynamicGqaShape(9, 3, 64), 192, 192, 1, true).row_width() == 384);
    CHECK_THROWS_AS(converted_shape(DynamicGqaShape(32, 8, 128), 48, 512, 4), error);   // d % d_r
    CHECK_THROWS_AS(converted_shape(DynamicGqaShape(32, 8, 128), 64, 512, 3), error);   // F % c
    CHECK_THROWS_AS(converted_shape(DynamicGqaShape(32, 8, 128), 64, 1984, 4), error);  // cache not smaller
    CHECK_THROWS_AS(converted_shape(DynamicGqaShape(32, 8, 128), 64, 5000, 4), error);  // r > 2L − d_r
    CHECK_THROWS_AS(converted_shape(DynamicGqaShape(9, 3, 64), 64, 192, 1, true), error);  // exact needs d_r = L
}
