// Hostile inputs: for each class of defect a file can carry (wrapped extent products, type / shape
// / size / offset disagreeing, out-of-range hyper-parameters and token ids, deep JSON, truncating
// numbers, shard paths outside the checkpoint, ...) a crafted input, built here from the library's
// own writers and then patched, must raise transmla::error naming the file and the field. Then
// every saved fuzz regression input (tests/data/fuzz_regressions/<harness>/) is replayed through
// its harness, and random bytes go through the tokenizer.
//
// TRANSMLA_DUMP_HOSTILE=<dir> also writes the crafted inputs to <dir>/<harness>/<name> (how the
// files in tests/data/fuzz_regressions/ were made).
#include "transmla/io/gguf.hpp"
#include "transmla/io/hf_config.hpp"
#include "transmla/io/safetensors.hpp"
#include "transmla/io/tokenizer.hpp"
#include "transmla/model/gguf_loader.hpp"
#include "transmla/model/safetensors_loader.hpp"

#include "../fuzz/harness_gguf.hpp"
#include "../fuzz/harness_gguf_model.hpp"
#include "../fuzz/harness_hf_config.hpp"
#include "../fuzz/harness_safetensors.hpp"
#include "../fuzz/harness_tokenizer.hpp"
#include "../fuzz/tiny_model.hpp"

#include "io_test_util.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

using namespace transmla;
using namespace transmla::io;
using transmla::test::check_error;
using Bytes = std::vector<std::uint8_t>;

namespace {

const char* const kName = "hostile.gguf";

// (byte-wise appends: GCC 12's -Warray-bounds misfires on vector(8) followed by insert)
void append(Bytes& b, const void* p, std::size_t n) {
    const auto* c = static_cast<const std::uint8_t*>(p);
    for (std::size_t i = 0; i < n; ++i) b.push_back(c[i]);
}
void append_u64(Bytes& b, std::uint64_t v) { append(b, &v, 8); }

/// Saves an input under TRANSMLA_DUMP_HOSTILE/<harness>/<name> when that is set.
void dump(const std::string& harness, const std::string& name, const Bytes& b) {
    const char* dir = std::getenv("TRANSMLA_DUMP_HOSTILE");
    if (!dir || !*dir) return;
    const auto d = std::filesystem::path(dir) / harness;
    std::filesystem::create_directories(d);
    std::ofstream f(d / name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

std::span<const std::byte> span_of(const Bytes& b) { return std::as_bytes(std::span<const std::uint8_t>(b)); }
GgufFile open_gguf(const Bytes& b) { return GgufFile::from_memory(span_of(b), kName); }

template <class T>
void poke(Bytes& b, std::size_t at, T v) {
    REQUIRE(at + sizeof(T) <= b.size());
    std::memcpy(b.data() + at, &v, sizeof(T));
}
template <class T>
T peek(const Bytes& b, std::size_t at) {
    T v;
    std::memcpy(&v, b.data() + at, sizeof(T));
    return v;
}

/// File offset of the n_dims field of tensor `name`'s info record (just after its name).
std::size_t tensor_info(const Bytes& b, const std::string& name) {
    Bytes pat;
    append_u64(pat, name.size());
    append(pat, name.data(), name.size());
    append(pat, "\0\0\0\0", 4);  // the low bytes of n_dims (1..4) come next: u32
    const auto it = std::search(b.begin(), b.end(), pat.begin(), pat.end() - 4);
    REQUIRE(it != b.end());
    return std::size_t(it - b.begin()) + pat.size() - 4;
}
/// File offset of the value (after the u32 type) of metadata key `key`.
std::size_t meta_value(const Bytes& b, const std::string& key) {
    Bytes pat;
    append_u64(pat, key.size());
    append(pat, key.data(), key.size());
    const auto it = std::search(b.begin(), b.end(), pat.begin(), pat.end());
    REQUIRE(it != b.end());
    return std::size_t(it - b.begin()) + pat.size() + 4;
}

/// A writer with three F32 tensors a [2][40], b [64], c [3][32] and no metadata (each larger
/// than the alignment, so that halving its size is visible).
GgufWriter three_tensors() {
    GgufWriter w;
    w.add_tensor("a", {2, 40}, fuzz::tiny_weights(80, 1));
    w.add_tensor("b", {64}, fuzz::tiny_weights(64, 2));
    w.add_tensor("c", {3, 32}, fuzz::tiny_weights(96, 3));
    return w;
}

Bytes tiny_model_with(const std::string& key, GgufValue v, fuzz::TinyLlama o = {}) {
    auto w = fuzz::tiny_llama_writer(o);
    w.set(key, std::move(v));
    return w.to_bytes();
}

Bytes st_file(const std::string& header, const Bytes& data) {
    Bytes b;
    append_u64(b, header.size());
    append(b, header.data(), header.size());
    append(b, data.data(), data.size());
    return b;
}
Bytes numbered(std::size_t n) {
    Bytes b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = std::uint8_t(i * 31 + 7);
    return b;
}
SafetensorsFile open_st(const Bytes& b) { return SafetensorsFile::from_memory(span_of(b), "hostile.safetensors"); }

}  // namespace

// ---- GGUF: tensor infos ----------------------------------------------------------------------

TEST_CASE("GGUF hostile: extents whose product wraps 64 bits (and would divide by zero) are rejected") {
    GgufWriter w;
    w.add_tensor("cube", {2, 2, 2, 2}, fuzz::tiny_weights(16, 4));
    Bytes b = w.to_bytes();
    const std::size_t at = tensor_info(b, "cube");
    REQUIRE(peek<std::uint32_t>(b, at) == 4);
    for (int d = 0; d < 4; ++d) poke<std::uint64_t>(b, at + 4 + 8 * std::size_t(d), std::uint64_t(1) << 40);  // 2^160 wraps to 0
    dump("gguf", "extent_product_wraps", b);
    check_error([&] { open_gguf(b); }, {kName, "tensor 'cube'", "too many elements", "offset"});
    // a product that wraps to a small non-zero value
    for (int d = 0; d < 4; ++d) poke<std::uint64_t>(b, at + 4 + 8 * std::size_t(d), (std::uint64_t(1) << 40) - 1);
    check_error([&] { open_gguf(b); }, {kName, "tensor 'cube'", "too many elements"});
}

TEST_CASE("GGUF hostile: a shape that disagrees with the tensor's bytes is rejected") {
    const Bytes good = three_tensors().to_bytes();
    REQUIRE_NOTHROW(open_gguf(good));
    Bytes b = good;
    const std::size_t at = tensor_info(b, "a");
    poke<std::uint64_t>(b, at + 4 + 8, 3);  // ne[1] 2 -> 3: 480 bytes now run into b
    dump("gguf", "shape_overlaps_next", b);
    check_error([&] { open_gguf(b); }, {kName, "tensor 'a'", "'b'", "overlap", "disagree"});
    b = good;
    poke<std::uint64_t>(b, tensor_info(b, "c") + 4 + 8, 2);  // c: 3 rows -> 2: bytes left over at the end
    dump("gguf", "shape_leaves_trailing_bytes", b);
    check_error([&] { open_gguf(b); }, {kName, "tensor 'c'", "last tensor", "no tensor accounts for"});
    b = good;
    poke<std::uint64_t>(b, tensor_info(b, "c") + 4 + 8, 4);  // c: past the end of the file
    check_error([&] { open_gguf(b); }, {kName, "tensor 'c'", "past the end"});
}

TEST_CASE("GGUF hostile: a type id changed to another valid type is rejected") {
    const Bytes good = three_tensors().to_bytes();
    for (const auto& nt : {std::pair{"a", GgmlType::F16}, {"b", GgmlType::BF16}, {"c", GgmlType::Q8_0}, {"c", GgmlType::Q4_1}}) {
        const std::string name = nt.first;
        const GgmlType type = nt.second;
        CAPTURE(name);
        Bytes b = good;
        const std::size_t at = tensor_info(b, name);
        const auto nd = peek<std::uint32_t>(b, at);
        poke<std::uint32_t>(b, at + 4 + 8 * nd, std::uint32_t(type));
        dump("gguf", "type_changed_" + name + "_" + ggml_type_name(type), b);
        check_error([&] { open_gguf(b); }, {kName, "tensor '" + name + "'", "disagree"});
    }
    // a block-quantised type whose row is not a multiple of the block
    Bytes b = good;
    const std::size_t at = tensor_info(b, "a");
    poke<std::uint32_t>(b, at + 4 + 16, std::uint32_t(GgmlType::Q8_0));
    check_error([&] { open_gguf(b); }, {kName, "tensor 'a'", "not a multiple", "block size 32"});
}

TEST_CASE("GGUF hostile: data offsets that overlap, leave holes or do not start at 0 are rejected") {
    const Bytes good = three_tensors().to_bytes();
    Bytes b = good;
    const std::size_t ab = tensor_info(b, "b");
    poke<std::uint64_t>(b, ab + 4 + 8 + 4, 0);  // b at the offset of a
    dump("gguf", "offsets_overlap", b);
    check_error([&] { open_gguf(b); }, {kName, "overlap"});
    b = good;
    const std::size_t aa = tensor_info(b, "a");
    poke<std::uint64_t>(b, aa + 4 + 16 + 4, 320);  // a moved onto b: nothing at 0
    check_error([&] { open_gguf(b); }, {kName, "data offset"});
}

TEST_CASE("GGUF hostile: string and array lengths beyond the file, deep arrays") {
    GgufWriter w;
    w.set("general.name", GgufValue::string("tiny"));
    w.set("bytes", GgufValue::array(GgufType::UINT8, {GgufValue::u8(1), GgufValue::u8(2)}));
    w.add_tensor("t", {4}, fuzz::tiny_weights(4, 5));
    const Bytes good = w.to_bytes();
    Bytes b = good;
    poke<std::uint64_t>(b, meta_value(b, "general.name"), std::uint64_t(1) << 62);
    dump("gguf", "string_length_huge", b);
    check_error([&] { open_gguf(b); }, {kName, "general.name", "truncated", "offset"});
    b = good;
    poke<std::uint64_t>(b, meta_value(b, "bytes") + 4, std::uint64_t(1) << 60);  // element count
    dump("gguf", "array_count_huge", b);
    check_error([&] { open_gguf(b); }, {kName, "'bytes'", "array of"});
    b = good;
    poke<std::uint64_t>(b, 16, std::uint64_t(1) << 50);  // metadata count
    check_error([&] { open_gguf(b); }, {kName, "metadata count"});
    b = good;
    poke<std::uint64_t>(b, 8, std::uint64_t(1) << 50);  // tensor count
    check_error([&] { open_gguf(b); }, {kName, "tensor count"});

    {  // 2^24 + 1 one-byte elements fit in the file but would take ~1.7 GB as values
        Bytes big;
        append(big, "GGUF", 4);
        const std::uint32_t version = 3, arr = 9, u8 = 0;
        append(big, &version, 4);
        append_u64(big, 0);
        append_u64(big, 1);
        append_u64(big, 4);
        append(big, "many", 4);
        append(big, &arr, 4);
        append(big, &u8, 4);
        const std::uint64_t count = (std::uint64_t(1) << 24) + 1;
        append_u64(big, count);
        big.resize(big.size() + count, 7);
        check_error([&] { open_gguf(big); }, {kName, "'many'", "more than 16777216 elements"});
    }

    GgufValue v = GgufValue::i32s({1});
    for (int i = 0; i < 20; ++i) v = GgufValue::array(GgufType::ARRAY, {v});
    GgufWriter deep;
    deep.set("deep", v);
    const Bytes d = deep.to_bytes();
    dump("gguf", "array_nesting_20", d);
    check_error([&] { open_gguf(d); }, {kName, "'deep'", "nested deeper"});
}

TEST_CASE("GGUF hostile: every truncation of a valid model is rejected with the file name") {
    const Bytes good = fuzz::tiny_llama_gguf();
    REQUIRE_NOTHROW(open_gguf(good));
    // every length up to the data section, then a few random ones beyond it
    const std::size_t data = std::size_t(open_gguf(good).data_offset());
    std::vector<std::size_t> cuts;
    for (std::size_t n = 0; n < data; n += 1 + n / 64) cuts.push_back(n);
    for (int i = 0; i < 32; ++i) cuts.push_back(std::size_t(transmla::test::uniform_int(std::int64_t(data), std::int64_t(good.size()) - 1)));
    for (std::size_t n : cuts) {
        CAPTURE(n);
        const Bytes b(good.begin(), good.begin() + std::ptrdiff_t(n));
        check_error([&] { open_gguf(b); }, {kName});
    }
}

// ---- GGUF: hyper-parameters and the model loader --------------------------------------------

TEST_CASE("GGUF hostile: hyper-parameters out of range are rejected before they are narrowed or allocate") {
    struct Case {
        const char* key;
        GgufValue v;
        const char* part;
    };
    const std::vector<Case> cases = {
        {"llama.block_count", GgufValue::u64((std::uint64_t(1) << 32) + 2), "out of range"},  // int() would give 2
        {"llama.block_count", GgufValue::u32(1u << 20), "block_count"},
        {"llama.block_count", GgufValue::u32(3), "blk.2."},                                   // 2 layers present
        {"llama.block_count", GgufValue::i32(-1), "out of range"},
        {"llama.feed_forward_length", GgufValue::u32(1u << 22), "ffn_gate"},  // would size a 2^23 x D matrix
        {"llama.feed_forward_length", GgufValue::u64(std::uint64_t(1) << 40), "out of range"},
        {"llama.embedding_length", GgufValue::u64((std::uint64_t(1) << 32) + 8), "out of range"},
        {"llama.embedding_length", GgufValue::u32(16), "dimension_count"},
        {"llama.attention.head_count", GgufValue::u32(0), "out of range"},
        {"llama.attention.head_count_kv", GgufValue::u32(3), "head_count_kv"},
        {"llama.attention.key_length", GgufValue::u32(1u << 23), "key_length"},
        {"llama.attention.layer_norm_rms_epsilon", GgufValue::f32(-1.0f), "layer_norm_rms_epsilon"},
        {"llama.rope.freq_base", GgufValue::f64(std::numeric_limits<double>::infinity()), "freq_base"},
        {"llama.context_length", GgufValue::i64(-5), "context_length"},
        {"llama.vocab_size", GgufValue::u32(7), "vocab_size"},
        {"tokenizer.ggml.bos_token_id", GgufValue::u64((std::uint64_t(1) << 32) + 5), "bos_token_id"},
        {"tokenizer.ggml.eos_token_id", GgufValue::i32(-7), "eos_token_id"},
        {"llama.block_count", GgufValue::string("2"), "block_count"},
    };
    int k = 0;
    for (const auto& c : cases) {
        CAPTURE(c.key);
        const Bytes b = tiny_model_with(c.key, c.v);
        dump("gguf_model", "hparam_" + std::to_string(k++) + "_" + c.key, b);
        const GgufFile f = open_gguf(b);
        check_error([&] { model::load_gguf(f); }, {kName, c.part});
    }
}

TEST_CASE("GGUF hostile: a tensor of the wrong shape is named by the loader") {
    auto w = fuzz::tiny_llama_writer({.layers = 1});
    const Bytes good = w.to_bytes();
    REQUIRE_NOTHROW(model::load_gguf(open_gguf(good)));
    Bytes b = good;
    const std::size_t at = tensor_info(b, "blk.0.attn_v.weight");
    // 4 x 8 -> 8 x 4 (same bytes: the file is consistent, the model is not)
    poke<std::uint64_t>(b, at + 4, 4);
    poke<std::uint64_t>(b, at + 12, 8);
    dump("gguf_model", "attn_v_transposed", b);
    check_error([&] { model::load_gguf(open_gguf(b)); }, {kName, "blk.0.attn_v.weight"});
}

// ---- tokenizer ---------------------------------------------------------------------------------

TEST_CASE("tokenizer hostile: token ids, array lengths and merges from GGUF metadata are checked") {
    const auto tc = fuzz::tiny_tokenizer_config();
    const auto n = std::uint32_t(tc.tokens.size());
    struct Case {
        const char* key;
        GgufValue v;
        const char* part;
    };
    std::vector<std::int32_t> short_types(tc.token_types.begin(), tc.token_types.end() - 1);
    const std::vector<Case> cases = {
        {"tokenizer.ggml.bos_token_id", GgufValue::u32(n), "bos_token_id"},
        {"tokenizer.ggml.bos_token_id", GgufValue::u64((std::uint64_t(1) << 32) + 3), "bos_token_id"},  // int32 wrap → 3
        {"tokenizer.ggml.eos_token_id", GgufValue::i64(-2), "eos_token_id"},
        {"tokenizer.ggml.unknown_token_id", GgufValue::u32(1u << 31), "unknown_token_id"},
        {"tokenizer.ggml.padding_token_id", GgufValue::i32(1 << 30), "padding_token_id"},
        {"tokenizer.ggml.token_type", GgufValue::i32s(short_types), "token_type"},
        {"tokenizer.ggml.scores", GgufValue::f32s({0.0f, 1.0f}), "scores"},
        {"tokenizer.ggml.merges", GgufValue::strings({"nospace"}), "merge 0"},
        {"tokenizer.ggml.tokens", GgufValue::strings({}), "tokens"},
        {"tokenizer.ggml.tokens", GgufValue::i32s({1, 2}), "tokenizer.ggml.tokens"},
        {"tokenizer.ggml.pre", GgufValue::string("unknown-pre"), "unknown-pre"},
    };
    int k = 0;
    for (const auto& c : cases) {
        CAPTURE(c.key);
        const Bytes g = tiny_model_with(c.key, c.v, {.layers = 1});
        Bytes in;
        const auto len = std::uint32_t(g.size());
        append(in, &len, 4);
        append(in, g.data(), g.size());
        const std::string text = "the cat <|im_end|>";
        append(in, text.data(), text.size());
        dump("tokenizer", "meta_" + std::to_string(k++), in);
        const GgufFile f = open_gguf(g);
        check_error([&] { Tokenizer::from_gguf(f); }, {kName, c.part});
    }
}

TEST_CASE("tokenizer hostile: arbitrary bytes encode and decode back; bad ids throw") {
    const Bytes g = fuzz::tiny_llama_gguf({.layers = 1});
    const GgufFile f = open_gguf(g);
    const Tokenizer tok = Tokenizer::from_gguf(f);
    for (int round = 0; round < 200; ++round) {
        std::string s(std::size_t(transmla::test::uniform_int(1, 300)), '\0');
        for (auto& ch : s) ch = char(transmla::test::uniform_int(0, 255));  // mostly invalid UTF-8
        CAPTURE(round);
        const auto ids = tok.encode(s, false, false);
        CHECK(tok.decode(ids) == s);  // every byte has a token here
        fuzz::exercise_tokenizer(tok, s);
    }
    check_error([&] { tok.decode(std::vector<std::int32_t>{0, tok.vocab_size()}); }, {"token id", "out of range"});
    check_error([&] { tok.decode(std::vector<std::int32_t>{-1}); }, {"token id -1"});
}

// ---- safetensors / JSON ---------------------------------------------------------------------

TEST_CASE("safetensors hostile: shapes, offsets and the data buffer must agree") {
    const Bytes d16 = numbered(16);
    std::string ones99;
    for (int i = 0; i < 99; ++i) ones99 += ",1";
    struct Case {
        const char* name;
        std::string header;
        Bytes data;
        std::vector<std::string> parts;
    };
    const std::vector<Case> cases = {
        {"zero_then_huge", R"({"w":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}})", {}, {"'w'", "too large"}},
        {"zero_then_2p63", R"({"w":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}})", {}, {"'w'", "too large"}},
        {"product_wraps", R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})", d16, {"'w'", "too large"}},
        {"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}})", d16, {"overlap"}},
        {"hole", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", d16, {"'b'", "no tensor accounts for"}},
        {"trailing", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d16, {"data buffer has 16 bytes"}},
        {"not_at_zero", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", d16, {"'a'", "begin at 8"}},
        {"dtype_changed", R"({"a":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}})", d16, {"'a'", "needs 8"}},
        {"past_end", R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", d16, {"'a'", "outside"}},
        {"extent_float", R"({"a":{"dtype":"F32","shape":[4.5],"data_offsets":[0,16]}})", d16, {"'a'", "non-integer"}},
        {"many_dims", R"({"a":{"dtype":"F32","shape":[1)" + ones99 + R"(],"data_offsets":[0,4]}})", numbered(4), {"'a'", "dimensions"}},
    };
    for (const auto& c : cases) {
        CAPTURE(c.name);
        const Bytes b = st_file(c.header, c.data);
        Bytes in{0};
        append(in, b.data(), b.size());
        dump("safetensors", std::string("st_") + c.name, in);
        std::vector<std::string> parts = c.parts;
        parts.push_back("hostile.safetensors");
        bool thrown = false;
        try {
            open_st(b);
        } catch (const transmla::error& e) {
            thrown = true;
            for (const auto& p : parts) CHECK_MESSAGE(std::string(e.what()).find(p) != std::string::npos, e.what() << " lacks " << p);
        }
        CHECK(thrown);
    }
}

TEST_CASE("JSON hostile: nesting beyond 64 levels is rejected before parsing (safetensors, index, config)") {
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    const Bytes b = st_file("{\"__metadata__\": " + deep + "}", {});
    Bytes in{0};
    append(in, b.data(), b.size());
    dump("safetensors", "deep_metadata", in);
    check_error([&] { open_st(b); }, {"hostile.safetensors", "nested deeper than 64", "offset"});
    const std::string cfg = R"({"hidden_size": 8, "x": )" + deep + "}";
    dump("hf_config", "deep_value", Bytes(cfg.begin(), cfg.end()));
    check_error([&] { parse_hf_config_text(cfg, "deep.json"); }, {"deep.json", "nested deeper"});
    check_error([&] { SafetensorsCheckpoint::from_memory("{\"weight_map\": " + deep + "}", "deep.index.json", {}); },
                {"deep.index.json", "nested deeper"});
    // brackets inside strings do not count
    const std::string in_string = "{\"__metadata__\": {\"k\": \"" + std::string(1000, '[') + "\"}}";
    CHECK_NOTHROW(open_st(st_file(in_string, {})));
}

TEST_CASE("HF config hostile: numbers outside the field's type are rejected, not truncated or cast") {
    const std::string base = fuzz::tiny_hf_config();
    REQUIRE_NOTHROW(parse_hf_config_text(base, "c.json"));
    auto with = [&](const std::string& field, const std::string& value) {
        nlohmann::json j = nlohmann::json::parse(base);
        j[field] = nlohmann::json::parse(value);
        return j.dump();
    };
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"hidden_size", "4294967304"},            // int() would give 8
        {"hidden_size", "1e300"},                 // float → int: UB when cast
        {"hidden_size", "8.5"},
        {"num_hidden_layers", "-1"},
        {"num_attention_heads", "18446744073709551615"},
        {"intermediate_size", "\"16\""},
        {"vocab_size", "2147483648"},
        {"max_position_embeddings", "-9223372036854775808"},
    };
    int k = 0;
    for (const auto& fv : cases) {
        const std::string& field = fv.first;
        const std::string& value = fv.second;
        CAPTURE(field);
        CAPTURE(value);
        const std::string text = with(field, value);
        dump("hf_config", "int_" + std::to_string(k++) + "_" + field, Bytes(text.begin(), text.end()));
        check_error([&] { parse_hf_config_text(text, "c.json"); }, {"c.json", field});
    }
    // the llama3 original_max_position_embeddings inside rope_scaling
    nlohmann::json j = nlohmann::json::parse(base);
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"original_max_position_embeddings", 1e20}};
    check_error([&] { parse_hf_config_text(j.dump(), "c.json"); }, {"c.json", "original_max_position_embeddings"});
    // integral floats in range are fine
    CHECK(parse_hf_config_text(with("hidden_size", "8.0"), "c.json").hidden_size == 8);
}

TEST_CASE("safetensors index hostile: shard names cannot leave the checkpoint directory") {
    const Bytes shard = fuzz::tiny_llama_safetensors().to_bytes();
    const std::map<std::string, std::span<const std::byte>> shards{{"model.safetensors", span_of(shard)}};
    for (const char* name : {"../model.safetensors", "/etc/passwd", "a/../../b", "", "./model.safetensors", "dir/"}) {
        CAPTURE(name);
        const std::string index = nlohmann::json{{"weight_map", {{"model.norm.weight", name}}}}.dump();
        check_error([&] { SafetensorsCheckpoint::from_memory(index, "idx.json", shards); }, {"idx.json", "shard"});
    }
    const std::string ok = R"({"weight_map": {"model.norm.weight": "model.safetensors"}})";
    const auto ck = SafetensorsCheckpoint::from_memory(ok, "idx.json", shards);
    CHECK(ck.tensor("model.norm.weight").data.size() == 8);
    check_error([&] { SafetensorsCheckpoint::from_memory(R"({"weight_map": {"x": "model.safetensors"}})", "idx.json", shards); },
                {"idx.json", "'x'", "does not contain"});
}

TEST_CASE("safetensors model hostile: config sizes are checked against the tensors before allocating") {
    const Bytes st = fuzz::tiny_llama_safetensors().to_bytes();
    const SafetensorsCheckpoint ck(SafetensorsFile::from_memory(span_of(st), "tiny.safetensors"));
    REQUIRE_NOTHROW(model::load_safetensors(parse_hf_config_text(fuzz::tiny_hf_config(), "c.json"), ck));
    struct Case {
        std::string config;
        const char* part;
    };
    const std::vector<Case> cases = {
        {fuzz::tiny_hf_config(8, 2, 1, 1, 1 << 28), "mlp.gate_proj"},           // would size 2^29 x 8 first
        {fuzz::tiny_hf_config(8, 2, 1, (1 << 30), 16), "model.layers.1."},    // a layer that is not there
        {fuzz::tiny_hf_config(8, 2, 1, 1, 16, 1 << 30), "embed_tokens"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.part);
        const HfConfig h = parse_hf_config_text(c.config, "c.json");
        check_error([&] { model::load_safetensors(h, ck); }, {c.part});
    }
    nlohmann::json j = nlohmann::json::parse(fuzz::tiny_hf_config());
    j["head_dim"] = 1 << 28;  // sizes the RoPE table: checked against q_proj first
    j["hidden_size"] = 8;
    const HfConfig h = parse_hf_config_text(j.dump(), "c.json");
    check_error([&] { model::load_safetensors(h, ck); }, {"head_dim"});
}

// ---- in-memory entry points ------------------------------------------------------------------

TEST_CASE("in-memory readers give what the path readers give") {
    transmla::test::TempPath gp(".gguf"), sp(".safetensors");
    const auto w = fuzz::tiny_llama_writer({.layers = 1});
    w.write(gp);
    const Bytes gb = w.to_bytes();
    CHECK(transmla::test::read_bytes(gp) == gb);
    const GgufFile a(gp.str());
    const GgufFile m = open_gguf(gb);
    const GgufFile o = GgufFile::from_bytes(std::vector<std::byte>(span_of(gb).begin(), span_of(gb).end()), "owned.gguf");
    REQUIRE(a.tensors().size() == m.tensors().size());
    for (const auto& t : a.tensors()) {
        CHECK(a.dequantize(t) == m.dequantize(t.name));
        CHECK(a.dequantize(t) == o.dequantize(t.name));
    }
    CHECK(o.path() == "owned.gguf");
    const auto st = fuzz::tiny_llama_safetensors();
    st.write(sp);
    const Bytes sb = st.to_bytes();
    CHECK(transmla::test::read_bytes(sp) == sb);
    const SafetensorsFile sa(sp.str());
    const SafetensorsFile sm = open_st(sb);
    for (const auto& t : sa.tensors()) CHECK(sa.tensor(t.name).data == sm.tensor(t.name).data);
    const auto ma = model::load_gguf(a), mm = model::load_gguf(m);
    CHECK(ma.embed == mm.embed);
}

// ---- saved fuzz regression inputs ------------------------------------------------------------

TEST_CASE("fuzz regressions: every saved input runs through its harness without crashing") {
    namespace fs = std::filesystem;
    const fs::path root = fs::path(TRANSMLA_TEST_DATA_DIR) / "fuzz_regressions";
    const std::map<std::string, int (*)(const std::uint8_t*, std::size_t)> harness{
        {"gguf", fuzz::run_gguf},           {"gguf_model", fuzz::run_gguf_model}, {"tokenizer", fuzz::run_tokenizer},
        {"safetensors", fuzz::run_safetensors}, {"hf_config", fuzz::run_hf_config}};
    int n = 0;
    if (fs::exists(root))
        for (const auto& dir : fs::directory_iterator(root)) {
            if (!dir.is_directory()) continue;
            const auto h = harness.find(dir.path().filename().string());
            REQUIRE_MESSAGE(h != harness.end(), "unknown harness directory " << dir.path());
            for (const auto& f : fs::directory_iterator(dir.path())) {
                if (!f.is_regular_file() || f.path().extension() == ".md") continue;
                CAPTURE(f.path().string());
                const Bytes b = transmla::test::read_bytes(f.path().string());
                CHECK(h->second(b.data(), b.size()) == 0);
                ++n;
            }
        }
    MESSAGE(n << " regression inputs replayed");
}
