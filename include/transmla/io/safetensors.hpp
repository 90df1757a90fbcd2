// transmla/io/safetensors.hpp — safetensors checkpoints: a memory-mapped reader that returns
// tensors as fp32, and a writer (F32, F16 or BF16 storage).
//
// Format: u64 (little-endian) header size N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// then the byte buffer; data_offsets are relative to the start of that buffer, end exclusive,
// data row-major little-endian. `__metadata__` (string → string) is kept but not interpreted.
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/json.hpp"
#include "transmla/io/mapped_file.hpp"
#include "transmla/types.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace transmla::io {

static_assert(std::endian::native == std::endian::little,
              "transmla/io: the GGUF and safetensors readers and writers assume a little-endian host");

/// Element types this library reads from safetensors ("F64", "F32", "F16", "BF16", "I64", "I32",
/// "I16", "I8", "U8", "BOOL"); integers and bools are converted to float on read.
inline std::size_t safetensors_dtype_size(std::string_view dtype) noexcept {
    if (dtype == "F64" || dtype == "I64") return 8;
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "F16" || dtype == "BF16" || dtype == "I16") return 2;
    if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
    return 0;
}

struct SafetensorsTensorInfo {
    std::string name;
    std::string dtype;
    std::vector<std::int64_t> shape;  ///< outermost first (row-major); empty for a scalar
    std::uint64_t begin = 0, end = 0;  ///< byte range inside the data buffer
    std::int64_t numel() const noexcept {
        std::int64_t n = 1;
        for (auto e : shape) n *= e;
        return n;
    }
};

/// A tensor read as fp32: row-major data of the given shape.
struct SafetensorsTensor {
    std::vector<std::int64_t> shape;
    std::vector<float> data;
};

/// A memory-mapped .safetensors file, validated on open; errors name the file, tensor and offset.
class SafetensorsFile : public FromMemory<SafetensorsFile> {
public:
    explicit SafetensorsFile(const std::string& path) : SafetensorsFile(MappedFile(path)) {}
    /// Reads the bytes held by `file` (mapped, or MappedFile::borrowed / owned); file.path()
    /// names them in error messages.
    explicit SafetensorsFile(MappedFile file);
    // from_memory(bytes, name) (borrowed: the bytes must outlive the object) and
    // from_bytes(bytes, name) (a copy): FromMemory, mapped_file.hpp.

    SafetensorsFile(SafetensorsFile&&) noexcept = default;
    SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

    const std::string& path() const noexcept { return file_.path(); }
    /// Tensors in the order of their data in the file.
    const std::vector<SafetensorsTensorInfo>& tensors() const noexcept { return tensors_; }
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    bool has(std::string_view name) const { return index_.count(std::string(name)) != 0; }
    /// Throws naming the file and the missing tensor.
    const SafetensorsTensorInfo& info(std::string_view name) const {
        const auto it = index_.find(std::string(name));
        if (it == index_.end())
            fail("safetensors '", path(), "': tensor '", name, "' not found (the file has ", tensors_.size(),
                 " tensors)");
        return tensors_[it->second];
    }
    /// The stored bytes (inside the mapping; valid while this object lives).
    std::span<const std::byte> raw(std::string_view name) const {
        const auto& t = info(name);
        return {file_.data() + data_start_ + t.begin, std::size_t(t.end - t.begin)};
    }
    /// The tensor converted to fp32, with its shape.
    SafetensorsTensor tensor(std::string_view name) const {
        const auto& t = info(name);
        SafetensorsTensor out{t.shape, std::vector<float>(std::size_t(t.numel()))};
        convert(t, out.data.data());
        return out;
    }
    /// The tensor as fp32, checking that its shape is `expect` (message names the tensor).
    std::vector<float> tensor(std::string_view name, const std::vector<std::int64_t>& expect) const {
        const auto& t = info(name);
        if (t.shape != expect)
            fail("safetensors '", path(), "': tensor '", name, "' has shape ", shape_str(t.shape), ", expected ",
                 shape_str(expect));
        std::vector<float> out(std::size_t(t.numel()));
        convert(t, out.data());
        return out;
    }

    static std::string shape_str(const std::vector<std::int64_t>& s) {
        std::string r = "[";
        for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
        return r + "]";
    }

private:
    void convert(const SafetensorsTensorInfo& t, float* dst) const {
        const auto* p = reinterpret_cast<const std::uint8_t*>(file_.data() + data_start_ + t.begin);
        const std::size_t n = std::size_t(t.numel());
        auto load = [&](auto tag, std::size_t i) {
            using T = decltype(tag);
            T v;
            std::memcpy(&v, p + i * sizeof(T), sizeof(T));
            return v;
        };
        const std::string& d = t.dtype;
        if (n == 0) return;
        if (d == "F32") std::memcpy(dst, p, n * 4);
        else if (d == "F16") for (std::size_t i = 0; i < n; ++i) dst[i] = to_float(half_from_bits(load(std::uint16_t{}, i)));
        else if (d == "BF16") for (std::size_t i = 0; i < n; ++i) dst[i] = to_float(bf16_from_bits(load(std::uint16_t{}, i)));
        else if (d == "F64") for (std::size_t i = 0; i < n; ++i) dst[i] = float(load(double{}, i));
        else if (d == "I64") for (std::size_t i = 0; i < n; ++i) dst[i] = float(load(std::int64_t{}, i));
        else if (d == "I32") for (std::size_t i = 0; i < n; ++i) dst[i] = float(load(std::int32_t{}, i));
        else if (d == "I16") for (std::size_t i = 0; i < n; ++i) dst[i] = float(load(std::int16_t{}, i));
        else if (d == "I8") for (std::size_t i = 0; i < n; ++i) dst[i] = float(load(std::int8_t{}, i));
        else if (d == "U8" || d == "BOOL") for (std::size_t i = 0; i < n; ++i) dst[i] = float(p[i]);
        else fail("safetensors '", path(), "': tensor '", t.name, "': dtype ", d, " cannot be converted");
    }

    MappedFile file_;
    std::uint64_t data_start_ = 0;
    std::vector<SafetensorsTensorInfo> tensors_;
    std::unordered_map<std::string, std::size_t> index_;
    std::map<std::string, std::string> metadata_;
};

/// Largest element count (and largest single extent) of a safetensors tensor: 2^48, far above
/// any checkpoint, so that element and byte counts cannot overflow.
inline constexpr std::uint64_t safetensors_max_elements = std::uint64_t(1) << 48;

inline SafetensorsFile::SafetensorsFile(MappedFile file) : file_(std::move(file)) {
    const std::string& path = file_.path();
    const std::uint64_t size = file_.size();
    if (size < 8) fail("safetensors '", path, "': truncated file: ", size, " bytes, the header size alone needs 8");
    std::uint64_t n = 0;
    std::memcpy(&n, file_.data(), 8);
    if (n > size - 8)
        fail("safetensors '", path, "': header size ", n, " (at offset 0) exceeds the file (", size, " bytes)");
    data_start_ = 8 + n;
    const nlohmann::json h = parse_json(
        std::string_view(reinterpret_cast<const char*>(file_.data()) + 8, std::size_t(n)),
        ::transmla::detail::concat("safetensors '", path, "': the JSON header (offset 8, ", n, " bytes)"));
    if (!h.is_object()) fail("safetensors '", path, "': the JSON header is not an object");
    const std::uint64_t buffer = size - data_start_;
    for (auto it = h.begin(); it != h.end(); ++it) {
        const std::string& name = it.key();
        const auto& v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) fail("safetensors '", path, "': __metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m)
                metadata_[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
            continue;
        }
        auto bad = [&](const std::string& what) {
            fail("safetensors '", path, "': tensor '", name, "': ", what);
        };
        if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
            bad("entry must be an object with dtype, shape and data_offsets");
        SafetensorsTensorInfo t;
        t.name = name;
        if (!v["dtype"].is_string()) bad("dtype is not a string");
        t.dtype = v["dtype"].get<std::string>();
        const std::size_t es = safetensors_dtype_size(t.dtype);
        if (es == 0) bad("unsupported dtype " + t.dtype + " (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
        if (!v["shape"].is_array()) bad("shape is not an array");
        // Every extent and the product of the non-zero ones stay <= 2^48, so that no product of
        // extents (in any order, by any caller) overflows: [0, 2^63] holds no elements, but
        // 2^63 does not even fit in the int64 shape.
        std::uint64_t numel = 1, nonzero = 1;
        if (v["shape"].size() > 64) bad(::transmla::detail::concat("shape has ", v["shape"].size(), " dimensions"));
        for (const auto& e : v["shape"]) {
            if (!e.is_number_unsigned()) bad("shape " + v["shape"].dump() + " has a non-integer or negative extent");
            const std::uint64_t x = e.get<std::uint64_t>();
            if (x > safetensors_max_elements || (x != 0 && nonzero > safetensors_max_elements / x))
                bad("shape " + v["shape"].dump() + " is too large (more than 2^48 elements)");
            if (x != 0) nonzero *= x;
            numel *= x;
            t.shape.push_back(std::int64_t(x));
        }
        const auto& off = v["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            bad("data_offsets must be [begin, end] with non-negative integers");
        t.begin = off[0].get<std::uint64_t>();
        t.end = off[1].get<std::uint64_t>();
        if (t.end < t.begin || t.end > buffer)
            bad(::transmla::detail::concat("data_offsets [", t.begin, ", ", t.end, ") (file offsets [", data_start_ + t.begin,
                                           ", ", data_start_ + t.end, ")) lie outside the data buffer of ", buffer,
                                           " bytes; the file is truncated or corrupt"));
        if (t.end - t.begin != numel * es)
            bad(::transmla::detail::concat("data_offsets [", t.begin, ", ", t.end, ") hold ", t.end - t.begin,
                                           " bytes but shape ", v["shape"].dump(), " of ", t.dtype, " needs ", numel * es));
        tensors_.push_back(std::move(t));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.name < b.name;
    });
    // The data buffer is exactly the tensors back to back (as the format requires): no overlap,
    // no hole, nothing after the last one. A hole or trailing bytes mean that some dtype, shape or
    // offset was changed.
    std::uint64_t expect = 0;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
        const auto& t = tensors_[i];
        if (t.begin != expect) {
            if (i > 0 && t.begin < expect)
                fail("safetensors '", path, "': tensors '", tensors_[i - 1].name, "' and '", t.name,
                     "' overlap (data offset ", t.begin, ", file offset ", data_start_ + t.begin, ")");
            fail("safetensors '", path, "': tensor '", t.name, "': data_offsets begin at ", t.begin, " (file offset ",
                 data_start_ + t.begin, ") but ", i == 0 ? "the data buffer starts" : "the previous tensor ends",
                 " at ", expect, "; bytes no tensor accounts for");
        }
        expect = t.end;
        index_.emplace(t.name, i);
    }
    if (expect != buffer)
        fail("safetensors '", path, "': the tensors end at data offset ", expect, " (file offset ", data_start_ + expect,
             ") but the data buffer has ", buffer, " bytes; bytes no tensor accounts for");
}

/// Builds a safetensors file in memory and writes it atomically (temporary name, then rename).
/// Values are given as fp32 and stored as F32 (default), F16 or BF16 (round to nearest even).
class SafetensorsWriter {
public:
    void add(const std::string& name, const std::vector<std::int64_t>& shape, std::span<const float> data,
             std::string_view dtype = "F32") {
        require(name != "__metadata__" && !name.empty(), "SafetensorsWriter: invalid tensor name '", name, "'");
        for (const auto& e : entries_) require(e.name != name, "SafetensorsWriter: duplicate tensor name '", name, "'");
        require(dtype == "F32" || dtype == "F16" || dtype == "BF16", "SafetensorsWriter: tensor '", name,
                "': dtype must be F32, F16 or BF16, got ", dtype);
        std::int64_t numel = 1;
        for (auto e : shape) {
            require(e >= 0, "SafetensorsWriter: tensor '", name, "' has negative extent ", e);
            numel *= e;
        }
        require(std::int64_t(data.size()) == numel, "SafetensorsWriter: tensor '", name, "' has ", data.size(),
                " values but shape ", SafetensorsFile::shape_str(shape), " holds ", numel);
        Entry e{name, std::string(dtype), shape, {}};
        const std::size_t es = safetensors_dtype_size(dtype);
        e.bytes.resize(data.size() * es);
        for (std::size_t i = 0; i < data.size(); ++i) {
            if (es == 4) {
                std::memcpy(&e.bytes[4 * i], &data[i], 4);
            } else {
                const std::uint16_t b = dtype == "F16" ? bits_of(from_float<half>(data[i])) : bits_of(from_float<bfloat16>(data[i]));
                std::memcpy(&e.bytes[2 * i], &b, 2);
            }
        }
        entries_.push_back(std::move(e));
    }
    void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

    void write(const std::string& path) const {
        const std::vector<std::uint8_t> bytes = to_bytes();
        AtomicFileWriter w(path);
        w.write(bytes.data(), bytes.size());
        w.commit();
    }

    /// The bytes write() would put in the file.
    std::vector<std::uint8_t> to_bytes() const {
        nlohmann::ordered_json h = nlohmann::ordered_json::object();
        if (!metadata_.empty()) h["__metadata__"] = metadata_;
        std::uint64_t off = 0;
        for (const auto& e : entries_) {
            h[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {off, off + e.bytes.size()}}};
            off += e.bytes.size();
        }
        std::string js = h.dump();
        js.append((8 - js.size() % 8) % 8, ' ');  // the data buffer starts 8-byte aligned
        const std::uint64_t n = js.size();
        std::size_t total = 8 + js.size();
        for (const auto& e : entries_) total += e.bytes.size();
        std::vector<std::uint8_t> out(total);
        std::memcpy(out.data(), &n, 8);
        std::memcpy(out.data() + 8, js.data(), js.size());
        std::size_t at = 8 + js.size();
        for (const auto& e : entries_) {
            if (!e.bytes.empty()) std::memcpy(out.data() + at, e.bytes.data(), e.bytes.size());
            at += e.bytes.size();
        }
        return out;
    }

private:
    struct Entry {
        std::string name, dtype;
        std::vector<std::int64_t> shape;
        std::vector<std::uint8_t> bytes;
    };
    std::vector<Entry> entries_;
    std::map<std::string, std::string> metadata_;
};

/// A Hugging Face checkpoint in one or several safetensors files. `path` is a .safetensors file,
/// a `*.safetensors.index.json` (its "weight_map" names the shard of every tensor), or a
/// directory holding `model.safetensors.index.json` or `model.safetensors`. Shards are mapped
/// once each; every tensor of the weight map is checked to be in its shard on open.
class SafetensorsCheckpoint {
public:
    explicit SafetensorsCheckpoint(const std::string& path) {
        namespace fs = std::filesystem;
        fs::path p(path);
        if (fs::is_directory(p)) {
            if (fs::exists(p / "model.safetensors.index.json")) p /= "model.safetensors.index.json";
            else if (fs::exists(p / "model.safetensors")) p /= "model.safetensors";
            else fail("safetensors checkpoint: directory '", path, "' has neither model.safetensors.index.json nor model.safetensors");
        }
        const std::string name = p.filename().string();
        path_ = p.string();
        if (name.size() > 5 && name.substr(name.size() - 5) == ".json") {
            std::ifstream f(p, std::ios::binary);
            require(f.good(), "safetensors checkpoint: cannot open index '", p.string(), "'");
            const std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
            require(!f.bad(), "safetensors checkpoint: cannot read index '", p.string(), "'");
            const fs::path dir = p.parent_path();
            read_index(text, [&](const std::string& shard) {
                return SafetensorsFile((dir / shard).string());
            });
        } else {
            shards_.push_back(std::make_unique<SafetensorsFile>(p.string()));
            for (const auto& t : shards_[0]->tensors()) where_.emplace(t.name, 0);
        }
    }

    /// A checkpoint of one safetensors file (e.g. SafetensorsFile::from_memory).
    explicit SafetensorsCheckpoint(SafetensorsFile file) : path_(file.path()) {
        shards_.push_back(std::make_unique<SafetensorsFile>(std::move(file)));
        for (const auto& t : shards_[0]->tensors()) where_.emplace(t.name, 0);
    }

    /// A sharded checkpoint held in memory: the text of its index JSON (named `index_name` in
    /// messages) and the bytes of each shard under the file name the weight map uses. The shards
    /// are not copied: they must outlive the returned object.
    static SafetensorsCheckpoint from_memory(std::string_view index_json, std::string index_name,
                                             const std::map<std::string, std::span<const std::byte>>& shards) {
        SafetensorsCheckpoint ck;
        ck.path_ = std::move(index_name);
        ck.read_index(index_json, [&](const std::string& shard) {
            const auto it = shards.find(shard);
            if (it == shards.end())
                fail("safetensors index '", ck.path_, "': weight_map names shard '", shard, "', which is not given");
            return SafetensorsFile::from_memory(it->second, shard);
        });
        return ck;
    }

    /// The file (or index) that was opened.
    const std::string& path() const noexcept { return path_; }
    std::size_t n_shards() const noexcept { return shards_.size(); }
    bool has(std::string_view name) const { return where_.count(std::string(name)) != 0; }
    /// All tensor names, sorted.
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& [k, v] : where_) out.push_back(k);
        return out;
    }
    const SafetensorsFile& shard_of(std::string_view name) const {
        const auto it = where_.find(std::string(name));
        if (it == where_.end()) fail("safetensors checkpoint '", path_, "': tensor '", name, "' not found");
        return *shards_[it->second];
    }
    const SafetensorsTensorInfo& info(std::string_view name) const { return shard_of(name).info(name); }
    SafetensorsTensor tensor(std::string_view name) const { return shard_of(name).tensor(name); }
    std::vector<float> tensor(std::string_view name, const std::vector<std::int64_t>& expect) const {
        return shard_of(name).tensor(name, expect);
    }

private:
    SafetensorsCheckpoint() = default;

    /// Reads an index ({"weight_map": {tensor: shard file name}}); open(name) gives a shard.
    void read_index(std::string_view text, const std::function<SafetensorsFile(const std::string&)>& open) {
        const std::string where = "safetensors index '" + path_ + "'";
        const nlohmann::json j = parse_json(text, where);
        if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
            fail(where, " has no \"weight_map\" object");
        std::map<std::string, std::size_t> shard_of_file;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it.value().is_string())
                fail(where, ": weight_map entry '", it.key(), "' is not a file name");
            const std::string file = it.value().get<std::string>();
            check_shard_name(where, it.key(), file);
            auto [pos, added] = shard_of_file.emplace(file, shards_.size());
            if (added) shards_.push_back(std::make_unique<SafetensorsFile>(open(file)));
            if (!shards_[pos->second]->has(it.key()))
                fail(where, ": tensor '", it.key(), "' is mapped to '", shards_[pos->second]->path(),
                     "', which does not contain it");
            where_.emplace(it.key(), pos->second);
        }
    }

    /// A shard is a file beside the index: a relative name without '..' (no path outside the
    /// checkpoint's directory can be named by a downloaded index).
    static void check_shard_name(const std::string& where, const std::string& tensor, const std::string& file) {
        bool ok = !file.empty() && file.front() != '/' && file.find('\0') == std::string::npos &&
                  file.find('\\') == std::string::npos;
        for (std::size_t b = 0; ok && b <= file.size();) {
            const std::size_t e = std::min(file.find('/', b), file.size());
            const std::string_view part(file.data() + b, e - b);
            if (part.empty() || part == "." || part == "..") ok = false;
            b = e + 1;
        }
        if (!ok)
            fail(where, ": weight_map entry '", tensor, "' names shard '", file,
                 "'; a shard must be a relative file name without '.' or '..' components");
    }

    std::string path_;
    std::vector<std::unique_ptr<SafetensorsFile>> shards_;
    std::map<std::string, std::size_t> where_;
};

}  // namespace transmla::io
