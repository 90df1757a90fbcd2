// CUDA GQA decode against reference::gqa_decode: f16 and bf16, head dims 64 and 128, groups 1…8,
// 1, 3 and 8 query tokens, odd lengths (1, 7, 113, 1025), contiguous and paged caches (pages of 16
// and of 5 tokens, shuffled), one split and forced split-KV with the merge, strided q/out.
// Outputs are poisoned with NaN first (every element must be written) and padding around them
// must stay untouched; caches are NaN outside the sequences (nothing else may be read).
#include "cuda_test_util.hpp"
#include "transmla/reference/attention.hpp"

#include <array>
#include <cmath>
#include <string>
#include <vector>

namespace {

using namespace transmla;
using namespace transmla::test::cuda;

struct GqaCase {
    std::vector<std::int64_t> lens;
    int q_len, n_q, n_kv, d;
    std::int64_t page_size;  // 0: contiguous
    std::int64_t chunk;      // 0: automatic plan
    bool padded;             // strided q and out
};

template <class H>
void run_case(const GqaCase& c) {
    using C = cuda_t<H>;
    CAPTURE(c.q_len);
    CAPTURE(c.n_q);
    CAPTURE(c.n_kv);
    CAPTURE(c.d);
    CAPTURE(c.page_size);
    CAPTURE(c.chunk);
    CAPTURE(c.padded);
    const int B = int(c.lens.size()), d = c.d;
    const std::int64_t ts = std::int64_t(c.n_kv) * d;
    std::vector<std::vector<H>> K(B), V(B);
    for (int b = 0; b < B; ++b) {
        K[b] = test::random_vector<H>(std::size_t(c.lens[b] * ts));
        V[b] = test::random_vector<H>(std::size_t(c.lens[b] * ts));
    }
    const HostLayout hl = make_layout(c.lens, ts, c.page_size);
    DeviceBuffer<H> k_dev(hl.scatter(K)), v_dev(hl.scatter(V));
    DeviceLayout dl(hl);

    // Queries and outputs [B][q_len][n_q][d], optionally with gaps between heads and tokens.
    const std::int64_t qsh = d + (c.padded ? 8 : 0), qst = c.n_q * qsh + (c.padded ? 6 : 0), qsb = c.q_len * qst;
    const std::int64_t osh = d + (c.padded ? 4 : 0), ost = c.n_q * osh + (c.padded ? 2 : 0), osb = c.q_len * ost;
    std::vector<H> q(std::size_t(B * qsb), nan_value<H>());
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < c.q_len; ++t)
            for (int i = 0; i < c.n_q; ++i)
                for (int e = 0; e < d; ++e) q[std::size_t(b * qsb + t * qst + i * qsh + e)] = from_double<H>(test::normal());
    DeviceBuffer<H> q_dev(q), out_dev(std::size_t(B * osb));
    DeviceBuffer<float> lse_dev(std::size_t(B) * c.q_len * c.n_q);
    out_dev.poison();
    lse_dev.poison();

    const double scale = 1.0 / std::sqrt(double(d));
    cuda::GqaDecodeParams<C> p;
    p.q = q_dev.template as<const C>();
    p.q_stride_b = qsb, p.q_stride_t = qst, p.q_stride_h = qsh;
    p.k = k_dev.template as<const C>();
    p.v = v_dev.template as<const C>();
    p.head_stride = d;
    p.layout = dl.layout;
    p.out = out_dev.template as<C>();
    p.out_stride_b = osb, p.out_stride_t = ost, p.out_stride_h = osh;
    p.lse = lse_dev.get();
    p.batch = B, p.q_len = c.q_len, p.n_q = c.n_q, p.n_kv = c.n_kv, p.head_dim = d;
    p.scale = float(scale);
    const auto plan = cuda::plan_gqa_decode(B, c.q_len, c.n_q, c.n_kv, d, hl.max_len(), 0, c.chunk);
    if (c.chunk > 0) CHECK(plan.splits == int((hl.max_len() + plan.chunk - 1) / plan.chunk));
    CAPTURE(plan.splits);
    DeviceBuffer<unsigned char> ws(plan.workspace_bytes());
    cuda::gqa_decode<C>(p, plan, ws.get(), ws.size());
    sync_checked();

    const auto out = out_dev.download();
    const auto lse = lse_dev.download();
    std::vector<H> got;
    std::vector<double> want, want_lse(std::size_t(B) * c.q_len * c.n_q);
    bool padding_intact = true;
    for (int b = 0; b < B; ++b) {
        std::vector<double> ro(std::size_t(c.q_len) * c.n_q * d);
        // Decode semantics: query t sits at position len − q_len + t (gqa_attention also covers
        // len < q_len, where the first rows see no key: 0 and lse −inf).
        const View3<const H> qv(q.data() + b * qsb, {c.q_len, c.n_q, d}, {qst, qsh, 1});
        const GqaSeqView<H> kv{K[b].data(), V[b].data(), c.n_kv, d, c.lens[b], ts, d, {}};
        reference::gqa_attention(qv, kv, scale, reference::Causal{c.lens[b] - c.q_len},
                                 View3<double>(ro.data(), {c.q_len, c.n_q, d}),
                                 View2<double>(&want_lse[std::size_t(b) * c.q_len * c.n_q], {c.q_len, c.n_q}));
        want.insert(want.end(), ro.begin(), ro.end());
        for (std::int64_t o = 0; o < osb; ++o) {
            const std::int64_t t = o / ost, rem = o % ost, i = rem / osh, e = rem % osh;
            const H x = out[std::size_t(b * osb + o)];
            if (t < c.q_len && i < c.n_q && e < d) got.push_back(x);
            else padding_intact = padding_intact && bits_of(x) == 0xFFFF;
        }
    }
    CHECK(padding_intact);
    TRANSMLA_CHECK_CLOSE(got, want, test::tolerance<H>());
    TRANSMLA_CHECK_CLOSE(lse, want_lse, 1e-4);
}

std::vector<std::int64_t> lens_for(int q_len) {
    if (emulated) return {std::max<std::int64_t>(1, q_len), 7, 45};  // the host emulator is slow
    return {std::max<std::int64_t>(1, q_len), std::max<std::int64_t>(7, q_len), 113, 1025};
}

}  // namespace

TEST_CASE_TEMPLATE("cuda gqa_decode matches the reference (groups 1..8, odd lengths, contiguous and paged)", H,
                   transmla::half, transmla::bfloat16) {
    const std::vector<std::array<int, 2>> groups =
        emulated ? std::vector<std::array<int, 2>>{{4, 4}, {6, 2}, {8, 1}}
                 : std::vector<std::array<int, 2>>{{4, 4}, {8, 4}, {6, 2}, {8, 2}, {8, 1}};
    const std::vector<int> q_lens = emulated ? std::vector<int>{1, 3} : std::vector<int>{1, 3, 8};
    for (int d : {64, 128})
        for (const auto& [nq, nkv] : groups)
            for (int q_len : q_lens)
                for (std::int64_t page : {0, 16, 5}) {
                    // Forced split-KV (chunks of 32 or 64 keys: many partials and the merge) everywhere;
                    // the automatic plan on one layout per shape.
                    run_case<H>({lens_for(q_len), q_len, nq, nkv, d, page, emulated ? 32 : 64, false});
                    if (page == 16) run_case<H>({lens_for(q_len), q_len, nq, nkv, d, page, 0, q_len == 3});
                }
}

TEST_CASE_TEMPLATE("cuda gqa_decode: one split, strided q/out, long sequence", H, transmla::half, transmla::bfloat16) {
    // chunk ≥ every length: a single split writes the outputs directly (no merge). Sequence 0 has
    // fewer cached tokens than queries: its first row sees no key.
    const std::int64_t long_len = emulated ? 100 : 2047;
    run_case<H>({{1, 30, long_len}, 2, 8, 2, 128, 0, 4096, true});
    run_case<H>({{1, 30, long_len}, 2, 8, 2, 64, 32, 4096, true});
}

TEST_CASE_TEMPLATE("cuda gqa_decode: empty sequences give zero rows and lse = -inf", H, transmla::half,
                   transmla::bfloat16) {
    run_case<H>({{0, 5, 0}, 1, 4, 2, 64, 0, 32, false});
    run_case<H>({{0, 45, 0}, 1, 4, 2, 64, 0, 8, false});
}

TEST_CASE("cuda gqa_decode rejects unsupported shapes and bad arguments") {
    DeviceBuffer<transmla::half> buf(1 << 14);
    DeviceBuffer<std::int32_t> lens(std::vector<std::int32_t>{4});
    cuda::GqaDecodeParams<__half> p;
    p.q = p.k = p.v = buf.as<const __half>();
    p.out = buf.as<__half>();
    p.head_stride = 96;
    p.layout.token_stride = 96;
    p.layout.seq_lens = lens.get();
    p.batch = 1, p.q_len = 1, p.n_q = 1, p.n_kv = 1, p.head_dim = 96, p.scale = 0.1f;
    p.q_stride_h = p.out_stride_h = 96;
    const auto plan = cuda::plan_gqa_decode(1, 1, 1, 1, 96, 4, 0, 32);
    check_throws_containing([&] { cuda::gqa_decode<__half>(p, plan, nullptr, 0); },
                            "unsupported head_dim 96; compiled head dims: 64, 128");
    check_throws_containing([&] { (void)cuda::plan_gqa_decode(1, 1, 6, 4, 64, 10, 0, 32); },
                            "n_q must be a multiple of n_kv");
    p.head_dim = 64;
    const auto plan64 = cuda::plan_gqa_decode(1, 1, 1, 1, 64, 4, 0, 32);
    check_throws_containing([&] { cuda::gqa_decode<__half>(p, plan, nullptr, 0); }, "the plan was made for another");
    p.layout.token_stride = 68;
    check_throws_containing([&] { cuda::gqa_decode<__half>(p, plan64, nullptr, 0); }, "token_stride (68 elements)");
    p.layout.token_stride = 64;
    p.layout.seq_lens = nullptr;
    check_throws_containing([&] { cuda::gqa_decode<__half>(p, plan64, nullptr, 0); }, "needs seq_lens");
    const auto split_plan = cuda::plan_gqa_decode(1, 1, 1, 1, 64, 100, 0, 32);
    REQUIRE(split_plan.workspace_bytes() > 0);
    check_throws_containing([&] { cuda::gqa_decode<__half>(p, split_plan, nullptr, 0); }, "workspace of 0 bytes");
}
