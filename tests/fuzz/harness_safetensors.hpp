// Fuzz harness (d): safetensors files and checkpoints from memory.
// Input: one mode byte, then
//   mode % 3 == 0: a safetensors file; every tensor read (when it holds at most 2^20 elements);
//   mode % 3 == 1: u32 n | n bytes of index JSON | a shard, offered under two shard names;
//   mode % 3 == 2: u32 n | n bytes of config.json | a safetensors file, loaded as a model.
#pragma once

#include "harness_common.hpp"

#include "transmla/io/hf_config.hpp"
#include "transmla/io/safetensors.hpp"
#include "transmla/model/safetensors_loader.hpp"

#include <map>
#include <string>

namespace transmla::fuzz {

inline void read_all(const io::SafetensorsFile& f) {
    consume(f.metadata().size());
    for (const auto& t : f.tensors()) {
        consume(f.raw(t.name).size());
        if (t.numel() <= (std::int64_t(1) << 20)) {
            expect_ok_or_error([&] { consume(f.tensor(t.name).data); });
            expect_ok_or_error([&] { consume(f.tensor(t.name, {t.numel()})); });
        }
    }
}

inline int run_safetensors(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const unsigned mode = data[0] % 3u;
    const auto in = as_bytes(data + 1, size - 1);
    try {
        if (mode == 0) {
            read_all(io::SafetensorsFile::from_memory(in, "<fuzz safetensors>"));
        } else {
            std::span<const std::byte> json, shard;
            split_prefixed(in, json, shard);
            const std::string_view text(reinterpret_cast<const char*>(json.data()), json.size());
            if (mode == 1) {
                const std::map<std::string, std::span<const std::byte>> shards{
                    {"model-00001-of-00002.safetensors", shard}, {"model-00002-of-00002.safetensors", shard}};
                const auto ck = io::SafetensorsCheckpoint::from_memory(text, "<fuzz index>", shards);
                for (const auto& name : ck.names()) {
                    const auto& t = ck.info(name);
                    if (t.numel() <= (std::int64_t(1) << 20)) consume(ck.tensor(name).data);
                }
            } else {
                const io::HfConfig h = io::parse_hf_config_text(text, "<fuzz config>");
                const io::SafetensorsCheckpoint ck(io::SafetensorsFile::from_memory(shard, "<fuzz checkpoint>"));
                consume(model::load_safetensors(h, ck).config);
            }
        }
    } catch (const ::transmla::error&) {
    }
    return 0;
}

}  // namespace transmla::fuzz
