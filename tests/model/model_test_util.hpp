// Helpers of the model tests: locating the real SmolLM2 file and the expectations in tests/data.
//
// The file is $TRANSMLA_MODEL, else ~/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf (where
// scripts/fetch-model.sh puts it). When it is absent the tests fail if TRANSMLA_REQUIRE_MODEL=1
// (CI) and are otherwise reported as skipped (the output line below makes CTest say "Skipped").
#pragma once

#include "transmla/model/gguf_loader.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace transmla::test {

inline std::optional<std::string> smollm2_path() {
    namespace fs = std::filesystem;
    if (const char* e = std::getenv("TRANSMLA_MODEL"); e && *e) {
        if (fs::exists(e)) return std::string(e);
        FAIL("TRANSMLA_MODEL=" << e << " does not exist");
    }
    if (const char* home = std::getenv("HOME")) {
        const fs::path p = fs::path(home) / ".cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf";
        if (fs::exists(p)) return p.string();
    }
    const char* req = std::getenv("TRANSMLA_REQUIRE_MODEL");
    if (req && std::string(req) == "1")
        FAIL("TRANSMLA_REQUIRE_MODEL=1 but the SmolLM2 GGUF was not found: run scripts/fetch-model.sh or set "
             "TRANSMLA_MODEL");
    MESSAGE("TRANSMLA_MODEL_SKIPPED: SmolLM2-135M-Instruct.Q4_1.gguf not found (run scripts/fetch-model.sh, or set "
            "TRANSMLA_MODEL); set TRANSMLA_REQUIRE_MODEL=1 to make this a failure");
    return std::nullopt;
}

/// The model, loaded once per test executable (nullptr when skipped).
inline const model::Model* smollm2() {
    static const std::unique_ptr<model::Model> m = []() -> std::unique_ptr<model::Model> {
#if defined(_OPENMP)
        // CTest runs test executables side by side (-j): one thread each unless told otherwise,
        // so that OpenMP teams do not spin against each other on a small machine.
        if (!std::getenv("OMP_NUM_THREADS")) omp_set_num_threads(1);
#endif
        const auto p = smollm2_path();
        if (!p) return nullptr;
        return std::make_unique<model::Model>(model::load_gguf(*p));
    }();
    return m.get();
}

inline nlohmann::json load_json(const std::string& name) {
    const std::string path = std::string(TRANSMLA_TEST_DATA_DIR) + "/" + name;
    std::ifstream f(path);
    REQUIRE_MESSAGE(f.good(), "cannot open " << path);
    return nlohmann::json::parse(f);
}

}  // namespace transmla::test
