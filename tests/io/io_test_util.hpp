// Helpers of the io tests: temporary files, the fixtures in tests/data, and the real SmolLM2 file.
//
// The model file is $TRANSMLA_MODEL, else $TRANSMLA_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf, else
// ~/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf (where scripts/fetch-model.sh puts it). When
// it is absent, a test that needs it fails if TRANSMLA_REQUIRE_MODEL=1 (CI) and otherwise prints
// TRANSMLA_MODEL_SKIPPED (CTest then reports the test as skipped).
#pragma once

#include "transmla/error.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace transmla::test {

/// A fresh file (or directory) name in the system temp directory, removed with its contents on
/// destruction.
class TempPath {
public:
    explicit TempPath(const std::string& suffix) {
        static std::atomic<int> counter{0};
        path_ = (std::filesystem::temp_directory_path() /
                 ("transmla_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + suffix))
                    .string();
    }
    TempPath(const TempPath&) = delete;
    TempPath& operator=(const TempPath&) = delete;
    ~TempPath() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::string& str() const { return path_; }
    operator const std::string&() const { return path_; }

private:
    std::string path_;
};

inline std::vector<std::uint8_t> read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE_MESSAGE(f.good(), "cannot open " << path);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
inline void write_bytes(const std::string& path, const std::vector<std::uint8_t>& b) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    REQUIRE_MESSAGE(f.good(), "cannot write " << path);
}

inline nlohmann::json load_test_json(const std::string& name) {
    const std::string path = std::string(TRANSMLA_TEST_DATA_DIR) + "/" + name;
    std::ifstream f(path);
    REQUIRE_MESSAGE(f.good(), "cannot open " << path);
    return nlohmann::json::parse(f);
}

/// Path of the SmolLM2 GGUF, or nullopt after reporting the skip (or failing under
/// TRANSMLA_REQUIRE_MODEL=1).
inline std::optional<std::string> smollm2_gguf_path() {
    namespace fs = std::filesystem;
    static constexpr const char* name = "SmolLM2-135M-Instruct.Q4_1.gguf";
    if (const char* e = std::getenv("TRANSMLA_MODEL"); e && *e) {
        if (fs::exists(e)) return std::string(e);
        FAIL("TRANSMLA_MODEL=" << e << " does not exist");
    }
    if (const char* c = std::getenv("TRANSMLA_CACHE"); c && *c)
        if (fs::exists(fs::path(c) / name)) return (fs::path(c) / name).string();
    if (const char* home = std::getenv("HOME"))
        if (fs::exists(fs::path(home) / ".cache/transmla" / name)) return (fs::path(home) / ".cache/transmla" / name).string();
    if (const char* req = std::getenv("TRANSMLA_REQUIRE_MODEL"); req && std::string(req) == "1")
        FAIL("TRANSMLA_REQUIRE_MODEL=1 but " << name << " was not found: run scripts/fetch-model.sh or set TRANSMLA_MODEL");
    MESSAGE("TRANSMLA_MODEL_SKIPPED: " << name << " not found (run scripts/fetch-model.sh, or set TRANSMLA_MODEL); "
            "set TRANSMLA_REQUIRE_MODEL=1 to make this a failure");
    return std::nullopt;
}

/// Runs f, which must throw transmla::error whose message contains every one of `parts`.
template <class F>
void check_error(F&& f, std::initializer_list<std::string> parts) {
    bool thrown = false;
    try {
        f();
    } catch (const transmla::error& e) {
        thrown = true;
        const std::string msg = e.what();
        for (const auto& p : parts) {
            INFO("message: " << msg);
            CHECK_MESSAGE(msg.find(p) != std::string::npos, "missing '" << p << "'");
        }
    }
    CHECK_MESSAGE(thrown, "no transmla::error was thrown");
}

}  // namespace transmla::test
