// transmla/cpu/attention.hpp — GQA and absorbed-MLA attention on the CPU: decode (1…8 query
// tokens per sequence, batched, contiguous or paged caches) and prefill (causal, tiled), with
// split-KV plans.
//
// Semantics (same as reference::gqa_decode / reference::mla_latent_attention): the T_b query
// tokens of sequence b are the last T_b tokens of its cache (already appended), so query t sits at
// position q_offset + t with q_offset = length − T_b, and sees keys [0, q_offset + t].
// Outputs are normalised; `lse` (optional) is the natural-log log-sum-exp of the scaled logits,
// −inf (and output 0) where a row sees no key. Queries arrive RoPE-rotated.
//
// Rows: all query heads of a KV group × the query tokens of a tile are the rows of one kernel call,
// so each K/V tile is loaded once for all of them (GQA lengthens the GEMM instead of repeating K/V
// loads); for MLA all heads × tokens are rows against the single latent cache, and the value is
// the first r columns of the same cache row.
#pragma once

#include "transmla/cpu/plan.hpp"
#include "transmla/error.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/softmax.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

namespace transmla::cpu {

/// A batch of GQA attention problems (decode or prefill).
template <class Tq, class Tkv, class To = float>
struct GqaAttention {
    View3<const Tq> q;                       ///< [tokens][n_q][d], the sequences' query tokens back to back
    std::span<const std::int64_t> q_indptr;  ///< batch+1 token offsets into q; empty: one sequence
    std::span<const GqaSeqView<Tkv>> kv;     ///< one view per sequence
    float scale = 0.f;                       ///< logit scale, usually d^-1/2
    View3<To> out;                           ///< [tokens][n_q][d]
    View2<float> lse{};                      ///< [tokens][n_q] natural log, optional (null data: not written)
    std::int64_t q_offset = -1;              ///< single sequence only: position of query 0 (−1: length − T)
};

/// A batch of absorbed-MLA (latent multi-query) attention problems.
/// Query rows are `[W_UK^iᵀ q_nope_i | rotated q_pe_i]` (width r + d_r, see mla.hpp's absorb_query);
/// the output is the latent-space `ō_i` (width r): apply W_UV (and W_O) with mla.hpp's helpers.
template <class Tq, class Tc, class To = float>
struct MlaAttention {
    View3<const Tq> q;                       ///< [tokens][heads][r + d_r]
    std::span<const std::int64_t> q_indptr;  ///< batch+1 token offsets into q; empty: one sequence
    std::span<const MlaSeqView<Tc>> cache;   ///< one view per sequence
    float scale = 0.f;                       ///< logit scale, (d_nope + d_r)^-1/2
    View3<To> out;                           ///< [tokens][heads][r]
    View2<float> lse{};                      ///< [tokens][heads], optional
    std::int64_t q_offset = -1;
};

namespace detail {

/// Shared part of the GQA and MLA calls: per sequence token ranges, groups (seq, head block, query
/// tile), validation of q / out / lse.
struct RowGroups {
    struct Group {
        std::int32_t seq;
        std::int32_t head0;     ///< first query head (MLA) or first KV head (GQA)
        std::int32_t heads;     ///< query heads (MLA) or KV heads (GQA) in the group
        std::int64_t tok0;      ///< first query token (index into q)
        std::int64_t ntok;      ///< query tokens in the group
        std::int64_t pos0;      ///< position of token tok0
        std::int64_t kv_end;
    };
    std::vector<Group> groups;

    static std::vector<std::int64_t> offsets(std::span<const std::int64_t> indptr, std::int64_t batch,
                                             std::int64_t tokens, const char* who) {
        std::vector<std::int64_t> off;
        if (indptr.empty()) {
            require(batch == 1, who, ": q_indptr is empty but there are ", batch, " sequences");
            off = {0, tokens};
        } else {
            require(std::int64_t(indptr.size()) == batch + 1, who, ": q_indptr has ", indptr.size(),
                    " entries, expected batch+1 = ", batch + 1);
            off.assign(indptr.begin(), indptr.end());
            require(off.front() == 0 && off.back() == tokens, who, ": q_indptr must run from 0 to the ", tokens,
                    " query tokens, got ", off.front(), " .. ", off.back());
            for (std::int64_t b = 0; b < batch; ++b)
                require(off[b] <= off[b + 1], who, ": q_indptr decreases at sequence ", b);
        }
        return off;
    }
};

template <class Tq, class To>
void check_q_out(const View3<const Tq>& q, const View3<To>& out, const View2<float>& lse, std::int64_t heads,
                 std::int64_t qw, std::int64_t ow, const char* who) {
    require(q.data != nullptr || q.numel() == 0, who, ": q is a null view");
    require(q.size(1) == heads && q.size(2) == qw, who, ": q must be [tokens][", heads, "][", qw, "], got [",
            q.size(0), "][", q.size(1), "][", q.size(2), "]");
    require(q.inner_contiguous(), who, ": q must have a unit stride in its last dim");
    transmla::detail::check_extents(out, {q.size(0), heads, ow}, who, "out");
    if (lse.data != nullptr) {
        require(lse.size(0) == q.size(0) && lse.size(1) == heads, who, ": lse must be [", q.size(0), "][", heads,
                "], got [", lse.size(0), "][", lse.size(1), "]");
    }
}

/// The op the plan engine runs for a GqaAttention call.
template <class Tq, class Tkv, class To>
class GqaOp {
public:
    GqaOp(const GqaAttention<Tq, Tkv, To>& a, const Options& opt) : a_(a) {
        const char* who = "transmla::cpu::gqa_attention";
        const std::int64_t batch = std::int64_t(a.kv.size());
        require(batch >= 1, who, ": no sequences");
        n_kv_ = a.kv[0].n_kv;
        d_ = a.kv[0].head_dim;
        nq_ = int(a.q.size(1));
        require(n_kv_ > 0 && d_ > 0, who, ": sequence 0 has n_kv=", n_kv_, " head_dim=", d_);
        require(nq_ % n_kv_ == 0, who, ": n_q (", nq_, ") must be a multiple of n_kv (", n_kv_, ")");
        g_ = nq_ / n_kv_;
        check_q_out(a.q, a.out, a.lse, nq_, d_, d_, who);
        require(std::isfinite(a.scale) && a.scale > 0.f, who, ": scale must be positive and finite, got ", a.scale);
        const auto off = RowGroups::offsets(a.q_indptr, batch, a.q.size(0), who);
        require(a.q_offset < 0 || batch == 1, who, ": q_offset is for a single sequence");
        const int qt = opt.q_tile > 0 ? opt.q_tile : std::max(1, 256 / g_);  // ~256 rows per prefill group
        // Decode-sized calls read a block of KV heads per group (one contiguous span per token,
        // about 8 KB of f32 K and V); prefill-sized ones one KV head per group.
        const int hb_decode = std::clamp(8192 / (8 * int(round_up(d_, 16))), 1, n_kv_);
        for (std::int64_t b = 0; b < batch; ++b) {
            const auto& kv = a.kv[std::size_t(b)];
            require(kv.n_kv == n_kv_ && kv.head_dim == d_, who, ": sequence ", b, " has n_kv=", kv.n_kv,
                    " head_dim=", kv.head_dim, ", sequence 0 has ", n_kv_, ", ", d_);
            require(kv.length >= 0 && ((kv.k != nullptr && kv.v != nullptr) || kv.length == 0), who, ": sequence ", b,
                    " has a null cache");
            const std::int64_t T = off[b + 1] - off[b];
            const std::int64_t pos0 = a.q_offset >= 0 ? a.q_offset : kv.length - T;
            require(pos0 >= 0, who, ": sequence ", b, " has ", T, " query tokens but only ", kv.length,
                    " cached tokens (append the new tokens first)");
            const bool decode = T <= 8;
            const std::int64_t tile = decode ? std::max<std::int64_t>(T, 1) : qt;
            const int hb = decode ? hb_decode : 1;
            for (int h = 0; h < n_kv_; h += hb)
                for (std::int64_t t0 = 0; t0 < T; t0 += tile) {
                    const std::int64_t nt = std::min(tile, T - t0);
                    const std::int64_t kv_end = std::min(kv.length, pos0 + t0 + nt);
                    rg_.groups.push_back(
                        {std::int32_t(b), h, std::min(hb, n_kv_ - h), off[b] + t0, nt, pos0 + t0, kv_end});
                }
        }
    }

    std::int64_t n_groups() const noexcept { return std::int64_t(rg_.groups.size()); }
    // Rows of a group: KV head major, then query token, then the g query heads of the KV head.
    GroupInfo info(std::int64_t gi) const noexcept {
        const auto& g = rg_.groups[std::size_t(gi)];
        return {int(g.ntok) * g.heads * g_, g.kv_end, d_, d_, false, g.heads, std::is_same_v<Tkv, bfloat16>};
    }
    KvSource<Tkv> source(std::int64_t gi) const noexcept {
        const auto& g = rg_.groups[std::size_t(gi)];
        const auto& kv = a_.kv[std::size_t(g.seq)];
        KvSource<Tkv> s;
        s.k = kv.k + std::int64_t(g.head0) * kv.head_stride;
        s.v = kv.v + std::int64_t(g.head0) * kv.head_stride;
        s.token_stride = kv.token_stride;
        s.map = kv.map;
        s.dk = d_;
        s.dv = d_;
        s.n_heads = g.heads;
        s.head_stride = kv.head_stride;
        return s;
    }
    /// Logit scale in base 2 (the kernel applies it: see AttendJob::qk_scale).
    float qk_scale() const noexcept { return a_.scale * float(log2e); }
    void fill(std::int64_t gi, float* q, std::int64_t qs, std::int64_t* row_end) const {
        const auto& g = rg_.groups[std::size_t(gi)];
        int r = 0;
        for (int h = g.head0; h < g.head0 + g.heads; ++h)
            for (std::int64_t t = 0; t < g.ntok; ++t)
                for (int i = 0; i < g_; ++i, ++r) {
                    const Tq* src = a_.q.row(g.tok0 + t, h * g_ + i);
                    for (int e = 0; e < d_; ++e) q[r * qs + e] = to_float(src[e]);
                    row_end[r] = std::min(g.pos0 + t + 1, g.kv_end);
                }
    }
    void write(std::int64_t gi, const float* o, std::int64_t os, const float* lse) const {
        const auto& g = rg_.groups[std::size_t(gi)];
        int r = 0;
        for (int h = g.head0; h < g.head0 + g.heads; ++h)
            for (std::int64_t t = 0; t < g.ntok; ++t)
                for (int i = 0; i < g_; ++i, ++r) {
                    To* dst = a_.out.row(g.tok0 + t, h * g_ + i);
                    for (int e = 0; e < d_; ++e) dst[e] = from_float<To>(o[r * os + e]);
                    if (a_.lse.data != nullptr) a_.lse(g.tok0 + t, h * g_ + i) = lse[r];
                }
    }
    std::vector<GroupInfo> infos() const {
        std::vector<GroupInfo> v;
        for (std::int64_t i = 0; i < n_groups(); ++i) v.push_back(info(i));
        return v;
    }

private:
    GqaAttention<Tq, Tkv, To> a_;
    RowGroups rg_;
    int n_kv_ = 0, d_ = 0, nq_ = 0, g_ = 1;
};

/// The op the plan engine runs for an MlaAttention call.
template <class Tq, class Tc, class To>
class MlaOp {
public:
    MlaOp(const MlaAttention<Tq, Tc, To>& a, const Options& opt) : a_(a) {
        const char* who = "transmla::cpu::mla_attention";
        const std::int64_t batch = std::int64_t(a.cache.size());
        require(batch >= 1, who, ": no sequences");
        r_ = a.cache[0].rank;
        dr_ = a.cache[0].rope_dim;
        H_ = int(a.q.size(1));
        require(r_ > 0 && dr_ >= 0, who, ": sequence 0 has rank=", r_, " rope_dim=", dr_);
        require(H_ > 0, who, ": q has no heads");
        check_q_out(a.q, a.out, a.lse, H_, r_ + dr_, r_, who);
        require(std::isfinite(a.scale) && a.scale > 0.f, who, ": scale must be positive and finite, got ", a.scale);
        const auto off = RowGroups::offsets(a.q_indptr, batch, a.q.size(0), who);
        require(a.q_offset < 0 || batch == 1, who, ": q_offset is for a single sequence");
        const int hb = opt.head_block > 0 ? std::min(opt.head_block, H_) : H_;
        const int qt = opt.q_tile > 0 ? opt.q_tile : std::max(1, 128 / hb);
        for (std::int64_t b = 0; b < batch; ++b) {
            const auto& c = a.cache[std::size_t(b)];
            require(c.rank == r_ && c.rope_dim == dr_, who, ": sequence ", b, " has rank=", c.rank, " rope_dim=",
                    c.rope_dim, ", sequence 0 has ", r_, ", ", dr_);
            require(c.length >= 0 && (c.rows != nullptr || c.length == 0), who, ": sequence ", b, " has a null cache");
            const std::int64_t T = off[b + 1] - off[b];
            const std::int64_t pos0 = a.q_offset >= 0 ? a.q_offset : c.length - T;
            require(pos0 >= 0, who, ": sequence ", b, " has ", T, " query tokens but only ", c.length,
                    " cached tokens (append the new tokens first)");
            const std::int64_t tile = T <= 8 ? std::max<std::int64_t>(T, 1) : qt;
            for (int h0 = 0; h0 < H_; h0 += hb)
                for (std::int64_t t0 = 0; t0 < T; t0 += tile) {
                    const std::int64_t nt = std::min(tile, T - t0);
                    const std::int64_t kv_end = std::min(c.length, pos0 + t0 + nt);
                    rg_.groups.push_back({std::int32_t(b), h0, std::min(hb, H_ - h0), off[b] + t0, nt, pos0 + t0, kv_end});
                }
        }
    }

    std::int64_t n_groups() const noexcept { return std::int64_t(rg_.groups.size()); }
    GroupInfo info(std::int64_t gi) const noexcept {
        const auto& g = rg_.groups[std::size_t(gi)];
        return {int(g.ntok) * g.heads, g.kv_end, r_ + dr_, r_, true, 1, std::is_same_v<Tc, bfloat16>};
    }
    KvSource<Tc> source(std::int64_t gi) const noexcept {
        const auto& c = a_.cache[std::size_t(rg_.groups[std::size_t(gi)].seq)];
        KvSource<Tc> s;
        s.k = c.rows;
        s.v = c.rows;
        s.token_stride = c.token_stride;
        s.map = c.map;
        s.dk = r_ + dr_;
        s.dv = r_;
        return s;
    }
    /// Logit scale in base 2 (the kernel applies it: see AttendJob::qk_scale).
    float qk_scale() const noexcept { return a_.scale * float(log2e); }
    void fill(std::int64_t gi, float* q, std::int64_t qs, std::int64_t* row_end) const {
        const auto& g = rg_.groups[std::size_t(gi)];
        const int w = r_ + dr_;
        int r = 0;
        for (std::int64_t t = 0; t < g.ntok; ++t)
            for (int i = 0; i < g.heads; ++i, ++r) {
                const Tq* src = a_.q.row(g.tok0 + t, g.head0 + i);
                for (int e = 0; e < w; ++e) q[r * qs + e] = to_float(src[e]);
                row_end[r] = std::min(g.pos0 + t + 1, g.kv_end);
            }
    }
    void write(std::int64_t gi, const float* o, std::int64_t os, const float* lse) const {
        const auto& g = rg_.groups[std::size_t(gi)];
        int r = 0;
        for (std::int64_t t = 0; t < g.ntok; ++t)
            for (int i = 0; i < g.heads; ++i, ++r) {
                To* dst = a_.out.row(g.tok0 + t, g.head0 + i);
                for (int e = 0; e < r_; ++e) dst[e] = from_float<To>(o[r * os + e]);
                if (a_.lse.data != nullptr) a_.lse(g.tok0 + t, g.head0 + i) = lse[r];
            }
    }
    std::vector<GroupInfo> infos() const {
        std::vector<GroupInfo> v;
        for (std::int64_t i = 0; i < n_groups(); ++i) v.push_back(info(i));
        return v;
    }

private:
    MlaAttention<Tq, Tc, To> a_;
    RowGroups rg_;
    int r_ = 0, dr_ = 0, H_ = 0;
};

}  // namespace detail

// ---- plan / run ------------------------------------------------------------------------------

/// A prepared call: validated arguments and their groups. Keep it (and the arrays its views point
/// at) alive while items run.
template <class Tq, class Tkv, class To>
detail::GqaOp<Tq, Tkv, To> prepare(const GqaAttention<Tq, Tkv, To>& a, const Options& opt = {}) {
    return detail::GqaOp<Tq, Tkv, To>(a, opt);
}
template <class Tq, class Tc, class To>
detail::MlaOp<Tq, Tc, To> prepare(const MlaAttention<Tq, Tc, To>& a, const Options& opt = {}) {
    return detail::MlaOp<Tq, Tc, To>(a, opt);
}

/// The split-KV plan of a prepared call: run `plan.run(call, i)` for i in [0, plan.size()) on any
/// threads (each item once); outputs are complete when all items have returned.
template <class Op>
Plan make_plan(const Op& call, const Options& opt = {}) {
    return Plan::make(call.infos(), opt);
}

// ---- convenience entry points (plan + OpenMP parallel loop when enabled) -----------------------

/// GQA attention of a batch (decode or prefill): prepare, plan and run every item.
template <class Tq, class Tkv, class To>
void gqa_attention(const GqaAttention<Tq, Tkv, To>& a, const Options& opt = {}) {
    const auto call = prepare(a, opt);
    const Plan plan = make_plan(call, opt);
    detail::run_all(plan, call);
}

/// Absorbed-MLA attention of a batch (decode, or absorbed prefill).
template <class Tq, class Tc, class To>
void mla_attention(const MlaAttention<Tq, Tc, To>& a, const Options& opt = {}) {
    const auto call = prepare(a, opt);
    const Plan plan = make_plan(call, opt);
    detail::run_all(plan, call);
}

/// GQA decode of one sequence: `q [T][n_q][d]` are the last T tokens of `kv`.
template <class Q, class Tkv, class To>
void gqa_decode(TensorView<Q, 3> q, const GqaSeqView<Tkv>& kv, float scale, View3<To> out, View2<float> lse = {},
                const Options& opt = {}) {
    using Tq = std::remove_const_t<Q>;
    gqa_attention(GqaAttention<Tq, Tkv, To>{View3<const Tq>(q), {}, std::span<const GqaSeqView<Tkv>>(&kv, 1), scale,
                                            out, lse, -1},
                  opt);
}

/// GQA decode of a batch: sequence b's query tokens are q[q_indptr[b] .. q_indptr[b+1]).
template <class Q, class Tkv, class To>
void gqa_decode(TensorView<Q, 3> q, std::span<const std::int64_t> q_indptr, std::span<const GqaSeqView<Tkv>> kv,
                float scale, View3<To> out, View2<float> lse = {}, const Options& opt = {}) {
    using Tq = std::remove_const_t<Q>;
    gqa_attention(GqaAttention<Tq, Tkv, To>{View3<const Tq>(q), q_indptr, kv, scale, out, lse, -1}, opt);
}

/// Causal GQA prefill: `q [T][n_q][d]` against `k`, `v` `[S][n_kv][d]`; query t is at position
/// q_offset + t (−1: S − T) and sees keys [0, q_offset + t].
template <class Q, class K, class To>
void gqa_prefill(TensorView<Q, 3> q, TensorView<K, 3> k, TensorView<K, 3> v, float scale, View3<To> out,
                 View2<float> lse = {}, std::int64_t q_offset = -1, const Options& opt = {}) {
    using Tq = std::remove_const_t<Q>;
    using Tkv = std::remove_const_t<K>;
    require(k.size(0) == v.size(0) && k.size(1) == v.size(1) && k.size(2) == v.size(2) && k.stride == v.stride,
            "transmla::cpu::gqa_prefill: k and v must have the same extents and strides");
    require(k.inner_contiguous(), "transmla::cpu::gqa_prefill: k and v must have a unit stride in their last dim");
    const GqaSeqView<Tkv> kv{k.data, v.data, int(k.size(1)), int(k.size(2)), k.size(0), k.stride[0], k.stride[1], {}};
    gqa_attention(GqaAttention<Tq, Tkv, To>{View3<const Tq>(q), {}, std::span<const GqaSeqView<Tkv>>(&kv, 1), scale, out,
                                            lse, q_offset},
                  opt);
}

/// Causal GQA prefill against a cache view that already holds the prompt (queries = last T tokens).
template <class Q, class Tkv, class To>
void gqa_prefill(TensorView<Q, 3> q, const GqaSeqView<Tkv>& kv, float scale, View3<To> out, View2<float> lse = {},
                 const Options& opt = {}) {
    gqa_decode(q, kv, scale, out, lse, opt);
}

/// Absorbed MLA decode of one sequence: `q_abs [T][H][r + d_r]` (last T tokens of the cache) →
/// latent outputs `out [T][H][r]`.
template <class Q, class Tc, class To>
void mla_decode(TensorView<Q, 3> q_abs, const MlaSeqView<Tc>& cache, float scale, View3<To> out, View2<float> lse = {},
                const Options& opt = {}) {
    using Tq = std::remove_const_t<Q>;
    mla_attention(MlaAttention<Tq, Tc, To>{View3<const Tq>(q_abs), {}, std::span<const MlaSeqView<Tc>>(&cache, 1), scale,
                                           out, lse, -1},
                  opt);
}

/// Absorbed MLA decode of a batch.
template <class Q, class Tc, class To>
void mla_decode(TensorView<Q, 3> q_abs, std::span<const std::int64_t> q_indptr, std::span<const MlaSeqView<Tc>> cache,
                float scale, View3<To> out, View2<float> lse = {}, const Options& opt = {}) {
    using Tq = std::remove_const_t<Q>;
    mla_attention(MlaAttention<Tq, Tc, To>{View3<const Tq>(q_abs), q_indptr, cache, scale, out, lse, -1}, opt);
}

}  // namespace transmla::cpu
