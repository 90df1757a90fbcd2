// transmla/io/tokenizer.hpp — byte-level BPE tokenizer (GPT-2 family) built from the vocabulary in
// a GGUF file (tokenizer.ggml.model == "gpt2").
//
// Usage:
//     const auto f = transmla::io::GgufFile(path);
//     const auto tok = transmla::io::Tokenizer::from_gguf(f);
//     std::vector<std::int32_t> ids = tok.encode("Hello world");   // + BOS if the model asks
//     std::string text = tok.decode(ids);
//
// Encoding: (1) special tokens are cut out of the text (user-defined tokens always; control tokens
// such as <|im_start|> only when parse_special is true); (2) each remaining fragment is split by the
// model's pre-tokenizer; (3) each piece's bytes are mapped to printable code points (GPT-2's
// byte↔unicode table, so a space becomes 'Ġ'), and (4) adjacent symbols are merged in the order of
// tokenizer.ggml.merges (lowest rank first, leftmost first among equals) until no rule applies; the
// final symbols are looked up in tokenizer.ggml.tokens. A byte whose character is not in the
// vocabulary (SmolLM2 lacks e.g. 0x04, 0xC0, 0xF5..0xFF) is dropped before merging, as Hugging Face
// tokenizers does for a BPE model without an unknown token; decode(encode(s)) is then s without
// those bytes.
//
// Pre-tokenizers (tokenizer.ggml.pre):
//   "gpt2":  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   "smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", "command-r":
//       every \p{N} code point is first isolated on its own (Hugging Face Digits(individual_digits)),
//       then the GPT-2 rule runs on each resulting piece separately (end of piece = end of text for
//       the (?!\S) look-ahead).
//   "llama-bpe", "llama3", "llama-v3" (Llama 3):
//       (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//       and BPE "ignore_merges": a piece that is itself a token is emitted whole.
//   "qwen2", "deepseek-r1-qwen": the Llama 3 rule with \p{N} instead of \p{N}{1,3}.
// (Case-insensitive contractions fold ASCII letters only.)
// The splitting is written by hand (no std::regex); \p{L}/\p{N} come from generated Unicode tables.
// Verified in tests/io: SmolLM2 ("smollm") token for token against Hugging Face tokenizers and
// llama.cpp; the gpt2 / smollm / llama3 / qwen2 splits piece for piece against Hugging Face on
// random strings; ignore_merges against Hugging Face on the SmolLM2 vocabulary. The other names
// follow llama.cpp's grouping of pre-tokenizers. Any other value (including a missing key, which
// llama.cpp treats as its own "default" regex) is rejected rather than guessed.
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/gguf.hpp"
#include "transmla/io/unicode.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace transmla::io {

/// llama.cpp token types (tokenizer.ggml.token_type).
enum class TokenType : std::int32_t {
    undefined = 0,
    normal = 1,
    unknown = 2,
    control = 3,
    user_defined = 4,
    unused = 5,
    byte = 6,
};

/// Which pre-tokenizer splits text before BPE.
enum class PreTokenizer {
    gpt2,         ///< the GPT-2 regex
    digits_gpt2,  ///< individual digits, then the GPT-2 regex ("smollm", "starcoder", ...)
    llama3,       ///< the Llama 3 regex (numbers in groups of up to 3)
    qwen2,        ///< the Llama 3 regex with single-digit numbers
};

/// Maps a GGUF tokenizer.ggml.pre value to a PreTokenizer; throws listing the supported values.
inline PreTokenizer pre_tokenizer_from_name(std::string_view pre) {
    if (pre == "gpt2") return PreTokenizer::gpt2;
    if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell" || pre == "exaone" ||
        pre == "minerva" || pre == "command-r")
        return PreTokenizer::digits_gpt2;
    if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") return PreTokenizer::llama3;
    if (pre == "qwen2" || pre == "deepseek-r1-qwen") return PreTokenizer::qwen2;
    fail("tokenizer: unsupported pre-tokenizer '", pre,
         "'; supported: gpt2, smollm, starcoder, refact, codeshell, exaone, minerva, command-r, llama-bpe, llama3, "
         "llama-v3, qwen2, deepseek-r1-qwen");
}

/// Everything a Tokenizer is built from (what the GGUF holds).
struct TokenizerConfig {
    std::vector<std::string> tokens;        ///< id → token text (byte-level form for normal tokens)
    std::vector<std::string> merges;        ///< "left right", highest priority first
    std::vector<std::int32_t> token_types;  ///< id → TokenType; empty = all normal
    PreTokenizer pre = PreTokenizer::gpt2;
    std::int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;  ///< -1: none
    bool add_bos = false;  ///< prepend BOS when encode(..., add_special = true)
    bool add_eos = false;  ///< append EOS when encode(..., add_special = true)
    bool ignore_merges = false;  ///< a pre-token that is itself in the vocabulary is not merged (Llama 3)
};

class Tokenizer {
public:
    explicit Tokenizer(TokenizerConfig cfg);

    /// Builds the tokenizer from a GGUF's tokenizer.ggml.* metadata (model must be "gpt2").
    static Tokenizer from_gguf(const GgufFile& f);

    /// Token ids of `text`. add_special: add BOS/EOS as the model asks (add_bos / add_eos);
    /// parse_special: control tokens written in the text (e.g. "<|im_end|>") become their ids
    /// instead of being tokenized as plain text.
    std::vector<std::int32_t> encode(std::string_view text, bool add_special = true, bool parse_special = false) const;

    /// The bytes the ids stand for, concatenated. Control tokens are written as their text unless
    /// skip_special. The result may end in an incomplete UTF-8 sequence if the ids do.
    std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const;
    std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = false) const {
        return decode(std::span<const std::int32_t>(ids), skip_special);
    }
    /// The bytes one token stands for (its text for control / user-defined tokens).
    std::string token_to_piece(std::int32_t id) const;

    /// The pieces the pre-tokenizer cuts `text` into (before BPE), for inspection and tests.
    std::vector<std::string> pre_tokenize(std::string_view text) const;

    std::int32_t vocab_size() const noexcept { return std::int32_t(cfg_.tokens.size()); }
    const std::string& token_text(std::int32_t id) const { return cfg_.tokens[check_id(id)]; }
    TokenType token_type(std::int32_t id) const {
        check_id(id);
        return cfg_.token_types.empty() ? TokenType::normal : TokenType(cfg_.token_types[std::size_t(id)]);
    }
    /// Id of a token given in its stored text form, if present.
    std::optional<std::int32_t> token_id(std::string_view text) const {
        const auto it = vocab_.find(std::string(text));
        if (it == vocab_.end()) return std::nullopt;
        return it->second;
    }
    std::int32_t bos_id() const noexcept { return cfg_.bos_id; }
    std::int32_t eos_id() const noexcept { return cfg_.eos_id; }
    std::int32_t unk_id() const noexcept { return cfg_.unk_id; }
    std::int32_t pad_id() const noexcept { return cfg_.pad_id; }
    PreTokenizer pre_tokenizer() const noexcept { return cfg_.pre; }
    std::size_t n_merges() const noexcept { return ranks_.size(); }

private:
    std::size_t check_id(std::int32_t id) const {
        require(id >= 0 && id < vocab_size(), "tokenizer: token id ", id, " out of range [0, ", vocab_size(), ")");
        return std::size_t(id);
    }
    void split_gpt2(const std::vector<CodePoint>& cps, std::size_t b, std::size_t e, std::string_view text,
                    std::vector<std::string_view>& out) const;
    void split_llama3(const std::vector<CodePoint>& cps, std::string_view text, std::size_t max_digits,
                      std::vector<std::string_view>& out) const;
    void pre_split(std::string_view text, std::vector<std::string_view>& out) const;
    void bpe(std::string_view piece, std::vector<std::int32_t>& out) const;
    void encode_fragment(std::string_view text, std::vector<std::int32_t>& out) const;

    TokenizerConfig cfg_;
    std::unordered_map<std::string, std::int32_t> vocab_;
    std::unordered_map<std::string, std::int32_t> ranks_;  ///< "left right" → rank
    std::array<std::string, 256> byte_to_char_;            ///< UTF-8 of the code point for each byte
    std::unordered_map<std::uint32_t, std::uint8_t> char_to_byte_;
    std::array<bool, 256> byte_in_vocab_{};  ///< the byte's character is a token
    std::vector<std::int32_t> specials_;  ///< control + user-defined ids, longest text first
};

// ------------------------------------------------------------------------------------------------
// Implementation
// ------------------------------------------------------------------------------------------------

namespace detail {
/// GPT-2's reversible byte → code point map: printable Latin-1 bytes map to themselves, the other
/// 68 bytes (controls, space, DEL, NBSP, soft hyphen...) to U+0100 + k in byte order.
inline std::array<std::uint32_t, 256> gpt2_byte_to_cp() {
    std::array<std::uint32_t, 256> m{};
    std::uint32_t next = 256;
    for (std::uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        m[b] = printable ? b : next++;
    }
    return m;
}
}  // namespace detail

inline Tokenizer::Tokenizer(TokenizerConfig cfg) : cfg_(std::move(cfg)) {
    const std::size_t n = cfg_.tokens.size();
    require(n > 0 && n < std::size_t(1) << 31, "tokenizer: vocabulary size ", n, " out of range");
    require(cfg_.token_types.empty() || cfg_.token_types.size() == n, "tokenizer: ", cfg_.token_types.size(),
            " token types for ", n, " tokens");
    for (std::int32_t* id : {&cfg_.bos_id, &cfg_.eos_id, &cfg_.unk_id, &cfg_.pad_id})
        require(*id >= -1 && *id < std::int32_t(n), "tokenizer: special token id ", *id, " out of range [0, ", n, ")");
    require(!cfg_.add_bos || cfg_.bos_id >= 0, "tokenizer: add_bos is set but there is no BOS token");
    require(!cfg_.add_eos || cfg_.eos_id >= 0, "tokenizer: add_eos is set but there is no EOS token");
    vocab_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) vocab_.emplace(cfg_.tokens[i], std::int32_t(i));  // first wins
    ranks_.reserve(cfg_.merges.size());
    for (std::size_t i = 0; i < cfg_.merges.size(); ++i) {
        const std::string& m = cfg_.merges[i];
        const std::size_t sp = m.find(' ', 1);
        require(sp != std::string::npos && sp + 1 < m.size(), "tokenizer: merge ", i, " ('", m,
                "') is not of the form 'left right'");
        ranks_.emplace(m, std::int32_t(i));
    }
    const auto map = detail::gpt2_byte_to_cp();
    for (std::uint32_t b = 0; b < 256; ++b) {
        utf8_append(byte_to_char_[b], map[b]);
        char_to_byte_.emplace(map[b], std::uint8_t(b));
        byte_in_vocab_[b] = vocab_.count(byte_to_char_[b]) != 0;
    }
    for (std::size_t i = 0; i < n; ++i) {
        const auto t = cfg_.token_types.empty() ? TokenType::normal : TokenType(cfg_.token_types[i]);
        if ((t == TokenType::control || t == TokenType::user_defined) && !cfg_.tokens[i].empty())
            specials_.push_back(std::int32_t(i));
    }
    std::stable_sort(specials_.begin(), specials_.end(), [&](std::int32_t a, std::int32_t b) {
        return cfg_.tokens[std::size_t(a)].size() > cfg_.tokens[std::size_t(b)].size();
    });
}

inline Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
    const std::string model = f.meta_string("tokenizer.ggml.model");
    if (model != "gpt2")
        fail("GGUF '", f.path(), "': tokenizer.ggml.model is '", model,
             "'; only byte-level BPE ('gpt2') tokenizers are supported");
    TokenizerConfig c;
    c.tokens = f.meta_strings("tokenizer.ggml.tokens");
    c.merges = f.meta_strings("tokenizer.ggml.merges");
    if (f.has("tokenizer.ggml.token_type")) c.token_types = f.meta_i32s("tokenizer.ggml.token_type");
    try {
        c.pre = pre_tokenizer_from_name(f.meta_string_or("tokenizer.ggml.pre", "(missing tokenizer.ggml.pre)"));
    } catch (const error& e) {
        fail("GGUF '", f.path(), "': ", e.what());
    }
    // token ids are checked against the vocabulary before they are narrowed to int32
    auto token_id = [&](const char* key) -> std::int32_t {
        const std::int64_t id = f.meta_int_or(key, -1);
        if (id < -1 || id >= std::int64_t(c.tokens.size()))
            fail("GGUF '", f.path(), "': metadata key '", key, "' = ", id, " is not a token id (the vocabulary has ",
                 c.tokens.size(), " tokens)");
        return std::int32_t(id);
    };
    if (c.tokens.empty() || c.tokens.size() >= std::size_t(1) << 31)
        fail("GGUF '", f.path(), "': tokenizer.ggml.tokens has ", c.tokens.size(), " tokens");
    if (!c.token_types.empty() && c.token_types.size() != c.tokens.size())
        fail("GGUF '", f.path(), "': tokenizer.ggml.token_type has ", c.token_types.size(), " entries but tokenizer.ggml.tokens has ",
             c.tokens.size());
    if (f.has("tokenizer.ggml.scores") && f.meta("tokenizer.ggml.scores").is_array() &&
        f.meta("tokenizer.ggml.scores").size() != c.tokens.size())
        fail("GGUF '", f.path(), "': tokenizer.ggml.scores has ", f.meta("tokenizer.ggml.scores").size(),
             " entries but tokenizer.ggml.tokens has ", c.tokens.size());
    c.bos_id = token_id("tokenizer.ggml.bos_token_id");
    c.eos_id = token_id("tokenizer.ggml.eos_token_id");
    c.unk_id = token_id("tokenizer.ggml.unknown_token_id");
    c.pad_id = token_id("tokenizer.ggml.padding_token_id");
    c.add_bos = f.meta_bool_or("tokenizer.ggml.add_bos_token", false);
    c.add_eos = f.meta_bool_or("tokenizer.ggml.add_eos_token", false);
    c.ignore_merges = c.pre == PreTokenizer::llama3;
    try {
        return Tokenizer(std::move(c));
    } catch (const error& e) {
        fail("GGUF '", f.path(), "': ", e.what());
    }
}

inline void Tokenizer::split_gpt2(const std::vector<CodePoint>& cps, std::size_t b, std::size_t e,
                                  std::string_view text, std::vector<std::string_view>& out) const {
    // classes: 'L' letter, 'N' number, 'S' whitespace, 'O' anything else (invalid bytes included)
    auto cls = [&](std::size_t i) -> char {
        const CodePoint& c = cps[i];
        if (!c.valid) return 'O';
        if (is_letter(c.cp)) return 'L';
        if (is_number(c.cp)) return 'N';
        if (is_whitespace(c.cp)) return 'S';
        return 'O';
    };
    auto emit = [&](std::size_t from, std::size_t to) {
        const std::size_t bo = cps[from].offset, eo = cps[to - 1].offset + cps[to - 1].length;
        out.push_back(text.substr(bo, eo - bo));
    };
    auto is_ascii = [&](std::size_t i, char ch) { return i < e && cps[i].valid && cps[i].cp == std::uint32_t(ch); };
    std::size_t i = b;
    while (i < e) {
        // 's|'t|'re|'ve|'m|'ll|'d
        if (is_ascii(i, '\'')) {
            if (is_ascii(i + 1, 's') || is_ascii(i + 1, 't') || is_ascii(i + 1, 'm') || is_ascii(i + 1, 'd')) {
                emit(i, i + 2);
                i += 2;
                continue;
            }
            if ((is_ascii(i + 1, 'r') && is_ascii(i + 2, 'e')) || (is_ascii(i + 1, 'v') && is_ascii(i + 2, 'e')) ||
                (is_ascii(i + 1, 'l') && is_ascii(i + 2, 'l'))) {
                emit(i, i + 3);
                i += 3;
                continue;
            }
        }
        // ' ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+'
        const std::size_t j = is_ascii(i, ' ') ? i + 1 : i;
        if (j < e) {
            const char k = cls(j);
            if (k != 'S') {
                std::size_t end = j + 1;
                while (end < e && cls(end) == k) ++end;
                emit(i, end);
                i = end;
                continue;
            }
        }
        // '\s+(?!\S)|\s+' : a whitespace run; when a non-space follows, leave its last character
        // to start the next piece (unless the run is a single character)
        std::size_t end = i;
        while (end < e && cls(end) == 'S') ++end;
        if (end < e && end - i >= 2) --end;
        emit(i, end);
        i = end;
    }
}

inline void Tokenizer::split_llama3(const std::vector<CodePoint>& cps, std::string_view text, std::size_t max_digits,
                                    std::vector<std::string_view>& out) const {
    const std::size_t e = cps.size();
    auto cls = [&](std::size_t i) -> char {
        const CodePoint& c = cps[i];
        if (!c.valid) return 'O';
        if (is_letter(c.cp)) return 'L';
        if (is_number(c.cp)) return 'N';
        if (is_whitespace(c.cp)) return 'S';
        return 'O';
    };
    auto is_nl = [&](std::size_t i) { return i < e && cps[i].valid && (cps[i].cp == '\r' || cps[i].cp == '\n'); };
    auto is_ci = [&](std::size_t i, char lower) {  // ASCII letter, either case
        return i < e && cps[i].valid && (cps[i].cp == std::uint32_t(lower) || cps[i].cp == std::uint32_t(lower - 32));
    };
    auto emit = [&](std::size_t from, std::size_t to) {
        const std::size_t bo = cps[from].offset, eo = cps[to - 1].offset + cps[to - 1].length;
        out.push_back(text.substr(bo, eo - bo));
    };
    std::size_t i = 0;
    while (i < e) {
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if (cps[i].valid && cps[i].cp == '\'') {
            if (is_ci(i + 1, 's') || is_ci(i + 1, 't') || is_ci(i + 1, 'm') || is_ci(i + 1, 'd')) {
                emit(i, i + 2);
                i += 2;
                continue;
            }
            if ((is_ci(i + 1, 'r') && is_ci(i + 2, 'e')) || (is_ci(i + 1, 'v') && is_ci(i + 2, 'e')) ||
                (is_ci(i + 1, 'l') && is_ci(i + 2, 'l'))) {
                emit(i, i + 3);
                i += 3;
                continue;
            }
        }
        const char k = cls(i);
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (k == 'L' || (k != 'N' && !is_nl(i) && i + 1 < e && cls(i + 1) == 'L')) {
            std::size_t end = i + 1;
            while (end < e && cls(end) == 'L') ++end;
            emit(i, end);
            i = end;
            continue;
        }
        // \p{N}{1,max_digits}
        if (k == 'N') {
            std::size_t end = i + 1;
            while (end < e && end - i < max_digits && cls(end) == 'N') ++end;
            emit(i, end);
            i = end;
            continue;
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        const std::size_t j = (cps[i].valid && cps[i].cp == ' ') ? i + 1 : i;
        if (j < e && cls(j) == 'O') {
            std::size_t end = j + 1;
            while (end < e && cls(end) == 'O') ++end;
            while (is_nl(end)) ++end;
            emit(i, end);
            i = end;
            continue;
        }
        // here cps[i] is whitespace: '\s*[\r\n]+' up to the run's last line break, else
        // '\s+(?!\S)|\s+' as in GPT-2
        std::size_t end = i;
        while (end < e && cls(end) == 'S') ++end;
        std::size_t last_nl = end;
        for (std::size_t t = i; t < end; ++t)
            if (is_nl(t)) last_nl = t;
        if (last_nl < end) {
            emit(i, last_nl + 1);
            i = last_nl + 1;
            continue;
        }
        if (end < e && end - i >= 2) --end;
        emit(i, end);
        i = end;
    }
}

inline void Tokenizer::pre_split(std::string_view text, std::vector<std::string_view>& out) const {
    if (text.empty()) return;
    const std::vector<CodePoint> cps = utf8_decode(text);
    if (cfg_.pre == PreTokenizer::gpt2) {
        split_gpt2(cps, 0, cps.size(), text, out);
        return;
    }
    if (cfg_.pre == PreTokenizer::llama3 || cfg_.pre == PreTokenizer::qwen2) {
        split_llama3(cps, text, cfg_.pre == PreTokenizer::llama3 ? 3 : 1, out);
        return;
    }
    // digits_gpt2: isolate each \p{N}, run GPT-2 on the stretches between them
    std::size_t start = 0;
    for (std::size_t i = 0; i < cps.size(); ++i) {
        if (cps[i].valid && is_number(cps[i].cp)) {
            split_gpt2(cps, start, i, text, out);
            out.push_back(text.substr(cps[i].offset, cps[i].length));
            start = i + 1;
        }
    }
    split_gpt2(cps, start, cps.size(), text, out);
}

inline std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
    std::vector<std::string_view> v;
    pre_split(text, v);
    return {v.begin(), v.end()};
}

inline void Tokenizer::bpe(std::string_view piece, std::vector<std::int32_t>& out) const {
    if (cfg_.ignore_merges) {
        std::string whole;
        for (const char ch : piece) whole += byte_to_char_[static_cast<unsigned char>(ch)];
        if (const auto it = vocab_.find(whole); it != vocab_.end()) {
            out.push_back(it->second);
            return;
        }
    }
    // symbols: substrings of the byte-mapped text, kept in a doubly linked list
    std::string mapped;
    struct Sym {
        std::size_t start, len;
        int prev, next;
    };
    std::vector<Sym> syms;
    syms.reserve(piece.size());
    for (const char ch : piece) {
        const auto b = static_cast<unsigned char>(ch);
        if (!byte_in_vocab_[b]) continue;  // no token for this byte: dropped (as HF tokenizers does)
        const std::string& c = byte_to_char_[b];
        const int i = int(syms.size());
        syms.push_back({mapped.size(), c.size(), i - 1, i + 1});
        mapped += c;
    }
    if (syms.empty()) return;
    syms.back().next = -1;

    struct Bigram {
        std::int32_t rank;
        int left, right;
        std::size_t len;  // left.len + right.len when queued: detects stale entries
    };
    auto worse = [](const Bigram& a, const Bigram& b) {
        return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
    std::string key;
    auto try_add = [&](int l, int r) {
        if (l < 0 || r < 0) return;
        key.assign(mapped, syms[std::size_t(l)].start, syms[std::size_t(l)].len);
        key += ' ';
        key.append(mapped, syms[std::size_t(r)].start, syms[std::size_t(r)].len);
        const auto it = ranks_.find(key);
        if (it != ranks_.end()) queue.push({it->second, l, r, syms[std::size_t(l)].len + syms[std::size_t(r)].len});
    };
    for (int i = 0; i + 1 < int(syms.size()); ++i) try_add(i, i + 1);
    while (!queue.empty()) {
        const Bigram bg = queue.top();
        queue.pop();
        Sym& l = syms[std::size_t(bg.left)];
        Sym& r = syms[std::size_t(bg.right)];
        if (l.len == 0 || r.len == 0 || l.next != bg.right || l.len + r.len != bg.len) continue;  // stale
        l.len += r.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) syms[std::size_t(r.next)].prev = bg.left;
        try_add(l.prev, bg.left);
        try_add(bg.left, l.next);
    }
    for (int i = 0; i >= 0; i = syms[std::size_t(i)].next) {
        const Sym& s = syms[std::size_t(i)];
        const std::string sym = mapped.substr(s.start, s.len);
        const auto it = vocab_.find(sym);
        if (it != vocab_.end()) {
            out.push_back(it->second);
            continue;
        }
        // not a token: fall back to its single (byte) characters
        for (std::size_t k = s.start; k < s.start + s.len;) {
            std::size_t cl = 1;
            const unsigned char c0 = static_cast<unsigned char>(mapped[k]);
            if (c0 >= 0xF0) cl = 4;
            else if (c0 >= 0xE0) cl = 3;
            else if (c0 >= 0xC0) cl = 2;
            const auto ic = vocab_.find(mapped.substr(k, cl));
            if (ic != vocab_.end()) out.push_back(ic->second);
            else if (cfg_.unk_id >= 0) out.push_back(cfg_.unk_id);
            else fail("tokenizer: piece '", sym, "' has no token and the vocabulary has no unknown token");
            k += cl;
        }
    }
}

inline void Tokenizer::encode_fragment(std::string_view text, std::vector<std::int32_t>& out) const {
    std::vector<std::string_view> pieces;
    pre_split(text, pieces);
    for (std::string_view p : pieces) bpe(p, out);
}

inline std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    std::vector<std::int32_t> out;
    if (add_special && cfg_.add_bos) out.push_back(cfg_.bos_id);
    std::size_t start = 0, i = 0;
    while (i < text.size()) {
        std::int32_t hit = -1;
        for (std::int32_t id : specials_) {
            if (!parse_special && token_type(id) == TokenType::control) continue;
            const std::string& s = cfg_.tokens[std::size_t(id)];
            if (text.compare(i, s.size(), s) == 0) {
                hit = id;  // longest first
                break;
            }
        }
        if (hit < 0) {
            ++i;
            continue;
        }
        encode_fragment(text.substr(start, i - start), out);
        out.push_back(hit);
        i += cfg_.tokens[std::size_t(hit)].size();
        start = i;
    }
    encode_fragment(text.substr(start), out);
    if (add_special && cfg_.add_eos) out.push_back(cfg_.eos_id);
    return out;
}

inline std::string Tokenizer::token_to_piece(std::int32_t id) const {
    const std::string& t = token_text(id);
    const TokenType ty = token_type(id);
    if (ty == TokenType::control || ty == TokenType::user_defined || ty == TokenType::unknown) return t;
    std::string out;
    for (const CodePoint& c : utf8_decode(t)) {
        const auto it = c.valid ? char_to_byte_.find(c.cp) : char_to_byte_.end();
        if (it != char_to_byte_.end()) out += char(it->second);
        else out.append(t, c.offset, c.length);  // not a byte-level character: keep it as is
    }
    return out;
}

inline std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
    std::string out;
    for (std::int32_t id : ids) {
        if (skip_special && token_type(id) == TokenType::control) continue;
        out += token_to_piece(id);
    }
    return out;
}

}  // namespace transmla::io
