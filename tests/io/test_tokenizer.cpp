// Tokenizer building blocks without the real model: UTF-8 decoding, Unicode classes, the GPT-2 /
// smollm pre-tokenizers (expected pieces checked against Hugging Face tokenizers' ByteLevel and
// Digits pre-tokenizers), BPE merge order on a tiny vocabulary, special tokens, and lossless
// byte-level round trips. The SmolLM2 vocabulary itself is tested in test_model_file.cpp.
#include "transmla/io/tokenizer.hpp"

#include "io_test_util.hpp"
#include "test_util.hpp"

#include <string>
#include <vector>

using namespace transmla;
using namespace transmla::io;

namespace {

using Pieces = std::vector<std::string>;

/// The 256 byte-level characters, in byte order (built here from the GPT-2 definition: printable
/// Latin-1 bytes stand for themselves, the others take U+0100.. in byte order).
std::vector<std::string> byte_tokens() {
    std::vector<std::string> out;
    int next = 256;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        std::string s;
        utf8_append(s, std::uint32_t(printable ? b : next++));
        out.push_back(s);
    }
    return out;
}

TokenizerConfig tiny_config(std::vector<std::string> merges, std::vector<std::string> extra = {}) {
    TokenizerConfig c;
    c.tokens = byte_tokens();
    for (auto& e : extra) c.tokens.push_back(e);
    c.merges = std::move(merges);
    c.pre = PreTokenizer::gpt2;
    return c;
}

std::vector<std::string> pieces_of(const Tokenizer& t, const std::vector<std::int32_t>& ids) {
    std::vector<std::string> out;
    for (auto id : ids) out.push_back(t.token_text(id));
    return out;
}

}  // namespace

TEST_CASE("utf8_decode: valid sequences and byte-wise recovery from invalid ones") {
    const std::string s = "a\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80";  // a é 中 😀
    const auto cps = utf8_decode(s);
    REQUIRE(cps.size() == 4);
    CHECK(cps[0].cp == 'a');
    CHECK(cps[1].cp == 0xE9);
    CHECK(cps[2].cp == 0x4E2D);
    CHECK(cps[3].cp == 0x1F600);
    CHECK(cps[3].offset == 6);
    CHECK(cps[3].length == 4);
    for (const auto& c : cps) CHECK(c.valid);
    std::string back;
    for (const auto& c : cps) utf8_append(back, c.cp);
    CHECK(back == s);

    // lone continuation, overlong 2-byte, surrogate, truncated 3-byte at the end
    const std::string bad = "\x80x\xc0\x80\xed\xa0\x80\xe2\x82";
    const auto b = utf8_decode(bad);
    std::size_t total = 0;
    for (const auto& c : b) total += c.length;
    CHECK(total == bad.size());
    CHECK_FALSE(b[0].valid);
    CHECK(b[1].valid);
    CHECK(b[1].cp == 'x');
    int invalid = 0;
    for (const auto& c : b) invalid += c.valid ? 0 : 1;
    CHECK(invalid == 8);  // every byte except 'x'
}

TEST_CASE("Unicode classes") {
    for (std::uint32_t cp : {0x41u, 0x7Au, 0xE9u, 0xDFu, 0x436u, 0x3A9u, 0x5D0u, 0x627u, 0x915u, 0x4E2Du, 0x3042u,
                             0xAC00u, 0x1D400u, 0x2C6u})
        CHECK_MESSAGE(is_letter(cp), std::hex << cp);
    for (std::uint32_t cp : {0x30u, 0x39u, 0xB2u, 0xBDu, 0x663u, 0x967u, 0x216Bu, 0xFF15u, 0x2460u})
        CHECK_MESSAGE(is_number(cp), std::hex << cp);
    for (std::uint32_t cp : {0x21u, 0x20ACu, 0x301u, 0x200Du, 0x1F600u, 0x5Fu, 0x940u, 0xD7FFu, 0x10FFFFu}) {
        CHECK_MESSAGE(!is_letter(cp), std::hex << cp);
        CHECK_MESSAGE(!is_number(cp), std::hex << cp);
    }
    for (std::uint32_t cp : {0x20u, 0x09u, 0x0Au, 0x0Du, 0x0Bu, 0x0Cu, 0x85u, 0xA0u, 0x2003u, 0x2028u, 0x3000u})
        CHECK_MESSAGE(is_whitespace(cp), std::hex << cp);
    for (std::uint32_t cp : {0x200Bu, 0x1Cu, 0x41u, 0xFEFFu}) CHECK_MESSAGE(!is_whitespace(cp), std::hex << cp);
}

TEST_CASE("pre-tokenizers split like Hugging Face's ByteLevel (GPT-2 regex) and Digits") {
    // expected pieces from tokenizers 0.23: ByteLevel(add_prefix_space=False).pre_tokenize_str and
    // Sequence([Digits(individual_digits=True), ByteLevel(...)]) (shown here before byte mapping)
    struct Case {
        std::string text;
        Pieces gpt2, smollm;
    };
    const Case cases[] = {
        {"Hello world", {"Hello", " world"}, {"Hello", " world"}},
        {"a   b", {"a", "  ", " b"}, {"a", "  ", " b"}},
        {"a \n b", {"a", " \n", " b"}, {"a", " \n", " b"}},
        {"I'm", {"I", "'m"}, {"I", "'m"}},
        {"x  ", {"x", "  "}, {"x", "  "}},
        {"don't", {"don", "'t"}, {"don", "'t"}},
        {"'S", {"'", "S"}, {"'", "S"}},
        {"$19.99", {"$", "19", ".", "99"}, {"$", "1", "9", ".", "9", "9"}},
        {"hi!!! !!!", {"hi", "!!!", " !!!"}, {"hi", "!!!", " !!!"}},
        {"\n\nx", {"\n", "\n", "x"}, {"\n", "\n", "x"}},
        {"a\t\tb", {"a", "\t", "\t", "b"}, {"a", "\t", "\t", "b"}},
        {"  ", {"  "}, {"  "}},
        {"it's 2026", {"it", "'s", " 2026"}, {"it", "'s", " ", "2", "0", "2", "6"}},
        {"x\xc2\xb2 \xe2\x85\xab \xd9\xa3" "4", {"x", "\xc2\xb2", " \xe2\x85\xab", " \xd9\xa3" "4"},
         {"x", "\xc2\xb2", " ", "\xe2\x85\xab", " ", "\xd9\xa3", "4"}},
        {"a\xc2\xa0" "b", {"a", "\xc2\xa0", "b"}, {"a", "\xc2\xa0", "b"}},
    };
    TokenizerConfig c = tiny_config({});
    const Tokenizer gpt2(c);
    c.pre = PreTokenizer::digits_gpt2;
    const Tokenizer smollm(c);
    for (const auto& k : cases) {
        CAPTURE(k.text);
        CHECK(gpt2.pre_tokenize(k.text) == k.gpt2);
        CHECK(smollm.pre_tokenize(k.text) == k.smollm);
    }
    CHECK(gpt2.pre_tokenize("").empty());
    CHECK(pre_tokenizer_from_name("smollm") == PreTokenizer::digits_gpt2);
    CHECK(pre_tokenizer_from_name("gpt2") == PreTokenizer::gpt2);
    CHECK_THROWS_WITH_AS(pre_tokenizer_from_name("falcon"), doctest::Contains("falcon"), transmla::error);
}

TEST_CASE("BPE applies merges lowest rank first, leftmost first") {
    {
        const Tokenizer t(tiny_config({"a b", "b c", "ab c"}, {"ab", "bc", "abc"}));
        CHECK(pieces_of(t, t.encode("abc")) == Pieces{"abc"});
    }
    {
        const Tokenizer t(tiny_config({"b c", "a b", "ab c"}, {"ab", "bc", "abc"}));
        CHECK(pieces_of(t, t.encode("abc")) == Pieces{"a", "bc"});  // "b c" wins; no rule for "a bc"
    }
    {
        const Tokenizer t(tiny_config({"a a"}, {"aa"}));
        CHECK(pieces_of(t, t.encode("aaa")) == Pieces{"aa", "a"});
        CHECK(pieces_of(t, t.encode("aaaa")) == Pieces{"aa", "aa"});
        CHECK(pieces_of(t, t.encode("aaaaa")) == Pieces{"aa", "aa", "a"});
    }
    {
        // merges never cross pre-tokenizer pieces; the space is the byte character U+0120
        const Tokenizer t(tiny_config({"\xc4\xa0 w", "o r", "\xc4\xa0w or"}, {"\xc4\xa0w", "or", "\xc4\xa0wor"}));
        CHECK(pieces_of(t, t.encode("wor wor")) == Pieces{"w", "or", "\xc4\xa0wor"});
    }
    {
        // a merge whose result is not in the vocabulary falls back to the single characters
        const Tokenizer t(tiny_config({"x y"}));
        CHECK(pieces_of(t, t.encode("xy")) == Pieces{"x", "y"});
    }
}

TEST_CASE("special tokens, BOS/EOS and decoding") {
    TokenizerConfig c = tiny_config({"h i"}, {"hi", "<|ctl|>", "<usr>", "<|ctl|>x"});
    c.token_types.assign(c.tokens.size(), std::int32_t(TokenType::normal));
    const std::int32_t hi = 256, ctl = 257, usr = 258, ctlx = 259;
    c.token_types[std::size_t(ctl)] = std::int32_t(TokenType::control);
    c.token_types[std::size_t(usr)] = std::int32_t(TokenType::user_defined);
    c.token_types[std::size_t(ctlx)] = std::int32_t(TokenType::control);
    c.bos_id = ctl;
    c.eos_id = ctl;
    c.add_bos = true;
    const Tokenizer t(c);
    // control tokens only with parse_special; user-defined always; longest match first
    CHECK(t.encode("hi<usr>hi", false) == std::vector<std::int32_t>{hi, usr, hi});
    CHECK(t.encode("<|ctl|>hi", false, true) == std::vector<std::int32_t>{ctl, hi});
    CHECK(t.encode("<|ctl|>xhi", false, true) == std::vector<std::int32_t>{ctlx, hi});
    const auto plain = t.encode("<|ctl|>hi", false, false);
    CHECK(plain.size() > 2);
    CHECK(std::find(plain.begin(), plain.end(), ctl) == plain.end());
    CHECK(t.encode("hi") == std::vector<std::int32_t>{ctl, hi});  // add_bos
    CHECK(t.encode("hi", false) == std::vector<std::int32_t>{hi});
    CHECK(t.decode(std::vector<std::int32_t>{ctl, hi, usr}) == "<|ctl|>hi<usr>");
    CHECK(t.decode(std::vector<std::int32_t>{ctl, hi, usr}, true) == "hi<usr>");
    CHECK(t.decode(plain) == "<|ctl|>hi");
    CHECK(t.token_to_piece(0) == std::string(1, '\0'));  // token b is byte b here
    CHECK_THROWS_WITH_AS(t.decode(std::vector<std::int32_t>{9999}), doctest::Contains("9999"), transmla::error);
    CHECK(t.token_id("hi") == hi);
    CHECK_FALSE(t.token_id("nope").has_value());
}

TEST_CASE("byte-level BPE is lossless on arbitrary bytes, including invalid UTF-8") {
    const Tokenizer t(tiny_config({"a b", "\xc4\xa0 a", "c d"}, {"ab", "\xc4\xa0" "a", "cd"}));
    TokenizerConfig c2 = tiny_config({"a b"}, {"ab"});
    c2.pre = PreTokenizer::digits_gpt2;
    const Tokenizer t2(c2);
    for (int trial = 0; trial < 200; ++trial) {
        std::string s;
        const int n = int(transmla::test::uniform_int(0, 60));
        for (int i = 0; i < n; ++i) {
            const int kind = int(transmla::test::uniform_int(0, 3));
            if (kind == 0) s += char(transmla::test::uniform_int(0, 255));
            else if (kind == 1) s += "ab cd 12 "[transmla::test::uniform_int(0, 8)];
            else if (kind == 2) s += "\xe4\xb8\xad";
            else s += "\xf0\x9f\x98\x80";
        }
        CAPTURE(s);
        CHECK(t.decode(t.encode(s)) == s);
        CHECK(t2.decode(t2.encode(s)) == s);
        std::string joined;
        for (const auto& p : t2.pre_tokenize(s)) joined += p;
        CHECK(joined == s);
    }
}

TEST_CASE("tokenizer construction errors") {
    TokenizerConfig c = tiny_config({"a b"});
    c.merges.push_back("nospace");
    CHECK_THROWS_WITH_AS(Tokenizer{c}, doctest::Contains("nospace"), transmla::error);
    c = tiny_config({});
    c.bos_id = 100000;
    CHECK_THROWS_WITH_AS(Tokenizer{c}, doctest::Contains("100000"), transmla::error);
    c = tiny_config({});
    c.add_bos = true;
    CHECK_THROWS_WITH_AS(Tokenizer{c}, doctest::Contains("BOS"), transmla::error);
    c = tiny_config({});
    c.token_types = {1, 1};
    CHECK_THROWS_AS(Tokenizer{c}, transmla::error);

    // from_gguf: wrong tokenizer model / unknown pre-tokenizer name the file
    transmla::test::TempPath p(".gguf");
    GgufWriter w;
    w.set("tokenizer.ggml.model", GgufValue::string("llama"));
    w.write(p);
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(GgufFile(p)), doctest::Contains("'llama'"), transmla::error);
    GgufWriter w2;
    w2.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
    w2.set("tokenizer.ggml.pre", GgufValue::string("falcon"));
    w2.set("tokenizer.ggml.tokens", GgufValue::strings(byte_tokens()));
    w2.set("tokenizer.ggml.merges", GgufValue::strings({}));
    w2.write(p);
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(GgufFile(p)), doctest::Contains("falcon"), transmla::error);
}

TEST_CASE("from_gguf reads the tokenizer.ggml.* metadata written by GgufWriter") {
    transmla::test::TempPath p(".gguf");
    auto tokens = byte_tokens();
    tokens.push_back("<s>");
    tokens.push_back("ab");
    std::vector<std::int32_t> types(tokens.size(), 1);
    types[256] = 3;
    GgufWriter w;
    w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
    w.set("tokenizer.ggml.pre", GgufValue::string("smollm"));
    w.set("tokenizer.ggml.tokens", GgufValue::strings(tokens));
    w.set("tokenizer.ggml.token_type", GgufValue::i32s(types));
    w.set("tokenizer.ggml.merges", GgufValue::strings({"a b"}));
    w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(256));
    w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(256));
    w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(true));
    w.write(p);
    const Tokenizer t = Tokenizer::from_gguf(GgufFile(p));
    CHECK(t.vocab_size() == 258);
    CHECK(t.bos_id() == 256);
    CHECK(t.pre_tokenizer() == PreTokenizer::digits_gpt2);
    CHECK(t.token_type(256) == TokenType::control);
    CHECK(t.encode("ab1") == std::vector<std::int32_t>{256, 257, int('1')});
}

TEST_CASE("pre-tokenizers match Hugging Face tokenizers on 300 random strings (gpt2, smollm, llama3, qwen2)") {
    const auto j = transmla::test::load_test_json("pretokenizer_pieces.json");
    MESSAGE("reference: " << j["tool"].get<std::string>());
    const std::pair<const char*, PreTokenizer> kinds[] = {{"gpt2", PreTokenizer::gpt2},
                                                         {"smollm", PreTokenizer::digits_gpt2},
                                                         {"llama3", PreTokenizer::llama3},
                                                         {"qwen2", PreTokenizer::qwen2}};
    for (const auto& kind : kinds) {
        TokenizerConfig c = tiny_config({});
        c.pre = kind.second;
        const Tokenizer t(c);
        int n = 0;
        for (const auto& e : j["cases"]) {
            const std::string text = e["text"];
            CAPTURE(kind.first);
            CAPTURE(text);
            CHECK(t.pre_tokenize(text) == e[kind.first].get<Pieces>());
            ++n;
        }
        CHECK(n == 300);
    }
    CHECK(pre_tokenizer_from_name("llama-bpe") == PreTokenizer::llama3);
    CHECK(pre_tokenizer_from_name("qwen2") == PreTokenizer::qwen2);
}

TEST_CASE("ignore_merges: a pre-token that is a token is emitted whole") {
    // "abc" is a token but no merge builds it: BPE alone yields pieces, ignore_merges the token
    TokenizerConfig c = tiny_config({"a b"}, {"ab", "abc"});
    c.pre = PreTokenizer::llama3;
    const Tokenizer plain(c);
    c.ignore_merges = true;
    const Tokenizer whole(c);
    CHECK(pieces_of(plain, plain.encode("abc")) == Pieces{"ab", "c"});
    CHECK(pieces_of(whole, whole.encode("abc")) == Pieces{"abc"});
    CHECK(pieces_of(whole, whole.encode("abd")) == Pieces{"ab", "d"});
}
