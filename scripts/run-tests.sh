#!/usr/bin/env bash
# README command 2 (and CI: .ci/run runs it verbatim): installs what is missing, fetches the real
# model, then
#   1. builds everything with g++ and warnings as errors and runs every test (CTest), the export
#      test among them (converted models run in stock llama.cpp, which is built here once per
#      machine and cached); on a host
#      without AVX-512 the benchmarks and the examples no test runs are left to step 2, and the
#      header self-containment test is left to step 4 (clang) everywhere;
#   2. on a host without AVX-512, compiles the host programs (the examples and the benchmarks,
#      built for the host's instruction set) for x86-64-v4, so AVX-512-only warnings fail here too
#      (each program is compiled once for AVX-512 on every host);
#   3. fuzzes every untrusted-input entry point for a bounded time (libFuzzer, ASan + UBSan);
#   4. runs the core, cpu, convert and io tests again under ASan + UBSan (clang), with the test
#      that compiles every public header on its own.
# Any failure stops the script with a non-zero exit. TRANSMLA_FUZZ_SECONDS sets step 3's time per
# harness (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
stage() { echo "== run-tests: $* (at $(( $(date +%s) - t0 )) s)"; }

bash scripts/install-deps.sh
TRANSMLA_MODEL="$(bash scripts/fetch-model.sh | tail -n 1)"
export TRANSMLA_MODEL TRANSMLA_REQUIRE_MODEL=1
jobs=$(nproc 2>/dev/null || echo 2)

avx512=0
grep -qw avx512f /proc/cpuinfo 2>/dev/null && avx512=1
stage "1/4 build (g++, -Werror) and all tests"
# Without AVX-512 here, the benchmarks and the demos (which no test runs) are compiled in step 2 only.
host_ok=$([ $avx512 = 1 ] && echo ON || echo OFF)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTRANSMLA_WERROR=ON -DTRANSMLA_BUILD_BENCH=$host_ok \
      -DTRANSMLA_DEMOS_IN_ALL=$host_ok -DTRANSMLA_HEADER_CHECK=OFF
cmake --build build -j"$jobs"
# Stock llama.cpp for the engine test (label export): built once per CPU kind and compiler from the
# llama-cpp-python 0.3.36 sdist on PyPI, cached under ~/.cache/transmla (scripts/build-llama-cpp.sh).
stage "1/4 llama.cpp for the export test (cached)"
TRANSMLA_LLAMA_CPP_BIN="$(bash scripts/build-llama-cpp.sh | tail -n 1)"
export TRANSMLA_LLAMA_CPP_BIN
stage "1/4 all tests"
ctest --test-dir build --output-on-failure -j"$jobs"

stage "2/4 AVX-512 compile check of the host programs"
if [ $avx512 = 1 ]; then
    echo "run-tests: this host has AVX-512: step 1 already built the host programs for it"
else
    cmake -S . -B build-v4 -DCMAKE_BUILD_TYPE=Release -DTRANSMLA_WERROR=ON -DTRANSMLA_HOST_ARCH=x86-64-v4 \
          -DTRANSMLA_BUILD_TESTS=OFF >build-v4.configure.log
    cmake --build build-v4 -j"$jobs"
    echo "run-tests: the examples and benchmarks compiled for x86-64-v4 without warnings"
fi

# One clang build directory for steps 3 and 4: ASan + UBSan everywhere, the harnesses add libFuzzer.
# -O1, as the sanitizers recommend: at -O3 the four ISA kernel files alone take minutes to compile.
san_flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
CC=clang CXX=clang++ cmake -S . -B build-san -DCMAKE_BUILD_TYPE=Release -DTRANSMLA_WERROR=ON -DTRANSMLA_FUZZ=ON \
      -DTRANSMLA_BUILD_TESTS=ON -DTRANSMLA_BUILD_BENCH=OFF -DTRANSMLA_BUILD_EXAMPLES=OFF -DTRANSMLA_CUDA=OFF \
      "-DCMAKE_CXX_FLAGS=$san_flags" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" >build-san.configure.log

stage "3/4 fuzzing (libFuzzer, ASan + UBSan)"
FUZZ_BUILD_DIR="$PWD/build-san" bash scripts/run-fuzz.sh "${TRANSMLA_FUZZ_SECONDS:-40}"

stage "4/4 core, cpu, convert and io tests under ASan + UBSan (clang)"
cmake --build build-san -j"$jobs" --target tests_core tests_cpu tests_convert tests_io test_headers_standalone
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-san --output-on-failure -j"$jobs" -L 'core|cpu|convert|io' -LE 'compile_fail|package'
stage "done"
