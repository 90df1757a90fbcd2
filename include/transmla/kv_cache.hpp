// transmla/kv_cache.hpp — KV caches and the non-owning per-sequence views kernels read.
//
// GQA: K and V are token-major, `[token][kv_head][head_dim]` each.
// MLA: one row per token, `[latent (r) | rope key (d_r)]`; V is the first r columns of that row.
// A sequence is read as a list of *runs* of consecutive tokens: one run for a contiguous cache,
// one run per page for a paged cache (CSR page table `indptr`, `indices`, `last_page_len`, as in
// FlashInfer). Kernels iterate over runs, so contiguous and paged caches share every kernel.
#pragma once

#include "transmla/error.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>
#include <vector>

namespace transmla {

/// A run of `len` consecutive tokens of one sequence, starting at token `start`; `k`/`v` (or
/// `row`) point at the first token of the run.
template <class T>
struct GqaRun {
    const T* k;
    const T* v;
    std::int64_t start;
    std::int64_t len;
};
template <class T>
struct MlaRun {
    const T* row;
    std::int64_t start;
    std::int64_t len;
};

/// Paging of one sequence: token t lives in page `pages[t / page_size]` at slot `t % page_size`.
/// `pages == nullptr` means contiguous storage (a single page as long as the sequence).
struct PageMap {
    const std::int32_t* pages = nullptr;
    std::int64_t page_size = std::numeric_limits<std::int64_t>::max();
    std::int64_t page_stride = 0;  ///< elements between the starts of consecutive pages

    constexpr bool paged() const noexcept { return pages != nullptr; }
    constexpr std::int64_t num_runs(std::int64_t length) const noexcept {
        if (length <= 0) return 0;
        return paged() ? (length + page_size - 1) / page_size : 1;
    }
    /// Offset (elements) of token t's slot, given the token stride.
    constexpr std::int64_t token_offset(std::int64_t t, std::int64_t token_stride) const noexcept {
        if (!paged()) return t * token_stride;
        return std::int64_t(pages[t / page_size]) * page_stride + (t % page_size) * token_stride;
    }
    constexpr std::int64_t run_start(std::int64_t i) const noexcept { return paged() ? i * page_size : 0; }
    constexpr std::int64_t run_len(std::int64_t i, std::int64_t length) const noexcept {
        return paged() ? std::min(page_size, length - i * page_size) : length;
    }
};

/// One sequence's GQA keys and values.
template <class T>
struct GqaSeqView {
    const T* k = nullptr;  ///< base of the K storage (page 0 / token 0)
    const T* v = nullptr;  ///< base of the V storage
    int n_kv = 0;
    int head_dim = 0;
    std::int64_t length = 0;        ///< tokens in the sequence
    std::int64_t token_stride = 0;  ///< elements between consecutive tokens within a page
    std::int64_t head_stride = 0;   ///< elements between KV heads of one token
    PageMap map{};

    std::int64_t num_runs() const noexcept { return map.num_runs(length); }
    GqaRun<T> run(std::int64_t i) const noexcept {
        const std::int64_t s = map.run_start(i);
        const std::int64_t o = map.token_offset(s, token_stride);
        return {k + o, v + o, s, map.run_len(i, length)};
    }
    const T* k_at(std::int64_t t, int h) const noexcept { return k + map.token_offset(t, token_stride) + h * head_stride; }
    const T* v_at(std::int64_t t, int h) const noexcept { return v + map.token_offset(t, token_stride) + h * head_stride; }
};

/// One sequence's MLA cache rows `[latent | rope]`.
template <class T>
struct MlaSeqView {
    const T* rows = nullptr;
    int rank = 0;      ///< r: the latent width, also the value width
    int rope_dim = 0;  ///< d_r
    std::int64_t length = 0;
    std::int64_t token_stride = 0;
    PageMap map{};

    int row_width() const noexcept { return rank + rope_dim; }
    std::int64_t num_runs() const noexcept { return map.num_runs(length); }
    MlaRun<T> run(std::int64_t i) const noexcept {
        const std::int64_t s = map.run_start(i);
        return {rows + map.token_offset(s, token_stride), s, map.run_len(i, length)};
    }
    const T* row_at(std::int64_t t) const noexcept { return rows + map.token_offset(t, token_stride); }
};

// ------------------------------------------------------------------------------------------------
// Page tables
// ------------------------------------------------------------------------------------------------

/// CSR page table of a batch: sequence b owns pages `indices[indptr[b] .. indptr[b+1])`, and its
/// last page holds `last_page_len[b]` tokens (FlashInfer's convention).
struct PageTable {
    std::span<const std::int32_t> indptr;
    std::span<const std::int32_t> indices;
    std::span<const std::int32_t> last_page_len;
    std::int64_t page_size = 0;

    std::int64_t batch() const noexcept { return std::int64_t(last_page_len.size()); }

    /// Throws transmla::error naming the first inconsistency.
    void validate(std::int64_t num_pages) const {
        require(page_size > 0, "PageTable: page_size must be positive, got ", page_size);
        require(indptr.size() == last_page_len.size() + 1, "PageTable: indptr has ", indptr.size(),
                " entries, expected batch+1 = ", last_page_len.size() + 1);
        require(indptr.empty() || indptr[0] == 0, "PageTable: indptr[0] must be 0, got ", indptr.empty() ? 0 : indptr[0]);
        for (std::size_t b = 0; b + 1 < indptr.size(); ++b) {
            require(indptr[b] <= indptr[b + 1], "PageTable: indptr decreases at sequence ", b);
            const auto np = indptr[b + 1] - indptr[b];
            require(np == 0 ? last_page_len[b] == 0 : (last_page_len[b] >= 1 && last_page_len[b] <= page_size),
                    "PageTable: last_page_len[", b, "] = ", last_page_len[b], " is out of range for ", np,
                    " pages of ", page_size, " tokens");
        }
        require(indptr.empty() || std::size_t(indptr.back()) <= indices.size(), "PageTable: indptr.back() = ",
                indptr.empty() ? 0 : indptr.back(), " exceeds indices.size() = ", indices.size());
        for (std::size_t i = 0; i < indices.size(); ++i)
            require(indices[i] >= 0 && indices[i] < num_pages, "PageTable: indices[", i, "] = ", indices[i],
                    " is outside the pool of ", num_pages, " pages");
    }
    std::int64_t seq_length(std::int64_t b) const noexcept {
        const std::int64_t np = indptr[b + 1] - indptr[b];
        return np == 0 ? 0 : (np - 1) * page_size + last_page_len[b];
    }
    PageMap map(std::int64_t b, std::int64_t page_stride) const noexcept {
        return {indices.data() + indptr[b], page_size, page_stride};
    }
};

/// View of sequence b of a paged GQA pool laid out `[page][token in page][kv_head][head_dim]`
/// (one pool for K, one for V). Validate the table once with PageTable::validate.
template <class T>
GqaSeqView<T> paged_gqa_view(const T* k_pool, const T* v_pool, int n_kv, int head_dim, const PageTable& table,
                             std::int64_t b) {
    const std::int64_t ts = std::int64_t(n_kv) * head_dim;
    (void)detail::size_product("paged_gqa_view", {{"page_size", table.page_size}, {"n_kv", n_kv}, {"head_dim", head_dim}},
                               sizeof(T), 1);
    return {k_pool, v_pool, n_kv, head_dim, table.seq_length(b), ts, head_dim, table.map(b, ts * table.page_size)};
}

/// View of sequence b of a paged MLA pool laid out `[page][token in page][rank + rope_dim]`.
template <class T>
MlaSeqView<T> paged_mla_view(const T* pool, int rank, int rope_dim, const PageTable& table, std::int64_t b) {
    const std::int64_t ts = std::int64_t(rank) + rope_dim;
    require(rank > 0 && rope_dim >= 0 && ts <= std::numeric_limits<int>::max(), "paged_mla_view: bad row rank=", rank,
            " rope_dim=", rope_dim);
    (void)detail::size_product("paged_mla_view", {{"page_size", table.page_size}, {"rank + rope_dim", ts}}, sizeof(T), 1);
    return {pool, rank, rope_dim, table.seq_length(b), ts, table.map(b, ts * table.page_size)};
}

// ------------------------------------------------------------------------------------------------
// Owning caches
// ------------------------------------------------------------------------------------------------

namespace detail {
template <class T, class U>
void convert_row(T* dst, const U* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = from_double<T>(to_double(src[i]));
}
}  // namespace detail

/// A contiguous GQA cache of one sequence with a fixed capacity.
template <class T>
class GqaCache {
    static_assert(is_storage_type_v<T>, "transmla::GqaCache: T must be float, half or bfloat16");

public:
    GqaCache(int n_kv, int head_dim, std::int64_t capacity)
        : n_kv_(n_kv), d_(head_dim), cap_(capacity) {
        require(n_kv > 0 && head_dim > 0 && capacity >= 0, "GqaCache: bad shape n_kv=", n_kv,
                " head_dim=", head_dim, " capacity=", capacity);
        const auto n = detail::size_product("GqaCache", {{"capacity", capacity}, {"n_kv", n_kv}, {"head_dim", head_dim}},
                                            sizeof(T));
        k_.resize(std::size_t(n));
        v_.resize(k_.size());
    }
    /// Appends tokens: `k`, `v` are `[tokens][n_kv][head_dim]` of any storage type.
    template <class U>
    void append(View3<const U> k, View3<const U> v) {
        const std::int64_t n = k.size(0);
        require(n >= 0, "GqaCache::append: negative token count ", n);
        detail::check_extents(k, {n, n_kv_, d_}, "GqaCache::append", "k");
        detail::check_extents(v, {n, n_kv_, d_}, "GqaCache::append", "v");
        require(n <= cap_ - len_, "GqaCache::append: ", n, " tokens do not fit: ", len_, " of ", cap_,
                " used");
        for (std::int64_t t = 0; t < n; ++t)
            for (int h = 0; h < n_kv_; ++h) {
                detail::convert_row(&k_[idx(len_ + t, h)], k.row(t, h), d_);
                detail::convert_row(&v_[idx(len_ + t, h)], v.row(t, h), d_);
            }
        len_ += n;
    }
    void clear() noexcept { len_ = 0; }
    /// Drops tokens after the first n (e.g. rejected speculative tokens).
    void truncate(std::int64_t n) {
        require(n >= 0 && n <= len_, "GqaCache::truncate: ", n, " is outside [0, ", len_, "]");
        len_ = n;
    }
    std::int64_t size() const noexcept { return len_; }
    std::int64_t capacity() const noexcept { return cap_; }
    int n_kv() const noexcept { return n_kv_; }
    int head_dim() const noexcept { return d_; }
    GqaSeqView<T> view() const noexcept {
        return {k_.data(), v_.data(), n_kv_, d_, len_, std::int64_t(n_kv_) * d_, d_, PageMap{}};
    }
    T* k_data() noexcept { return k_.data(); }
    T* v_data() noexcept { return v_.data(); }

private:
    std::size_t idx(std::int64_t t, int h) const noexcept { return (std::size_t(t) * n_kv_ + h) * d_; }
    int n_kv_, d_;
    std::int64_t cap_, len_ = 0;
    std::vector<T> k_, v_;
};

/// A contiguous MLA cache of one sequence: rows `[latent | rope]`.
template <class T>
class MlaCache {
    static_assert(is_storage_type_v<T>, "transmla::MlaCache: T must be float, half or bfloat16");

public:
    MlaCache(int rank, int rope_dim, std::int64_t capacity) : r_(rank), dr_(rope_dim), cap_(capacity) {
        require(rank > 0 && rope_dim >= 0 && capacity >= 0, "MlaCache: bad shape rank=", rank,
                " rope_dim=", rope_dim, " capacity=", capacity);
        require(std::int64_t(rank) + rope_dim <= std::numeric_limits<int>::max(), "MlaCache: row width rank + rope_dim = ",
                std::int64_t(rank) + rope_dim, " overflows int (rank=", rank, " rope_dim=", rope_dim, ")");
        rows_.resize(std::size_t(detail::size_product(
            "MlaCache", {{"capacity", capacity}, {"rank + rope_dim", std::int64_t(rank) + rope_dim}}, sizeof(T))));
    }
    /// Appends rows `[tokens][rank + rope_dim]` of any storage type.
    template <class U>
    void append(View2<const U> rows) {
        const std::int64_t n = rows.size(0);
        require(n >= 0, "MlaCache::append: negative token count ", n);
        detail::check_extents(rows, {n, r_ + dr_}, "MlaCache::append", "rows");
        require(n <= cap_ - len_, "MlaCache::append: ", n, " tokens do not fit: ", len_, " of ", cap_,
                " used");
        for (std::int64_t t = 0; t < n; ++t)
            detail::convert_row(&rows_[std::size_t(len_ + t) * (r_ + dr_)], rows.row(t), r_ + dr_);
        len_ += n;
    }
    void clear() noexcept { len_ = 0; }
    void truncate(std::int64_t n) {
        require(n >= 0 && n <= len_, "MlaCache::truncate: ", n, " is outside [0, ", len_, "]");
        len_ = n;
    }
    std::int64_t size() const noexcept { return len_; }
    std::int64_t capacity() const noexcept { return cap_; }
    MlaSeqView<T> view() const noexcept { return {rows_.data(), r_, dr_, len_, r_ + dr_, PageMap{}}; }
    T* data() noexcept { return rows_.data(); }

private:
    int r_, dr_;
    std::int64_t cap_, len_ = 0;
    std::vector<T> rows_;
};

namespace detail {

/// The pool's page count, after checking that the pool's storage (the product of `extents`,
/// positive ones only: the others are refused by the constructors with their own messages) has
/// a representable size — before PagePool builds its free list of num_pages entries.
inline std::int64_t checked_pool_pages(const char* who, std::int64_t num_pages,
                                       std::initializer_list<NamedExtent> extents, std::size_t elem_bytes) {
    bool positive = true;
    for (const auto& e : extents) positive = positive && e.value > 0;
    if (positive) (void)size_product(who, extents, elem_bytes);
    return num_pages;
}

/// Page pool bookkeeping shared by the paged GQA and MLA caches: a free list and, per
/// sequence, its page list and length. Sequences are identified by the index add_sequence returns.
class PagePool {
public:
    PagePool(std::int64_t num_pages, std::int64_t page_size, const char* who)
        : page_size_(page_size), who_(who) {
        // Page indices and last-page lengths are int32 in the page tables (FlashInfer's layout).
        require(num_pages > 0 && num_pages <= std::numeric_limits<std::int32_t>::max() && page_size > 0 &&
                    page_size <= std::numeric_limits<std::int32_t>::max(),
                who, ": bad pool: ", num_pages, " pages of ", page_size,
                " tokens (both must be in [1, 2^31 - 1])");
        capacity_ = size_product(who, {{"num_pages", num_pages}, {"page_size", page_size}}, 1);
        for (std::int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(std::int32_t(p));
        num_pages_ = num_pages;
    }
    std::int64_t add_sequence() {
        seqs_.push_back({});
        return std::int64_t(seqs_.size()) - 1;
    }
    void check_seq(std::int64_t s, const char* fn) const {
        require(s >= 0 && s < std::int64_t(seqs_.size()) && seqs_[s].live, who_, "::", fn, ": no sequence ", s);
    }
    /// Reserves room for n more tokens of sequence s, allocating pages; calls put(token, slot
    /// offset in tokens from the pool start) for each new token.
    template <class Put>
    void grow(std::int64_t s, std::int64_t n, Put&& put) {
        check_seq(s, "append");
        auto& q = seqs_[s];
        require(n >= 0, who_, "::append: negative token count ", n);
        require(n <= capacity_ - q.length, who_, "::append: sequence ", s, " of ", q.length, " tokens cannot grow by ",
                n, " tokens: the pool holds ", capacity_, " tokens in all, ", free_.size(), " pages free");
        const std::int64_t need_pages = (q.length + n + page_size_ - 1) / page_size_ - std::int64_t(q.pages.size());
        require(need_pages <= std::int64_t(free_.size()), who_, "::append: sequence ", s, " needs ", need_pages,
                " more pages, only ", free_.size(), " free");
        for (std::int64_t i = 0; i < need_pages; ++i) {
            q.pages.push_back(free_.back());
            free_.pop_back();
        }
        for (std::int64_t t = 0; t < n; ++t) {
            const std::int64_t tok = q.length + t;
            put(t, std::int64_t(q.pages[tok / page_size_]) * page_size_ + tok % page_size_);
        }
        q.length += n;
    }
    void release(std::int64_t s) {
        check_seq(s, "release");
        for (auto p : seqs_[s].pages) free_.push_back(p);
        seqs_[s] = {};
        seqs_[s].live = false;
    }
    std::int64_t length(std::int64_t s) const {
        check_seq(s, "length");
        return seqs_[s].length;
    }
    PageMap map(std::int64_t s, std::int64_t page_stride) const {
        check_seq(s, "view");
        return {seqs_[s].pages.data(), page_size_, page_stride};
    }
    std::int64_t page_size() const noexcept { return page_size_; }
    std::int64_t num_pages() const noexcept { return num_pages_; }
    std::int64_t capacity() const noexcept { return capacity_; }  ///< tokens: num_pages · page_size
    std::int64_t free_pages() const noexcept { return std::int64_t(free_.size()); }

    /// CSR page table of the given sequences, in order (storage owned by the returned object).
    struct Csr {
        std::vector<std::int32_t> indptr{0}, indices, last_page_len;
        std::int64_t page_size = 0;
        PageTable table() const { return {indptr, indices, last_page_len, page_size}; }
    };
    Csr csr(std::span<const std::int64_t> seqs) const {
        Csr c;
        c.page_size = page_size_;
        for (auto s : seqs) {
            check_seq(s, "page_table");
            const auto& q = seqs_[s];
            require(q.pages.size() <= std::size_t(std::numeric_limits<std::int32_t>::max()) - c.indices.size(), who_,
                    "::page_table: more than 2^31 - 1 page entries for ", seqs.size(), " sequences");
            c.indices.insert(c.indices.end(), q.pages.begin(), q.pages.end());
            c.indptr.push_back(std::int32_t(c.indices.size()));
            c.last_page_len.push_back(q.length == 0 ? 0 : std::int32_t((q.length - 1) % page_size_ + 1));
        }
        return c;
    }

private:
    struct Seq {
        std::vector<std::int32_t> pages;
        std::int64_t length = 0;
        bool live = true;
    };
    std::int64_t page_size_, num_pages_ = 0, capacity_ = 0;
    const char* who_;
    std::vector<std::int32_t> free_;
    std::vector<Seq> seqs_;
};

}  // namespace detail

/// A paged GQA cache: a pool of pages `[page][token in page][kv_head][head_dim]` for K and for V
/// shared by many sequences.
template <class T>
class PagedGqaCache {
    static_assert(is_storage_type_v<T>, "transmla::PagedGqaCache: T must be float, half or bfloat16");

public:
    PagedGqaCache(int n_kv, int head_dim, std::int64_t num_pages, std::int64_t page_size)
        : pool_(detail::checked_pool_pages("PagedGqaCache", num_pages,
                                           {{"num_pages", num_pages}, {"page_size", page_size}, {"n_kv", n_kv},
                                            {"head_dim", head_dim}},
                                           sizeof(T)),
                page_size, "PagedGqaCache"),
          n_kv_(n_kv),
          d_(head_dim) {
        require(n_kv > 0 && head_dim > 0, "PagedGqaCache: bad shape n_kv=", n_kv, " head_dim=", head_dim);
        k_.resize(std::size_t(detail::size_product(
            "PagedGqaCache",
            {{"num_pages", num_pages}, {"page_size", page_size}, {"n_kv", n_kv}, {"head_dim", head_dim}}, sizeof(T))));
        v_.resize(k_.size());
    }
    std::int64_t add_sequence() { return pool_.add_sequence(); }
    void release(std::int64_t seq) { pool_.release(seq); }
    template <class U>
    void append(std::int64_t seq, View3<const U> k, View3<const U> v) {
        const std::int64_t n = k.size(0);
        require(n >= 0, "PagedGqaCache::append: negative token count ", n);
        detail::check_extents(k, {n, n_kv_, d_}, "PagedGqaCache::append", "k");
        detail::check_extents(v, {n, n_kv_, d_}, "PagedGqaCache::append", "v");
        const std::int64_t ts = std::int64_t(n_kv_) * d_;
        pool_.grow(seq, n, [&](std::int64_t t, std::int64_t slot) {
            for (int h = 0; h < n_kv_; ++h) {
                detail::convert_row(&k_[slot * ts + h * d_], k.row(t, h), d_);
                detail::convert_row(&v_[slot * ts + h * d_], v.row(t, h), d_);
            }
        });
    }
    std::int64_t size(std::int64_t seq) const { return pool_.length(seq); }
    GqaSeqView<T> view(std::int64_t seq) const {
        const std::int64_t ts = std::int64_t(n_kv_) * d_;
        return {k_.data(), v_.data(), n_kv_, d_, pool_.length(seq), ts, d_, pool_.map(seq, ts * pool_.page_size())};
    }
    /// CSR page table (FlashInfer layout) of the given sequences; pools via k_pool()/v_pool().
    detail::PagePool::Csr page_table(std::span<const std::int64_t> seqs) const { return pool_.csr(seqs); }
    const T* k_pool() const noexcept { return k_.data(); }
    const T* v_pool() const noexcept { return v_.data(); }
    std::int64_t num_pages() const noexcept { return pool_.num_pages(); }
    std::int64_t free_pages() const noexcept { return pool_.free_pages(); }

private:
    detail::PagePool pool_;
    int n_kv_, d_;
    std::vector<T> k_, v_;
};

/// A paged MLA cache: a pool of pages `[page][token in page][rank + rope_dim]`.
template <class T>
class PagedMlaCache {
    static_assert(is_storage_type_v<T>, "transmla::PagedMlaCache: T must be float, half or bfloat16");

public:
    PagedMlaCache(int rank, int rope_dim, std::int64_t num_pages, std::int64_t page_size)
        : pool_(detail::checked_pool_pages("PagedMlaCache", num_pages,
                                           {{"num_pages", num_pages}, {"page_size", page_size},
                                            {"rank + rope_dim", std::int64_t(rank) + rope_dim}},
                                           sizeof(T)),
                page_size, "PagedMlaCache"),
          r_(rank),
          dr_(rope_dim) {
        require(rank > 0 && rope_dim >= 0, "PagedMlaCache: bad shape rank=", rank, " rope_dim=", rope_dim);
        require(std::int64_t(rank) + rope_dim <= std::numeric_limits<int>::max(),
                "PagedMlaCache: row width rank + rope_dim = ", std::int64_t(rank) + rope_dim,
                " overflows int (rank=", rank, " rope_dim=", rope_dim, ")");
        rows_.resize(std::size_t(detail::size_product(
            "PagedMlaCache",
            {{"num_pages", num_pages}, {"page_size", page_size}, {"rank + rope_dim", std::int64_t(rank) + rope_dim}},
            sizeof(T))));
    }
    std::int64_t add_sequence() { return pool_.add_sequence(); }
    void release(std::int64_t seq) { pool_.release(seq); }
    template <class U>
    void append(std::int64_t seq, View2<const U> rows) {
        const std::int64_t n = rows.size(0);
        require(n >= 0, "PagedMlaCache::append: negative token count ", n);
        detail::check_extents(rows, {n, r_ + dr_}, "PagedMlaCache::append", "rows");
        pool_.grow(seq, n, [&](std::int64_t t, std::int64_t slot) {
            detail::convert_row(&rows_[slot * (r_ + dr_)], rows.row(t), r_ + dr_);
        });
    }
    std::int64_t size(std::int64_t seq) const { return pool_.length(seq); }
    MlaSeqView<T> view(std::int64_t seq) const {
        const std::int64_t ts = r_ + dr_;
        return {rows_.data(), r_, dr_, pool_.length(seq), ts, pool_.map(seq, ts * pool_.page_size())};
    }
    detail::PagePool::Csr page_table(std::span<const std::int64_t> seqs) const { return pool_.csr(seqs); }
    const T* pool() const noexcept { return rows_.data(); }
    std::int64_t num_pages() const noexcept { return pool_.num_pages(); }

private:
    detail::PagePool pool_;
    int r_, dr_;
    std::vector<T> rows_;
};

}  // namespace transmla
