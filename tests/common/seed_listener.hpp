// The seed listener of every doctest main (tests/common/main.cpp, tests/cuda/cuda_main.cpp):
// reseeds the test's random engine from the test name at each test case and prints the run's
// seed when a test case fails. Include in exactly one translation unit per executable.
#pragma once

#include "test_util.hpp"

#include <cstdio>

namespace {

struct SeedListener : doctest::IReporter {
    explicit SeedListener(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats&) override {}
    void test_case_start(const doctest::TestCaseData& tc) override { transmla::test::detail::reseed(tc.m_name); }
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats& st) override {
        if (st.numAssertsFailedCurrentTest > 0 || st.failure_flags != 0)
            std::fprintf(stderr, "[transmla] test case failed with TRANSMLA_SEED=%llu (rerun with that "
                                 "environment variable to reproduce)\n",
                         static_cast<unsigned long long>(transmla::test::base_seed()));
    }
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

REGISTER_LISTENER("transmla_seed", 1, SeedListener);
