#!/usr/bin/env bash
# README command 1: install what is missing, fetch SmolLM2-135M, build the demo, run it: the model
# converted GQA -> MLA (exact, TransMLA, MHA2MLA at two cache budgets) with perplexity, cache
# bytes, timings, and greedy generation side by side; then draw the report's pictures into
# docs/img/ (scripts/plot-demo.py). Extra arguments go to smollm2_demo.
#
# Time on the 2-core Sapphire-Rapids-class test machine (bench/RESULTS.md, "The demo, end to
# end"): 3 min 36 s quiet and 4 min 52 s with the other core busy for the six rows of TransMLA,
# MHA2MLA and exact; 5 min 49 s and 8 min 27 s with the two output-aware rows added. Most of it is
# the demo (per row: the conversion with its calibration passes, 4096 tokens of perplexity, decode
# timing) and the demo's translation unit, the build's critical path (compiled side by side with
# the CPU kernels instead of after them).
#
# Threads: the demo runs OpenMP teams of 2 (the published table's digits), or of 1 for the rows
# that start while other programs keep the CPUs busy (a team of 2 on one free core runs at half
# speed: Eigen's GEMM threads spin-wait for each other). OMP_NUM_THREADS or --threads N fixes the
# team instead.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
step() { echo "== run-demo: $* (at $(( $(date +%s) - t0 )) s)" >&2; }

step "dependencies and the model"
bash scripts/install-deps.sh
model="$(bash scripts/fetch-model.sh | tail -n 1)"
jobs=$(nproc 2>/dev/null || echo 2)
mkdir -p build

# matplotlib for the pictures, in a virtual environment in the cache (kept like the model), set up
# in the background while the demo compiles. A failure here costs the pictures, not the demo.
cache="${TRANSMLA_CACHE:-${HOME:?HOME is not set; set TRANSMLA_CACHE}/.cache/transmla}"
venv="$cache/venv-plot"
setup_plot_env() {
    if "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        echo "plot environment: using $venv"
        return 0
    fi
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile 'matplotlib>=3.6,<4'
    echo "plot environment: matplotlib installed into $venv"
}
setup_plot_env >build/plot-env.log 2>&1 &
plot_env_pid=$!

step "build (Release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build/configure.log 2>&1 || { cat build/configure.log; exit 1; }
if [ -f build/examples/Makefile ] && grep -q '^smollm2_demo.cpp.o:' build/examples/Makefile; then
    # Makefiles build a target's sources only after the libraries it links: the demo's one long
    # translation unit would wait for the kernels. Compile it beside them; the last step links.
    make -s -C build/examples smollm2_demo.cpp.o &
    demo_obj_pid=$!
    cmake --build build -j"$(( jobs > 1 ? jobs - 1 : 1 ))" --target transmla_cpu_kernels
    wait "$demo_obj_pid" || true   # on failure the next line compiles it again and shows why
fi
cmake --build build -j"$jobs" --target smollm2_demo

step "demo"
# OpenMP's default wait policy (spin briefly, then sleep) is kept: the demo itself avoids teams
# larger than the free CPUs, and OMP_WAIT_POLICY=passive made every decode step of the timing pay
# for waking a sleeping thread (10-25 % slower, bench/RESULTS.md).
./build/examples/smollm2_demo --model "$model" --report build/smollm2_demo_report.json "$@"

step "pictures"
if wait "$plot_env_pid"; then
    cat build/plot-env.log
    "$venv/bin/python" scripts/plot-demo.py build/smollm2_demo_report.json docs/img
else
    cat build/plot-env.log >&2
    echo "run-demo: warning: no matplotlib (is PyPI reachable?), so no pictures; the demo itself ran" >&2
fi
step "done"
