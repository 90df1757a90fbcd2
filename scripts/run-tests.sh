#!/usr/bin/env bash
# README command 2: install what is missing, fetch the real model, build everything with warnings
# as errors, run all tests (the model-labelled tests require the real SmolLM2 file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
TRANSMLA_MODEL="$(bash scripts/fetch-model.sh | tail -n 1)"
export TRANSMLA_MODEL TRANSMLA_REQUIRE_MODEL=1
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTRANSMLA_WERROR=ON
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
