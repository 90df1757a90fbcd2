// CUDA tensor-core prefill against reference::gqa_attention: f16 and bf16, head dims 64 and 128,
// groups 1…8, odd lengths (1, 7, 113, 1025), chunked prefill (queries at an offset into a longer
// cache), non-causal, strided tensors. Outputs poisoned with NaN; padding must stay untouched.
#include "cuda_test_util.hpp"
#include "transmla/reference/attention.hpp"

#include <array>
#include <cmath>
#include <vector>

namespace {

using namespace transmla;
using namespace transmla::test::cuda;

struct PrefillCase {
    int q_len, kv_len, n_q, n_kv, d;
    std::int64_t q_offset;  // −1: kv_len − q_len
    bool causal, padded;
};

template <class H>
void run_case(const PrefillCase& c) {
    using C = cuda_t<H>;
    CAPTURE(c.q_len);
    CAPTURE(c.kv_len);
    CAPTURE(c.n_q);
    CAPTURE(c.n_kv);
    CAPTURE(c.d);
    CAPTURE(c.q_offset);
    CAPTURE(c.causal);
    CAPTURE(c.padded);
    const int d = c.d, pad = c.padded ? 8 : 0;
    // [tokens][heads][d] with optional gaps (multiples of 8 keep rows 16-byte aligned).
    const std::int64_t qsh = d + pad, qst = c.n_q * qsh + pad;
    const std::int64_t ksh = d + 2 * pad, kst = c.n_kv * ksh;
    const std::int64_t osh = d + pad / 2, ost = c.n_q * osh + pad;
    auto filled = [](std::int64_t n) { return std::vector<H>(std::size_t(n), nan_value<H>()); };
    std::vector<H> q = filled(c.q_len * qst), k = filled(c.kv_len * kst), v = filled(c.kv_len * kst);
    for (int t = 0; t < c.q_len; ++t)
        for (int i = 0; i < c.n_q; ++i)
            for (int e = 0; e < d; ++e) q[std::size_t(t * qst + i * qsh + e)] = from_double<H>(test::normal());
    for (int t = 0; t < c.kv_len; ++t)
        for (int i = 0; i < c.n_kv; ++i)
            for (int e = 0; e < d; ++e) {
                k[std::size_t(t * kst + i * ksh + e)] = from_double<H>(test::normal());
                v[std::size_t(t * kst + i * ksh + e)] = from_double<H>(test::normal());
            }
    DeviceBuffer<H> q_dev(q), k_dev(k), v_dev(v), out_dev(std::size_t(c.q_len * ost));
    DeviceBuffer<float> lse_dev(std::size_t(c.q_len) * c.n_q);
    out_dev.poison();
    lse_dev.poison();

    const double scale = 1.0 / std::sqrt(double(d));
    cuda::PrefillParams<C> p;
    p.q = q_dev.template as<const C>(), p.q_stride_t = qst, p.q_stride_h = qsh;
    p.k = k_dev.template as<const C>(), p.k_stride_t = kst, p.k_stride_h = ksh;
    p.v = v_dev.template as<const C>(), p.v_stride_t = kst, p.v_stride_h = ksh;
    p.out = out_dev.template as<C>(), p.out_stride_t = ost, p.out_stride_h = osh;
    p.lse = lse_dev.get();
    p.q_len = c.q_len, p.kv_len = c.kv_len, p.n_q = c.n_q, p.n_kv = c.n_kv, p.qk_dim = d, p.v_dim = d;
    p.q_offset = c.q_offset, p.causal = c.causal, p.scale = float(scale);
    cuda::attention_prefill<C>(p);
    sync_checked();

    std::vector<double> want(std::size_t(c.q_len) * c.n_q * d), want_lse(std::size_t(c.q_len) * c.n_q);
    const GqaSeqView<H> kv{k.data(), v.data(), c.n_kv, d, c.kv_len, kst, ksh, {}};
    reference::Causal causal;
    causal.q_offset = c.q_offset < 0 ? c.kv_len - c.q_len : c.q_offset;
    causal.causal = c.causal;
    reference::gqa_attention(View3<const H>(q.data(), {c.q_len, c.n_q, d}, {qst, qsh, 1}), kv, scale, causal,
                             View3<double>(want.data(), {c.q_len, c.n_q, d}), View2<double>(want_lse.data(), {c.q_len, c.n_q}));
    const auto out = out_dev.download();
    std::vector<H> got;
    bool padding_intact = true;
    for (std::int64_t o = 0; o < c.q_len * ost; ++o) {
        const std::int64_t rem = o % ost, i = rem / osh, e = rem % osh;
        if (i < c.n_q && e < d) got.push_back(out[std::size_t(o)]);
        else padding_intact = padding_intact && bits_of(out[std::size_t(o)]) == 0xFFFF;
    }
    CHECK(padding_intact);
    // P is rounded to the storage type before P·V on tensor cores.
    TRANSMLA_CHECK_CLOSE(got, want, 2 * test::tolerance<H>());
    TRANSMLA_CHECK_CLOSE(lse_dev.download(), want_lse, 1e-4);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda attention_prefill matches the reference (causal, groups, odd lengths)", H, transmla::half,
                   transmla::bfloat16) {
    const std::vector<std::array<int, 2>> groups =
        emulated ? std::vector<std::array<int, 2>>{{4, 4}, {6, 3}, {8, 1}}
                 : std::vector<std::array<int, 2>>{{4, 4}, {6, 3}, {8, 2}, {8, 1}};
    for (int d : {64, 128})
        for (const auto& [nq, nkv] : groups)
            for (int len : {1, 7, emulated ? 70 : 113}) run_case<H>({len, len, nq, nkv, d, -1, true, false});
}

TEST_CASE_TEMPLATE("cuda attention_prefill: long, chunked, non-causal and strided", H, transmla::half,
                   transmla::bfloat16) {
    const int long_len = emulated ? 130 : 1025, kv = emulated ? 150 : 300;
    for (int d : {64, 128}) {
        run_case<H>({long_len, long_len, 2, 1, d, -1, true, false});  // several query blocks and key tiles
        run_case<H>({100, kv, 4, 2, d, -1, true, true});              // chunked prefill: queries at the end
        run_case<H>({65, kv, 4, 2, d, 10, true, false});              // explicit offset: later keys invisible
        run_case<H>({50, 77, 8, 2, d, -1, false, true});              // full attention
    }
}

TEST_CASE("cuda attention_prefill rejects unsupported dims and bad offsets") {
    DeviceBuffer<transmla::half> buf(1 << 14);
    cuda::PrefillParams<__half> p;
    p.q = p.k = p.v = buf.as<const __half>();
    p.out = buf.as<__half>();
    p.q_len = 4, p.kv_len = 4, p.n_q = 2, p.n_kv = 2, p.qk_dim = 96, p.v_dim = 96, p.scale = 0.1f;
    p.q_stride_t = p.k_stride_t = p.v_stride_t = p.out_stride_t = 192;
    p.q_stride_h = p.k_stride_h = p.v_stride_h = p.out_stride_h = 96;
    check_throws_containing([&] { cuda::attention_prefill<__half>(p); },
                            "unsupported (qk_dim, v_dim) = (96, 96); compiled: (64, 64), (128, 128), (192, 128)");
    p.q_len = 5;
    check_throws_containing([&] { cuda::attention_prefill<__half>(p); }, "needs at least as many keys");
    p.q_len = 4, p.n_kv = 3;
    check_throws_containing([&] { cuda::attention_prefill<__half>(p); }, "n_q must be a multiple of n_kv");
}
