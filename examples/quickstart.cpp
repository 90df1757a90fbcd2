// quickstart — the README's embedding example: a Llama-3-8B-shaped GQA decode step on the CPU.
#include <transmla/cpu/cpu.hpp>
#include <transmla/transmla.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
    using namespace transmla;
    constexpr GqaShape<32, 8, 128> shape;  // illegal shapes (e.g. 32 q / 6 kv heads) fail to compile
    const int nq = shape.n_q(), nkv = shape.n_kv(), d = shape.head_dim();
    GqaCache<half> cache(nkv, d, /*capacity=*/4096);
    RopeTable rope(RopeSpec{.base = 500000.0}, d, /*max_positions=*/4096);

    std::vector<float> q(nq * d), k(nkv * d), v(nkv * d), out(nq * d), lse(nq);
    for (std::int64_t pos = 0; pos < 1000; ++pos) {   // one decode step per token
        for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.01f * float(i + pos));
        for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.02f * float(i * pos)), v[i] = 0.001f * float(i);
        const std::int64_t at[] = {pos};
        rope.apply(View3<float>(q.data(), {1, nq, d}), at);       // rotate q and k at their position
        rope.apply(View3<float>(k.data(), {1, nkv, d}), at);
        cache.append(View3<const float>(k.data(), {1, nkv, d}), View3<const float>(v.data(), {1, nkv, d}));
        cpu::gqa_decode(View3<const float>(q.data(), {1, nq, d}), cache.view(), 1.0f / std::sqrt(float(d)),
                        View3<float>(out.data(), {1, nq, d}), View2<float>(lse.data(), {1, nq}));
    }
    std::printf("decoded 1000 tokens; head 0: lse %.4f, out[d-1] %.4f\n", lse[0], out[d - 1]);
}
