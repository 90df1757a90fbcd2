// Writes the seed corpora of the fuzz harnesses, all made by the library's own writers:
//   make_seeds <dir>   →  <dir>/<harness>/<name> for harness in gguf, gguf_model, tokenizer,
//                          safetensors, hf_config
// Small valid files: GGUF with every metadata type and tensor type, tiny Llama models (with a
// tokenizer, quantised, untied), safetensors files and checkpoints, config.json variants.
#include "tiny_model.hpp"

#include "transmla/io/gguf.hpp"
#include "transmla/io/safetensors.hpp"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace transmla;
using namespace transmla::io;
using transmla::fuzz::tiny_weights;

namespace {

fs::path root;

void put(const std::string& harness, const std::string& name, const std::vector<std::uint8_t>& bytes) {
    const fs::path dir = root / harness;
    fs::create_directories(dir);
    std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + (dir / name).string());
}
void put(const std::string& harness, const std::string& name, const std::string& text) {
    put(harness, name, std::vector<std::uint8_t>(text.begin(), text.end()));
}
std::vector<std::uint8_t> prefixed(const std::vector<std::uint8_t>& first, const std::string& rest, std::uint8_t mode_byte = 0,
                                   bool with_mode = false) {
    std::vector<std::uint8_t> out;
    if (with_mode) out.push_back(mode_byte);
    const auto n = std::uint32_t(first.size());
    std::uint8_t b[4];
    std::memcpy(b, &n, 4);
    out.insert(out.end(), b, b + 4);
    out.insert(out.end(), first.begin(), first.end());
    out.insert(out.end(), rest.begin(), rest.end());
    return out;
}
std::vector<std::uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

void gguf_seeds() {
    {  // every metadata value type, nested arrays
        GgufWriter w;
        w.set("general.architecture", GgufValue::string("llama"));
        w.set("u8", GgufValue::u8(200));
        w.set("i8", GgufValue::i8(-100));
        w.set("u16", GgufValue::u16(60000));
        w.set("i16", GgufValue::i16(-30000));
        w.set("u32", GgufValue::u32(4000000000u));
        w.set("i32", GgufValue::i32(-2000000000));
        w.set("u64", GgufValue::u64(std::uint64_t(1) << 40));
        w.set("i64", GgufValue::i64(-(std::int64_t(1) << 40)));
        w.set("f32", GgufValue::f32(0.25f));
        w.set("f64", GgufValue::f64(-1.5e300));
        w.set("bool", GgufValue::boolean(true));
        w.set("str", GgufValue::string("h\xC3\xA9llo"));
        w.set("strs", GgufValue::strings({"a", "", "ccc"}));
        w.set("i32s", GgufValue::i32s({1, -2, 3}));
        w.set("f32s", GgufValue::f32s({0.5f, -0.5f}));
        w.set("nested", GgufValue::array(GgufType::ARRAY, {GgufValue::i32s({1, 2}), GgufValue::i32s({})}));
        w.add_tensor("t", {2, 2}, tiny_weights(4, 3));
        put("gguf", "metadata_types", w.to_bytes());
        put("gguf", "metadata_types_v2", w.to_bytes(2));
    }
    {  // every tensor type the writer makes
        GgufWriter w;
        int k = 0;
        for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                           GgmlType::Q5_1, GgmlType::Q8_0})
        {
            w.add_tensor("w" + std::to_string(k), {3, 64}, tiny_weights(192, std::uint64_t(10 + k)), t);
            ++k;
        }
        w.add_tensor("v", {5}, tiny_weights(5, 99));
        w.add_tensor("cube", {2, 3, 4, 32}, tiny_weights(768, 98), GgmlType::Q8_0);
        put("gguf", "tensor_types", w.to_bytes());
    }
    {  // another alignment
        GgufWriter w(64);
        w.set("general.name", GgufValue::string("aligned"));
        w.add_tensor("a", {3}, tiny_weights(3, 5));
        w.add_tensor("b", {7, 32}, tiny_weights(224, 6), GgmlType::Q4_1);
        put("gguf", "alignment64", w.to_bytes());
    }
    {
        GgufWriter w;
        put("gguf", "empty", w.to_bytes());
    }
    put("gguf", "tiny_llama", fuzz::tiny_llama_gguf());
}

void model_seeds() {
    put("gguf_model", "tiny_llama", fuzz::tiny_llama_gguf());
    fuzz::TinyLlama q;
    q.hidden = 32, q.n_q = 4, q.n_kv = 2, q.layers = 1, q.intermediate = 32, q.tokenizer = false;
    q.matrix_type = GgmlType::Q8_0;
    put("gguf_model", "tiny_llama_q8_0", fuzz::tiny_llama_gguf(q));
    q.matrix_type = GgmlType::Q4_1, q.tied = false, q.vocab = 40;
    put("gguf_model", "tiny_llama_q4_1_untied", fuzz::tiny_llama_gguf(q));
    fuzz::TinyLlama f16;
    f16.tokenizer = false, f16.layers = 1, f16.matrix_type = GgmlType::F16;
    put("gguf_model", "tiny_llama_f16", fuzz::tiny_llama_gguf(f16));
}

void tokenizer_seeds() {
    const std::vector<std::string> texts = {
        "Hello world, the thing is on; 12345 in er",
        "<|im_start|>user\nhi there<|im_end|>\n<|endoftext|>",
        "caf\xC3\xA9 \xE2\x82\xAC 100 \xF0\x9F\x98\x80 \xE4\xB8\xAD\xE6\x96\x87",
        "bad \xFF\xFE utf8 \xC0\x80 \xED\xA0\x80 \xF4\x90\x80\x80 trunc \xE2\x82",
        "  \t\n\r\n  spaces   and\n\nlines 's 't 'RE 'll",
    };
    int k = 0;
    for (const char* pre : {"smollm", "gpt2", "llama-bpe", "qwen2"}) {
        fuzz::TinyLlama o;
        o.pre = pre, o.layers = 1;
        const auto g = fuzz::tiny_llama_gguf(o);
        for (const auto& t : texts) put("tokenizer", std::string("tok_") + pre + "_" + std::to_string(k++), prefixed(g, t));
    }
    // text only (the fallback tokenizer)
    for (const auto& t : texts) put("tokenizer", "text_" + std::to_string(k++), prefixed({}, t));
}

void safetensors_seeds() {
    auto with_mode = [](std::uint8_t mode, const std::vector<std::uint8_t>& b) {
        std::vector<std::uint8_t> out{mode};
        out.insert(out.end(), b.begin(), b.end());
        return out;
    };
    for (const char* dt : {"F32", "F16", "BF16"}) {
        SafetensorsWriter w;
        w.add("a", {2, 3}, tiny_weights(6, 1), dt);
        w.add("b", {4}, tiny_weights(4, 2), dt);
        w.add("scalar", {}, tiny_weights(1, 3), dt);
        w.add("empty", {0, 5}, {}, dt);
        w.set_metadata("format", "pt");
        put("safetensors", std::string("file_") + dt, with_mode(0, w.to_bytes()));
    }
    {  // a hand-built file with the integer dtypes
        const std::string header =
            "{\"i8\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]},"
            "\"u8\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[4,8]},"
            "\"i16\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[8,12]},"
            "\"i32\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[12,16]},"
            "\"i64\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[16,24]},"
            "\"f64\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[24,32]},"
            "\"bool\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[32,35]}}";
        std::vector<std::uint8_t> b(8);
        const std::uint64_t n = header.size();
        std::memcpy(b.data(), &n, 8);
        b.insert(b.end(), header.begin(), header.end());
        for (int i = 0; i < 35; ++i) b.push_back(std::uint8_t(i * 37 + 11));
        b[8 + header.size() + 32] = 1, b[8 + header.size() + 33] = 0, b[8 + header.size() + 34] = 1;
        put("safetensors", "file_integers", with_mode(0, b));
    }
    {  // an index over two shards (the harness offers the same bytes under both names)
        SafetensorsWriter w;
        w.add("x", {2, 2}, tiny_weights(4, 4));
        w.add("y", {3}, tiny_weights(3, 5));
        const std::string index =
            "{\"metadata\": {\"total_size\": 28}, \"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", "
            "\"y\": \"model-00002-of-00002.safetensors\"}}";
        put("safetensors", "index", prefixed(bytes_of(index), std::string(), 1, true));
        auto b = prefixed(bytes_of(index), std::string(), 1, true);
        const auto shard = w.to_bytes();
        b.insert(b.end(), shard.begin(), shard.end());
        put("safetensors", "index_shards", b);
    }
    {  // config + checkpoint → model
        const auto st = fuzz::tiny_llama_safetensors().to_bytes();
        auto b = prefixed(bytes_of(fuzz::tiny_hf_config()), std::string(), 2, true);
        b.insert(b.end(), st.begin(), st.end());
        put("safetensors", "model_llama", b);
        const auto st16 = fuzz::tiny_llama_safetensors(8, 2, 1, 1, 16, 32, "BF16").to_bytes();
        auto b16 = prefixed(bytes_of(fuzz::tiny_hf_config()), std::string(), 2, true);
        b16.insert(b16.end(), st16.begin(), st16.end());
        put("safetensors", "model_llama_bf16", b16);
    }
}

void config_seeds() {
    put("hf_config", "tiny_llama", fuzz::tiny_hf_config());
    put("hf_config", "llama3",
        "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 4096, "
        "\"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"intermediate_size\": 14336, \"num_hidden_layers\": 32, "
        "\"vocab_size\": 128256, \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, "
        "\"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
        "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}, \"tie_word_embeddings\": false, "
        "\"head_dim\": 128, \"attention_bias\": false, \"hidden_act\": \"silu\", \"bos_token_id\": 128000, "
        "\"eos_token_id\": [128001, 128008, 128009], \"torch_dtype\": \"bfloat16\"}");
    put("hf_config", "qwen2_yarn",
        "{\"model_type\": \"qwen2\", \"hidden_size\": 896, \"num_attention_heads\": 14, \"num_key_value_heads\": 2, "
        "\"intermediate_size\": 4864, \"num_hidden_layers\": 24, \"vocab_size\": 151936, \"max_position_embeddings\": 32768, "
        "\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0, "
        "\"original_max_position_embeddings\": 32768}, \"tie_word_embeddings\": true, \"sliding_window\": null}");
    put("hf_config", "mistral_linear",
        "{\"model_type\": \"mistral\", \"hidden_size\": 4096, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, "
        "\"intermediate_size\": 14336, \"num_hidden_layers\": 32, \"vocab_size\": 32000, \"rms_norm_eps\": 1e-05, "
        "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}, \"partial_rotary_factor\": 1.0}");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s <output dir>\n", argv[0]);
        return 2;
    }
    root = argv[1];
    try {
        gguf_seeds();
        model_seeds();
        tokenizer_seeds();
        safetensors_seeds();
        config_seeds();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "make_seeds: %s\n", e.what());
        return 1;
    }
    return 0;
}
