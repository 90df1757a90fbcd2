// CUDA absorbed MLA decode (latent core) against reference::mla_latent_attention: f16 and bf16,
// (rank, rope) = (512, 64) and (128, 64), 1…128 heads × 1…4 query tokens (one and several
// 16-row tiles), odd lengths (1, 7, 113, 1025), contiguous and paged caches (pages of 16 and of 5
// tokens, shuffled), forced split-KV with the merge and the automatic plan, strided q/out.
// Outputs are poisoned with NaN; caches are NaN outside the sequences.
#include "cuda_test_util.hpp"
#include "transmla/reference/mla.hpp"

#include <cmath>
#include <vector>

namespace {

using namespace transmla;
using namespace transmla::test::cuda;

struct MlaCase {
    std::vector<std::int64_t> lens;
    int q_len, heads, rank, rope;
    std::int64_t page_size;  // 0: contiguous
    std::int64_t chunk;      // 0: automatic plan
    bool padded;
};

template <class H>
void run_case(const MlaCase& c) {
    using C = cuda_t<H>;
    CAPTURE(c.q_len);
    CAPTURE(c.heads);
    CAPTURE(c.rank);
    CAPTURE(c.page_size);
    CAPTURE(c.chunk);
    CAPTURE(c.padded);
    const int B = int(c.lens.size()), w = c.rank + c.rope;
    std::vector<std::vector<H>> rows(B);
    for (int b = 0; b < B; ++b) rows[b] = test::random_vector<H>(std::size_t(c.lens[b] * w));
    const HostLayout hl = make_layout(c.lens, w, c.page_size);
    DeviceBuffer<H> cache_dev(hl.scatter(rows));
    DeviceLayout dl(hl);

    const std::int64_t qsh = w + (c.padded ? 8 : 0), qst = c.heads * qsh + (c.padded ? 2 : 0), qsb = c.q_len * qst;
    const std::int64_t osh = c.rank + (c.padded ? 6 : 0), ost = c.heads * osh, osb = c.q_len * ost + (c.padded ? 4 : 0);
    std::vector<H> q(std::size_t(B * qsb), nan_value<H>());
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < c.q_len; ++t)
            for (int i = 0; i < c.heads; ++i)
                for (int e = 0; e < w; ++e) q[std::size_t(b * qsb + t * qst + i * qsh + e)] = from_double<H>(test::normal());
    DeviceBuffer<H> q_dev(q), out_dev(std::size_t(B * osb));
    DeviceBuffer<float> lse_dev(std::size_t(B) * c.q_len * c.heads);
    out_dev.poison();
    lse_dev.poison();

    const double scale = 1.0 / std::sqrt(192.0);
    cuda::MlaDecodeParams<C> p;
    p.q = q_dev.template as<const C>();
    p.q_stride_b = qsb, p.q_stride_t = qst, p.q_stride_h = qsh;
    p.cache = cache_dev.template as<const C>();
    p.layout = dl.layout;
    p.out = out_dev.template as<C>();
    p.out_stride_b = osb, p.out_stride_t = ost, p.out_stride_h = osh;
    p.lse = lse_dev.get();
    p.batch = B, p.q_len = c.q_len, p.heads = c.heads, p.rank = c.rank, p.rope_dim = c.rope;
    p.scale = float(scale);
    const auto plan = cuda::plan_mla_decode(B, c.q_len, c.heads, c.rank, hl.max_len(), 0, c.chunk);
    CAPTURE(plan.splits);
    DeviceBuffer<unsigned char> ws(plan.workspace_bytes());
    cuda::mla_decode<C>(p, plan, ws.get(), ws.size());
    sync_checked();

    const auto out = out_dev.download();
    const auto lse = lse_dev.download();
    std::vector<H> got;
    std::vector<double> want, want_lse(std::size_t(B) * c.q_len * c.heads);
    bool padding_intact = true;
    for (int b = 0; b < B; ++b) {
        REQUIRE(c.lens[b] >= c.q_len);
        std::vector<double> ro(std::size_t(c.q_len) * c.heads * c.rank);
        const View3<const H> qv(q.data() + b * qsb, {c.q_len, c.heads, w}, {qst, qsh, 1});
        const MlaSeqView<H> cv{rows[b].data(), c.rank, c.rope, c.lens[b], w, {}};
        reference::mla_latent_attention(qv, cv, scale, reference::Causal{c.lens[b] - c.q_len},
                                        View3<double>(ro.data(), {c.q_len, c.heads, c.rank}),
                                        View2<double>(&want_lse[std::size_t(b) * c.q_len * c.heads], {c.q_len, c.heads}));
        want.insert(want.end(), ro.begin(), ro.end());
        for (std::int64_t o = 0; o < osb; ++o) {
            const std::int64_t t = o / ost, rem = o % ost, i = rem / osh, e = rem % osh;
            const H x = out[std::size_t(b * osb + o)];
            if (t < c.q_len && i < c.heads && e < c.rank) got.push_back(x);
            else padding_intact = padding_intact && bits_of(x) == 0xFFFF;
        }
    }
    CHECK(padding_intact);
    // P is rounded to the storage type before P·V on tensor cores: one more rounding than GQA.
    TRANSMLA_CHECK_CLOSE(got, want, 2 * test::tolerance<H>());
    TRANSMLA_CHECK_CLOSE(lse, want_lse, 1e-4);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda mla_decode matches the reference latent attention", H, transmla::half, transmla::bfloat16) {
    // (the host emulator is slow: shorter sequences and fewer head counts there)
    const std::vector<std::int64_t> lens = emulated ? std::vector<std::int64_t>{4, 7, 70}
                                                    : std::vector<std::int64_t>{4, 7, 113, 1025};
    const std::vector<int> head_counts = emulated ? std::vector<int>{1, 16, 20} : std::vector<int>{1, 16, 20, 64};
    for (auto [rank, rope] : {std::pair{512, 64}, std::pair{128, 64}})
        for (int heads : head_counts)
            for (int q_len : {1, 4})
                for (std::int64_t page : {0, 16, 5})
                    run_case<H>({lens, q_len, heads, rank, rope, page, emulated ? 32 : 64, false});
}

TEST_CASE_TEMPLATE("cuda mla_decode: many heads, automatic plan, one split, strided", H, transmla::half,
                   transmla::bfloat16) {
    const std::int64_t len = emulated ? 70 : 300;
    run_case<H>({{1, len}, 1, emulated ? 40 : 128, 512, 64, 16, 0, false});  // several row tiles of 16 heads
    run_case<H>({{3, len}, 2, 16, 512, 64, 0, 0, true});
    run_case<H>({{3, len}, 2, 16, 128, 64, 7, 512, true});  // one split: direct output
}

TEST_CASE("cuda mla_decode rejects unsupported dims") {
    DeviceBuffer<transmla::half> buf(1 << 14);
    DeviceBuffer<std::int32_t> lens(std::vector<std::int32_t>{4});
    cuda::MlaDecodeParams<__half> p;
    p.q = p.cache = buf.as<const __half>();
    p.out = buf.as<__half>();
    p.layout.token_stride = 288;
    p.layout.seq_lens = lens.get();
    p.batch = 1, p.q_len = 1, p.heads = 2, p.rank = 256, p.rope_dim = 32, p.scale = 0.1f;
    p.q_stride_h = 288, p.out_stride_h = 256;
    const auto plan = cuda::plan_mla_decode(1, 1, 2, 256, 4, 0, 32);
    check_throws_containing([&] { cuda::mla_decode<__half>(p, plan, nullptr, 0); },
                            "unsupported (rank, rope_dim) = (256, 32); compiled: (512, 64), (128, 64)");
}
