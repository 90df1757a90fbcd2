// transmla/model/perplexity.hpp — text files, fixed-window perplexity, greedy generation.
//
// Perplexity: the token stream is cut into consecutive, non-overlapping windows of `window`
// tokens; each window is a fresh sequence (empty cache, positions from 0) and every token after
// the first is predicted from the ones before it in the same window. ppl = exp(mean NLL) over all
// predicted tokens. A trailing partial window of at least 2 tokens is scored too.
#pragma once

#include "transmla/error.hpp"
#include "transmla/model/model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace transmla::model {

/// Checks that `text` is text: valid UTF-8 (no overlong forms, no surrogates, nothing above
/// U+10FFFF) without NUL bytes. Throws naming `name` and the byte offset of the first bad byte.
inline void check_text(std::string_view text, const std::string& name) {
    const auto* b = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    std::size_t i = 0;
    auto bad = [&](const char* what) { fail("'", name, "' is not text: ", what, " at byte offset ", i); };
    while (i < n) {
        const unsigned c = b[i];
        if (c == 0) bad("a NUL byte");
        if (c < 0x80) {
            ++i;
            continue;
        }
        int len = 0;
        unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else bad("an invalid UTF-8 lead byte");
        if (i + std::size_t(len) > n) bad("a truncated UTF-8 sequence");
        if (b[i + 1] < lo || b[i + 1] > hi) bad("an invalid UTF-8 sequence");
        for (int k = 2; k < len; ++k)
            if ((b[i + std::size_t(k)] & 0xC0) != 0x80) bad("an invalid UTF-8 sequence");
        i += std::size_t(len);
    }
}

/// The whole file as text; throws naming the path when it cannot be read, is empty, or is not
/// text (check_text).
inline std::string read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    require(f.good(), "read_text_file: cannot open '", path, "'");
    std::ostringstream ss;
    ss << f.rdbuf();
    std::string s = ss.str();
    require(!s.empty(), "read_text_file: '", path, "' is empty");
    check_text(s, path);
    return s;
}

struct PerplexityResult {
    double perplexity = 0;
    double mean_nll = 0;
    std::int64_t predicted = 0;  ///< tokens scored
    std::int64_t windows = 0;
    double seconds = 0;
};

/// Negative log-likelihood of `next` under each row of logits: Σ_t (lse(row_t) − row_t[next_t]).
inline double sum_nll(const RowMatrixXf& logits, std::span<const std::int32_t> next) {
    double s = 0;
    for (std::int64_t t = 0; t < std::int64_t(next.size()); ++t) {
        const float* r = logits.row(t).data();
        const std::int64_t V = logits.cols();
        float m = r[0];
        for (std::int64_t i = 1; i < V; ++i) m = std::max(m, r[i]);
        double z = 0;
        for (std::int64_t i = 0; i < V; ++i) z += std::exp(double(r[i]) - m);
        s += double(m) + std::log(z) - double(r[next[std::size_t(t)]]);
    }
    return s;
}

/// Called after each perplexity window with the windows done and the windows in all.
using WindowFn = std::function<void(std::int64_t done, std::int64_t total)>;

/// Fixed-window perplexity of `tokens` (at most `max_tokens` of them when > 0); `on_window`, when
/// set, is called after each window (for a progress report).
inline PerplexityResult perplexity(const Model& m, std::span<const std::int32_t> tokens, std::int64_t window,
                                   std::int64_t max_tokens = 0, const WindowFn& on_window = {}) {
    require(window >= 2 && window <= m.config.max_positions, "perplexity: window ", window, " outside [2, ",
            m.config.max_positions, "]");
    if (max_tokens > 0 && std::int64_t(tokens.size()) > max_tokens) tokens = tokens.first(std::size_t(max_tokens));
    require(tokens.size() >= 2, "perplexity: need at least 2 tokens, got ", tokens.size());
    const auto t0 = std::chrono::steady_clock::now();
    PerplexityResult r;
    double nll = 0;
    auto cache = m.make_cache(window);
    std::int64_t total = 0;  // windows of at least 2 tokens
    for (std::size_t b = 0; b + 1 < tokens.size(); b += std::size_t(window))
        total += std::min<std::size_t>(std::size_t(window), tokens.size() - b) >= 2;
    for (std::size_t b = 0; b + 1 < tokens.size(); b += std::size_t(window)) {
        const std::size_t n = std::min<std::size_t>(std::size_t(window), tokens.size() - b);
        if (n < 2) break;
        cache.clear();
        const auto w = tokens.subspan(b, n);
        const auto logits = m.forward(w, cache, Logits::all);
        nll += sum_nll(RowMatrixXf(logits.topRows(std::int64_t(n) - 1)), w.subspan(1));
        r.predicted += std::int64_t(n) - 1;
        ++r.windows;
        if (on_window) on_window(r.windows, total);
    }
    r.mean_nll = nll / double(r.predicted);
    r.perplexity = std::exp(r.mean_nll);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

/// Greedy generation: the prompt in one batch, then one token at a time (KV cache), stopping at
/// `max_new` tokens or at `stop_token` (not included). Returns the generated ids.
inline std::vector<std::int32_t> generate_greedy(const Model& m, std::span<const std::int32_t> prompt, int max_new,
                                                 std::int32_t stop_token = -1) {
    require(!prompt.empty() && max_new >= 0, "generate_greedy: empty prompt or negative max_new");
    auto cache = m.make_cache(std::int64_t(prompt.size()) + max_new + 1);
    std::vector<std::int32_t> out;
    auto logits = m.forward(prompt, cache, Logits::last);
    for (int k = 0; k < max_new; ++k) {
        const float* r = logits.row(0).data();
        const std::int32_t next = std::int32_t(std::max_element(r, r + logits.cols()) - r);
        if (next == stop_token) break;
        out.push_back(next);
        if (k + 1 == max_new) break;
        logits = m.forward(std::span<const std::int32_t>(&out.back(), 1), cache, Logits::last);
    }
    return out;
}

}  // namespace transmla::model
