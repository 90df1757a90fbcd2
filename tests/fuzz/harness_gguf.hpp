// Fuzz harness (a): a GGUF file from memory, every metadata getter on every key, every tensor's
// info and bytes, and the dequantisation of each tensor of at most 2^20 elements.
#pragma once

#include "harness_common.hpp"

#include "transmla/io/gguf.hpp"

namespace transmla::fuzz {

inline void touch_value(const io::GgufValue& v, int depth = 0) {
    expect_ok_or_error([&] { consume(v.as_int()); });
    expect_ok_or_error([&] { consume(v.as_uint()); });
    expect_ok_or_error([&] { consume(v.as_float()); });
    expect_ok_or_error([&] { consume(v.as_bool()); });
    expect_ok_or_error([&] { consume(v.as_string().size()); });
    if (v.is_array() && depth < 4) {
        consume(v.elem_type());
        std::size_t k = 0;
        for (const auto& item : v.items()) {
            if (++k > 64) break;
            touch_value(item, depth + 1);
        }
        expect_ok_or_error([&] { consume(v[v.size()]); });  // one past the end: must throw
    }
}

inline int run_gguf(const std::uint8_t* data, std::size_t size) {
    try {
        const io::GgufFile f = io::GgufFile::from_memory(as_bytes(data, size), "<fuzz gguf>");
        consume(f.version());
        consume(f.alignment());
        for (const auto& kv : f.metadata()) {
            const std::string& key = kv.first;
            const io::GgufValue& v = kv.second;
            touch_value(v);
            expect_ok_or_error([&] { consume(f.meta_int(key)); });
            expect_ok_or_error([&] { consume(f.meta_float(key)); });
            expect_ok_or_error([&] { consume(f.meta_bool(key)); });
            expect_ok_or_error([&] { consume(f.meta_string(key)); });
            expect_ok_or_error([&] { consume(f.meta_strings(key)); });
            expect_ok_or_error([&] { consume(f.meta_i32s(key)); });
            expect_ok_or_error([&] { consume(f.meta_i64s(key)); });
            expect_ok_or_error([&] { consume(f.meta_f32s(key)); });
        }
        expect_ok_or_error([&] { consume(f.meta_int_or("general.alignment", 32)); });
        expect_ok_or_error([&] { consume(f.meta("no such key")); });
        for (const auto& t : f.tensors()) {
            consume(t.shape());
            const auto raw = f.raw(t);
            if (!raw.empty()) consume(std::to_integer<int>(raw.front()) + std::to_integer<int>(raw.back()));
            if (t.n_elements() <= (std::int64_t(1) << 20)) {
                expect_ok_or_error([&] {
                    const std::vector<float> v = f.dequantize(t);
                    consume(v);
                });
            }
        }
    } catch (const ::transmla::error&) {
    }
    return 0;
}

}  // namespace transmla::fuzz
