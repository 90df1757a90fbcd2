// mla_decode — the README's second embedding example: absorbed MLA decode on the CPU for a
// DeepSeek-V2-Lite-shaped attention layer (16 heads, latent r = 512, RoPE key d_r = 64,
// d_nope = d_v = 128). The cache holds one row [c | k_pe] per token; each step attends in latent
// space with the query [W_UKᵀ q_nope | q_pe] and maps the latent outputs back through W_UV and W_O.
#include <transmla/cpu/cpu.hpp>
#include <transmla/transmla.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
    using namespace transmla;
    constexpr MlaShape<16, 512, 64, 128> shape;  // heads, r, d_r, d_nope (d_v = d_nope)
    const int H = shape.heads(), r = shape.rank(), dr = shape.rope_dim(), dn = shape.nope_dim(), dv = shape.v_dim();
    const int D = 2048;  // model width
    MlaCache<bfloat16> cache(r, dr, /*capacity=*/4096);
    RopeTable rope(RopeSpec{.pairing = RopePairing::interleaved}, dr, /*max_positions=*/4096);  // as DeepSeek

    // Weights (random here): kv_b = [W_UK^i ; W_UV^i] per head, [H·(d_nope + d_v)][r]; W_O [D][H·d_v].
    std::vector<float> kv_b(std::size_t(H) * (dn + dv) * r), w_o(std::size_t(D) * H * dv);
    for (std::size_t i = 0; i < kv_b.size(); ++i) kv_b[i] = 0.05f * std::sin(0.37f * float(i));
    for (std::size_t i = 0; i < w_o.size(); ++i) w_o[i] = 0.02f * std::cos(0.11f * float(i));
    const View2<const float> kv_b_v(kv_b.data(), {H * (dn + dv), r}), w_o_v(w_o.data(), {D, H * dv});
    // Prepared once per layer: W_UK, W_UV and W_O in f32 (W_O·W_UV fused where that is cheaper),
    // so a decode step converts no weights and allocates nothing.
    const cpu::MlaWeights weights(kv_b_v, H, dn, dv, w_o_v);
    auto workspace = weights.make_workspace(/*max_tokens=*/1);

    std::vector<float> row(r + dr), q_nope(H * dn), q_pe(H * dr), q_abs(H * (r + dr)), latent(H * r), lse(H), y(D);
    // The softmax scale of the original attention, 1/sqrt(d_nope + d_r): absorption leaves every
    // logit unchanged, since q_nopeᵀ (W_UK c) = (W_UKᵀ q_nope)ᵀ c.
    const float scale = 1.0f / std::sqrt(float(shape.qk_dim()));
    for (std::int64_t pos = 0; pos < 200; ++pos) {  // one decode step per token
        // This token's cache row: the latent c = W_DKV x and the shared RoPE key k_pe (rotated).
        for (int e = 0; e < r + dr; ++e) row[std::size_t(e)] = std::sin(0.01f * float(e + 3 * pos));
        rope.apply(row.data() + r, pos);
        cache.append(View2<const float>(row.data(), {1, r + dr}));
        // This token's query per head: q_nope and q_pe (rotated), then q_abs = [W_UKᵀ q_nope | q_pe].
        for (std::size_t i = 0; i < q_nope.size(); ++i) q_nope[i] = std::cos(0.02f * float(i + pos));
        for (std::size_t i = 0; i < q_pe.size(); ++i) q_pe[i] = std::sin(0.03f * float(i * (pos + 1)));
        const std::int64_t at[] = {pos};
        rope.apply(View3<float>(q_pe.data(), {1, H, dr}), at);
        weights.absorb(View3<const float>(q_nope.data(), {1, H, dn}), View3<const float>(q_pe.data(), {1, H, dr}),
                       View3<float>(q_abs.data(), {1, H, r + dr}));
        // Multi-query attention over the latent cache: latent outputs [1][H][r] and lse [1][H].
        cpu::mla_decode(View3<const float>(q_abs.data(), {1, H, r + dr}), cache.view(), scale,
                        View3<float>(latent.data(), {1, H, r}), View2<float>(lse.data(), {1, H}));
        // y = W_O · concat_i(W_UV^i · latent_i)
        weights.up_project(View3<const float>(latent.data(), {1, H, r}), View2<float>(y.data(), {1, D}), workspace);
    }
    std::printf("decoded 200 tokens; head 0: lse %.4f; y[0] %.5f\n", lse[0], y[0]);
}
