// transmla/io/gguf.hpp — GGUF (v2, v3) model files: a memory-mapped reader with typed metadata
// access and dequantisation of tensors to fp32, a small writer, and the helpers that undo the
// row permutation llama.cpp applies to Llama attention weights.
//
// File layout (little-endian):
//   "GGUF" u32 version  u64 n_tensors  u64 n_kv
//   n_kv × { string key, u32 value_type, value }        string = u64 length + bytes (no NUL)
//   n_tensors × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to `general.alignment` (default 32), then the data section; each tensor's offset is
//   relative to the start of the data section and a multiple of the alignment.
// `ne[0]` is the fastest-varying extent: a 2-D weight with ne = [in, out] is the row-major
// PyTorch matrix [out][in]. GgufTensorInfo::shape() and dequantize() use the PyTorch order.
//
// Usage:
//     transmla::io::GgufFile f(path);                        // throws transmla::error on a bad file
//     int layers = int(f.meta_int("llama.block_count"));
//     std::vector<float> wq = f.dequantize("blk.0.attn_q.weight");   // [out][in], fp32
//     transmla::io::unpermute_llama_qk(wq, n_heads, head_dim, hidden); // back to HF row order
//
// Note for Llama-family models converted by llama.cpp (convert_hf_to_gguf.py): the rows of
// attn_q.weight and attn_k.weight are permuted per head so that the interleaved ("NORM") RoPE
// kernel can be used. Within a head of width d, the Hugging Face row j (half-split pairing: j
// pairs with j + d/2) is GGUF row 2j, and HF row j + d/2 is GGUF row 2j + 1, for j in [0, d/2).
// unpermute_llama_qk() restores the HF row order (then use RopePairing::half_split, as HF does);
// for attn_k pass the number of KV heads. permute_llama_qk() is its inverse.
#pragma once

#include "transmla/error.hpp"
#include "transmla/io/ggml_types.hpp"
#include "transmla/io/mapped_file.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace transmla::io {

static_assert(std::endian::native == std::endian::little,
              "transmla/io: the GGUF and safetensors readers and writers assume a little-endian host");

/// GGUF metadata value types.
enum class GgufType : std::uint32_t {
    UINT8 = 0,
    INT8 = 1,
    UINT16 = 2,
    INT16 = 3,
    UINT32 = 4,
    INT32 = 5,
    FLOAT32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    UINT64 = 10,
    INT64 = 11,
    FLOAT64 = 12,
};

inline const char* to_string(GgufType t) noexcept {
    switch (t) {
        case GgufType::UINT8: return "uint8";
        case GgufType::INT8: return "int8";
        case GgufType::UINT16: return "uint16";
        case GgufType::INT16: return "int16";
        case GgufType::UINT32: return "uint32";
        case GgufType::INT32: return "int32";
        case GgufType::FLOAT32: return "float32";
        case GgufType::BOOL: return "bool";
        case GgufType::STRING: return "string";
        case GgufType::ARRAY: return "array";
        case GgufType::UINT64: return "uint64";
        case GgufType::INT64: return "int64";
        case GgufType::FLOAT64: return "float64";
    }
    return "unknown";
}

/// One metadata value: a scalar of any GGUF type, a string, or an array (whose elements all have
/// one type, possibly ARRAY again). Build them with the static factories.
class GgufValue {
public:
    GgufValue() = default;  ///< uint8 0

    static GgufValue u8(std::uint8_t v) { return scalar(GgufType::UINT8, v); }
    static GgufValue i8(std::int8_t v) { return scalar(GgufType::INT8, std::uint64_t(std::int64_t(v))); }
    static GgufValue u16(std::uint16_t v) { return scalar(GgufType::UINT16, v); }
    static GgufValue i16(std::int16_t v) { return scalar(GgufType::INT16, std::uint64_t(std::int64_t(v))); }
    static GgufValue u32(std::uint32_t v) { return scalar(GgufType::UINT32, v); }
    static GgufValue i32(std::int32_t v) { return scalar(GgufType::INT32, std::uint64_t(std::int64_t(v))); }
    static GgufValue u64(std::uint64_t v) { return scalar(GgufType::UINT64, v); }
    static GgufValue i64(std::int64_t v) { return scalar(GgufType::INT64, std::uint64_t(v)); }
    static GgufValue f32(float v) { return scalar(GgufType::FLOAT32, std::bit_cast<std::uint64_t>(double(v))); }
    static GgufValue f64(double v) { return scalar(GgufType::FLOAT64, std::bit_cast<std::uint64_t>(v)); }
    static GgufValue boolean(bool v) { return scalar(GgufType::BOOL, v ? 1 : 0); }
    static GgufValue string(std::string s) {
        GgufValue r;
        r.type_ = GgufType::STRING;
        r.str_ = std::move(s);
        return r;
    }
    /// An array of `elem` values; every item must have type `elem`.
    static GgufValue array(GgufType elem, std::vector<GgufValue> items) {
        for (std::size_t i = 0; i < items.size(); ++i)
            require(items[i].type() == elem, "GgufValue::array: item ", i, " has type ", to_string(items[i].type()),
                    " but the array holds ", to_string(elem));
        GgufValue r;
        r.type_ = GgufType::ARRAY;
        r.elem_ = elem;
        r.items_ = std::move(items);
        return r;
    }
    static GgufValue strings(const std::vector<std::string>& v) {
        std::vector<GgufValue> items;
        items.reserve(v.size());
        for (const auto& s : v) items.push_back(string(s));
        return array(GgufType::STRING, std::move(items));
    }
    static GgufValue i32s(const std::vector<std::int32_t>& v) {
        std::vector<GgufValue> items;
        items.reserve(v.size());
        for (auto x : v) items.push_back(i32(x));
        return array(GgufType::INT32, std::move(items));
    }
    static GgufValue f32s(const std::vector<float>& v) {
        std::vector<GgufValue> items;
        items.reserve(v.size());
        for (auto x : v) items.push_back(f32(x));
        return array(GgufType::FLOAT32, std::move(items));
    }

    GgufType type() const noexcept { return type_; }
    bool is_integer() const noexcept {
        switch (type_) {
            case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
            case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64: return true;
            default: return false;
        }
    }
    bool is_signed() const noexcept {
        return type_ == GgufType::INT8 || type_ == GgufType::INT16 || type_ == GgufType::INT32 ||
               type_ == GgufType::INT64;
    }
    bool is_float() const noexcept { return type_ == GgufType::FLOAT32 || type_ == GgufType::FLOAT64; }
    bool is_string() const noexcept { return type_ == GgufType::STRING; }
    bool is_array() const noexcept { return type_ == GgufType::ARRAY; }
    bool is_bool() const noexcept { return type_ == GgufType::BOOL; }

    /// Any integer type as int64 (a uint64 above INT64_MAX throws).
    std::int64_t as_int() const {
        require(is_integer(), "GGUF value of type ", to_string(type_), " is not an integer");
        if (type_ == GgufType::UINT64)
            require(raw_ <= std::uint64_t(std::numeric_limits<std::int64_t>::max()), "GGUF uint64 value ", raw_,
                    " does not fit in int64");
        return std::int64_t(raw_);
    }
    /// Any non-negative integer as uint64.
    std::uint64_t as_uint() const {
        require(is_integer(), "GGUF value of type ", to_string(type_), " is not an integer");
        if (is_signed()) require(std::int64_t(raw_) >= 0, "GGUF value ", std::int64_t(raw_), " is negative");
        return raw_;
    }
    /// float32/float64, or any integer converted to double.
    double as_float() const {
        if (is_float()) return std::bit_cast<double>(raw_);
        if (is_integer()) return is_signed() ? double(std::int64_t(raw_)) : double(raw_);
        fail("GGUF value of type ", to_string(type_), " is not a number");
    }
    bool as_bool() const {
        require(is_bool(), "GGUF value of type ", to_string(type_), " is not a bool");
        return raw_ != 0;
    }
    const std::string& as_string() const {
        require(is_string(), "GGUF value of type ", to_string(type_), " is not a string");
        return str_;
    }
    /// Element type of an array.
    GgufType elem_type() const {
        require(is_array(), "GGUF value of type ", to_string(type_), " is not an array");
        return elem_;
    }
    const std::vector<GgufValue>& items() const {
        require(is_array(), "GGUF value of type ", to_string(type_), " is not an array");
        return items_;
    }
    std::size_t size() const { return items().size(); }
    const GgufValue& operator[](std::size_t i) const {
        const auto& it = items();
        require(i < it.size(), "GGUF array index ", i, " out of range (size ", it.size(), ")");
        return it[i];
    }

    friend bool operator==(const GgufValue& a, const GgufValue& b) {
        return a.type_ == b.type_ && a.raw_ == b.raw_ && a.str_ == b.str_ && a.elem_ == b.elem_ && a.items_ == b.items_;
    }

private:
    static GgufValue scalar(GgufType t, std::uint64_t raw) {
        GgufValue r;
        r.type_ = t;
        r.raw_ = raw;
        return r;
    }

    GgufType type_ = GgufType::UINT8;
    std::uint64_t raw_ = 0;  ///< integers (sign-extended), bool 0/1, floats as double bits
    std::string str_;
    GgufType elem_ = GgufType::UINT8;
    std::vector<GgufValue> items_;
};

/// Where a tensor lives and what it holds.
struct GgufTensorInfo {
    std::string name;
    int n_dims = 0;
    std::array<std::int64_t, 4> ne{1, 1, 1, 1};  ///< ggml order: ne[0] varies fastest
    GgmlType type = GgmlType::F32;
    std::uint64_t offset = 0;       ///< of the data, relative to the data section
    std::uint64_t n_bytes = 0;      ///< size of the data
    std::uint64_t info_offset = 0;  ///< file offset of this tensor's info record (for messages)

    std::int64_t n_elements() const noexcept { return ne[0] * ne[1] * ne[2] * ne[3]; }
    /// PyTorch order (outermost first): ne reversed, n_dims entries. ne = [in, out] → {out, in}.
    std::vector<std::int64_t> shape() const {
        std::vector<std::int64_t> s;
        for (int i = n_dims - 1; i >= 0; --i) s.push_back(ne[std::size_t(i)]);
        return s;
    }
};

/// A memory-mapped GGUF file. Everything is validated on open (header, every metadata value,
/// every tensor info, that each tensor's data lies inside the file); errors throw
/// transmla::error naming the file, the key or tensor, and the byte offset.
class GgufFile : public FromMemory<GgufFile> {
public:
    explicit GgufFile(const std::string& path) : GgufFile(MappedFile(path)) {}
    /// Reads the bytes held by `file` (a mapped file, or MappedFile::borrowed / owned bytes);
    /// file.path() names them in error messages.
    explicit GgufFile(MappedFile file);
    // from_memory(bytes, name) (borrowed: the bytes must outlive the object and every span raw()
    // gives) and from_bytes(bytes, name) (a copy): FromMemory, mapped_file.hpp.

    GgufFile(GgufFile&&) noexcept = default;
    GgufFile& operator=(GgufFile&&) noexcept = default;

    const std::string& path() const noexcept { return file_.path(); }
    std::uint32_t version() const noexcept { return version_; }
    std::uint32_t alignment() const noexcept { return alignment_; }
    /// Absolute file offset of the data section.
    std::uint64_t data_offset() const noexcept { return data_offset_; }
    std::uint64_t file_size() const noexcept { return file_.size(); }

    // ---- metadata ----
    /// All key/value pairs in file order.
    const std::vector<std::pair<std::string, GgufValue>>& metadata() const noexcept { return kv_; }
    bool has(std::string_view key) const { return kv_index_.count(std::string(key)) != 0; }
    /// nullptr when absent.
    const GgufValue* find(std::string_view key) const {
        const auto it = kv_index_.find(std::string(key));
        return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
    }
    /// Throws naming the file and key when absent.
    const GgufValue& meta(std::string_view key) const {
        const GgufValue* v = find(key);
        if (!v) fail("GGUF '", path(), "': metadata key '", key, "' not found");
        return *v;
    }
    std::int64_t meta_int(std::string_view key) const { return checked(key, [](const GgufValue& v) { return v.as_int(); }); }
    double meta_float(std::string_view key) const { return checked(key, [](const GgufValue& v) { return v.as_float(); }); }
    bool meta_bool(std::string_view key) const { return checked(key, [](const GgufValue& v) { return v.as_bool(); }); }
    std::string meta_string(std::string_view key) const {
        return checked(key, [](const GgufValue& v) { return v.as_string(); });
    }
    std::int64_t meta_int_or(std::string_view key, std::int64_t fallback) const { return has(key) ? meta_int(key) : fallback; }
    double meta_float_or(std::string_view key, double fallback) const { return has(key) ? meta_float(key) : fallback; }
    bool meta_bool_or(std::string_view key, bool fallback) const { return has(key) ? meta_bool(key) : fallback; }
    std::string meta_string_or(std::string_view key, std::string fallback) const {
        return has(key) ? meta_string(key) : fallback;
    }
    /// Arrays of strings / integers (any integer element type, range-checked) / numbers.
    std::vector<std::string> meta_strings(std::string_view key) const {
        return array_of<std::string>(key, [](const GgufValue& v) { return v.as_string(); });
    }
    std::vector<std::int32_t> meta_i32s(std::string_view key) const {
        return array_of<std::int32_t>(key, [](const GgufValue& v) {
            const std::int64_t x = v.as_int();
            require(x >= std::numeric_limits<std::int32_t>::min() && x <= std::numeric_limits<std::int32_t>::max(),
                    "value ", x, " does not fit in int32");
            return std::int32_t(x);
        });
    }
    std::vector<std::int64_t> meta_i64s(std::string_view key) const {
        return array_of<std::int64_t>(key, [](const GgufValue& v) { return v.as_int(); });
    }
    std::vector<float> meta_f32s(std::string_view key) const {
        return array_of<float>(key, [](const GgufValue& v) { return float(v.as_float()); });
    }

    // ---- tensors ----
    const std::vector<GgufTensorInfo>& tensors() const noexcept { return tensors_; }
    bool has_tensor(std::string_view name) const { return tensor_index_.count(std::string(name)) != 0; }
    /// Throws naming the file and the missing tensor.
    const GgufTensorInfo& tensor(std::string_view name) const {
        const auto it = tensor_index_.find(std::string(name));
        if (it == tensor_index_.end())
            fail("GGUF '", path(), "': tensor '", name, "' not found (the file has ", tensors_.size(), " tensors)");
        return tensors_[it->second];
    }
    /// The stored bytes of a tensor (inside the mapping; valid while this object lives).
    std::span<const std::byte> raw(const GgufTensorInfo& t) const {
        return {file_.data() + data_offset_ + t.offset, std::size_t(t.n_bytes)};
    }
    std::span<const std::byte> raw(std::string_view name) const { return raw(tensor(name)); }
    /// Dequantised to fp32, row-major in PyTorch order (see GgufTensorInfo::shape()).
    std::vector<float> dequantize(const GgufTensorInfo& t) const {
        std::vector<float> out(std::size_t(t.n_elements()));
        dequantize_into(t, out);
        return out;
    }
    std::vector<float> dequantize(std::string_view name) const { return dequantize(tensor(name)); }
    /// Same into caller memory of exactly n_elements() floats.
    void dequantize_into(const GgufTensorInfo& t, std::span<float> out) const {
        require(out.size() == std::size_t(t.n_elements()), "GGUF '", path(), "': tensor '", t.name, "' has ",
                t.n_elements(), " elements but the destination holds ", out.size());
        if (!ggml_type_supported(t.type))
            fail("GGUF '", path(), "': tensor '", t.name, "' (data at file offset ", data_offset_ + t.offset,
                 ") has type ", ggml_type_name(t.type), ", which cannot be dequantized");
        dequantize(t.type, raw(t).data(), out.data(), t.n_elements());
    }
    void dequantize_into(std::string_view name, std::span<float> out) const { dequantize_into(tensor(name), out); }

private:
    static void dequantize(GgmlType t, const void* src, float* dst, std::int64_t n) {
        ::transmla::io::dequantize(t, src, dst, n);
    }

    template <class F>
    auto checked(std::string_view key, F&& get) const -> decltype(get(std::declval<const GgufValue&>())) {
        const GgufValue& v = meta(key);
        try {
            return get(v);
        } catch (const error& e) {
            fail("GGUF '", path(), "': metadata key '", key, "' (", to_string(v.type()), "): ", e.what());
        }
    }
    template <class T, class F>
    std::vector<T> array_of(std::string_view key, F&& get) const {
        const GgufValue& v = meta(key);
        if (!v.is_array()) fail("GGUF '", path(), "': metadata key '", key, "' is ", to_string(v.type()), ", not an array");
        std::vector<T> out;
        out.reserve(v.items().size());
        for (std::size_t i = 0; i < v.items().size(); ++i) {
            try {
                out.push_back(get(v.items()[i]));
            } catch (const error& e) {
                fail("GGUF '", path(), "': metadata key '", key, "' item ", i, ": ", e.what());
            }
        }
        return out;
    }

    MappedFile file_;
    std::uint32_t version_ = 0;
    std::uint32_t alignment_ = 32;
    std::uint64_t data_offset_ = 0;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::unordered_map<std::string, std::size_t> kv_index_;
    std::vector<GgufTensorInfo> tensors_;
    std::unordered_map<std::string, std::size_t> tensor_index_;
};

// ------------------------------------------------------------------------------------------------
// Reader implementation
// ------------------------------------------------------------------------------------------------

namespace detail {

/// Most elements one tensor may hold (2^40: far above any model, and small enough that element
/// and byte counts never overflow 64 bits).
inline constexpr std::uint64_t gguf_max_elements = std::uint64_t(1) << 40;
/// Most metadata array elements one file may hold, all arrays together.
inline constexpr std::uint64_t gguf_max_array_items = std::uint64_t(1) << 24;

/// Bounds-checked little-endian reader over the mapped bytes; every failure names file + offset.
struct GgufCursor {
    const std::uint8_t* base;
    std::uint64_t size;
    std::uint64_t pos = 0;
    const std::string& path;
    std::string context;  ///< what is being read ("metadata key 'x'"), prefixed to messages
    std::uint64_t array_items = 0;  ///< metadata array elements read so far (all arrays)

    [[noreturn]] void bad(const std::string& what) const {
        if (context.empty() || what.find(context) != std::string::npos)
            fail("GGUF '", path, "': ", what, " at offset ", pos, " (file size ", size, ")");
        fail("GGUF '", path, "': ", context, ": ", what, " at offset ", pos, " (file size ", size, ")");
    }
    void need(std::uint64_t n, const char* what) const {
        if (n > size - pos) bad(::transmla::detail::concat("truncated file: ", what, " needs ", n, " bytes, ", size - pos, " left"));
    }
    template <class T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base + pos, sizeof(T));  // the library requires a little-endian host
        pos += sizeof(T);
        return v;
    }
    std::string read_string(const char* what) {
        const std::uint64_t n = read<std::uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char*>(base + pos), std::size_t(n));
        pos += n;
        return s;
    }
};

inline std::uint64_t gguf_scalar_size(GgufType t) {
    switch (t) {
        case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
        case GgufType::UINT16: case GgufType::INT16: return 2;
        case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
        case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
        case GgufType::STRING: return 8;  // at least the length field
        case GgufType::ARRAY: return 12;  // at least type + count
    }
    return 0;
}

inline GgufValue gguf_read_value(GgufCursor& c, GgufType t, const std::string& key, int depth) {
    switch (t) {
        case GgufType::UINT8: return GgufValue::u8(c.read<std::uint8_t>("uint8 value"));
        case GgufType::INT8: return GgufValue::i8(c.read<std::int8_t>("int8 value"));
        case GgufType::UINT16: return GgufValue::u16(c.read<std::uint16_t>("uint16 value"));
        case GgufType::INT16: return GgufValue::i16(c.read<std::int16_t>("int16 value"));
        case GgufType::UINT32: return GgufValue::u32(c.read<std::uint32_t>("uint32 value"));
        case GgufType::INT32: return GgufValue::i32(c.read<std::int32_t>("int32 value"));
        case GgufType::UINT64: return GgufValue::u64(c.read<std::uint64_t>("uint64 value"));
        case GgufType::INT64: return GgufValue::i64(c.read<std::int64_t>("int64 value"));
        case GgufType::FLOAT32: return GgufValue::f32(c.read<float>("float32 value"));
        case GgufType::FLOAT64: return GgufValue::f64(c.read<double>("float64 value"));
        case GgufType::BOOL: {
            const std::uint8_t b = c.read<std::uint8_t>("bool value");
            if (b > 1) {
                c.pos -= 1;
                c.bad(::transmla::detail::concat("metadata key '", key, "': bool value ", int(b), " is neither 0 nor 1"));
            }
            return GgufValue::boolean(b != 0);
        }
        case GgufType::STRING: return GgufValue::string(c.read_string("string value"));
        case GgufType::ARRAY: {
            if (depth > 16) c.bad(::transmla::detail::concat("metadata key '", key, "': arrays nested deeper than 16 levels"));
            const std::uint64_t at = c.pos;
            const std::uint32_t et = c.read<std::uint32_t>("array element type");
            if (et > std::uint32_t(GgufType::FLOAT64)) {
                c.pos = at;
                c.bad(::transmla::detail::concat("metadata key '", key, "': unknown array element type ", et));
            }
            const std::uint64_t n = c.read<std::uint64_t>("array length");
            const std::uint64_t min_bytes = gguf_scalar_size(GgufType(et));
            if (n > (c.size - c.pos) / min_bytes)
                c.bad(::transmla::detail::concat("truncated file: metadata key '", key, "' claims an array of ", n, " ",
                             to_string(GgufType(et)), " values"));
            // Each element becomes a GgufValue (~100 bytes) even when it is one byte in the file:
            // besides fitting in the bytes left, all arrays together hold at most 2^24 elements
            // (a 256k-token vocabulary and its merges are ~2^19), so no file makes the metadata
            // take more than a few GB.
            c.array_items += n;
            if (c.array_items > gguf_max_array_items)
                c.bad(::transmla::detail::concat("metadata key '", key, "': the metadata arrays hold more than ",
                                                 gguf_max_array_items, " elements in all"));
            std::vector<GgufValue> items;
            items.reserve(std::size_t(n));
            for (std::uint64_t i = 0; i < n; ++i) items.push_back(gguf_read_value(c, GgufType(et), key, depth + 1));
            return GgufValue::array(GgufType(et), std::move(items));
        }
    }
    c.bad(::transmla::detail::concat("metadata key '", key, "': unknown value type ", std::uint32_t(t)));
}

}  // namespace detail

inline GgufFile::GgufFile(MappedFile file) : file_(std::move(file)) {
    const std::string& path = file_.path();
    detail::GgufCursor c{reinterpret_cast<const std::uint8_t*>(file_.data()), file_.size(), 0, file_.path(), {}, 0};
    c.need(4, "magic");
    if (std::memcmp(c.base, "GGUF", 4) != 0) c.bad("not a GGUF file (bad magic; expected \"GGUF\")");
    c.pos = 4;
    version_ = c.read<std::uint32_t>("version");
    if (version_ != 2 && version_ != 3) {
        c.pos = 4;
        const bool big_endian = version_ == 0x02000000u || version_ == 0x03000000u;
        c.bad(::transmla::detail::concat("unsupported GGUF version ", version_,
                     version_ == 1    ? " (v1 files are obsolete; re-convert the model)"
                     : big_endian ? " (a big-endian GGUF file; only little-endian files are read)"
                                  : " (only v2 and v3 little-endian files are read)"));
    }
    const std::uint64_t n_tensors = c.read<std::uint64_t>("tensor count");
    const std::uint64_t n_kv = c.read<std::uint64_t>("metadata count");
    // each kv needs >= 8 + 4 + 1 bytes, each tensor info >= 8 + 4 + 4 + 8 bytes
    if (n_kv > (c.size - c.pos) / 13) c.bad(::transmla::detail::concat("truncated or corrupt file: metadata count ", n_kv));
    if (n_tensors > (c.size - c.pos) / 24) c.bad(::transmla::detail::concat("truncated or corrupt file: tensor count ", n_tensors));

    kv_.reserve(std::size_t(n_kv));
    for (std::uint64_t i = 0; i < n_kv; ++i) {
        const std::uint64_t at = c.pos;
        c.context = ::transmla::detail::concat("metadata entry ", i);
        std::string key = c.read_string("metadata key");
        c.context = ::transmla::detail::concat("metadata key '", key, "'");
        const std::uint32_t t = c.read<std::uint32_t>("metadata value type");
        if (t > std::uint32_t(GgufType::FLOAT64)) {
            c.pos -= 4;
            c.bad(::transmla::detail::concat("metadata key '", key, "': unknown value type ", t));
        }
        GgufValue v = detail::gguf_read_value(c, GgufType(t), key, 0);
        if (kv_index_.count(key)) {
            c.pos = at;
            c.bad(::transmla::detail::concat("duplicate metadata key '", key, "'"));
        }
        kv_index_.emplace(key, kv_.size());
        kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const GgufValue* a = find("general.alignment")) {
        if (!a->is_integer()) fail("GGUF '", path, "': general.alignment is ", to_string(a->type()), ", not an integer");
        const std::uint64_t al = a->as_uint();
        if (al == 0 || (al & (al - 1)) != 0 || al > (1u << 20))
            fail("GGUF '", path, "': general.alignment = ", al, " is not a power of two in [1, 2^20]");
        alignment_ = std::uint32_t(al);
    }

    tensors_.reserve(std::size_t(n_tensors));
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensorInfo t;
        t.info_offset = c.pos;
        c.context = ::transmla::detail::concat("tensor info ", i);
        t.name = c.read_string("tensor name");
        c.context = ::transmla::detail::concat("tensor '", t.name, "'");
        const std::uint64_t at_dims = c.pos;
        const std::uint32_t nd = c.read<std::uint32_t>("tensor n_dims");
        if (nd < 1 || nd > 4) {
            c.pos = at_dims;
            c.bad(::transmla::detail::concat("tensor '", t.name, "': n_dims = ", nd, " (must be 1..4)"));
        }
        t.n_dims = int(nd);
        for (std::uint32_t d = 0; d < nd; ++d) {
            const std::uint64_t e = c.read<std::uint64_t>("tensor extent");
            if (e == 0 || e > (std::uint64_t(1) << 40)) {
                c.pos -= 8;
                c.bad(::transmla::detail::concat("tensor '", t.name, "': extent ne[", d, "] = ", e, " is out of range"));
            }
            t.ne[d] = std::int64_t(e);
        }
        const std::uint64_t at_type = c.pos;
        const std::uint32_t ty = c.read<std::uint32_t>("tensor type");
        t.type = GgmlType(ty);
        const GgmlTypeTraits tr = ggml_traits(t.type);
        if (!tr.supported) {
            c.pos = at_type;
            c.bad(::transmla::detail::concat("tensor '", t.name, "': ggml type ", ggml_type_name(t.type), " (id ", ty, ") is ",
                         tr.block_elems == 0 && std::string(tr.name) == "unknown" ? "unknown" : "not supported"));
        }
        if (t.ne[0] % tr.block_elems != 0) {
            c.pos = at_type;
            c.bad(::transmla::detail::concat("tensor '", t.name, "': ne[0] = ", t.ne[0], " is not a multiple of the ", tr.name,
                         " block size ", tr.block_elems));
        }
        // every extent is in [1, 2^40]; their product is checked step by step so that it cannot
        // wrap (a wrapped product could be small, or 0 and then divide by zero)
        std::uint64_t n_elems = 1;
        for (std::uint32_t d = 0; d < nd; ++d) {
            const auto e = std::uint64_t(t.ne[d]);
            if (n_elems > detail::gguf_max_elements / e) {
                c.pos = at_dims;
                c.bad(::transmla::detail::concat("tensor '", t.name, "': too many elements: extents ", t.ne[0], " x ", t.ne[1], " x ",
                                                 t.ne[2], " x ", t.ne[3], " hold more than 2^40 elements"));
            }
            n_elems *= e;
        }
        const std::uint64_t ne123 = n_elems / std::uint64_t(t.ne[0]);  // ne[0] >= 1
        t.n_bytes = ggml_row_bytes(t.type, t.ne[0]) * ne123;
        t.offset = c.read<std::uint64_t>("tensor offset");
        if (t.offset % alignment_ != 0) {
            c.pos -= 8;
            c.bad(::transmla::detail::concat("tensor '", t.name, "': data offset ", t.offset, " is not a multiple of the alignment ",
                         alignment_));
        }
        if (tensor_index_.count(t.name)) {
            c.pos = t.info_offset;
            c.bad(::transmla::detail::concat("duplicate tensor name '", t.name, "'"));
        }
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    c.context.clear();
    data_offset_ = (c.pos + alignment_ - 1) / alignment_ * alignment_;
    const std::uint64_t size = file_.size();
    if (n_tensors > 0 && data_offset_ > size)
        fail("GGUF '", path, "': truncated file: the data section would start at offset ", data_offset_,
             " but the file has ", size, " bytes");
    const std::uint64_t avail = size > data_offset_ ? size - data_offset_ : 0;
    for (const auto& t : tensors_) {
        if (t.offset > avail || t.n_bytes > avail - t.offset)
            fail("GGUF '", path, "': tensor '", t.name, "' (", ggml_type_name(t.type), ", ", t.n_bytes,
                 " bytes at data offset ", t.offset, ", file offset ", data_offset_ + t.offset,
                 ") extends past the end of the file (", size, " bytes); the file is truncated or corrupt");
    }
    // Type, shape, size and offset must agree: the tensors' data lie back to back in the data
    // section, each starting at the first aligned offset after the previous one ends (as every
    // GGUF writer lays them out), the first at 0, and the file ends within the alignment padding
    // of the last. A type or extent changed to another valid value changes a size and breaks this
    // chain instead of being read as different numbers.
    if (!tensors_.empty()) {
        std::vector<std::size_t> order(tensors_.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return tensors_[a].offset != tensors_[b].offset ? tensors_[a].offset < tensors_[b].offset : a < b;
        });
        auto describe = [&](const GgufTensorInfo& t) {
            return ::transmla::detail::concat("tensor '", t.name, "' (", ggml_type_name(t.type), " ", t.ne[0], " x ",
                                              t.ne[1], " x ", t.ne[2], " x ", t.ne[3], " = ", t.n_bytes,
                                              " bytes, tensor info at offset ", t.info_offset, ")");
        };
        const GgufTensorInfo& first = tensors_[order.front()];
        if (first.offset != 0)
            fail("GGUF '", path, "': ", describe(first), ": the first tensor's data start at data offset ", first.offset,
                 " (file offset ", data_offset_ + first.offset, "), not at 0");
        for (std::size_t k = 0; k + 1 < order.size(); ++k) {
            const GgufTensorInfo& t = tensors_[order[k]];
            const GgufTensorInfo& n = tensors_[order[k + 1]];
            const std::uint64_t end = t.offset + t.n_bytes;
            const std::uint64_t expect = (end + alignment_ - 1) / alignment_ * alignment_;
            if (n.offset != expect)
                fail("GGUF '", path, "': ", describe(t), " ends at data offset ", end, " (file offset ",
                     data_offset_ + end, ") but the next tensor '", n.name, "' starts at data offset ", n.offset,
                     n.offset < end ? ": their data overlap" : ": a gap the size does not account for",
                     " (expected ", expect, "); type, shape and offsets disagree");
        }
        const GgufTensorInfo& last = tensors_[order.back()];
        const std::uint64_t end = last.offset + last.n_bytes;
        const std::uint64_t padded = (end + alignment_ - 1) / alignment_ * alignment_;
        if (avail > padded)
            fail("GGUF '", path, "': ", describe(last), " is the last tensor and ends at file offset ",
                 data_offset_ + end, " but the file has ", size, " bytes: ", avail - padded,
                 " bytes after its alignment padding that no tensor accounts for; type, shape and offsets disagree");
    }
}

// ------------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------------

/// Builds a GGUF file in memory and writes it atomically (temporary name, then rename).
///     GgufWriter w;
///     w.set("general.architecture", GgufValue::string("llama"));
///     w.add_tensor("blk.0.attn_q.weight", {576, 576}, weights, GgmlType::Q8_0);
///     w.write("model.gguf");
class GgufWriter {
public:
    explicit GgufWriter(std::uint32_t alignment = 32) : alignment_(alignment) {
        require(alignment > 0 && (alignment & (alignment - 1)) == 0, "GgufWriter: alignment ", alignment,
                " is not a power of two");
        if (alignment != 32) set("general.alignment", GgufValue::u32(alignment));
    }

    /// Adds or replaces a metadata value (kept in first-insertion order).
    void set(const std::string& key, GgufValue v) {
        if (key == "general.alignment")
            require(v.is_integer() && v.as_uint() == alignment_, "GgufWriter: general.alignment must equal the "
                    "writer's alignment (", alignment_, ")");
        for (auto& kv : kv_)
            if (kv.first == key) {
                kv.second = std::move(v);
                return;
            }
        kv_.emplace_back(key, std::move(v));
    }

    /// Adds a tensor from fp32 values in PyTorch order (`shape` outermost first, row-major), stored
    /// as `type` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0; the innermost extent must be a
    /// multiple of the type's block size).
    void add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, std::span<const float> data,
                    GgmlType type = GgmlType::F32) {
        Entry e = make_entry(name, shape, type);
        require(std::int64_t(data.size()) == e.n_elements(), "GgufWriter: tensor '", name, "' has ", data.size(),
                " values but its shape holds ", e.n_elements());
        e.bytes.resize(std::size_t(ggml_row_bytes(type, e.n_elements())));
        quantize(type, data.data(), e.bytes.data(), e.n_elements());
        tensors_.push_back(std::move(e));
    }

    /// Adds a tensor whose encoded bytes (blocks of `type`) are given verbatim; `shape` in PyTorch
    /// order. Used to store hand-built blocks of any supported type.
    void add_raw_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type,
                        std::vector<std::uint8_t> bytes) {
        require(ggml_type_supported(type), "GgufWriter: tensor '", name, "': type ", ggml_type_name(type),
                " is not supported");
        Entry e = make_entry(name, shape, type);
        const std::uint64_t want = ggml_row_bytes(type, e.ne[0]) * std::uint64_t(e.ne[1] * e.ne[2] * e.ne[3]);
        require(bytes.size() == want, "GgufWriter: tensor '", name, "' of type ", ggml_type_name(type), " needs ",
                want, " bytes, got ", bytes.size());
        e.bytes = std::move(bytes);
        tensors_.push_back(std::move(e));
    }

    /// Writes the file (`version` 2 or 3: the layouts are identical for little-endian files).
    void write(const std::string& path, std::uint32_t version = 3) const {
        const std::vector<std::uint8_t> bytes = to_bytes(version);
        AtomicFileWriter w(path);
        w.write(bytes.data(), bytes.size());
        w.commit();
    }

    /// The bytes write() would put in the file.
    std::vector<std::uint8_t> to_bytes(std::uint32_t version = 3) const {
        require(version == 2 || version == 3, "GgufWriter: version must be 2 or 3, got ", version);
        std::vector<std::uint8_t> head;
        auto put = [&](const void* p, std::size_t n) {
            const auto* b = static_cast<const std::uint8_t*>(p);
            head.insert(head.end(), b, b + n);
        };
        auto put_u32 = [&](std::uint32_t v) { put(&v, 4); };
        auto put_u64 = [&](std::uint64_t v) { put(&v, 8); };
        auto put_str = [&](const std::string& s) {
            put_u64(s.size());
            put(s.data(), s.size());
        };
        put("GGUF", 4);
        put_u32(version);
        put_u64(tensors_.size());
        put_u64(kv_.size());
        for (const auto& [k, v] : kv_) {
            put_str(k);
            put_u32(std::uint32_t(v.type()));
            put_value(head, v);
        }
        std::uint64_t off = 0;
        std::vector<std::uint64_t> offsets;
        for (const auto& t : tensors_) {
            put_str(t.name);
            put_u32(std::uint32_t(t.n_dims));
            for (int d = 0; d < t.n_dims; ++d) put_u64(std::uint64_t(t.ne[std::size_t(d)]));
            put_u32(std::uint32_t(t.type));
            put_u64(off);
            offsets.push_back(off);
            off = align(off + t.bytes.size());
        }
        std::vector<std::uint8_t>& out = head;
        out.resize(std::size_t(align(out.size())), 0);
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            const auto& b = tensors_[i].bytes;
            out.insert(out.end(), b.begin(), b.end());
            if (i + 1 < tensors_.size()) out.resize(out.size() + std::size_t(offsets[i + 1] - offsets[i] - b.size()), 0);
        }
        return out;
    }

private:
    struct Entry {
        std::string name;
        int n_dims = 0;
        std::array<std::int64_t, 4> ne{1, 1, 1, 1};
        GgmlType type = GgmlType::F32;
        std::vector<std::uint8_t> bytes;
        std::int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    };

    std::uint64_t align(std::uint64_t x) const { return (x + alignment_ - 1) / alignment_ * alignment_; }

    Entry make_entry(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type) const {
        for (const auto& t : tensors_) require(t.name != name, "GgufWriter: duplicate tensor name '", name, "'");
        require(!shape.empty() && shape.size() <= 4, "GgufWriter: tensor '", name, "' must have 1..4 dims, got ",
                shape.size());
        Entry e;
        e.name = name;
        e.type = type;
        e.n_dims = int(shape.size());
        for (std::size_t i = 0; i < shape.size(); ++i) {
            require(shape[i] > 0, "GgufWriter: tensor '", name, "' has extent ", shape[i]);
            e.ne[i] = shape[shape.size() - 1 - i];
        }
        const auto tr = ggml_traits(type);
        require(tr.supported, "GgufWriter: tensor '", name, "': type ", ggml_type_name(type), " is not supported");
        require(e.ne[0] % tr.block_elems == 0, "GgufWriter: tensor '", name, "': innermost extent ", e.ne[0],
                " is not a multiple of the ", tr.name, " block size ", tr.block_elems);
        return e;
    }

    static void put_value(std::vector<std::uint8_t>& out, const GgufValue& v) {
        auto put = [&](const void* p, std::size_t n) {
            const auto* b = static_cast<const std::uint8_t*>(p);
            out.insert(out.end(), b, b + n);
        };
        switch (v.type()) {
            case GgufType::UINT8: { const auto x = std::uint8_t(v.as_uint()); put(&x, 1); break; }
            case GgufType::INT8: { const auto x = std::int8_t(v.as_int()); put(&x, 1); break; }
            case GgufType::UINT16: { const auto x = std::uint16_t(v.as_uint()); put(&x, 2); break; }
            case GgufType::INT16: { const auto x = std::int16_t(v.as_int()); put(&x, 2); break; }
            case GgufType::UINT32: { const auto x = std::uint32_t(v.as_uint()); put(&x, 4); break; }
            case GgufType::INT32: { const auto x = std::int32_t(v.as_int()); put(&x, 4); break; }
            case GgufType::UINT64: { const auto x = v.as_uint(); put(&x, 8); break; }
            case GgufType::INT64: { const auto x = v.as_int(); put(&x, 8); break; }
            case GgufType::FLOAT32: { const auto x = float(v.as_float()); put(&x, 4); break; }
            case GgufType::FLOAT64: { const auto x = v.as_float(); put(&x, 8); break; }
            case GgufType::BOOL: { const std::uint8_t x = v.as_bool() ? 1 : 0; put(&x, 1); break; }
            case GgufType::STRING: {
                const std::uint64_t n = v.as_string().size();
                put(&n, 8);
                put(v.as_string().data(), v.as_string().size());
                break;
            }
            case GgufType::ARRAY: {
                const auto et = std::uint32_t(v.elem_type());
                const std::uint64_t n = v.items().size();
                put(&et, 4);
                put(&n, 8);
                for (const auto& item : v.items()) put_value(out, item);
                break;
            }
        }
    }

    std::uint32_t alignment_;
    std::vector<std::pair<std::string, GgufValue>> kv_;
    std::vector<Entry> tensors_;
};

// ------------------------------------------------------------------------------------------------
// llama.cpp's attn_q / attn_k row permutation
// ------------------------------------------------------------------------------------------------

namespace detail {
inline void check_qk_shape(std::size_t size, int n_heads, int head_dim, int in_features, const char* fn) {
    require(n_heads > 0 && head_dim > 0 && head_dim % 2 == 0 && in_features > 0, fn, ": n_heads (", n_heads,
            ") and in_features (", in_features, ") must be positive and head_dim (", head_dim, ") positive and even");
    require(size == std::size_t(n_heads) * std::size_t(head_dim) * std::size_t(in_features), fn, ": weight has ",
            size, " values, expected n_heads·head_dim·in_features = ", n_heads, "·", head_dim, "·", in_features);
}
}  // namespace detail

/// Restores the Hugging Face (half-split RoPE) row order of a GGUF attn_q / attn_k weight
/// [n_heads·head_dim, in_features] (row-major): within each head, GGUF row 2j → HF row j and
/// GGUF row 2j + 1 → HF row j + head_dim/2. For attn_k pass the number of KV heads.
inline void unpermute_llama_qk(std::vector<float>& w, int n_heads, int head_dim, int in_features) {
    detail::check_qk_shape(w.size(), n_heads, head_dim, in_features, "unpermute_llama_qk");
    const std::size_t in = std::size_t(in_features), d = std::size_t(head_dim), half_d = d / 2;
    std::vector<float> out(w.size());
    for (std::size_t h = 0; h < std::size_t(n_heads); ++h)
        for (std::size_t j = 0; j < half_d; ++j)
            for (std::size_t a = 0; a < 2; ++a) {
                const float* src = w.data() + (h * d + 2 * j + a) * in;
                std::copy(src, src + in, out.data() + (h * d + a * half_d + j) * in);
            }
    w.swap(out);
}

/// The inverse of unpermute_llama_qk: HF row order → GGUF (llama.cpp) row order.
inline void permute_llama_qk(std::vector<float>& w, int n_heads, int head_dim, int in_features) {
    detail::check_qk_shape(w.size(), n_heads, head_dim, in_features, "permute_llama_qk");
    const std::size_t in = std::size_t(in_features), d = std::size_t(head_dim), half_d = d / 2;
    std::vector<float> out(w.size());
    for (std::size_t h = 0; h < std::size_t(n_heads); ++h)
        for (std::size_t j = 0; j < half_d; ++j)
            for (std::size_t a = 0; a < 2; ++a) {
                const float* src = w.data() + (h * d + a * half_d + j) * in;
                std::copy(src, src + in, out.data() + (h * d + 2 * j + a) * in);
            }
    w.swap(out);
}

}  // namespace transmla::io
