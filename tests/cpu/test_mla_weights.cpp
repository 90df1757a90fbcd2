// cpu::MlaWeights (cpu/mla_weights.hpp), the prepared weights of absorbed MLA decode, against
// reference::absorb_query / apply_uv (fp64) on fresh random inputs: f32, f16 and bf16 weights,
// fused and unfused W_O, strided activations, T = 1 and T > 1; no heap allocation per call for
// T = 1; the free helpers of cpu/mla.hpp agree; concurrent calls; every refused misuse.
//
// Eigen's run-time malloc check is switched on for this translation unit (its asserts count
// failures instead of aborting), and global operator new is counted, so a T = 1 call that
// allocates is seen either way.
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace mla_weights_test {
inline std::atomic<int> eigen_assert_failures{0};
inline std::atomic<bool> counting{false};
inline std::atomic<long> allocations{0};
}  // namespace mla_weights_test

#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x)                                                          \
    do {                                                                         \
        if (!(x)) ::mla_weights_test::eigen_assert_failures.fetch_add(1);        \
    } while (false)

// The replacements below pair malloc with free; GCC's inliner then sees free() on memory from
// operator new and warns, though that is exactly the pairing these replacements define.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(std::size_t n) {
    if (mla_weights_test::counting.load()) mla_weights_test::allocations.fetch_add(1);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

#include "cpu_test_util.hpp"

#include <string>
#include <thread>
#include <vector>

using namespace transmla;
using namespace transmla::test;

namespace {

/// Runs `f`, which must throw transmla::error whose message contains every one of `parts`.
template <class F>
void check_refused(F&& f, std::initializer_list<const char*> parts) {
    std::string msg;
    try {
        f();
    } catch (const transmla::error& e) {
        msg = e.what();
    }
    INFO("message: " << msg);
    REQUIRE(!msg.empty());
    for (const char* p : parts) CHECK(msg.find(p) != std::string::npos);
}

struct Shape {
    int H, dn, dv, r, dr;
    std::int64_t D, T;
};

/// y_ref[t][j] = Σ_k w_o[j][k] · o_ref[t][k] in double.
template <class Two>
std::vector<double> ref_output(const std::vector<Two>& w_o, const std::vector<double>& o_ref, std::int64_t T,
                               std::int64_t D, std::int64_t HV) {
    std::vector<double> y(std::size_t(T * D), 0.0);
    for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t j = 0; j < D; ++j) {
            double s = 0;
            for (std::int64_t k = 0; k < HV; ++k) s += to_double(w_o[std::size_t(j * HV + k)]) * o_ref[std::size_t(t * HV + k)];
            y[std::size_t(t * D + j)] = s;
        }
    return y;
}

/// Builds the prepared weights from random kv_b (Tw) and w_o (Two) and checks every method
/// against the fp64 reference. Queries and latents are strided views into wider buffers (as a
/// model's projection output is), and the y output has a row stride.
template <class Tw, class Two>
void run_case(const Shape& s, cpu::MlaFusion fusion) {
    const int H = s.H, dn = s.dn, dv = s.dv, r = s.r, dr = s.dr;
    const std::int64_t D = s.D, T = s.T, HV = std::int64_t(H) * dv;
    INFO("H=" << H << " dn=" << dn << " dv=" << dv << " r=" << r << " dr=" << dr << " D=" << D << " T=" << T
              << " kv_b=" << type_name<Tw>() << " w_o=" << type_name<Two>() << " fusion=" << cpu::mla_fusion_name(fusion));
    const auto kv_b = random_vector<Tw>(std::size_t(H) * (dn + dv) * r, 0.3);
    const auto w_o = random_vector<Two>(std::size_t(D * HV), 0.2);
    const View2<const Tw> W(kv_b.data(), {std::int64_t(H) * (dn + dv), r});
    const cpu::MlaWeights w(W, H, dn, dv, View2<const Two>(w_o.data(), {D, HV}), fusion);
    const bool want_fused = fusion == cpu::MlaFusion::fused ||
                            (fusion == cpu::MlaFusion::automatic && cpu::mla_output_cost(H, r, dv, D).fused_pays());
    CHECK(w.fused() == want_fused);
    CHECK(w.heads() == H);
    CHECK(w.rank() == r);
    CHECK(w.model_dim() == D);

    // Queries: one row [q_nope_0 | q_pe_0 | q_nope_1 | ...] per token, plus padding.
    const int qw = dn + dr;
    const std::int64_t qrow = std::int64_t(H) * qw + 3;
    const auto q = random_vector<float>(std::size_t(T * qrow), 1.0);
    const View3<const float> qn(q.data(), {T, H, dn}, {qrow, qw, 1}), qp(q.data() + dn, {T, H, dr}, {qrow, qw, 1});
    std::vector<float> qn_c(std::size_t(T) * H * dn), qp_c(std::size_t(T) * H * dr);
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < H; ++i) {
            std::copy_n(qn.row(t, i), dn, qn_c.data() + (std::size_t(t) * H + i) * dn);  // dn may be 0
            std::copy_n(qp.row(t, i), dr, qp_c.data() + (std::size_t(t) * H + i) * dr);
        }
    std::vector<float> qa(std::size_t(T) * H * (r + dr));
    w.absorb(qn, qp, View3<float>(qa.data(), {T, H, r + dr}));
    const auto ref_qa = reference::absorb_query(View3<const float>(qn_c.data(), {T, H, dn}),
                                                View3<const float>(qp_c.data(), {T, H, dr}), W, dv);
    {
        INFO("absorb");
        TRANSMLA_CHECK_CLOSE(qa, ref_qa, 3e-5);
    }

    // Latent outputs, heads padded apart (head stride r + 2).
    const std::int64_t hs = r + 2;
    const auto latbuf = random_vector<float>(std::size_t(T * H * hs), 1.0);
    const View3<const float> lat(latbuf.data(), {T, H, r}, {H * hs, hs, 1});
    std::vector<double> latd(std::size_t(T) * H * r);
    for (std::int64_t t = 0; t < T; ++t)
        for (int i = 0; i < H; ++i)
            for (int a = 0; a < r; ++a) latd[(std::size_t(t) * H + i) * r + a] = lat(t, i, a);
    std::vector<double> ref_o(std::size_t(T * HV));
    reference::apply_uv(View3<const double>(latd.data(), {T, H, r}), W, dn, View3<double>(ref_o.data(), {T, H, dv}));
    std::vector<float> o(std::size_t(T * HV));
    w.up_project(lat, View3<float>(o.data(), {T, H, dv}));
    {
        INFO("up_project to out");
        TRANSMLA_CHECK_CLOSE(o, ref_o, 3e-5);
    }

    const auto ref_y = ref_output(w_o, ref_o, T, D, HV);
    auto ws = w.make_workspace(T);
    const std::int64_t ys = D + 5;
    std::vector<float> ybuf(std::size_t(T * ys), -7.f), y(std::size_t(T * D));
    w.up_project(lat, View2<float>(ybuf.data(), {T, D}, {ys, 1}), ws);
    for (std::int64_t t = 0; t < T; ++t) std::copy_n(&ybuf[std::size_t(t * ys)], D, &y[std::size_t(t * D)]);
    {
        INFO("up_project to y, strided latent");
        TRANSMLA_CHECK_CLOSE(y, ref_y, 3e-5);
    }
    for (std::int64_t t = 0; t < T; ++t) CHECK(ybuf[std::size_t(t * ys + D)] == -7.f);  // padding untouched
    // The same from a contiguous latent (the fused path multiplies it in one GEMM).
    std::vector<float> latc(latd.begin(), latd.end()), y2(std::size_t(T * D));
    w.up_project(View3<const float>(latc.data(), {T, H, r}), View2<float>(y2.data(), {T, D}), ws);
    {
        INFO("up_project to y, contiguous latent");
        TRANSMLA_CHECK_CLOSE(y2, ref_y, 3e-5);
    }
}

const Shape shapes[] = {
    {4, 16, 12, 24, 8, 20, 1},     // r > d_v but D small: automatic fuses
    {3, 8, 16, 5, 4, 40, 1},       // r < d_v: fusing pays
    {9, 64, 64, 160, 32, 576, 1},  // SmolLM2 TransMLA 50 %: unfused
    {9, 64, 64, 88, 32, 576, 3},   // SmolLM2 TransMLA 31.25 %, a short prompt
    {2, 0, 8, 6, 2, 10, 2},        // no non-RoPE query part
    {5, 7, 3, 11, 6, 13, 4},       // odd sizes
};

}  // namespace

TEST_CASE("MlaWeights: the cost model decides fusion; users can force it") {
    const auto c = cpu::mla_output_cost(32, 512, 128, 4096);
    CHECK(c.fused == doctest::Approx(32.0 * 512 * 4096));
    CHECK(c.unfused == doctest::Approx(32.0 * 512 * 128 + 32.0 * 128 * 4096));
    CHECK(!c.fused_pays());
    CHECK(cpu::mla_output_cost(16, 32, 128, 2048).fused_pays());
    const int H = 3, dn = 4, dv = 8, r = 4;
    const std::int64_t D = 64;
    const auto kv_b = random_vector<float>(std::size_t(H) * (dn + dv) * r, 0.3);
    const auto w_o = random_vector<float>(std::size_t(D) * H * dv, 0.3);
    const View2<const float> W(kv_b.data(), {H * (dn + dv), r}), WO(w_o.data(), {D, H * dv});
    CHECK(cpu::MlaWeights(W, H, dn, dv, WO).fused());
    CHECK(!cpu::MlaWeights(W, H, dn, dv, WO, cpu::MlaFusion::unfused).fused());
    CHECK(cpu::MlaWeights(W, H, dn, dv, WO, cpu::MlaFusion::fused).fused());
    const cpu::MlaWeights no_o(W, H, dn, dv);
    CHECK(!no_o.has_output());
    CHECK(!no_o.fused());
    CHECK(no_o.bytes() == sizeof(float) * std::size_t(H) * (dn + dv) * r);
    CHECK(cpu::MlaWeights(W, H, dn, dv, WO, cpu::MlaFusion::fused).bytes() ==
          sizeof(float) * (std::size_t(H) * (dn + dv) * r + std::size_t(D) * H * r));
}

TEST_CASE("MlaWeights matches the fp64 reference: f32, f16, bf16 weights; fused and unfused") {
    for (const auto& s : shapes)
        for (const auto f : {cpu::MlaFusion::automatic, cpu::MlaFusion::fused, cpu::MlaFusion::unfused}) {
            run_case<float, float>(s, f);
            run_case<half, half>(s, f);
            run_case<bfloat16, bfloat16>(s, f);
        }
    run_case<half, float>(shapes[2], cpu::MlaFusion::automatic);
    run_case<bfloat16, half>(shapes[1], cpu::MlaFusion::fused);
}

TEST_CASE("MlaWeights: no heap allocation in a T = 1 call") {
    for (const auto& s : {shapes[2], Shape{32, 128, 128, 512, 64, 4096, 1}, Shape{3, 8, 16, 5, 4, 40, 1}})
        for (const auto f : {cpu::MlaFusion::fused, cpu::MlaFusion::unfused}) {
            if (s.H == 32 && f == cpu::MlaFusion::fused) continue;  // (a 32-head fused W_F takes a while to build)
            INFO("H=" << s.H << " r=" << s.r << " fusion=" << cpu::mla_fusion_name(f));
            const int H = s.H, dn = s.dn, dv = s.dv, r = s.r, dr = s.dr;
            const std::int64_t D = s.D;
            const auto kv_b = random_vector<bfloat16>(std::size_t(H) * (dn + dv) * r, 0.3);
            const auto w_o = random_vector<bfloat16>(std::size_t(D) * H * dv, 0.2);
            const cpu::MlaWeights w(View2<const bfloat16>(kv_b.data(), {std::int64_t(H) * (dn + dv), r}), H, dn, dv,
                                    View2<const bfloat16>(w_o.data(), {D, std::int64_t(H) * dv}), f);
            auto ws = w.make_workspace(1);
            const auto qn = random_vector<float>(std::size_t(H) * dn), qp = random_vector<float>(std::size_t(H) * dr);
            const auto lat = random_vector<float>(std::size_t(H) * r);
            std::vector<float> qa(std::size_t(H) * (r + dr)), o(std::size_t(H) * dv), y(static_cast<std::size_t>(D));
            const int before = mla_weights_test::eigen_assert_failures.load();
            mla_weights_test::allocations = 0;
            Eigen::internal::set_is_malloc_allowed(false);
            mla_weights_test::counting = true;
            for (int rep = 0; rep < 3; ++rep) {
                w.absorb(View3<const float>(qn.data(), {1, H, dn}), View3<const float>(qp.data(), {1, H, dr}),
                         View3<float>(qa.data(), {1, H, r + dr}));
                w.up_project(View3<const float>(lat.data(), {1, H, r}), View3<float>(o.data(), {1, H, dv}));
                w.up_project(View3<const float>(lat.data(), {1, H, r}), View2<float>(y.data(), {1, D}), ws);
            }
            mla_weights_test::counting = false;
            Eigen::internal::set_is_malloc_allowed(true);
            CHECK(mla_weights_test::allocations.load() == 0);
            CHECK(mla_weights_test::eigen_assert_failures.load() == before);
            double sum = 0;
            for (float v : y) sum += std::abs(v);
            CHECK(sum > 0);  // it did compute something
        }
}

TEST_CASE("MlaWeights: concurrent calls with a workspace each agree with a serial call") {
    const Shape s{6, 16, 16, 40, 8, 96, 2};
    const int H = s.H, dn = s.dn, dv = s.dv, r = s.r;
    const std::int64_t D = s.D, T = s.T;
    const auto kv_b = random_vector<half>(std::size_t(H) * (dn + dv) * r, 0.3);
    const auto w_o = random_vector<float>(std::size_t(D) * H * dv, 0.2);
    const cpu::MlaWeights w(View2<const half>(kv_b.data(), {std::int64_t(H) * (dn + dv), r}), H, dn, dv,
                            View2<const float>(w_o.data(), {D, std::int64_t(H) * dv}));
    const auto lat = random_vector<float>(std::size_t(T) * H * r);
    std::vector<float> serial(std::size_t(T * D));
    auto ws0 = w.make_workspace(T);
    w.up_project(View3<const float>(lat.data(), {T, H, r}), View2<float>(serial.data(), {T, D}), ws0);
    std::vector<std::vector<float>> got(2, std::vector<float>(std::size_t(T * D)));
    std::vector<std::thread> th;
    for (int k = 0; k < 2; ++k)
        th.emplace_back([&, k] {
            auto ws = w.make_workspace(T);
            for (int rep = 0; rep < 50; ++rep)
                w.up_project(View3<const float>(lat.data(), {T, H, r}), View2<float>(got[std::size_t(k)].data(), {T, D}), ws);
        });
    for (auto& t : th) t.join();
    CHECK(got[0] == serial);
    CHECK(got[1] == serial);
}

TEST_CASE("The free helpers absorb_query / apply_uv / apply_uv_o equal the prepared weights") {
    const int H = 4, dn = 16, dv = 12, r = 24, dr = 8;
    const std::int64_t D = 20, T = 2;
    const auto kv_b = random_vector<half>(std::size_t(H) * (dn + dv) * r, 0.3);
    const auto w_o = random_vector<half>(std::size_t(D) * H * dv, 0.2);
    const View2<const half> W(kv_b.data(), {H * (dn + dv), r}), WO(w_o.data(), {D, H * dv});
    const cpu::MlaWeights w(W, H, dn, dv, WO, cpu::MlaFusion::unfused);
    const auto qn = random_vector<float>(std::size_t(T) * H * dn), qp = random_vector<float>(std::size_t(T) * H * dr);
    const auto lat = random_vector<float>(std::size_t(T) * H * r);
    std::vector<float> a1(std::size_t(T) * H * (r + dr)), a2(a1.size()), o1(std::size_t(T) * H * dv), o2(o1.size());
    std::vector<float> y1(std::size_t(T * D)), y2(y1.size());
    const View3<const float> qnv(qn.data(), {T, H, dn}), qpv(qp.data(), {T, H, dr}), lv(lat.data(), {T, H, r});
    cpu::absorb_query(qnv, qpv, W, dv, View3<float>(a1.data(), {T, H, r + dr}));
    w.absorb(qnv, qpv, View3<float>(a2.data(), {T, H, r + dr}));
    CHECK(a1 == a2);
    cpu::apply_uv(lv, W, dn, View3<float>(o1.data(), {T, H, dv}));
    w.up_project(lv, View3<float>(o2.data(), {T, H, dv}));
    CHECK(o1 == o2);
    cpu::apply_uv_o(lv, W, dn, WO, View2<float>(y1.data(), {T, D}));
    auto ws = w.make_workspace(T);
    w.up_project(lv, View2<float>(y2.data(), {T, D}), ws);
    CHECK(y1 == y2);
}

TEST_CASE("MlaWeights refuses misuse with transmla::error naming what and where") {
    const int H = 3, dn = 4, dv = 5, r = 6, dr = 2;
    const std::int64_t D = 7, T = 2;
    const auto kv_b = random_vector<float>(std::size_t(H) * (dn + dv) * r, 0.3);
    const auto w_o = random_vector<float>(std::size_t(D) * H * dv, 0.2);
    const View2<const float> W(kv_b.data(), {H * (dn + dv), r}), WO(w_o.data(), {D, H * dv});
    // Construction.
    check_refused([&] { (void)cpu::MlaWeights(View2<const float>(kv_b.data(), {H * (dn + dv) - 1, r}), H, dn, dv); },
                  {"MlaWeights", "kv_b", "[27][r]", "got [26][6]"});
    check_refused([&] { (void)cpu::MlaWeights(W, H, dn + 1, dv); }, {"MlaWeights", "kv_b"});
    check_refused([&] { (void)cpu::MlaWeights(View2<const float>(kv_b.data(), {H * (dn + dv), 0}), H, dn, dv); },
                  {"MlaWeights", "r >= 1"});
    check_refused([&] { (void)cpu::MlaWeights(View2<const float>(nullptr, {H * (dn + dv), r}), H, dn, dv); },
                  {"MlaWeights", "null view"});
    check_refused([&] { (void)cpu::MlaWeights(W, 0, dn, dv); }, {"MlaWeights", "heads=0"});
    check_refused([&] { (void)cpu::MlaWeights(W, H, dn, 0); }, {"MlaWeights", "d_v=0"});
    check_refused([&] { (void)cpu::MlaWeights(W, H, -1, dv); }, {"MlaWeights", "d_nope=-1"});
    check_refused([&] { (void)cpu::MlaWeights(W, H, dn, dv, View2<const float>(w_o.data(), {D, H * dv - 1})); },
                  {"MlaWeights", "w_o", "got [7][14]"});
    check_refused([&] { (void)cpu::MlaWeights(W, H, dn, dv, View2<const float>(w_o.data(), {0, H * dv})); },
                  {"MlaWeights", "w_o"});

    const cpu::MlaWeights w(W, H, dn, dv, WO, cpu::MlaFusion::unfused);
    const cpu::MlaWeights wf(W, H, dn, dv, WO, cpu::MlaFusion::fused);
    const cpu::MlaWeights no_o(W, H, dn, dv);
    std::vector<float> buf(1000, 1.f);
    const View3<const float> qn(buf.data(), {T, H, dn}), qp(buf.data(), {T, H, dr}), lat(buf.data(), {T, H, r});
    std::vector<float> out(1000);
    // absorb
    check_refused([&] { w.absorb(View3<const float>(buf.data(), {T, H, dn + 1}), qp, View3<float>(out.data(), {T, H, r + dr})); },
                  {"MlaWeights::absorb", "q_nope", "extent 5 in dim 2, expected 4"});
    check_refused([&] { w.absorb(qn, View3<const float>(buf.data(), {T + 1, H, dr}), View3<float>(out.data(), {T, H, r + dr})); },
                  {"MlaWeights::absorb", "q_pe", "dim 0"});
    check_refused([&] { w.absorb(qn, qp, View3<float>(out.data(), {T, H, r + dr + 1})); },
                  {"MlaWeights::absorb", "q_abs", "expected 8"});
    check_refused([&] { w.absorb(View3<const float>(buf.data(), {T, H, dn}, {H * dn * 2, dn * 2, 2}), qp,
                                 View3<float>(out.data(), {T, H, r + dr})); },
                  {"MlaWeights::absorb", "q_nope", "unit stride"});
    check_refused([&] { w.absorb(View3<const float>(nullptr, {T, H, dn}), qp, View3<float>(out.data(), {T, H, r + dr})); },
                  {"MlaWeights::absorb", "q_nope", "null"});
    // up_project to out
    check_refused([&] { w.up_project(View3<const float>(buf.data(), {T, H + 1, r}), View3<float>(out.data(), {T, H, dv})); },
                  {"MlaWeights::up_project", "latent", "dim 1"});
    check_refused([&] { w.up_project(lat, View3<float>(out.data(), {T, H, dv + 1})); },
                  {"MlaWeights::up_project", "out", "expected 5"});
    // up_project to y
    auto ws = w.make_workspace(T);
    check_refused([&] { w.up_project(lat, View2<float>(out.data(), {T, D + 1}), ws); },
                  {"MlaWeights::up_project", "y", "expected 7"});
    auto small = w.make_workspace(T - 1);
    check_refused([&] { w.up_project(lat, View2<float>(out.data(), {T, D}), small); },
                  {"MlaWeights::up_project", "workspace", "needs 2 tokens"});
    auto other = wf.make_workspace(T);  // fused: H·r floats per token, not H·d_v
    check_refused([&] { w.up_project(lat, View2<float>(out.data(), {T, D}), other); },
                  {"MlaWeights::up_project", "workspace"});
    cpu::MlaWorkspace none;
    check_refused([&] { w.up_project(lat, View2<float>(out.data(), {T, D}), none); },
                  {"MlaWeights::up_project", "workspace"});
    auto ws_no = no_o.make_workspace(T);
    check_refused([&] { no_o.up_project(lat, View2<float>(out.data(), {T, D}), ws_no); },
                  {"MlaWeights::up_project", "without W_O"});
    const cpu::MlaWeights empty;
    check_refused([&] { empty.absorb(qn, qp, View3<float>(out.data(), {T, H, r + dr})); },
                  {"MlaWeights::absorb", "empty"});
    check_refused([&] { (void)cpu::MlaWorkspace(w, -1); }, {"MlaWorkspace", "max_tokens"});
    // T = 0 is a no-op.
    w.absorb(View3<const float>(buf.data(), {0, H, dn}), View3<const float>(buf.data(), {0, H, dr}),
             View3<float>(out.data(), {0, H, r + dr}));
    w.up_project(View3<const float>(buf.data(), {0, H, r}), View2<float>(out.data(), {0, D}), small);
}
