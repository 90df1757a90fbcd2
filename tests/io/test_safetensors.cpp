// safetensors reader (against files assembled here from the format definition), writer (its bytes
// parsed independently), corrupt files, and the HF config.json reader on real-world configs.
#include "transmla/io/hf_config.hpp"
#include "transmla/io/safetensors.hpp"

#include "io_test_util.hpp"
#include "test_util.hpp"

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

using namespace transmla;
using namespace transmla::io;
using transmla::test::check_error;
using transmla::test::TempPath;

namespace {

template <class T>
void append(std::vector<std::uint8_t>& b, T v) {
    std::uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
}

/// header JSON text + data buffer → file bytes
std::vector<std::uint8_t> st_file(const std::string& header, const std::vector<std::uint8_t>& data) {
    std::vector<std::uint8_t> b;
    append<std::uint64_t>(b, header.size());
    b.insert(b.end(), header.begin(), header.end());
    b.insert(b.end(), data.begin(), data.end());
    return b;
}


}  // namespace

TEST_CASE("safetensors: reads a hand-built file of every dtype") {
    const auto a = transmla::test::random_vector<float>(6);
    const auto h = transmla::test::random_vector<half>(4);
    const auto bf = transmla::test::random_vector<bfloat16>(3);
    std::vector<std::uint8_t> data;
    for (float x : a) append(data, x);                  // a: F32 [2,3] at [0, 24)
    for (half x : h) append(data, bits_of(x));          // h: F16 [4] at [24, 32)
    for (bfloat16 x : bf) append(data, bits_of(x));     // bf: BF16 [3,1] at [32, 38)
    append<std::int32_t>(data, -7);                     // i: I32 [] (scalar) at [38, 42)
    append<std::uint8_t>(data, 200);                    // u: U8 [1] at [42, 43)
    append<double>(data, 0.1);                          // d: F64 [1] at [43, 51)
    const std::string header =
        R"({"__metadata__":{"format":"pt","note":"x"},)"
        R"("h":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},)"
        R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
        R"("bf":{"dtype":"BF16","shape":[3,1],"data_offsets":[32,38]},)"
        R"("i":{"dtype":"I32","shape":[],"data_offsets":[38,42]},)"
        R"("u":{"dtype":"U8","shape":[1],"data_offsets":[42,43]},)"
        R"("d":{"dtype":"F64","shape":[1],"data_offsets":[43,51]},)"
        R"("empty":{"dtype":"F32","shape":[0,5],"data_offsets":[51,51]}})";
    TempPath p(".safetensors");
    transmla::test::write_bytes(p, st_file(header, data));
    const SafetensorsFile f(p);
    REQUIRE(f.tensors().size() == 7);
    CHECK(f.tensors()[0].name == "a");  // in data order
    CHECK(f.tensors()[1].name == "h");
    CHECK(f.metadata().at("format") == "pt");
    const auto ta = f.tensor("a");
    CHECK(ta.shape == std::vector<std::int64_t>{2, 3});
    CHECK(ta.data == a);
    const auto th = f.tensor("h");
    for (std::size_t i = 0; i < 4; ++i) CHECK(th.data[i] == to_float(h[i]));
    const auto tb = f.tensor("bf", {3, 1});
    for (std::size_t i = 0; i < 3; ++i) CHECK(tb[i] == to_float(bf[i]));
    CHECK(f.tensor("i").shape.empty());
    CHECK(f.tensor("i").data == std::vector<float>{-7.0f});
    CHECK(f.tensor("u").data == std::vector<float>{200.0f});
    CHECK(f.tensor("d").data == std::vector<float>{0.1f});
    CHECK(f.tensor("empty").data.empty());
    CHECK(f.raw("h").size() == 8);
    check_error([&] { f.tensor("a", {3, 2}); }, {p.str(), "'a'", "[2, 3]", "expected [3, 2]"});
    check_error([&] { f.info("missing"); }, {p.str(), "'missing'", "not found"});
}

TEST_CASE("safetensors: the writer's output follows the format and round-trips") {
    const auto x = transmla::test::random_vector<float>(2 * 3 * 4);
    const auto y = transmla::test::random_vector<float>(5);
    TempPath p(".safetensors");
    SafetensorsWriter w;
    w.add("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {2, 3, 4}, x);
    w.add("y16", {5}, y, "F16");
    w.add("ybf", {5}, y, "BF16");
    w.set_metadata("format", "pt");
    w.write(p);
    const auto bytes = transmla::test::read_bytes(p);
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    CHECK((8 + n) % 8 == 0);
    const auto h = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + std::ptrdiff_t(n));
    CHECK(h["__metadata__"]["format"] == "pt");
    const auto& e = h["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"];
    CHECK(e["dtype"] == "F32");
    CHECK(e["shape"] == nlohmann::json::array({2, 3, 4}));
    const auto off = e["data_offsets"].get<std::vector<std::uint64_t>>();
    REQUIRE(off.size() == 2);
    CHECK(off[1] - off[0] == 96);
    CHECK(bytes.size() == 8 + n + 96 + 10 + 10);
    std::vector<float> direct(24);
    std::memcpy(direct.data(), bytes.data() + 8 + n + off[0], 96);
    CHECK(direct == x);

    const SafetensorsFile f(p);
    CHECK(f.tensor("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {2, 3, 4}) == x);
    const auto y16 = f.tensor("y16").data, ybf = f.tensor("ybf").data;
    for (std::size_t i = 0; i < 5; ++i) {
        CHECK(y16[i] == to_float(from_float<half>(y[i])));
        CHECK(ybf[i] == to_float(from_float<bfloat16>(y[i])));
    }
    CHECK(f.metadata().at("format") == "pt");

    check_error([&] { w.add("y16", {5}, y); }, {"duplicate", "'y16'"});
    check_error([&] { w.add("z", {4}, y); }, {"'z'", "5 values", "[4]"});
    check_error([&] { w.add("z", {5}, y, "I8"); }, {"'z'", "I8"});
    check_error([&] { w.write(p.str() + ".missing/dir/x.safetensors"); }, {".missing/dir/x.safetensors"});
}

TEST_CASE("safetensors: truncated and corrupt files throw naming the file, tensor and offset") {
    TempPath p(".safetensors");
    auto expect = [&](const std::vector<std::uint8_t>& b, std::initializer_list<std::string> parts) {
        transmla::test::write_bytes(p, b);
        check_error([&] { SafetensorsFile f(p); }, parts);
    };
    std::vector<std::uint8_t> d16(16, 1);
    const std::string ok = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
    transmla::test::write_bytes(p, st_file(ok, d16));
    CHECK(SafetensorsFile(p).tensor("w").data.size() == 4);

    expect({1, 2, 3}, {p.str(), "truncated"});
    {
        auto b = st_file(ok, d16);
        b[0] = 0xFF;  // header size far beyond the file
        expect(b, {p.str(), "header size", "offset 0"});
    }
    expect(st_file("{\"w\": [1, 2", {}), {p.str(), "does not parse"});
    expect(st_file("[1]", {}), {"not an object"});
    expect(st_file(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", d16), {"'w'", "F8_E4M3"});
    expect(st_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,20]}})", d16), {"'w'", "outside", "[0, 20)"});
    expect(st_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,4]}})", d16), {"'w'", "outside"});
    expect(st_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d16), {"'w'", "needs 12"});
    expect(st_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", d16), {"'w'", "negative"});
    expect(st_file(R"({"w":{"dtype":"F32","shape":[2]}})", d16), {"'w'", "data_offsets"});
    expect(st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", d16),
           {"'a'", "'b'", "overlap", "offset 4"});
    // every truncation of a valid file is rejected
    const auto full = st_file(ok, d16);
    for (std::size_t len = 0; len < full.size(); ++len) {
        CAPTURE(len);
        transmla::test::write_bytes(p, std::vector<std::uint8_t>(full.begin(), full.begin() + std::ptrdiff_t(len)));
        CHECK_THROWS_AS(SafetensorsFile{p}, transmla::error);
    }
}

TEST_CASE("HF config.json: Llama, SmolLM2, Qwen2, Mistral and their RoPE scalings") {
    // SmolLM2-135M-Instruct (as published with the model)
    const auto smol = parse_hf_config(nlohmann::json::parse(R"({
        "architectures": ["LlamaForCausalLM"], "attention_bias": false, "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192,
        "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
        "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_scaling": null,
        "rope_theta": 100000, "tie_word_embeddings": true, "vocab_size": 49152})"));
    CHECK(smol.model_type == "llama");
    CHECK(smol.architectures == std::vector<std::string>{"LlamaForCausalLM"});
    CHECK(smol.head_dim == 64);
    CHECK(smol.num_key_value_heads == 3);
    CHECK(smol.gqa_shape().group() == 3);
    CHECK(smol.rope.base == 100000.0);
    CHECK(smol.rope.scaling == RopeScaling::none);
    CHECK(smol.rope.pairing == RopePairing::half_split);
    CHECK(smol.rms_norm_eps == 1e-5);
    CHECK(smol.tie_word_embeddings);
    CHECK_FALSE(smol.attention_bias);

    // Llama-3.1-8B: llama3 scaling
    const auto l3 = parse_hf_config(nlohmann::json::parse(R"({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "vocab_size": 128256, "max_position_embeddings": 131072})"));
    CHECK(l3.head_dim == 128);
    CHECK(l3.rope.scaling == RopeScaling::llama3);
    CHECK(l3.rope.factor == 8.0);
    CHECK(l3.rope.high_freq_factor == 4.0);
    CHECK(l3.rope.original_max_position == 8192);
    CHECK_FALSE(l3.tie_word_embeddings);

    // Qwen2-7B-Instruct with YaRN (legacy "type" key); q/k/v biases by default
    const auto qw = parse_hf_config(nlohmann::json::parse(R"({
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
        "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "vocab_size": 152064,
        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}})"));
    CHECK(qw.attention_bias);
    CHECK(qw.head_dim == 128);
    CHECK(qw.rope.scaling == RopeScaling::yarn);
    CHECK(qw.rope.factor == 4.0);
    CHECK(qw.rope.original_max_position == 32768);
    CHECK(qw.rope.beta_fast == 32.0);

    // Mistral-7B: no num_key_value_heads default needed, explicit head_dim, linear scaling
    const auto mi = parse_hf_config(nlohmann::json::parse(R"({
        "model_type": "mistral", "hidden_size": 5120, "head_dim": 128, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8, "vocab_size": 131072,
        "rope_theta": 1000000.0, "sliding_window": null,
        "rope_scaling": {"type": "linear", "factor": 2.0}})"));
    CHECK(mi.head_dim == 128);  // not 5120 / 32
    CHECK(mi.rope.scaling == RopeScaling::linear);
    CHECK(mi.rope.factor == 2.0);
    CHECK(mi.rms_norm_eps == 1e-6);  // default

    // MHA default for num_key_value_heads, rope_theta default
    const auto mha = parse_hf_config(nlohmann::json::parse(R"({"hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 10})"));
    CHECK(mha.num_key_value_heads == 4);
    CHECK(mha.head_dim == 16);
    CHECK(mha.rope.base == 10000.0);
}

TEST_CASE("HF config.json: errors name the file and the field") {
    const std::string base = R"("hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                                "num_hidden_layers": 2, "vocab_size": 10)";
    auto parse = [&](const std::string& extra) {
        return parse_hf_config(nlohmann::json::parse("{" + base + extra + "}"), "cfg.json");
    };
    check_error([&] { parse(R"(, "rope_scaling": {"type": "dynamic", "factor": 2.0})"); }, {"cfg.json", "rope_scaling", "'dynamic'"});
    check_error([&] { parse(R"(, "num_key_value_heads": 3)"); }, {"cfg.json", "multiple of num_key_value_heads"});
    check_error([&] { parse(R"(, "partial_rotary_factor": 0.5)"); }, {"partial_rotary_factor"});
    check_error([&] { parse(R"(, "rope_scaling": {"type": "linear"})"); }, {"'factor'", "missing"});
    check_error([&] { parse(R"(, "rope_scaling": {"type": "linear", "factor": 0.5})"); }, {"cfg.json", "factor"});
    check_error([&] { parse(R"(, "head_dim": 7)"); }, {"head_dim (7)"});
    check_error([&] { parse_hf_config(nlohmann::json::parse(R"({"hidden_size": "big"})"), "cfg.json"); },
                {"cfg.json", "'hidden_size'", "wrong type"});
    check_error([&] { parse_hf_config(nlohmann::json::parse(R"({"hidden_size": 64})"), "cfg.json"); },
                {"cfg.json", "'num_attention_heads'", "missing"});
    TempPath p(".json");
    transmla::test::write_bytes(p, {'{', 'x'});
    check_error([&] { read_hf_config(p); }, {p.str(), "does not parse"});
    check_error([&] { read_hf_config("/nonexistent/config.json"); }, {"/nonexistent/config.json"});
    const std::string good = "{" + base + "}";
    transmla::test::write_bytes(p, std::vector<std::uint8_t>(good.begin(), good.end()));
    CHECK(read_hf_config(p).head_dim == 16);
}

TEST_CASE("safetensors checkpoint: single file, sharded index, directory") {
    namespace fs = std::filesystem;
    TempPath dir("_ckpt");
    fs::create_directories(dir.str());
    const auto a = transmla::test::random_vector<float>(6), b = transmla::test::random_vector<float>(4),
               c = transmla::test::random_vector<float>(3);
    {
        SafetensorsWriter w1, w2;
        w1.add("model.embed_tokens.weight", {2, 3}, a);
        w1.add("model.norm.weight", {4}, b);
        w2.add("lm_head.weight", {3}, c);
        w1.write(dir.str() + "/model-00001-of-00002.safetensors");
        w2.write(dir.str() + "/model-00002-of-00002.safetensors");
    }
    auto write_index = [&](const std::string& text) {
        transmla::test::write_bytes(dir.str() + "/model.safetensors.index.json",
                                    std::vector<std::uint8_t>(text.begin(), text.end()));
    };
    write_index(R"({"metadata": {"total_size": 52}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}})");
    {
        const SafetensorsCheckpoint ck(dir.str());  // the directory finds the index
        CHECK(ck.n_shards() == 2);
        CHECK(ck.names() == std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"});
        CHECK(ck.tensor("model.embed_tokens.weight", {2, 3}) == a);
        CHECK(ck.tensor("model.norm.weight").data == b);
        CHECK(ck.tensor("lm_head.weight").data == c);
        CHECK(ck.info("lm_head.weight").dtype == "F32");
        check_error([&] { ck.tensor("nope"); }, {"'nope'", "not found"});
    }
    {
        const SafetensorsCheckpoint one(dir.str() + "/model-00002-of-00002.safetensors");
        CHECK(one.n_shards() == 1);
        CHECK(one.names() == std::vector<std::string>{"lm_head.weight"});
    }
    write_index(R"({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}})");
    check_error([&] { SafetensorsCheckpoint ck(dir.str()); }, {"'model.norm.weight'", "does not contain it"});
    write_index(R"({"weight_map": {"x": "missing.safetensors"}})");
    check_error([&] { SafetensorsCheckpoint ck(dir.str()); }, {"missing.safetensors", "cannot open"});
    write_index(R"({"metadata": {}})");
    check_error([&] { SafetensorsCheckpoint ck(dir.str()); }, {"weight_map"});
    fs::remove(dir.str() + "/model.safetensors.index.json");
    fs::remove(dir.str() + "/model-00001-of-00002.safetensors");
    fs::remove(dir.str() + "/model-00002-of-00002.safetensors");
    check_error([&] { SafetensorsCheckpoint ck(dir.str()); }, {dir.str(), "neither"});
}
