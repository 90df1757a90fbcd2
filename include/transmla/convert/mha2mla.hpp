// transmla/convert/mha2mla.hpp — MHA2MLA (arXiv 2502.14837) as an initialisation: per-KV-head
// partial RoPE (four selections) and an SVD of the weights for the no-RoPE key dims and the
// values: joint or split over all KV heads of the layer at once, as the authors' code does, or a
// per-KV-head joint SVD. See Mha2MlaLayer (layer.hpp) for the forward semantics.
#pragma once

#include "transmla/detail/intrinsics.hpp"  // first: see there (GCC 12, AVX-512)
#include "transmla/convert/layer.hpp"
#include "transmla/convert/forward.hpp"

#include <Eigen/Core>
#include <Eigen/SVD>

#include <algorithm>
#include <numeric>
#include <vector>

namespace transmla::convert {

/// Checks r_m for head dim d (even, 2 ≤ r_m ≤ d; uniform also needs d % r_m == 0 and
/// start < d/r_m), naming the option and the allowed values.
inline void check_mha2mla_rope_dims(int d, int r_m, RopeSelection sel, int uniform_start) {
    require(r_m >= 2 && r_m <= d && r_m % 2 == 0, "mha2mla_rope_dims (r_m) = ", r_m,
            " is not allowed for head_dim d = ", d, ": r_m must be even and in [2, d]");
    if (sel == RopeSelection::uniform) {
        require(d % r_m == 0, "mha2mla_rope_dims (r_m) = ", r_m, " is not allowed with the uniform selection for head_dim ",
                d, ": r_m must divide d (allowed: even divisors of d)");
        require(uniform_start >= 0 && uniform_start < d / r_m, "uniform_start = ", uniform_start,
                " is not allowed: 0 <= start < d/r_m = ", d / r_m);
    }
}

/// The frequencies (pair indices j, ascending) that keep RoPE for every KV head.
/// two_norm needs `norms` (E‖q_{i,j}‖, E‖k_{h,j}‖ on the pre-RoPE activations); the others are
/// the same for every head.
inline std::vector<std::vector<int>> select_rope_pairs(RopeSelection sel, int n_q, int n_kv, int d, int r_m,
                                                       const PairNormStats* norms = nullptr, int uniform_start = 0) {
    DynamicGqaShape(n_q, n_kv, d);
    check_mha2mla_rope_dims(d, r_m, sel, uniform_start);
    const int half = d / 2, keep = r_m / 2, g = n_q / n_kv;
    std::vector<std::vector<int>> out(static_cast<std::size_t>(n_kv));
    for (int h = 0; h < n_kv; ++h) {
        auto& v = out[std::size_t(h)];
        switch (sel) {
            case RopeSelection::high:
                for (int j = 0; j < keep; ++j) v.push_back(j);
                break;
            case RopeSelection::low:
                for (int j = half - keep; j < half; ++j) v.push_back(j);
                break;
            case RopeSelection::uniform:
                for (int k = 0; k < keep; ++k) v.push_back(uniform_start + k * (d / r_m));
                break;
            case RopeSelection::two_norm: {
                require(norms != nullptr, "select_rope_pairs: the two_norm selection needs PairNormStats");
                require(norms->n_q() == n_q && norms->n_kv() == n_kv && norms->head_dim() == d,
                        "select_rope_pairs: PairNormStats shape (", norms->n_q(), ", ", norms->n_kv(), ", ",
                        norms->head_dim(), ") does not match the layer (", n_q, ", ", n_kv, ", ", d, ")");
                const MatrixXd qn = norms->q_mean_norms(), kn = norms->k_mean_norms();
                std::vector<double> score(std::size_t(half), 0.0);
                for (int j = 0; j < half; ++j)
                    for (int i = h * g; i < (h + 1) * g; ++i) score[std::size_t(j)] += qn(i, j) * kn(h, j);
                std::vector<int> idx(static_cast<std::size_t>(half));
                std::iota(idx.begin(), idx.end(), 0);
                std::stable_sort(idx.begin(), idx.end(),
                                 [&](int a, int b) { return score[std::size_t(a)] > score[std::size_t(b)]; });
                v.assign(idx.begin(), idx.begin() + keep);
                std::sort(v.begin(), v.end());
                break;
            }
        }
    }
    return out;
}

/// Per-KV-head truncated SVD: W ≈ U_ρ Σ_ρ V_ρᵀ. Returns the singular values too. Eigen's one-sided
/// Jacobi SVD (QR-preconditioned), not BDCSVD: every translation unit that includes this header
/// compiles ~17 s faster (g++ 12, -O3: BDCSVD's divide and conquer is a large template of its
/// own), for a slower SVD of these small matrices (Zen 2, one core: 120 × 576, SmolLM2's shape,
/// 24 ms instead of 9 ms; 248 × 4096, Llama-3-8B's, 0.55 s instead of 0.16 s per KV head).
struct TruncatedSvd {
    MatrixXd up;        ///< U_ρ Σ_ρ, rows × ρ
    MatrixXd down;      ///< V_ρᵀ, ρ × cols
    VectorXd singular;  ///< all singular values, descending
};
inline TruncatedSvd truncated_svd(const MatrixXd& w, int rho) {
    require(rho >= 0 && rho <= std::min(w.rows(), w.cols()), "truncated_svd: rank ", rho, " outside [0, ",
            std::min(w.rows(), w.cols()), "]");
    const Eigen::JacobiSVD<MatrixXd> svd(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
    TruncatedSvd t;
    t.singular = svd.singularValues();
    t.up = svd.matrixU().leftCols(rho) * t.singular.head(rho).asDiagonal();
    t.down = svd.matrixV().leftCols(rho).transpose();
    return t;
}

/// The largest d_kv (mha2mla_latent_dim) the SVD mode allows for the layer shape: the rank of
/// each factorised matrix cannot exceed its smaller side. joint: n_kv·d_kv ≤ min(n_kv·(2d − r_m), D);
/// split: n_kv·d_kv ≤ min(n_kv·(d − r_m), D) (the key part is the narrower one); per_head:
/// d_kv ≤ min(2d − r_m, D).
inline int max_mha2mla_latent_dim(SvdMode svd, int n_kv, int d, int r_m, int hidden) {
    switch (svd) {
        case SvdMode::joint: return std::min(2 * d - r_m, hidden / n_kv);
        case SvdMode::split: return std::min(d - r_m, hidden / n_kv);
        case SvdMode::per_head: return std::min(2 * d - r_m, hidden);
    }
    return 0;
}

/// Checks d_kv for the SVD mode and layer shape, naming the option and the allowed range.
inline void check_mha2mla_latent_dim(SvdMode svd, int n_kv, int d, int r_m, int hidden, int d_kv) {
    if (svd == SvdMode::split)
        require(r_m < d, "mha2mla: the split SVD needs no-RoPE key dims (mha2mla_rope_dims r_m < d), got r_m = ", r_m);
    const int hi = max_mha2mla_latent_dim(svd, n_kv, d, r_m, hidden);
    const char* why = svd == SvdMode::joint   ? "n_kv·d_kv <= min(n_kv·(2d - r_m), D)"
                      : svd == SvdMode::split ? "n_kv·d_kv <= min(n_kv·(d - r_m), D)"
                                              : "d_kv <= min(2d - r_m, D)";
    require(d_kv >= 1 && d_kv <= hi, "mha2mla_latent_dim (d_kv) = ", d_kv, " is not allowed for the ", to_string(svd),
            " SVD of this layer (n_kv = ", n_kv, ", d = ", d, ", r_m = ", r_m, ", D = ", hidden, "): ", why,
            ", so 1 <= d_kv <= ", hi);
}

/// MHA2MLA conversion of one layer: rope_pairs from select_rope_pairs, then the SVD of the
/// no-RoPE key rows and the value rows (SvdMode). Biases stay on the up side.
/// r_m = o.mha2mla_rope_dims (0 → d/8), d_kv = o.mha2mla_latent_dim (0 → d/2).
inline Mha2MlaLayer mha2mla(const GqaLayer& l, const ConvertOptions& o, const PairNormStats* norms = nullptr) {
    l.validate();
    const int d = l.head_dim, nkv = l.n_kv;
    const int rm = o.mha2mla_rope_dims ? o.mha2mla_rope_dims : std::max(2, d / 8);
    const int dkv = o.mha2mla_latent_dim ? o.mha2mla_latent_dim : d / 2;
    check_mha2mla_rope_dims(d, rm, o.selection, o.uniform_start);
    check_mha2mla_latent_dim(o.svd, nkv, d, rm, l.hidden, dkv);
    Mha2MlaLayer m;
    m.hidden = l.hidden, m.n_q = l.n_q, m.n_kv = nkv, m.head_dim = d;
    m.rope_dims = rm;
    m.latent_dim = dkv;
    m.latent_width = (o.svd == SvdMode::split ? 2 : 1) * nkv * dkv;
    m.svd = o.svd;
    m.selection = o.selection;
    m.pairing = l.rope.pairing;
    m.inv_freq = l.inv_freq();
    m.rope_attention_factor = rope_attention_factor(l.rope);
    m.wq = l.wq, m.bq = l.bq, m.wo = l.wo;
    m.rope_pairs = select_rope_pairs(o.selection, l.n_q, nkv, d, rm, norms, o.uniform_start);
    const int nn = d - rm, rho = m.latent_width;
    // All heads' no-RoPE key rows (head by head, ascending dims) and all value rows.
    MatrixXd wn(Eigen::Index(nkv) * nn, l.hidden);
    std::vector<int> kept, nope;
    for (int h = 0; h < nkv; ++h) {
        mha2mla_dims(d, l.rope.pairing, m.rope_pairs[std::size_t(h)], kept, nope);
        const Eigen::Index base = Eigen::Index(h) * d;
        MatrixXd wr(rm, l.hidden);
        VectorXd br, bn;
        if (l.bk.size()) br.resize(rm), bn.resize(nn);
        for (int e = 0; e < rm; ++e) {
            wr.row(e) = l.wk.row(base + kept[std::size_t(e)]);
            if (l.bk.size()) br(e) = l.bk(base + kept[std::size_t(e)]);
        }
        for (int e = 0; e < nn; ++e) {
            wn.row(Eigen::Index(h) * nn + e) = l.wk.row(base + nope[std::size_t(e)]);
            if (l.bk.size()) bn(e) = l.bk(base + nope[std::size_t(e)]);
        }
        m.w_k_rope.push_back(wr);
        m.b_k_rope.push_back(br);
        m.b_up_k.push_back(bn);
        m.b_up_v.push_back(l.bv.size() ? VectorXd(l.bv.segment(base, d)) : VectorXd());
    }
    const MatrixXd& wv = l.wv;  // [n_kv·d][D]
    MatrixXd upk(wn.rows(), rho), upv(wv.rows(), rho);  // all heads' up rows, split per head below
    m.w_down.resize(rho, l.hidden);
    switch (o.svd) {
        case SvdMode::joint: {
            MatrixXd wj(wn.rows() + wv.rows(), l.hidden);
            wj.topRows(wn.rows()) = wn;
            wj.bottomRows(wv.rows()) = wv;
            const TruncatedSvd t = truncated_svd(wj, rho);
            m.w_down = t.down;
            upk = t.up.topRows(wn.rows());
            upv = t.up.bottomRows(wv.rows());
            break;
        }
        case SvdMode::split: {
            const int half = rho / 2;
            const TruncatedSvd tk = truncated_svd(wn, half), tv = truncated_svd(wv, half);
            m.w_down.topRows(half) = tk.down;
            m.w_down.bottomRows(half) = tv.down;
            upk.setZero(), upv.setZero();
            upk.leftCols(half) = tk.up;
            upv.rightCols(half) = tv.up;
            break;
        }
        case SvdMode::per_head: {
            upk.setZero(), upv.setZero();
            for (int h = 0; h < nkv; ++h) {
                MatrixXd wj(nn + d, l.hidden);
                wj.topRows(nn) = wn.middleRows(Eigen::Index(h) * nn, nn);
                wj.bottomRows(d) = wv.middleRows(Eigen::Index(h) * d, d);
                const TruncatedSvd t = truncated_svd(wj, dkv);
                m.w_down.middleRows(Eigen::Index(h) * dkv, dkv) = t.down;
                upk.block(Eigen::Index(h) * nn, Eigen::Index(h) * dkv, nn, dkv) = t.up.topRows(nn);
                upv.block(Eigen::Index(h) * d, Eigen::Index(h) * dkv, d, dkv) = t.up.bottomRows(d);
            }
            break;
        }
    }
    for (int h = 0; h < nkv; ++h) {
        m.w_up_k.push_back(upk.middleRows(Eigen::Index(h) * nn, nn));
        m.w_up_v.push_back(upv.middleRows(Eigen::Index(h) * d, d));
    }
    return m;
}

/// Relative calibration reconstruction errors of an MHA2MLA layer on the statistics:
/// Σ_h E‖k_nope − k̂_nope‖² / Σ_h E‖k_nope‖² and likewise for the values (biases are exact).
inline void mha2mla_errors(const GqaLayer& l, const Mha2MlaLayer& m, const CalibrationStats& stats, double& key_error,
                           double& value_error) {
    double ke = 0, kt = 0, ve = 0, vt = 0;
    std::vector<int> kept, nope;
    for (int h = 0; h < l.n_kv; ++h) {
        mha2mla_dims(l.head_dim, l.rope.pairing, m.rope_pairs[std::size_t(h)], kept, nope);
        const Eigen::Index base = Eigen::Index(h) * l.head_dim;
        MatrixXd wn(Eigen::Index(nope.size()), l.hidden);
        VectorXd bn = l.bk.size() ? VectorXd(Eigen::Index(nope.size())) : VectorXd();
        for (std::size_t e = 0; e < nope.size(); ++e) {
            wn.row(Eigen::Index(e)) = l.wk.row(base + nope[e]);
            if (l.bk.size()) bn(Eigen::Index(e)) = l.bk(base + nope[e]);
        }
        const MatrixXd wv = l.wv.middleRows(base, l.head_dim);
        const VectorXd bv = l.bv.size() ? VectorXd(l.bv.segment(base, l.head_dim)) : VectorXd();
        if (!nope.empty()) {
            ke += stats.project_diag(wn - m.w_up_k[std::size_t(h)] * m.w_down).sum();
            kt += stats.project_diag(wn, bn).sum();
        }
        ve += stats.project_diag(wv - m.w_up_v[std::size_t(h)] * m.w_down).sum();
        vt += stats.project_diag(wv, bv).sum();
    }
    key_error = kt > 0 ? ke / kt : 0.0;
    value_error = vt > 0 ? ve / vt : 0.0;
}

}  // namespace transmla::convert
