// Uses the installed headers: a static shape, a cache, RoPE and the reference attention.
#include <transmla/cpu/cpu.hpp>
#include <transmla/transmla.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

int main() {
    using namespace transmla;
    constexpr GqaShape<4, 2, 8> shape;
    GqaCache<half> cache(shape.n_kv(), shape.head_dim(), 4);
    std::vector<float> kv(3 * shape.kv_width());
    for (std::size_t i = 0; i < kv.size(); ++i) kv[i] = std::sin(0.1f * float(i));
    cache.append(View3<const float>(kv.data(), {3, shape.n_kv(), shape.head_dim()}),
                 View3<const float>(kv.data(), {3, shape.n_kv(), shape.head_dim()}));
    std::vector<float> q(shape.n_q() * shape.head_dim(), 0.5f);
    RopeTable(RopeSpec{}, shape.head_dim(), 16).apply(View3<float>(q.data(), {1, shape.n_q(), shape.head_dim()}),
                                                      std::vector<std::int64_t>{2});
    std::vector<double> out(q.size()), lse(shape.n_q());
    reference::gqa_decode(View3<const float>(q.data(), {1, shape.n_q(), shape.head_dim()}), cache.view(), 0.35,
                          View3<double>(out.data(), {1, shape.n_q(), shape.head_dim()}),
                          View2<double>(lse.data(), {1, shape.n_q()}));
    if (!std::isfinite(lse[0])) return 1;
    // the CPU kernels, dispatched at run time to the best instruction set
    std::vector<float> fast(q.size());
    cpu::gqa_decode(View3<const float>(q.data(), {1, shape.n_q(), shape.head_dim()}), cache.view(), 0.35f,
                    View3<float>(fast.data(), {1, shape.n_q(), shape.head_dim()}));
    for (std::size_t i = 0; i < fast.size(); ++i)
        if (std::abs(fast[i] - out[i]) > 1e-4 * (1 + std::abs(out[i]))) return 1;
    std::printf("consumer ok: group %d, lse[0] = %.6f, CPU kernels on %s\n", shape.group(), lse[0],
                std::string(cpu::isa_name(cpu::best_isa())).c_str());
    return 0;
}
