// transmla/model/progress.hpp — progress of a long job of counted steps: a live bar with the
// count, elapsed time and an ETA on a terminal, one line per step otherwise (a log, a pipe, CI).
//
//   model::Progress p("TransMLA 50%: convert", 62);           // 62 steps of equal cost
//   auto conv = model::convert_model(original, seqs, opt, p.callback(), held);
//   p.finish();                                                // ends the bar (or writes "done")
//
// Steps may have unequal costs: give the constructor one weight per step (rough relative costs,
// e.g. a calibration pass against one layer's maths) and the ETA becomes
// elapsed × (weight still to do / weight done). The count shown is always of steps.
//
// Mode::automatic draws a bar when the stream is a terminal (isatty) and TERM is not "dumb",
// writes lines otherwise. The bar redraws one line with '\r', cut to the terminal's width, so
// nothing else should write to that terminal between the first step and finish() (write your
// results after finish(), or to another stream). Not thread-safe: report from one thread.
// Steps beyond the announced count are shown as they come (with the last step's weight).
#pragma once

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace transmla::model {

class Progress {
public:
    enum class Mode { automatic, bar, lines, quiet };

    /// `steps` steps of equal weight.
    Progress(std::string label, std::int64_t steps, Mode mode = Mode::automatic, std::FILE* out = stderr)
        : Progress(std::move(label), std::vector<double>(std::size_t(std::max<std::int64_t>(steps, 0)), 1.0), mode,
                   out) {}

    /// One weight (> 0, relative cost) per step.
    Progress(std::string label, std::vector<double> weights, Mode mode = Mode::automatic, std::FILE* out = stderr)
        : label_(std::move(label)), weights_(std::move(weights)), out_(out), t0_(clock::now()) {
        for (auto& w : weights_) w = std::isfinite(w) && w > 0 ? w : 1.0;
        for (double w : weights_) total_weight_ += w;
        if (mode == Mode::automatic) mode = is_terminal(out_) ? Mode::bar : Mode::lines;
        mode_ = out_ ? mode : Mode::quiet;
        if (mode_ == Mode::bar) redraw(status());  // the bar shows from the start: the first step may be long
        else if (mode_ == Mode::lines) std::fprintf(out_, "%s: %lld steps\n", label_.c_str(), (long long)total());
        if (mode_ != Mode::quiet) std::fflush(out_);
    }
    Progress(const Progress&) = delete;
    Progress& operator=(const Progress&) = delete;
    ~Progress() { finish(); }

    /// One step done; `detail` says what it was (shown after the count).
    void step(std::string_view detail = {}) {
        if (finished_) return;
        const double w = done_ < std::int64_t(weights_.size()) ? weights_[std::size_t(done_)]
                                                               : (weights_.empty() ? 1.0 : weights_.back());
        ++done_;
        done_weight_ += w;
        if (done_ > std::int64_t(weights_.size())) total_weight_ += w;
        if (mode_ == Mode::quiet) return;
        const std::string head = status();
        if (mode_ == Mode::lines) {
            std::fprintf(out_, "%s%s%.*s\n", head.c_str(), detail.empty() ? "" : "  ", int(detail.size()),
                         detail.data());
        } else {
            std::string line = head;
            if (!detail.empty()) line.append("  ").append(detail);
            redraw(line);
        }
        std::fflush(out_);
    }

    /// The step reporter of model::convert_model (a model::ProgressFn): one step per call.
    std::function<void(const std::string&)> callback() {
        return [this](const std::string& s) { step(s); };
    }

    /// Ends the report (again: nothing). Bar: erases it. Lines: "label: done, N steps in T".
    void finish() {
        if (finished_) return;
        finished_ = true;
        if (mode_ == Mode::bar && drawn_) {
            std::fprintf(out_, "\r%*s\r", int(std::min<std::size_t>(last_width_, 4096)), "");
        } else if (mode_ == Mode::lines) {
            std::fprintf(out_, "%s: done, %lld steps in %s\n", label_.c_str(), (long long)done_,
                         format_seconds(seconds()).c_str());
        }
        if (mode_ != Mode::quiet) std::fflush(out_);
    }

    double seconds() const { return std::chrono::duration<double>(clock::now() - t0_).count(); }
    std::int64_t done() const noexcept { return done_; }
    std::int64_t total() const noexcept { return std::max(done_, std::int64_t(weights_.size())); }
    Mode mode() const noexcept { return mode_; }

    /// True when `f` is a terminal that can redraw a line.
    static bool is_terminal(std::FILE* f) {
        if (f == nullptr || ::isatty(::fileno(f)) != 1) return false;
        const char* term = std::getenv("TERM");
        return !(term && std::strcmp(term, "dumb") == 0);
    }

    /// "42 s", "3m05s", "1h02m".
    static std::string format_seconds(double s) {
        char b[32];
        if (!std::isfinite(s) || s < 0) return "?";
        if (s < 9.95) std::snprintf(b, sizeof b, "%.1f s", s);
        else if (s < 59.5) std::snprintf(b, sizeof b, "%.0f s", s);
        else if (s < 3599.5) std::snprintf(b, sizeof b, "%dm%02ds", int(s + 0.5) / 60, int(s + 0.5) % 60);
        else std::snprintf(b, sizeof b, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
        return b;
    }

private:
    using clock = std::chrono::steady_clock;

    /// "label [#####-----] 12/62  3.1 s, ETA 9 s" (bar) or "label 12/62 (19%) 3.1 s, ETA 9 s".
    std::string status() const {
        const double el = seconds(), frac = total_weight_ > 0 ? std::min(1.0, done_weight_ / total_weight_) : 1.0;
        const std::int64_t n = total();
        std::string s = label_;
        char b[96];
        if (mode_ == Mode::bar) {
            constexpr int width = 20;
            const int fill = int(frac * width + 0.5);
            s += " [" + std::string(std::size_t(fill), '#') + std::string(std::size_t(width - fill), '-') + "]";
        }
        std::snprintf(b, sizeof b, " %lld/%lld", (long long)done_, (long long)n);
        s += b;
        if (mode_ == Mode::lines) {
            std::snprintf(b, sizeof b, " (%.0f%%)", 100 * frac);
            s += b;
        }
        s += "  " + format_seconds(el);
        if (done_ < n && done_weight_ > 0) s += ", ETA " + format_seconds(el * (total_weight_ - done_weight_) / done_weight_);
        return s;
    }

    void redraw(std::string line) {
        const std::size_t cols = terminal_columns();
        if (line.size() >= cols) {  // one terminal row, or '\r' cannot redraw it; whole UTF-8 characters
            std::size_t cut = cols - 1;
            while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
            line.resize(cut);
        }
        const std::size_t pad = last_width_ > line.size() ? last_width_ - line.size() : 0;
        std::fprintf(out_, "\r%s%*s", line.c_str(), int(pad), "");
        last_width_ = line.size();
        drawn_ = true;
    }

    std::size_t terminal_columns() const {
        winsize ws{};
        if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
        if (const char* c = std::getenv("COLUMNS"); c && std::atoi(c) >= 20) return std::size_t(std::atoi(c));
        return 80;
    }

    std::string label_;
    std::vector<double> weights_;
    std::FILE* out_;
    clock::time_point t0_;
    Mode mode_ = Mode::lines;
    std::int64_t done_ = 0;
    double done_weight_ = 0, total_weight_ = 0;
    std::size_t last_width_ = 0;
    bool drawn_ = false, finished_ = false;
};

}  // namespace transmla::model
