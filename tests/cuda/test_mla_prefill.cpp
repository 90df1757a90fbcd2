// CUDA MLA naive prefill (tensor-core decompression + prefill) against reference::mla_naive:
// f16 and bf16, DeepSeek dims (nope 128, rope 64, v 128) with ranks 512 and 120 (a rank that
// is not a multiple of the 32-wide k-step), and (nope 64, rope 64, v 128); odd lengths, chunked
// prefill. Outputs poisoned with NaN.
#include "cuda_test_util.hpp"
#include "transmla/reference/mla.hpp"

#include <cmath>
#include <vector>

namespace {

using namespace transmla;
using namespace transmla::test::cuda;

struct MlaPrefillCase {
    int q_len, kv_len, heads, rank, rope, nope, dv;
};

template <class H>
void run_case(const MlaPrefillCase& c) {
    using C = cuda_t<H>;
    CAPTURE(c.q_len);
    CAPTURE(c.kv_len);
    CAPTURE(c.heads);
    CAPTURE(c.rank);
    CAPTURE(c.nope);
    const int qk = c.nope + c.rope, w = c.rank + c.rope;
    const auto q = test::random_vector<H>(std::size_t(c.q_len) * c.heads * qk);
    const auto rows = test::random_vector<H>(std::size_t(c.kv_len) * w);
    const auto kv_b = test::random_vector<H>(std::size_t(c.heads) * (c.nope + c.dv) * c.rank, 1.0 / std::sqrt(c.rank));
    DeviceBuffer<H> q_dev(q), rows_dev(rows), kvb_dev(kv_b), out_dev(std::size_t(c.q_len) * c.heads * c.dv);
    DeviceBuffer<float> lse_dev(std::size_t(c.q_len) * c.heads);
    out_dev.poison();
    lse_dev.poison();

    const double scale = 1.0 / std::sqrt(double(qk));
    cuda::MlaPrefillParams<C> p;
    p.q = q_dev.template as<const C>(), p.q_stride_t = std::int64_t(c.heads) * qk, p.q_stride_h = qk;
    p.cache = rows_dev.template as<const C>(), p.cache_stride_t = w;
    p.kv_b = kvb_dev.template as<const C>();
    p.out = out_dev.template as<C>(), p.out_stride_t = std::int64_t(c.heads) * c.dv, p.out_stride_h = c.dv;
    p.lse = lse_dev.get();
    p.q_len = c.q_len, p.kv_len = c.kv_len, p.heads = c.heads, p.rank = c.rank, p.rope_dim = c.rope;
    p.nope_dim = c.nope, p.v_dim = c.dv, p.scale = float(scale);
    DeviceBuffer<unsigned char> ws(cuda::mla_prefill_workspace_bytes(p));
    ws.poison();  // the decompression must write every key and value it later reads
    cuda::mla_naive_prefill<C>(p, ws.get(), ws.size());
    sync_checked();

    std::vector<double> want(std::size_t(c.q_len) * c.heads * c.dv), want_lse(std::size_t(c.q_len) * c.heads);
    const std::array<std::int64_t, 3> qs{std::int64_t(c.heads) * qk, qk, 1};
    reference::mla_naive(View3<const H>(q.data(), {c.q_len, c.heads, c.nope}, qs),
                         View3<const H>(q.data() + c.nope, {c.q_len, c.heads, c.rope}, qs),
                         MlaSeqView<H>{rows.data(), c.rank, c.rope, c.kv_len, w, {}},
                         View2<const H>(kv_b.data(), {std::int64_t(c.heads) * (c.nope + c.dv), c.rank}), scale,
                         reference::Causal{c.kv_len - c.q_len}, View3<double>(want.data(), {c.q_len, c.heads, c.dv}),
                         View2<double>(want_lse.data(), {c.q_len, c.heads}));
    // Decompressed keys/values and P are rounded to the storage type: allow a few roundings.
    TRANSMLA_CHECK_CLOSE(out_dev.download(), want, 3 * test::tolerance<H>());
    TRANSMLA_CHECK_CLOSE(lse_dev.download(), want_lse, test::tolerance<H>());
}

}  // namespace

TEST_CASE_TEMPLATE("cuda mla_naive_prefill matches the reference naive MLA", H, transmla::half, transmla::bfloat16) {
    for (int len : {1, 7, emulated ? 70 : 113}) run_case<H>({len, len, emulated ? 2 : 4, 512, 64, 128, 128});
    run_case<H>({37, emulated ? 100 : 300, 3, 512, 64, 128, 128});  // chunked prefill
    run_case<H>({emulated ? 70 : 113, emulated ? 70 : 113, 2, 120, 64, 128, 128});  // rank not a multiple of 32
    run_case<H>({50, 70, 3, 96, 64, 64, 128});      // (qk, v) = (128, 128)
}

TEST_CASE("cuda mla_naive_prefill rejects unsupported dims") {
    cuda::MlaPrefillParams<__half> p;
    p.q_len = 1, p.kv_len = 1, p.heads = 1, p.rank = 64, p.rope_dim = 32, p.nope_dim = 64, p.v_dim = 64;
    check_throws_containing([&] { cuda::mla_naive_prefill<__half>(p, nullptr, 0); },
                            "unsupported (nope_dim + rope_dim, v_dim) = (96, 64)");
    p.rope_dim = 64, p.v_dim = 128, p.rank = 60;
    check_throws_containing([&] { cuda::mla_naive_prefill<__half>(p, nullptr, 0); }, "rank (60) must be a multiple of 8");
}
