// transmla/cpu/plan.hpp — split-KV work plans (docs/conventions.md, threading) and the engine that runs one
// plan item through the attention kernel.
//
// An attention call is a list of *groups*: query rows that share one KV source (GQA: one KV head
// of one sequence × its g query heads × a tile of query tokens; MLA: one sequence × a block of
// heads × a tile of query tokens). A plan cuts each group's key range into one or more chunks;
// every (group, chunk) pair is an *item*. `run(plan, op, item)` may be called for the items in any
// order from any threads (each at most once per use of the plan); the item that completes a split
// group merges the partial states by log-sum-exp and writes the output, so no separate merge pass
// is needed, and the plan is ready for reuse afterwards. The library never starts threads; the
// OpenMP convenience overloads run all items in a `parallel for` when OpenMP is enabled.
#pragma once

#include "transmla/cpu/dispatch.hpp"
#include "transmla/cpu/kernel_abi.hpp"
#include "transmla/error.hpp"
#include "transmla/softmax.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace transmla::cpu {

/// Tuning and dispatch knobs common to all CPU attention calls. Zero means automatic.
struct Options {
    Isa isa = Isa::best;         ///< instruction-set level (forcing one the CPU lacks throws)
    int tile = 0;                ///< keys per kernel tile (multiple of 16)
    int q_tile = 0;              ///< query tokens per group for prefill-sized calls
    int head_block = 0;          ///< MLA: heads per group
    std::int64_t kv_chunk = 0;   ///< split-KV chunk length (0: derived from num_workers)
    int num_workers = 0;         ///< threads the plan is cut for (0: OpenMP max threads, or 1)
    int prefetch = -1;           ///< software prefetch of the next key tile: 1 on, 0 off, −1 automatic
    int direct = -1;             ///< streaming kernel for ≤ 4 rows per KV head: 0 off, else automatic
    int transposed = -1;         ///< transposed-K QK kernel for ≥ 8 rows per head: 0 off, else automatic
};

namespace detail {

/// What the plan needs to know about one group.
struct GroupInfo {
    int n_rows = 0;
    std::int64_t kv_end = 0;  ///< keys [0, kv_end) can be visible to some row
    int dk = 0, dv = 0;
    bool v_is_k = false;
    int n_heads = 1;  ///< KV heads read together by the kernel
    bool bf16 = false;  ///< bf16 storage (the AVX-512-BF16 pair-dot path wants longer tiles)
};

inline int default_workers(int n) {
    if (n > 0) return n;
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace detail

/// A split-KV plan for one attention call (see the file comment). Build it with the matching
/// `plan_*` function, run its items with `run`, reuse it for calls of the same shapes.
class Plan {
public:
    struct Item {
        std::int32_t group;
        std::int32_t split;   ///< index of this chunk within its group
        std::int32_t splits;  ///< number of chunks of the group
        std::int64_t kb, ke;  ///< key range
    };

    std::int64_t size() const noexcept { return std::int64_t(items_.size()); }
    const Item& item(std::int64_t i) const noexcept { return items_[std::size_t(i)]; }
    Isa isa() const noexcept { return isa_; }
    bool prefetch() const noexcept { return prefetch_; }
    int tile() const noexcept { return tile_; }

    /// Cuts `groups` into items for `workers` threads.
    static Plan make(const std::vector<detail::GroupInfo>& groups, const Options& opt) {
        Plan p;
        p.isa_ = resolve_isa(opt.isa);
        int tile = 128;
        const bool pair_dot = p.isa_ == Isa::avx512bf16;
        for (const auto& g : groups)
            tile = std::min(tile, detail::default_tile(g.dk, g.dv, g.v_is_k, g.n_heads, pair_dot && g.bf16, g.n_rows));
        p.tile_ = opt.tile > 0 ? opt.tile : tile;
        p.prefetch_ = opt.prefetch != 0;
        p.direct_ = opt.direct != 0;
        p.transposed_ = opt.transposed != 0;
        require(p.tile_ % 16 == 0 && p.tile_ <= 1024, "transmla::cpu::Plan: tile must be a multiple of 16 up to 1024, got ",
                p.tile_);
        const int workers = detail::default_workers(opt.num_workers);
        double total = 0;
        for (auto& g : groups) total += double(g.kv_end) * g.n_rows;
        // Without an explicit chunk, split so that there are about 4 items per worker; never
        // below 256 keys per chunk. Calls whose groups are all heavy (MLA: ≥ 16 rows on one
        // latent source) get one item per worker: each item pays fixed costs (query
        // preparation, zeroing its tiles, a merge) that short chunks do not amortise, and equal
        // chunks of equal groups balance anyway (Zen 4, 2 threads, 128 × (512 + 64), 4K bf16 keys:
        // 6.4 ms with 8 items, 5.0 ms with 2).
        bool heavy = !groups.empty();
        for (const auto& g : groups) heavy = heavy && g.v_is_k && g.n_rows >= 16;
        const double target_items = workers > 1 ? (heavy ? 1.0 : 4.0) * workers : 1.0;
        std::int64_t part_floats = 0;
        p.part_base_.assign(groups.size(), -1);
        for (std::size_t gi = 0; gi < groups.size(); ++gi) {
            const auto& g = groups[gi];
            std::int64_t splits = 1;
            if (opt.kv_chunk > 0) {
                splits = (g.kv_end + opt.kv_chunk - 1) / opt.kv_chunk;
            } else if (workers > 1 && total > 0) {
                const double share = double(g.kv_end) * g.n_rows / (total / target_items);
                splits = std::int64_t(std::ceil(share - 1e-9));
                splits = std::min<std::int64_t>(splits, std::max<std::int64_t>(1, g.kv_end / 256));
            }
            splits = std::max<std::int64_t>(splits, 1);
            std::int64_t chunk = (g.kv_end + splits - 1) / splits;
            if (opt.kv_chunk <= 0) chunk = detail::round_up(chunk, p.tile_);
            if (chunk <= 0) chunk = 1;
            splits = std::max<std::int64_t>(1, (g.kv_end + chunk - 1) / chunk);
            for (std::int64_t s = 0; s < splits; ++s)
                p.items_.push_back({std::int32_t(gi), std::int32_t(s), std::int32_t(splits), s * chunk,
                                    std::min(g.kv_end, (s + 1) * chunk)});
            if (splits > 1) {
                p.part_base_[gi] = part_floats;
                part_floats += splits * std::int64_t(g.n_rows) * (detail::round_up(g.dv, 16) + 1);
            }
        }
        p.part_.reset(new float[std::size_t(std::max<std::int64_t>(part_floats, 1))]);
        p.pending_.reset(new std::atomic<int>[groups.size() + 1]);
        for (std::size_t gi = 0; gi <= groups.size(); ++gi) p.pending_[gi].store(0, std::memory_order_relaxed);
        p.groups_ = groups;
        // Longest items first: better balance under dynamic scheduling.
        std::stable_sort(p.items_.begin(), p.items_.end(), [&](const Item& a, const Item& b) {
            return (a.ke - a.kb) * groups[a.group].n_rows > (b.ke - b.kb) * groups[b.group].n_rows;
        });
        return p;
    }

    /// Runs item i of op (an attention call of the kind this plan was made for).
    template <class Op>
    void run(const Op& op, std::int64_t i) const;

private:
    std::vector<Item> items_;
    std::vector<detail::GroupInfo> groups_;
    std::vector<std::int64_t> part_base_;
    std::unique_ptr<float[]> part_;
    std::unique_ptr<std::atomic<int>[]> pending_;
    Isa isa_ = Isa::native;
    int tile_ = 32;
    bool prefetch_ = true;
    bool direct_ = true;
    bool transposed_ = true;
};

namespace detail {

/// 64-byte aligned float scratch owned by one call.
class Scratch {
public:
    explicit Scratch(std::int64_t n) : buf_(new float[std::size_t(n + 16)]) {}
    float* data() noexcept {
        auto a = reinterpret_cast<std::uintptr_t>(buf_.get());
        return reinterpret_cast<float*>((a + 63) & ~std::uintptr_t(63));
    }

private:
    std::unique_ptr<float[]> buf_;
};

}  // namespace detail

template <class Op>
void Plan::run(const Op& op, std::int64_t i) const {
    require(i >= 0 && i < size(), "transmla::cpu::Plan::run: item ", i, " is outside [0, ", size(), ")");
    const Item& it = items_[std::size_t(i)];
    const detail::GroupInfo& g = groups_[std::size_t(it.group)];
    const detail::GroupInfo check = op.info(it.group);
    require(check.n_rows == g.n_rows && check.kv_end == g.kv_end && check.dk == g.dk && check.dv == g.dv &&
                check.n_heads == g.n_heads,
            "transmla::cpu::Plan::run: the call's shapes differ from the ones the plan was made for (group ",
            it.group, ")");
    const int nr = g.n_rows;
    const std::int64_t qs = detail::round_up(g.dk, 32), os = detail::round_up(g.dv, 32);
    const std::int64_t nr16 = detail::round_up(nr, 16);
    const std::int64_t ks = detail::scratch_floats(g.dk, g.dv, g.v_is_k, nr, tile_, g.n_heads);
    detail::Scratch buf(nr * qs + nr * os + 2 * nr16 + ks + 2 * nr16 + 64);
    float* q = buf.data();
    float* o = q + nr * qs;
    float* m = o + nr * os;
    float* l = m + nr16;
    float* kscr = l + nr16;
    std::int64_t* row_end = reinterpret_cast<std::int64_t*>(kscr + detail::round_up(ks, 16));
    std::memset(static_cast<void*>(q), 0, sizeof(float) * std::size_t(nr * qs));
    op.fill(it.group, q, qs, row_end);

    detail::AttendJob job;
    job.q = q;
    job.q_stride = qs;
    job.qk_scale = op.qk_scale();
    job.n_rows = nr;
    job.row_end = row_end;
    job.kb = it.kb;
    job.ke = it.ke;
    job.tile = tile_;
    job.prefetch = prefetch_;
    job.direct = direct_;
    job.transposed = transposed_;
    job.o = o;
    job.o_stride = os;
    job.m = m;
    job.l = l;
    job.scratch = kscr;
    detail::attend(isa_, op.source(it.group), job);

    // Normalise: o /= l, lse (natural) = (m + log2 l)·ln 2; empty rows (l == 0: no key) give 0 and
    // −inf. A row the kernel poisoned (a non-finite logit: l = m = NaN, o NaN) is not empty: its
    // output and lse come out NaN, and merge_normalized keeps them NaN.
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    float* lse = m;  // reuse
    for (int r = 0; r < nr; ++r) {
        const bool empty = l[r] == 0.f;
        const float inv = empty ? 0.f : 1.f / l[r];
        for (int e = 0; e < g.dv; ++e) o[r * os + e] *= inv;
        lse[r] = empty ? ninf : (m[r] + std::log2(l[r])) * float(ln2);
    }
    if (it.splits == 1) {
        op.write(it.group, o, os, lse);
        return;
    }
    // Split group: park the partial, the last chunk to finish merges all of them in order.
    const std::int64_t dvp = detail::round_up(g.dv, 16);
    const std::int64_t slot = std::int64_t(nr) * (dvp + 1);
    float* mine = part_.get() + part_base_[std::size_t(it.group)] + it.split * slot;
    for (int r = 0; r < nr; ++r) {
        std::memcpy(mine + r * (dvp + 1), o + r * os, sizeof(float) * std::size_t(g.dv));
        mine[r * (dvp + 1) + dvp] = lse[r];
    }
    if (pending_[std::size_t(it.group)].fetch_add(1, std::memory_order_acq_rel) != it.splits - 1) return;
    const float* base = part_.get() + part_base_[std::size_t(it.group)];
    for (int r = 0; r < nr; ++r) {
        float* acc = o + r * os;
        float acc_lse = ninf;
        for (int e = 0; e < g.dv; ++e) acc[e] = 0.f;
        for (int s = 0; s < it.splits; ++s) {
            const float* part = base + s * slot + r * (dvp + 1);
            merge_normalized(acc, acc_lse, part, part[dvp], g.dv);
        }
        lse[r] = acc_lse;
    }
    pending_[std::size_t(it.group)].store(0, std::memory_order_relaxed);
    op.write(it.group, o, os, lse);
}

namespace detail {

/// Runs every item of the plan: an OpenMP parallel loop when OpenMP is enabled, else in order.
template <class Op>
void run_all(const Plan& plan, const Op& op) {
    const std::int64_t n = plan.size();
#if defined(_OPENMP)
    if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
        // Exceptions must not leave the parallel region: capture the first one.
        std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1)
        for (std::int64_t i = 0; i < n; ++i) {
            try {
                plan.run(op, i);
            } catch (...) {
#pragma omp critical(transmla_cpu_run_all)
                if (!err) err = std::current_exception();
            }
        }
        if (err) std::rethrow_exception(err);
        return;
    }
#endif
    for (std::int64_t i = 0; i < n; ++i) plan.run(op, i);
}

}  // namespace detail

/// Runs every item of a prepared call's plan: an OpenMP parallel loop when OpenMP is enabled (and
/// not already inside a parallel region), else in order on the calling thread.
template <class Op>
void run_all(const Plan& plan, const Op& call) {
    detail::run_all(plan, call);
}

}  // namespace transmla::cpu
