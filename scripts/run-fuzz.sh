#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang, writes their seed corpora (made by the
# library's own writers), replays every saved regression input (tests/data/fuzz_regressions/<h>/),
# then fuzzes each harness for a bounded time. Exits non-zero on any finding (crash, sanitizer
# report, leak, timeout, out-of-memory) or build failure; prints one summary line per harness.
#
#   scripts/run-fuzz.sh [SECONDS_PER_HARNESS]        (default 60)
#
# A campaign: FUZZ_RUNS=10000000 FUZZ_OPT=-O2 scripts/run-fuzz.sh 0 runs each harness for 10^7
# executions (0 seconds: no time limit) from a build at -O2.
#
# Environment: FUZZ_BUILD_DIR (default <repo>/build-fuzz), FUZZ_JOBS (harnesses fuzzed at once,
# default: min(2, nproc)), FUZZ_HARNESSES (default: all five), FUZZ_RUNS (executions per harness,
# default: no limit), FUZZ_OPT (the harnesses' optimisation flag, default -O1), FUZZ_NICE (nice
# level of the fuzzers, default 0), CC/CXX (default clang/clang++).
# Needs (Debian 12): cmake make clang libclang-rt-14-dev libeigen3-dev libxsimd-dev xtl-dev
# nlohmann-json3-dev doctest-dev.
set -euo pipefail

secs="${1:-60}"
runs="${FUZZ_RUNS:-0}"
[[ "$secs" =~ ^[0-9]+$ && "$runs" =~ ^[0-9]+$ ]] && (( secs > 0 || runs > 0 )) ||
    { echo "run-fuzz: SECONDS_PER_HARNESS and FUZZ_RUNS must be integers >= 0, not both 0 (got '$secs', '$runs')" >&2; exit 2; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${FUZZ_BUILD_DIR:-$repo/build-fuzz}"
harnesses=(${FUZZ_HARNESSES:-gguf gguf_model tokenizer safetensors hf_config})
ncpu="$(nproc 2>/dev/null || echo 1)"
jobs="${FUZZ_JOBS:-$(( ncpu < 2 ? ncpu : 2 ))}"
export CC="${CC:-clang}" CXX="${CXX:-clang++}"
start=$(date +%s)

declare -A dict=([gguf]=gguf.dict [gguf_model]=gguf.dict [tokenizer]=gguf.dict [safetensors]=safetensors.dict
                 [hf_config]=json.dict)

echo "run-fuzz: configuring $build ($CXX)"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DTRANSMLA_FUZZ=ON -DTRANSMLA_WERROR=ON \
      -DTRANSMLA_BUILD_TESTS=ON -DTRANSMLA_BUILD_BENCH=OFF -DTRANSMLA_BUILD_EXAMPLES=OFF -DTRANSMLA_CUDA=OFF \
      -DTRANSMLA_FUZZ_OPT="${FUZZ_OPT:--O1}" >"$build.configure.log" 2>&1 || { cat "$build.configure.log" >&2; echo "run-fuzz: configure failed" >&2; exit 1; }
targets=(fuzz_seeds)
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
echo "run-fuzz: building ${targets[*]}"
cmake --build "$build" --target "${targets[@]}" -j"$ncpu" >"$build.build.log" 2>&1 ||
    { tail -n 60 "$build.build.log" >&2; echo "run-fuzz: build failed (log: $build.build.log)" >&2; exit 1; }
echo "run-fuzz: built in $(( $(date +%s) - start )) s"

bin="$build/tests/fuzz"
seeds="$bin/seeds"
work="$build/fuzz-run"
rm -rf "$work"
mkdir -p "$work"
status=0

# 1. Replay the saved regression inputs: each must run to completion.
for h in "${harnesses[@]}"; do
    reg="$repo/tests/data/fuzz_regressions/$h"
    [ -d "$reg" ] || continue
    mapfile -t files < <(find "$reg" -type f ! -name '*.md' | sort)
    ((${#files[@]})) || continue
    if "$bin/fuzz_$h" -rss_limit_mb=2048 -timeout=10 "${files[@]}" >"$work/replay_$h.log" 2>&1; then
        echo "run-fuzz: replay $h: ${#files[@]} regression inputs ok"
    else
        tail -n 40 "$work/replay_$h.log" >&2
        echo "run-fuzz: replay $h: FAILED (log: $work/replay_$h.log)" >&2
        status=1
    fi
done

# 2. Fuzz each harness for $secs seconds, $jobs at a time.
run_one() {
    local h="$1" corpus="$work/corpus/$1" art="$work/artifacts/$1/"
    mkdir -p "$corpus" "$art"
    cp "$seeds/$h"/* "$corpus"/
    local rc=0 t0
    t0=$(date +%s)
    nice -n "${FUZZ_NICE:-0}" "$bin/fuzz_$h" "$corpus" -dict="$repo/tests/fuzz/${dict[$h]}" -max_total_time="$secs" -runs="$(( runs > 0 ? runs : -1 ))" -max_len=65536 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$art" >"$work/$h.log" 2>&1 || rc=$?
    echo "$rc" >"$work/$h.rc"
    echo "$(( $(date +%s) - t0 ))" >"$work/$h.secs"
}
pids=()
for h in "${harnesses[@]}"; do
    run_one "$h" &
    pids+=($!)
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || true; done
done
wait || true

for h in "${harnesses[@]}"; do
    log="$work/$h.log"
    rc="$(cat "$work/$h.rc" 2>/dev/null || echo 1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
    rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    findings="$(find "$work/artifacts/$h" -type f | wc -l)"
    if [ "$rc" = 0 ] && [ "$findings" = 0 ]; then verdict=ok; else verdict="FINDING (rc $rc)"; status=1; fi
    printf 'run-fuzz: %-12s %s  execs %s  exec/s %s  cov %s  ft %s  peak_rss %s MB  %ss\n' "$h" "$verdict" \
        "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${rss:-?}" "$(cat "$work/$h.secs" 2>/dev/null || echo ?)"
    if [ "$verdict" != ok ]; then
        grep -E 'ERROR|SUMMARY|==[0-9]+==|runtime error|deadly|Test unit written' "$log" | head -n 20 >&2 || true
        echo "run-fuzz: $h: log $log, artifacts in $work/artifacts/$h/ (save as tests/data/fuzz_regressions/$h/<name>)" >&2
    fi
done
echo "run-fuzz: total $(( $(date +%s) - start )) s, $([ $status = 0 ] && echo 'no findings' || echo 'FINDINGS')"
exit $status
