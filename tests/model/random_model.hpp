// Small random Llama-family models for the model tests.
#pragma once

#include "transmla/model/model.hpp"

#include "test_util.hpp"

#include <cmath>
#include <vector>

namespace transmla::test {

using model::RowMatrixXf;

inline RowMatrixXf random_matrix(Eigen::Index r, Eigen::Index c, double sd) {
    const auto v = random_vector<float>(std::size_t(r * c), sd);
    return Eigen::Map<const RowMatrixXf>(v.data(), r, c);
}
inline Eigen::VectorXf random_norm(int n) {
    Eigen::VectorXf g(n);
    for (int i = 0; i < n; ++i) g[i] = float(uniform(0.6, 1.4));
    return g;
}

/// A random Llama-family model: D = n_q·d, GQA, SwiGLU, tied or untied embeddings.
inline model::Model random_model(int vocab, int n_q, int n_kv, int d, int inter, int layers, bool tied, RopePairing pairing) {
    model::Model m;
    auto& c = m.config;
    c.vocab = vocab, c.n_q = n_q, c.n_kv = n_kv, c.head_dim = d, c.hidden = n_q * d, c.intermediate = inter;
    c.layers = layers, c.rms_eps = 1e-5, c.max_positions = 256, c.tied_embeddings = tied;
    c.rope.base = 10000.0;
    c.rope.pairing = pairing;
    const int D = c.hidden;
    m.embed = random_matrix(vocab, D, 1.0);
    if (!tied) m.lm_head = random_matrix(vocab, D, 0.2);
    m.out_norm = random_norm(D);
    for (int l = 0; l < layers; ++l) {
        model::Layer L;
        L.attn_norm = random_norm(D);
        L.ffn_norm = random_norm(D);
        model::GqaAttention a;
        a.n_q = n_q, a.n_kv = n_kv, a.head_dim = d, a.pairing = pairing, a.inv_freq = rope_inv_freq(c.rope, d);
        a.wqkv = random_matrix(Eigen::Index(n_q + 2 * n_kv) * d, D, 0.4 / std::sqrt(double(D)) * 3);
        a.wo = random_matrix(D, Eigen::Index(n_q) * d, 0.5 / std::sqrt(double(D)));
        L.attn = a;
        L.mlp.gate_up = random_matrix(2 * inter, D, 1.0 / std::sqrt(double(D)));
        L.mlp.down = random_matrix(D, inter, 0.5 / std::sqrt(double(inter)));
        m.layers.push_back(std::move(L));
    }
    m.validate();
    return m;
}

inline std::vector<std::int32_t> random_tokens(int n, int vocab) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = std::int32_t(uniform_int(0, vocab - 1));
    return t;
}

}  // namespace transmla::test
