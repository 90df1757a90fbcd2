#!/usr/bin/env bash
# README command 1: install what is missing, fetch SmolLM2-135M, build the demo, run it: the model
# converted GQA -> MLA (exact, TransMLA, MHA2MLA at two cache budgets) with perplexity, cache
# bytes, timings, and greedy generation side by side. Extra arguments go to smollm2_demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
model="$(bash scripts/fetch-model.sh | tail -n 1)"
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs" --target smollm2_demo
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"   # no spinning teams on a busy machine
./build/examples/smollm2_demo --model "$model" --report build/smollm2_demo_report.json "$@"
