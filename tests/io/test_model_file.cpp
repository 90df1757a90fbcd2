// The real SmolLM2-135M-Instruct Q4_1 GGUF (label `model`): its metadata, every tensor
// dequantised and compared with gguf-py (tests/data/smollm2_tensor_stats.json), and the tokenizer
// compared with Hugging Face tokenizers on 329 strings and the GPL-3 text
// (tests/data/smollm2_tokenizer_expectations.json) and with llama.cpp
// (tests/data/smollm2_tokenizer_llamacpp.json); see tests/data/README.md.
#include "transmla/io/gguf.hpp"
#include "transmla/io/tokenizer.hpp"

#include "io_test_util.hpp"
#include "test_util.hpp"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace transmla;
using namespace transmla::io;

namespace {

const GgufFile* model_file() {
    static const std::unique_ptr<GgufFile> f = []() -> std::unique_ptr<GgufFile> {
        const auto p = transmla::test::smollm2_gguf_path();
        return p ? std::make_unique<GgufFile>(*p) : nullptr;
    }();
    return f.get();
}

const Tokenizer* model_tokenizer() {
    static const std::unique_ptr<Tokenizer> t = []() -> std::unique_ptr<Tokenizer> {
        const GgufFile* f = model_file();
        return f ? std::make_unique<Tokenizer>(Tokenizer::from_gguf(*f)) : nullptr;
    }();
    return t.get();
}

/// `s` without the bytes whose byte-level character is not a token (the tokenizer drops those).
std::string strip_unknown_bytes(const Tokenizer& t, const std::string& s) {
    std::string out;
    for (const char ch : s) {
        const int b = static_cast<unsigned char>(ch);
        // GPT-2 byte→character table: printable Latin-1 bytes map to themselves, the 68 others to
        // U+0100 + k in byte order
        int k = 0;
        for (int x = 0; x < b; ++x)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++k;
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        std::string c;
        utf8_append(c, std::uint32_t(printable ? b : 256 + k));
        if (t.token_id(c)) out += ch;
    }
    return out;
}

}  // namespace

TEST_CASE("SmolLM2 GGUF: metadata and tensor infos") {
    const GgufFile* f = model_file();
    if (!f) return;
    CHECK(f->version() == 3);
    CHECK(f->alignment() == 32);
    CHECK(f->meta_string("general.architecture") == "llama");
    CHECK(f->meta_int("llama.block_count") == 30);
    CHECK(f->meta_int("llama.embedding_length") == 576);
    CHECK(f->meta_int("llama.feed_forward_length") == 1536);
    CHECK(f->meta_int("llama.attention.head_count") == 9);
    CHECK(f->meta_int("llama.attention.head_count_kv") == 3);
    CHECK(f->meta_int("llama.rope.dimension_count") == 64);
    CHECK(f->meta_float("llama.rope.freq_base") == 100000.0);
    CHECK(std::abs(f->meta_float("llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-12);
    CHECK(f->meta_int("llama.vocab_size") == 49152);
    CHECK(f->meta_string("tokenizer.ggml.pre") == "smollm");
    CHECK(f->meta_strings("general.languages") == std::vector<std::string>{"en"});
    REQUIRE(f->tensors().size() == 272);
    std::map<std::string, int> by_type;
    for (const auto& t : f->tensors()) ++by_type[ggml_type_name(t.type)];
    CHECK(by_type == std::map<std::string, int>{{"F32", 61}, {"Q4_1", 210}, {"Q8_0", 1}});
    CHECK(f->tensor("token_embd.weight").shape() == std::vector<std::int64_t>{49152, 576});
    CHECK(f->tensor("blk.0.attn_k.weight").shape() == std::vector<std::int64_t>{192, 576});
    CHECK(f->tensor("blk.0.ffn_down.weight").shape() == std::vector<std::int64_t>{576, 1536});
    CHECK_FALSE(f->has_tensor("output.weight"));  // tied embeddings
    CHECK_THROWS_WITH_AS(f->tensor("output.weight"), doctest::Contains("'output.weight'"), transmla::error);
}

TEST_CASE("SmolLM2 GGUF: every tensor dequantises as gguf-py does") {
    const GgufFile* f = model_file();
    if (!f) return;
    const auto j = transmla::test::load_test_json("smollm2_tensor_stats.json");
    MESSAGE("reference: " << j["tool"].get<std::string>());
    REQUIRE(j["tensors"].size() == f->tensors().size());
    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t total = 0;
    for (const auto& e : j["tensors"]) {
        const std::string name = e["name"];
        CAPTURE(name);
        const GgufTensorInfo& t = f->tensor(name);
        CHECK(ggml_type_name(t.type) == e["type"].get<std::string>());
        const auto ne = e["ne"].get<std::vector<std::int64_t>>();
        for (std::size_t d = 0; d < ne.size(); ++d) CHECK(t.ne[d] == ne[d]);
        const std::vector<float> v = f->dequantize(t);
        REQUIRE(std::int64_t(v.size()) == e["n"].get<std::int64_t>());
        total += std::int64_t(v.size());
        double sum = 0, sumsq = 0;
        for (float x : v) {
            sum += x;
            sumsq += double(x) * x;
        }
        CHECK(std::abs(sumsq - e["sumsq"].get<double>()) <= 1e-9 * e["sumsq"].get<double>());
        CHECK(std::abs(sum - e["sum"].get<double>()) <= 1e-9 * std::sqrt(e["sumsq"].get<double>() * double(v.size())));
        const auto stride = e["stride"].get<std::size_t>();
        const auto sample = e["sample"].get<std::vector<float>>();
        std::vector<float> got;
        for (std::size_t i = 0; i < sample.size(); ++i) got.push_back(v[i * stride]);
        CHECK(got == sample);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("dequantised " << total << " weights in " << secs << " s");
}

TEST_CASE("SmolLM2 tokenizer: ids equal Hugging Face tokenizers on the test strings" * doctest::timeout(120)) {
    const Tokenizer* t = model_tokenizer();
    if (!t) return;
    CHECK(t->vocab_size() == 49152);
    CHECK(t->n_merges() == 48900);
    CHECK(t->bos_id() == 1);
    CHECK(t->eos_id() == 2);
    CHECK(t->pre_tokenizer() == PreTokenizer::digits_gpt2);
    CHECK(t->token_text(2) == "<|im_end|>");
    CHECK(t->token_type(2) == TokenType::control);
    const auto j = transmla::test::load_test_json("smollm2_tokenizer_expectations.json");
    MESSAGE("reference: " << j["tool"].get<std::string>());
    int n = 0;
    for (const auto& c : j["cases"]) {
        const std::string text = c["text"];
        CAPTURE(text);
        const auto ids = c["ids"].get<std::vector<std::int32_t>>();
        const auto ids_special = c["ids_special"].get<std::vector<std::int32_t>>();
        CHECK(t->encode(text) == ids);  // add_bos is false for this model
        CHECK(t->encode(text, true, true) == ids_special);
        CHECK(t->decode(ids) == strip_unknown_bytes(*t, text));
        CHECK(t->decode(ids_special) == strip_unknown_bytes(*t, text));
        ++n;
    }
    CHECK(n == 333);
    CHECK(strip_unknown_bytes(*t, "a\x04\xff") == "a");  // 0x04 and 0xFF have no token in SmolLM2
}

TEST_CASE("SmolLM2 vocabulary behind the Llama 3 pre-tokenizer and ignore_merges equals HF") {
    const GgufFile* f = model_file();
    if (!f) return;
    TokenizerConfig c;
    c.tokens = f->meta_strings("tokenizer.ggml.tokens");
    c.merges = f->meta_strings("tokenizer.ggml.merges");
    c.pre = PreTokenizer::llama3;
    c.ignore_merges = true;
    const Tokenizer t(std::move(c));
    const auto j = transmla::test::load_test_json("smollm2_tokenizer_expectations.json");
    int differs_from_smollm = 0;
    for (const auto& e : j["cases"]) {
        const std::string text = e["text"];
        CAPTURE(text);
        const auto expect = e["ids_llama3"].get<std::vector<std::int32_t>>();
        CHECK(t.encode(text) == expect);
        differs_from_smollm += expect != e["ids"].get<std::vector<std::int32_t>>();
    }
    CHECK(differs_from_smollm > 0);
}

TEST_CASE("SmolLM2 tokenizer: ids equal llama.cpp's wherever every byte has a token") {
    // llama.cpp is the second independent implementation. It agrees with HF except where a byte
    // has no token: HF (and this tokenizer) drop such bytes before merging, llama.cpp after.
    const Tokenizer* t = model_tokenizer();
    if (!t) return;
    const auto j = transmla::test::load_test_json("smollm2_tokenizer_llamacpp.json");
    MESSAGE("reference: " << j["tool"].get<std::string>());
    int compared = 0, skipped = 0;
    for (const auto& c : j["cases"]) {
        const std::string text = c["text"];
        CAPTURE(text);
        if (strip_unknown_bytes(*t, text) != text) {
            ++skipped;
            continue;
        }
        CHECK(t->encode(text) == c["ids"].get<std::vector<std::int32_t>>());
        CHECK(t->encode(text, true, true) == c["ids_special"].get<std::vector<std::int32_t>>());
        ++compared;
    }
    MESSAGE(compared << " strings compared with llama.cpp, " << skipped << " with bytes that have no token skipped");
    CHECK(compared == 329);
    CHECK(j["differs_from_hf"].size() == 1);  // "!\x04!": the only disagreement, and it has such a byte
}

TEST_CASE("SmolLM2 tokenizer: the GPL-3 text tokenizes as Hugging Face does" * doctest::timeout(120)) {
    const Tokenizer* t = model_tokenizer();
    if (!t) return;
    const auto j = transmla::test::load_test_json("smollm2_tokenizer_expectations.json");
    for (const auto& fe : j["files"]) {
        const std::string path = fe["path"];
        std::error_code ec;
        if (!std::filesystem::exists(path) || std::filesystem::file_size(path, ec) != fe["size"].get<std::uintmax_t>()) {
            MESSAGE("skipping " << path << ": absent or not the expected " << fe["size"].get<std::uintmax_t>() << " bytes");
            continue;
        }
        std::ifstream in(path, std::ios::binary);
        const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        const auto expect = fe["ids"].get<std::vector<std::int32_t>>();
        const auto t0 = std::chrono::steady_clock::now();
        const auto ids = t->encode(text);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        MESSAGE(path << ": " << text.size() << " bytes -> " << ids.size() << " tokens in " << secs << " s");
        CHECK(ids.size() == expect.size());
        CHECK(ids == expect);
        CHECK(t->decode(ids) == text);
    }
}

TEST_CASE("SmolLM2 tokenizer: random byte strings round-trip, less the bytes without a token") {
    const Tokenizer* t = model_tokenizer();
    if (!t) return;
    int lossless = 0;
    for (int trial = 0; trial < 200; ++trial) {
        std::string s;
        const int n = int(transmla::test::uniform_int(1, 80));
        const bool any_byte = trial % 2 == 0;
        for (int i = 0; i < n; ++i) {
            if (any_byte) s += char(transmla::test::uniform_int(0, 255));
            else utf8_append(s, std::uint32_t(transmla::test::uniform_int(0x20, 0x7FF)));  // text-like
        }
        CAPTURE(s);
        const std::string expect = strip_unknown_bytes(*t, s);
        lossless += expect == s;
        CHECK(t->decode(t->encode(s)) == expect);
    }
    CHECK(lossless >= 100);
}

TEST_CASE("SmolLM2 GGUF: unpermute_llama_qk restores the half-split RoPE pairs of attn_q / attn_k") {
    // Indirect check on the real weights: the two rows of a RoPE pair rotate together, so in a
    // trained model their norms are close. After unpermute_llama_qk, HF rows j and j + d/2 must
    // be such pairs; in the stored (interleaved) order, or after the wrong-way permutation, rows
    // j and j + d/2 belong to different frequencies.
    const GgufFile* f = model_file();
    if (!f) return;
    const int d = 64, in = 576;
    auto pair_mismatch = [&](const std::vector<float>& w, int heads) {
        double acc = 0;
        for (int h = 0; h < heads; ++h)
            for (int j = 0; j < d / 2; ++j) {
                double n0 = 0, n1 = 0;
                for (int c = 0; c < in; ++c) {
                    const double a = w[std::size_t((h * d + j) * in + c)], b = w[std::size_t((h * d + j + d / 2) * in + c)];
                    n0 += a * a;
                    n1 += b * b;
                }
                acc += std::abs(0.5 * std::log(n0 / n1));
            }
        return acc / (heads * d / 2);
    };
    for (const auto& [kind, heads] : {std::pair<std::string, int>{"attn_q", 9}, {"attn_k", 3}}) {
        double hf = 0, raw = 0, wrong = 0;
        for (int layer = 0; layer < 30; ++layer) {
            const auto w = f->dequantize("blk." + std::to_string(layer) + "." + kind + ".weight");
            auto u = w, p = w;
            unpermute_llama_qk(u, heads, d, in);
            permute_llama_qk(p, heads, d, in);
            hf += pair_mismatch(u, heads) / 30;
            raw += pair_mismatch(w, heads) / 30;
            wrong += pair_mismatch(p, heads) / 30;
        }
        MESSAGE(kind << ": mean |log norm ratio| of rows (j, j+d/2): unpermuted " << hf << ", stored order " << raw
                     << ", permuted the wrong way " << wrong);
        CHECK(hf < 0.5 * raw);
        CHECK(hf < 0.75 * wrong);
    }
}
