// model::Progress (progress.hpp): what the line and bar modes write, the weighted ETA, steps past
// the announced count, quiet mode, and the time format. No model, no threads: milliseconds.
#include "transmla/model/progress.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <string>

using transmla::model::Progress;

namespace {
// Everything written to `f` so far.
std::string contents(std::FILE* f) {
    std::fflush(f);
    std::string s;
    std::rewind(f);
    for (int c; (c = std::fgetc(f)) != EOF;) s.push_back(char(c));
    return s;
}
int count(const std::string& s, const std::string& what) {
    int n = 0;
    for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
    return n;
}
}  // namespace

TEST_CASE("lines mode: a header, one line per step with the count and an ETA, a closing line") {
    std::FILE* f = std::tmpfile();
    REQUIRE(f != nullptr);
    {
        Progress p("job", 3, Progress::Mode::lines, f);
        p.step("first");
        p.step();
        p.step("last");
        p.finish();
        p.finish();  // again: nothing
        CHECK(p.done() == 3);
        CHECK(p.total() == 3);
    }  // the destructor after finish(): nothing more
    const std::string s = contents(f);
    std::fclose(f);
    CHECK(s.find("job: 3 steps\n") == 0);
    CHECK(s.find("job 1/3 (33%)") != std::string::npos);
    CHECK(s.find("first\n") != std::string::npos);
    CHECK(s.find("job 3/3 (100%)") != std::string::npos);
    CHECK(count(s, "ETA") == 2);  // after steps 1 and 2, not after the last
    CHECK(count(s, "job: done, 3 steps in ") == 1);
    CHECK(count(s, "\n") == 5);
    CHECK(s.find('\r') == std::string::npos);
}

TEST_CASE("weights set the fraction done; steps past the count are still shown") {
    std::FILE* f = std::tmpfile();
    REQUIRE(f != nullptr);
    {
        Progress p("w", std::vector<double>{3.0, 1.0}, Progress::Mode::lines, f);
        p.step();
        p.step();
        p.step("extra");  // past the announced 2: counted, weighed like the last
        CHECK(p.total() == 3);
    }  // the destructor finishes
    const std::string s = contents(f);
    std::fclose(f);
    CHECK(s.find("w 1/2 (75%)") != std::string::npos);
    CHECK(s.find("w 2/2 (100%)") != std::string::npos);
    CHECK(s.find("w 3/3 (100%)") != std::string::npos);
    CHECK(s.find("w: done, 3 steps") != std::string::npos);
}

TEST_CASE("bar mode redraws one line with a bar and erases it at the end") {
    std::FILE* f = std::tmpfile();
    REQUIRE(f != nullptr);
    {
        Progress p("bar", 4, Progress::Mode::bar, f);
        p.step("a");
        p.step("b");
        p.finish();
    }
    const std::string s = contents(f);
    std::fclose(f);
    CHECK(s.find('\n') == std::string::npos);
    CHECK(count(s, "\r") >= 4);  // start, two steps, the erase
    CHECK(s.find("bar [----------") != std::string::npos);         // drawn at the start, empty
    CHECK(s.find("bar [##########----------] 2/4") != std::string::npos);  // half done
    CHECK(s.find("ETA") != std::string::npos);
    CHECK(s.back() == '\r');  // erased: the cursor is back at the start of a blank line
}

TEST_CASE("quiet mode and a null stream write nothing; automatic mode on a file writes lines") {
    std::FILE* f = std::tmpfile();
    REQUIRE(f != nullptr);
    {
        Progress q("q", 2, Progress::Mode::quiet, f);
        q.step();
        Progress n("n", 2, Progress::Mode::lines, nullptr);
        n.step();
        CHECK(n.mode() == Progress::Mode::quiet);
    }
    CHECK(contents(f).empty());
    {
        Progress a("auto", 1, Progress::Mode::automatic, f);  // a file is no terminal
        CHECK(a.mode() == Progress::Mode::lines);
        CHECK_FALSE(Progress::is_terminal(f));
    }
    CHECK(contents(f).find("auto: 1 steps\n") == 0);
    std::fclose(f);
}

TEST_CASE("format_seconds") {
    CHECK(Progress::format_seconds(0.04) == "0.0 s");
    CHECK(Progress::format_seconds(3.14) == "3.1 s");
    CHECK(Progress::format_seconds(42.2) == "42 s");
    CHECK(Progress::format_seconds(185) == "3m05s");
    CHECK(Progress::format_seconds(3720) == "1h02m");
    CHECK(Progress::format_seconds(-1) == "?");
}
