// NaN and Inf in queries, keys and values on the CUDA kernels (GQA decode split and unsplit, with
// one and several query tokens; absorbed MLA decode; causal prefill): each must give what
// reference/ gives — a NaN row (out and lse) exactly where a logit the row sees is not finite, NaN
// elements where a value it sees is NaN, the ordinary result everywhere else. A bad value in a key
// past a row's causal end must not reach that row (the tensor cores compute 0·NaN = NaN, so the
// kernels take an exact path for such tiles); a poisoned row never comes out as "no keys".
#include "cuda_test_util.hpp"
#include "nonfinite_check.hpp"
#include "transmla/reference/reference.hpp"

#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace transmla;
using namespace transmla::test;
using namespace transmla::test::cuda;
namespace cuda = transmla::cuda;

/// The bad key: a random one, or the last one (seen only by the last query token).
std::int64_t bad_key(std::int64_t len, bool last) { return last ? len - 1 : uniform_int(0, len - 1); }

template <class H>
void gqa_case(Spot spot, int q_len, std::int64_t chunk, bool last) {
    using C = cuda_t<H>;
    const int n_q = 4, n_kv = 2, g = n_q / n_kv, d = 64;
    const std::int64_t len = emulated ? 45 : 300, ts = std::int64_t(n_kv) * d;
    std::vector<std::vector<H>> K{random_vector<H>(std::size_t(len * ts))}, V{random_vector<H>(std::size_t(len * ts))};
    auto q = random_vector<H>(std::size_t(q_len) * n_q * d);
    const std::int64_t t = uniform_int(0, q_len - 1), j = bad_key(len, last);
    const int i = int(uniform_int(0, n_q - 1)), h = int(uniform_int(0, n_kv - 1)), e = int(uniform_int(0, d - 1));
    H* k = K[0].data() + j * ts + h * d;
    switch (spot) {
        case Spot::q_nan: q[std::size_t((t * n_q + i) * d + e)] = from_double<H>(nan_v); break;
        case Spot::q_inf: q[std::size_t((t * n_q + i) * d + e)] = from_double<H>(inf_v); break;
        case Spot::k_nan: k[e] = from_double<H>(nan_v); break;
        case Spot::k_neg_inf: k[e] = from_double<H>(-inf_v); break;
        case Spot::k_rope_inf: k[d - 1] = from_double<H>(inf_v); break;
        case Spot::inf_times_zero:
            k[e] = from_double<H>(inf_v);
            q[std::size_t((t * n_q + h * g) * d + e)] = from_double<H>(0.0);
            break;
        case Spot::v_nan: V[0][std::size_t(j * ts + h * d + e)] = from_double<H>(nan_v); break;
    }
    const HostLayout hl = make_layout({len}, ts, 0);
    DeviceBuffer<H> k_dev(hl.scatter(K)), v_dev(hl.scatter(V)), q_dev(q), out_dev(q.size());
    DeviceLayout dl(hl);
    DeviceBuffer<float> lse_dev(std::size_t(q_len) * n_q);
    out_dev.poison();
    lse_dev.poison();
    const double scale = 1.0 / std::sqrt(double(d));
    cuda::GqaDecodeParams<C> p;
    p.q = q_dev.template as<const C>();
    p.q_stride_b = std::int64_t(q_len) * n_q * d, p.q_stride_t = n_q * d, p.q_stride_h = d;
    p.k = k_dev.template as<const C>();
    p.v = v_dev.template as<const C>();
    p.head_stride = d;
    p.layout = dl.layout;
    p.out = out_dev.template as<C>();
    p.out_stride_b = p.q_stride_b, p.out_stride_t = p.q_stride_t, p.out_stride_h = d;
    p.lse = lse_dev.get();
    p.batch = 1, p.q_len = q_len, p.n_q = n_q, p.n_kv = n_kv, p.head_dim = d;
    p.scale = float(scale);
    const auto plan = cuda::plan_gqa_decode(1, q_len, n_q, n_kv, d, len, 0, chunk);
    DeviceBuffer<unsigned char> ws(plan.workspace_bytes());
    cuda::gqa_decode<C>(p, plan, ws.get(), ws.size());
    sync_checked();

    std::vector<double> ref(q.size()), ref_lse(std::size_t(q_len) * n_q);
    const GqaSeqView<H> kv{K[0].data(), V[0].data(), n_kv, d, len, ts, d, {}};
    reference::gqa_attention(View3<const H>(q.data(), {q_len, n_q, d}), kv, scale, reference::Causal{len - q_len},
                             View3<double>(ref.data(), {q_len, n_q, d}), View2<double>(ref_lse.data(), {q_len, n_q}));
    std::ostringstream what;
    what << "cuda gqa_decode q_len=" << q_len << " splits=" << plan.splits << ": " << spot_name(spot) << " (query token "
         << t << " head " << i << ", key " << j << " kv head " << h << ", element " << e << ")";
    check_like_reference(out_dev.download(), lse_dev.download(), ref, ref_lse, test::tolerance<H>(), what.str());
}

template <class H>
void mla_case(Spot spot, int q_len, bool last) {
    using C = cuda_t<H>;
    const int heads = 16, r = 128, dr = 64, w = r + dr;
    const std::int64_t len = emulated ? 45 : 300;
    std::vector<std::vector<H>> rows{random_vector<H>(std::size_t(len * w))};
    auto q = random_vector<H>(std::size_t(q_len) * heads * w);
    const std::int64_t t = uniform_int(0, q_len - 1), j = bad_key(len, last);
    const int i = int(uniform_int(0, heads - 1)), e = int(uniform_int(0, r - 1)), er = r + int(uniform_int(0, dr - 1));
    H* c = rows[0].data() + j * w;
    switch (spot) {
        case Spot::q_nan: q[std::size_t((t * heads + i) * w + e)] = from_double<H>(nan_v); break;
        case Spot::q_inf: q[std::size_t((t * heads + i) * w + er)] = from_double<H>(inf_v); break;
        case Spot::k_nan:
        case Spot::v_nan: c[e] = from_double<H>(nan_v); break;  // the latent is key and value
        case Spot::k_neg_inf: c[e] = from_double<H>(-inf_v); break;
        case Spot::k_rope_inf: c[er] = from_double<H>(inf_v); break;
        case Spot::inf_times_zero:
            c[er] = from_double<H>(inf_v);
            q[std::size_t((t * heads + i) * w + er)] = from_double<H>(0.0);
            break;
    }
    const HostLayout hl = make_layout({len}, w, 0);
    DeviceBuffer<H> cache_dev(hl.scatter(rows)), q_dev(q), out_dev(std::size_t(q_len) * heads * r);
    DeviceLayout dl(hl);
    DeviceBuffer<float> lse_dev(std::size_t(q_len) * heads);
    out_dev.poison();
    lse_dev.poison();
    const double scale = 1.0 / std::sqrt(192.0);
    cuda::MlaDecodeParams<C> p;
    p.q = q_dev.template as<const C>();
    p.q_stride_b = std::int64_t(q_len) * heads * w, p.q_stride_t = heads * w, p.q_stride_h = w;
    p.cache = cache_dev.template as<const C>();
    p.layout = dl.layout;
    p.out = out_dev.template as<C>();
    p.out_stride_b = std::int64_t(q_len) * heads * r, p.out_stride_t = heads * r, p.out_stride_h = r;
    p.lse = lse_dev.get();
    p.batch = 1, p.q_len = q_len, p.heads = heads, p.rank = r, p.rope_dim = dr;
    p.scale = float(scale);
    const auto plan = cuda::plan_mla_decode(1, q_len, heads, r, len, 0, 32);
    DeviceBuffer<unsigned char> ws(plan.workspace_bytes());
    cuda::mla_decode<C>(p, plan, ws.get(), ws.size());
    sync_checked();

    std::vector<double> ref(std::size_t(q_len) * heads * r), ref_lse(std::size_t(q_len) * heads);
    const MlaSeqView<H> cv{rows[0].data(), r, dr, len, w, {}};
    reference::mla_latent_attention(View3<const H>(q.data(), {q_len, heads, w}), cv, scale,
                                    reference::Causal{len - q_len}, View3<double>(ref.data(), {q_len, heads, r}),
                                    View2<double>(ref_lse.data(), {q_len, heads}));
    std::ostringstream what;
    what << "cuda mla_decode q_len=" << q_len << " splits=" << plan.splits << ": " << spot_name(spot) << " (query token "
         << t << " head " << i << ", key " << j << ")";
    check_like_reference(out_dev.download(), lse_dev.download(), ref, ref_lse, 2 * test::tolerance<H>(), what.str());
}

template <class H>
void prefill_case(Spot spot, bool last) {
    using C = cuda_t<H>;
    const int n_q = 4, n_kv = 2, g = n_q / n_kv, d = 64, len = emulated ? 70 : 200;
    const std::int64_t ts = std::int64_t(n_kv) * d, qs = std::int64_t(n_q) * d;
    auto q = random_vector<H>(std::size_t(len * qs)), k = random_vector<H>(std::size_t(len * ts)),
         v = random_vector<H>(std::size_t(len * ts));
    // the bad key inside the first query block's diagonal tile (keys 0..63), where rows differ in
    // what they see, or the last key
    const std::int64_t t = uniform_int(0, len - 1), j = last ? len - 1 : uniform_int(0, 63);
    const int i = int(uniform_int(0, n_q - 1)), h = int(uniform_int(0, n_kv - 1)), e = int(uniform_int(0, d - 1));
    H* kp = k.data() + j * ts + h * d;
    switch (spot) {
        case Spot::q_nan: q[std::size_t(t * qs + i * d + e)] = from_double<H>(nan_v); break;
        case Spot::q_inf: q[std::size_t(t * qs + i * d + e)] = from_double<H>(inf_v); break;
        case Spot::k_nan: kp[e] = from_double<H>(nan_v); break;
        case Spot::k_neg_inf: kp[e] = from_double<H>(-inf_v); break;
        case Spot::k_rope_inf: kp[d - 1] = from_double<H>(inf_v); break;
        case Spot::inf_times_zero:
            kp[e] = from_double<H>(inf_v);
            q[std::size_t(t * qs + h * g * d + e)] = from_double<H>(0.0);
            break;
        case Spot::v_nan: v[std::size_t(j * ts + h * d + e)] = from_double<H>(nan_v); break;
    }
    DeviceBuffer<H> q_dev(q), k_dev(k), v_dev(v), out_dev(q.size());
    DeviceBuffer<float> lse_dev(std::size_t(len) * n_q);
    out_dev.poison();
    lse_dev.poison();
    const double scale = 1.0 / std::sqrt(double(d));
    cuda::PrefillParams<C> p;
    p.q = q_dev.template as<const C>(), p.q_stride_t = qs, p.q_stride_h = d;
    p.k = k_dev.template as<const C>(), p.k_stride_t = ts, p.k_stride_h = d;
    p.v = v_dev.template as<const C>(), p.v_stride_t = ts, p.v_stride_h = d;
    p.out = out_dev.template as<C>(), p.out_stride_t = qs, p.out_stride_h = d;
    p.lse = lse_dev.get();
    p.q_len = len, p.kv_len = len, p.n_q = n_q, p.n_kv = n_kv, p.qk_dim = d, p.v_dim = d;
    p.q_offset = 0, p.causal = true, p.scale = float(scale);
    cuda::attention_prefill<C>(p);
    sync_checked();

    std::vector<double> ref(q.size()), ref_lse(std::size_t(len) * n_q);
    const GqaSeqView<H> kv{k.data(), v.data(), n_kv, d, len, ts, d, {}};
    reference::gqa_attention(View3<const H>(q.data(), {len, n_q, d}), kv, scale, reference::Causal{0},
                             View3<double>(ref.data(), {len, n_q, d}), View2<double>(ref_lse.data(), {len, n_q}));
    std::ostringstream what;
    what << "cuda attention_prefill causal: " << spot_name(spot) << " (query token " << t << " head " << i << ", key "
         << j << " kv head " << h << ", element " << e << ")";
    check_like_reference(out_dev.download(), lse_dev.download(), ref, ref_lse, 2 * test::tolerance<H>(), what.str());
}

constexpr Spot all_spots[] = {Spot::q_nan,     Spot::q_inf,          Spot::k_nan, Spot::k_neg_inf,
                              Spot::k_rope_inf, Spot::inf_times_zero, Spot::v_nan};

}  // namespace

TEST_CASE_TEMPLATE("cuda gqa_decode: NaN and Inf propagate as the reference's", H, transmla::half, transmla::bfloat16) {
    for (Spot spot : all_spots)
        for (int q_len : {1, 3})
            for (std::int64_t chunk : {std::int64_t(16), std::int64_t(4096)})
                for (bool last : {false, true}) gqa_case<H>(spot, q_len, chunk, last);
}

TEST_CASE_TEMPLATE("cuda mla_decode: NaN and Inf propagate as the reference's", H, transmla::half, transmla::bfloat16) {
    for (Spot spot : all_spots)
        for (int q_len : {1, 4})
            for (bool last : {false, true}) mla_case<H>(spot, q_len, last);
}

TEST_CASE_TEMPLATE("cuda attention_prefill: NaN and Inf propagate as the reference's", H, transmla::half,
                   transmla::bfloat16) {
    for (Spot spot : all_spots)
        for (bool last : {false, true}) prefill_case<H>(spot, last);
}
