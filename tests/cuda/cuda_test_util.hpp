// Helpers of the CUDA tests: device buffers (RAII, every call checked), NaN poisoning of outputs,
// transmla storage types ↔ CUDA storage types (same bits), and a checked synchronise after each
// kernel call.
#pragma once

#include "test_util.hpp"
#include "transmla/cuda/api.hpp"
#include "transmla/types.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <numeric>
#include <vector>

namespace transmla::test::cuda {

/// CUDA storage type of a transmla storage type (same bits).
template <class H>
struct cuda_type;
template <>
struct cuda_type<half> {
    using type = __half;
};
template <>
struct cuda_type<bfloat16> {
    using type = __nv_bfloat16;
};
template <class H>
using cuda_t = typename cuda_type<H>::type;

/// True when the kernels run on the host emulator of tests/cuda/emulation (smaller test matrices).
#if defined(TRANSMLA_CUDA_HOST_EMULATION)
inline constexpr bool emulated = true;
#else
inline constexpr bool emulated = false;
#endif

#if defined(TRANSMLA_CUDA_HOST_EMULATION)
/// Under the host emulator "device" memory is host memory.
template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t n) : v_(n) {}
    explicit DeviceBuffer(const std::vector<T>& h) : v_(h) {}
    void upload(const std::vector<T>& h) {
        REQUIRE(h.size() == v_.size());
        v_ = h;
    }
    std::vector<T> download() const { return v_; }
    void poison() {
        if (!v_.empty()) std::memset(static_cast<void*>(v_.data()), 0xFF, v_.size() * sizeof(T));
    }
    T* get() const noexcept { return v_.empty() ? nullptr : const_cast<T*>(v_.data()); }
    template <class U>
    U* as() const noexcept {
        static_assert(sizeof(U) == sizeof(T));
        return reinterpret_cast<U*>(get());
    }
    std::size_t size() const noexcept { return v_.size(); }

private:
    std::vector<T> v_;
};

inline void sync_checked() {}
#else
/// Owning device array of n elements of T (a host-side type of the same size as the device one).
template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t n) : n_(n) {
        if (n) TRANSMLA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    }
    explicit DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) { upload(h); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    ~DeviceBuffer() {
        if (p_) (void)cudaFree(p_);
    }
    void upload(const std::vector<T>& h) {
        REQUIRE(h.size() == n_);
        if (n_) TRANSMLA_CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> download() const {
        std::vector<T> h(n_);
        if (n_) TRANSMLA_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
    /// Fills every byte with 0xFF: NaN in f16, bf16 and f32, so an element a kernel does not write
    /// fails the comparison.
    void poison() {
        if (n_) TRANSMLA_CUDA_CHECK(cudaMemset(p_, 0xFF, n_ * sizeof(T)));
    }
    T* get() const noexcept { return p_; }
    /// The pointer as another type of the same size (transmla::half* → __half*).
    template <class U>
    U* as() const noexcept {
        static_assert(sizeof(U) == sizeof(T));
        return reinterpret_cast<U*>(p_);
    }
    std::size_t size() const noexcept { return n_; }

private:
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

/// Checks the launch and waits for the device, so that asynchronous faults surface here.
inline void sync_checked() {
    TRANSMLA_CUDA_CHECK(cudaGetLastError());
    TRANSMLA_CUDA_CHECK(cudaDeviceSynchronize());
}
#endif

/// A NaN of storage type H.
template <class H>
H nan_value() {
    return static_cast<H>(std::numeric_limits<float>::quiet_NaN());
}

/// A random permutation of 0..n-1 (page numbers of a shuffled pool).
inline std::vector<std::int32_t> permutation(std::int32_t n) {
    std::vector<std::int32_t> v(std::size_t(n), 0);
    std::iota(v.begin(), v.end(), 0);
    std::shuffle(v.begin(), v.end(), rng());
    return v;
}

/// f32 vector as double (to compare lse and outputs with the double references).
template <class T>
std::vector<double> to_double_vec(const std::vector<T>& v) {
    std::vector<double> d(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) d[i] = to_double(v[i]);
    return d;
}

/// Where the tokens of a batch of sequences live in a contiguous (`page_size` 0) or a paged
/// cache with `token_stride` elements per token: host-side page table and addressing.
struct HostLayout {
    std::vector<std::int64_t> lens;
    std::int64_t token_stride = 0, page_size = 0, seq_stride = 0, num_pages = 0;
    std::vector<std::int32_t> seq_lens, indptr{0}, indices, last_page_len;

    std::int64_t max_len() const { return lens.empty() ? 0 : *std::max_element(lens.begin(), lens.end()); }
    /// Elements of the whole cache (pool).
    std::int64_t elements() const {
        return page_size ? num_pages * page_size * token_stride : std::int64_t(lens.size()) * seq_stride;
    }
    std::int64_t offset(std::size_t b, std::int64_t t) const {
        if (!page_size) return std::int64_t(b) * seq_stride + t * token_stride;
        return std::int64_t(indices[std::size_t(indptr[b] + t / page_size)]) * page_size * token_stride +
               (t % page_size) * token_stride;
    }
    /// The per-sequence arrays `[len][token_stride]` placed in a cache that is NaN everywhere else
    /// (padding, unused pages), so a kernel that reads outside the sequences produces NaN.
    template <class H>
    std::vector<H> scatter(const std::vector<std::vector<H>>& seqs) const {
        std::vector<H> c(std::size_t(elements()), nan_value<H>());
        for (std::size_t b = 0; b < lens.size(); ++b)
            for (std::int64_t t = 0; t < lens[b]; ++t)
                std::copy_n(seqs[b].begin() + t * token_stride, token_stride, c.begin() + offset(b, t));
        return c;
    }
};

/// Contiguous layout (page_size 0; sequences `max_len + 3` tokens apart) or a paged one whose
/// pages are a random permutation of a pool with two spare pages.
inline HostLayout make_layout(const std::vector<std::int64_t>& lens, std::int64_t token_stride, std::int64_t page_size) {
    HostLayout h;
    h.lens = lens;
    h.token_stride = token_stride;
    h.page_size = page_size;
    for (auto l : lens) h.seq_lens.push_back(std::int32_t(l));
    if (!page_size) {
        h.seq_stride = (h.max_len() + 3) * token_stride;
        return h;
    }
    std::int64_t total = 0;
    for (auto l : lens) total += (l + page_size - 1) / page_size;
    h.num_pages = total + 2;
    const auto perm = permutation(std::int32_t(h.num_pages));
    std::size_t next = 0;
    for (auto l : lens) {
        const std::int64_t np = (l + page_size - 1) / page_size;
        for (std::int64_t i = 0; i < np; ++i) h.indices.push_back(perm[next++]);
        h.indptr.push_back(std::int32_t(h.indices.size()));
        h.last_page_len.push_back(np == 0 ? 0 : std::int32_t(l - (np - 1) * page_size));
    }
    return h;
}

/// The device copy of a HostLayout's tables and the CacheLayout that points at them.
struct DeviceLayout {
    DeviceBuffer<std::int32_t> seq_lens, indptr, indices, last_page_len;
    transmla::cuda::CacheLayout layout;

    explicit DeviceLayout(const HostLayout& h) {
        layout.token_stride = h.token_stride;
        if (!h.page_size) {
            seq_lens = DeviceBuffer<std::int32_t>(h.seq_lens);
            layout.seq_stride = h.seq_stride;
            layout.seq_lens = seq_lens.get();
        } else {
            indptr = DeviceBuffer<std::int32_t>(h.indptr);
            indices = DeviceBuffer<std::int32_t>(h.indices);
            last_page_len = DeviceBuffer<std::int32_t>(h.last_page_len);
            layout.indptr = indptr.get();
            layout.indices = indices.get();
            layout.last_page_len = last_page_len.get();
            layout.page_size = h.page_size;
            layout.page_stride = h.page_size * h.token_stride;
        }
    }
};

/// Runs f and checks that it throws transmla::error whose message contains `part`.
template <class F>
void check_throws_containing(F&& f, const std::string& part) {
    std::string msg;
    try {
        f();
    } catch (const transmla::error& e) {
        msg = e.what();
    }
    INFO("message: \"" << msg << "\"; expected it to contain \"" << part << "\"");
    CHECK(msg.find(part) != std::string::npos);
}

}  // namespace transmla::test::cuda
