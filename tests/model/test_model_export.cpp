// Export to stock-DeepSeek form (model/deepseek.hpp) and to GGUF (model/export_gguf.hpp) on small
// random models: the stock parametrisation computes the converted model's function, the files read
// back to the same logits, and bad input is refused with transmla::error and leaves no file.
#include "transmla/model/convert_model.hpp"
#include "transmla/model/deepseek.hpp"
#include "transmla/model/export_gguf.hpp"
#include "transmla/model/export_hf.hpp"

#include "random_model.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <sys/resource.h>
#include <unistd.h>

using namespace transmla;
using namespace transmla::test;
namespace fs = std::filesystem;

namespace {

std::vector<float> logits_of(const model::Model& m, const std::vector<std::int32_t>& tok) {
    auto c = m.make_cache(std::int64_t(tok.size()));
    const auto l = m.forward(tok, c);
    return std::vector<float>(l.data(), l.data() + l.size());
}

/// max |a − b| / max |b|
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        num = std::max(num, std::abs(double(a[i]) - b[i]));
        den = std::max(den, std::abs(double(b[i])));
    }
    return num / den;
}

/// A GGUF holding only tokenizer metadata (what the writers copy).
io::GgufFile tokenizer_source(int vocab) {
    io::GgufWriter w;
    w.set("general.architecture", io::GgufValue::string("llama"));
    w.set("tokenizer.ggml.model", io::GgufValue::string("gpt2"));
    std::vector<std::string> toks;
    for (int i = 0; i < vocab; ++i) toks.push_back(std::string(1, 't').append(std::to_string(i)));
    w.set("tokenizer.ggml.tokens", io::GgufValue::strings(toks));
    w.set("tokenizer.ggml.bos_token_id", io::GgufValue::u32(1));
    const auto b = w.to_bytes();
    std::vector<std::byte> bytes(b.size());
    std::memcpy(bytes.data(), b.data(), b.size());
    return io::GgufFile::from_bytes(std::move(bytes), "tokenizer source");
}

model::Model transmla_model(int n_kv, int q_lora_rank = 0) {
    const auto m = random_model(61, 4, n_kv, 16, 48, 2, true, RopePairing::half_split);
    std::vector<std::vector<std::int32_t>> calib;
    for (int i = 0; i < 4; ++i) calib.push_back(random_tokens(32, 61));
    convert::ConvertOptions o;
    o.method = convert::Method::transmla;
    o.rope_dim = 8, o.freqfold = 2, o.cache_budget = 0.5, o.q_lora_rank = q_lora_rank;
    return model::convert_model(m, calib, o).model;
}

struct TempDir {
    fs::path p;
    TempDir() {
        p = fs::temp_directory_path() / ("transmla_export_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(uniform_int(0, 1 << 30)));
        fs::create_directories(p);
    }
    ~TempDir() { fs::remove_all(p); }
    std::string operator/(const std::string& n) const { return (p / n).string(); }
    std::size_t entries() const { return std::size_t(std::distance(fs::directory_iterator(p), fs::directory_iterator())); }
};

}  // namespace

TEST_CASE("to_deepseek: stock DeepSeek computation equals the converted model (q_proj and low-rank query)") {
    for (const int ql : {0, 12}) {
        CAPTURE(ql);
        const auto m = transmla_model(2, ql);
        const auto ck = model::to_deepseek(m);
        CHECK(ck.config.qk_rope_head_dim == 8);
        CHECK(ck.config.q_lora_rank == ql);
        // the latent rank 24 is padded to 32 with zero dimensions, and without padding it stays 24
        CHECK(std::get<model::MlaAttention>(m.layers[0].attn).rank == 24);
        CHECK(ck.config.kv_lora_rank == 32);
        model::DeepseekExportOptions unpadded;
        unpadded.latent_multiple = 1;
        const auto ck1 = model::to_deepseek(m, unpadded);
        CHECK(ck1.config.kv_lora_rank == 24);
        // the linearised norm: weights sqrt(ε)/s, latent rows scaled by s, s a power of two
        const auto& L = ck.layers[0];
        const float s = L.kv_a_proj_with_mqa(0, 0) / std::get<model::MlaAttention>(m.layers[0].attn).kv_a(0, 0);
        CHECK(s < 1e-6f);
        CHECK(std::exp2(std::round(std::log2(double(s)))) == doctest::Approx(double(s)).epsilon(1e-6));
        const auto back = model::from_deepseek(ck);
        const auto tok = random_tokens(24, 61);
        const double d = rel_diff(logits_of(back, tok), logits_of(m, tok));
        CAPTURE(d);
        CHECK(d < 2e-6);
        CHECK(rel_diff(logits_of(model::from_deepseek(ck1), tok), logits_of(m, tok)) < 2e-6);
        // and the absorbed decode of the reloaded model token by token
        auto c0 = m.make_cache(24), c1 = back.make_cache(24);
        for (const auto t : tok) {
            const std::vector<std::int32_t> one{t};
            const auto a = m.forward(one, c0), b = back.forward(one, c1);
            CHECK(rel_diff(std::vector<float>(b.data(), b.data() + b.size()),
                           std::vector<float>(a.data(), a.data() + a.size())) < 2e-6);
        }
    }
}

TEST_CASE("deepseek2 GGUF: written and read back, the logits are the converted model's") {
    const auto m = transmla_model(2);
    const auto tokf = tokenizer_source(61);
    TempDir dir;
    const auto tok = random_tokens(20, 61);
    const auto want = logits_of(m, tok);
    for (const auto& [dt, tol] : {std::pair{model::ExportDtype::f32, 2e-6}, std::pair{model::ExportDtype::bf16, 5e-2},
                                 std::pair{model::ExportDtype::f16, 5e-3}, std::pair{model::ExportDtype::q8_0, 5e-2}}) {
        CAPTURE(model::to_string(dt));
        const std::string path = dir / (std::string("m-") + model::to_string(dt) + ".gguf");
        model::write_deepseek2_gguf(m, tokf, path, dt);
        const io::GgufFile f(path);
        CHECK(f.meta_string("general.architecture") == "deepseek2");
        CHECK(f.meta_int("deepseek2.attention.head_count_kv") == 1);
        CHECK(f.meta_int("deepseek2.leading_dense_block_count") == 2);
        CHECK(f.meta_int("deepseek2.attention.q_lora_rank") == 0);
        CHECK(f.has("tokenizer.ggml.tokens"));
        CHECK(f.tensor("blk.0.attn_kv_a_norm.weight").type == io::GgmlType::F32);
        const auto back = model::load_deepseek2_gguf(f);
        const double d = rel_diff(logits_of(back, tok), want);
        CAPTURE(d);
        CHECK(d < tol);
    }
    CHECK(dir.entries() == 4);  // no temporary left behind
}

TEST_CASE("Exact conversion of an MQA model exports and keeps the original logits") {
    const auto m = random_model(61, 4, 1, 16, 48, 2, false, RopePairing::half_split);
    std::vector<std::vector<std::int32_t>> calib;
    for (int i = 0; i < 4; ++i) calib.push_back(random_tokens(32, 61));
    convert::ConvertOptions o;
    o.method = convert::Method::exact;
    const auto conv = model::convert_model(m, calib, o).model;
    const auto ck = model::to_deepseek(conv);
    CHECK(ck.config.qk_nope_head_dim >= 1);
    CHECK(ck.config.qk_rope_head_dim == 16);
    const auto tokf = tokenizer_source(61);
    TempDir dir;
    model::write_deepseek2_gguf(conv, tokf, dir / "exact.gguf");
    const auto back = model::load_deepseek2_gguf(dir / "exact.gguf");
    const auto tok = random_tokens(24, 61);
    const double d = rel_diff(logits_of(back, tok), logits_of(m, tok));
    CAPTURE(d);
    CHECK(d < 1e-5);
}

TEST_CASE("llama GGUF writer: the original model reads back with the same logits (both pairings)") {
    for (const auto pairing : {RopePairing::half_split, RopePairing::interleaved}) {
        const auto m = random_model(61, 4, 2, 16, 48, 2, false, pairing);
        const auto tokf = tokenizer_source(61);
        TempDir dir;
        model::write_llama_gguf(m, tokf, dir / "o.gguf");
        const auto back = model::load_gguf(dir / "o.gguf");
        const auto tok = random_tokens(20, 61);
        CHECK(rel_diff(logits_of(back, tok), logits_of(m, tok)) < 1e-6);
    }
}

TEST_CASE("Export refuses what stock DeepSeek code cannot run, before writing anything") {
    const auto tokf = tokenizer_source(61);
    TempDir dir;
    const std::string out = dir / "x.gguf";
    auto refuses = [&](const model::Model& m, const char* what) {
        CAPTURE(what);
        try {
            model::write_deepseek2_gguf(m, tokf, out);
            FAIL("no error");
        } catch (const transmla::error& e) {
            CHECK(std::string(e.what()).find(what) != std::string::npos);
        }
        CHECK(!fs::exists(out));
        CHECK(dir.entries() == 0);
    };
    // attention biases (Qwen2-style)
    auto biased = transmla_model(2);
    auto& a = std::get<model::MlaAttention>(biased.layers[1].attn);
    a.bkv_a = Eigen::VectorXf::Constant(a.kv_a.rows(), 0.1f);
    refuses(biased, "biases");
    // an unconverted model
    refuses(random_model(61, 4, 2, 16, 48, 2, true, RopePairing::half_split), "only MLA layers");
    // exact conversion with two KV heads: every RoPE frequency twice, not geometric
    {
        const auto m = random_model(61, 4, 2, 16, 48, 1, true, RopePairing::half_split);
        std::vector<std::vector<std::int32_t>> calib{random_tokens(32, 61), random_tokens(32, 61)};
        convert::ConvertOptions o;
        o.method = convert::Method::exact;
        refuses(model::convert_model(m, calib, o).model, "not geometric");
    }
    CHECK_THROWS_WITH_AS(model::parse_export_dtype("q4_k"), doctest::Contains("f32, f16, bf16, q8_0"), transmla::error);
    // a converted model is no llama model
    CHECK_THROWS_WITH_AS(model::write_llama_gguf(transmla_model(2), tokf, out), doctest::Contains("not the original GQA"),
                         transmla::error);
    CHECK(dir.entries() == 0);
    // a GGUF that is not deepseek2
    model::write_llama_gguf(random_model(61, 4, 2, 16, 48, 1, true, RopePairing::half_split), tokf, dir / "l.gguf");
    CHECK_THROWS_WITH_AS(model::load_deepseek2_gguf(dir / "l.gguf"), doctest::Contains("expected 'deepseek2'"),
                         transmla::error);
}

TEST_CASE("A failing write (full disk) leaves no file and does not touch an existing one") {
    const auto m = transmla_model(2);
    const auto tokf = tokenizer_source(61);
    TempDir dir;
    const std::string out = dir / "m.gguf";
    { std::ofstream(out) << "previous contents"; }
    // a file-size limit makes the write fail part way, as a full disk does (EFBIG instead of ENOSPC)
    struct rlimit old {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
    bool threw = false;
    try {
        model::write_deepseek2_gguf(m, tokf, out);
    } catch (const transmla::error& e) {
        threw = true;
        CHECK(std::string(e.what()).find("m.gguf") != std::string::npos);
    }
    ::setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    CHECK(threw);
    std::ifstream in(out);
    std::string s;
    std::getline(in, s);
    CHECK(s == "previous contents");
    CHECK(dir.entries() == 1);
    // an unwritable target directory
    CHECK_THROWS_AS(model::write_deepseek2_gguf(m, tokf, dir / "no/such/dir/m.gguf"), transmla::error);
}

TEST_CASE("DeepSeek-V3 directory: sharded, read back with transformers' epsilon, replaces an old one only when done") {
    const auto m = transmla_model(2, 12);
    TempDir dir;
    const std::string out = dir / "hf";
    fs::create_directories(out);
    { std::ofstream(fs::path(out) / "stale.txt") << "old"; }
    model::HfExportOptions o;
    o.shard_bytes = 4096;  // force several shards
    model::write_deepseek_v3_dir(m, out, o);
    CHECK(!fs::exists(fs::path(out) / "stale.txt"));
    CHECK(fs::exists(fs::path(out) / "model.safetensors.index.json"));
    CHECK(fs::exists(fs::path(out) / "model-00001-of-00002.safetensors") == false);  // far more than two
    CHECK(dir.entries() == 1);
    const auto back = model::load_deepseek_v3_dir(out);
    const auto tok = random_tokens(20, 61);
    const auto want = logits_of(m, tok);
    CHECK(rel_diff(logits_of(back, tok), want) < 2e-6);
    // bf16 in one file
    o.shard_bytes = 5ull << 30;
    o.dtype = model::ExportDtype::bf16;
    model::write_deepseek_v3_dir(m, out, o);
    CHECK(fs::exists(fs::path(out) / "model.safetensors"));
    CHECK(rel_diff(logits_of(model::load_deepseek_v3_dir(out), tok), want) < 5e-2);
    // dtypes the format or the scaled latent cannot take, before anything is written
    for (const auto dt : {model::ExportDtype::f16, model::ExportDtype::q8_0}) {
        o.dtype = dt;
        CHECK_THROWS_AS(model::write_deepseek_v3_dir(m, dir / "other", o), transmla::error);
        CHECK(!fs::exists(dir / "other"));
    }
    CHECK(dir.entries() == 1);
}
