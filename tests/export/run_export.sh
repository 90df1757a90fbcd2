#!/usr/bin/env bash
# The engine test (CTest test_export_llama_cpp, label `export`): models exported by this library
# run in stock upstream llama.cpp (built by scripts/build-llama-cpp.sh from the llama-cpp-python
# 0.3.36 source distribution on PyPI), and their numbers there must match:
#   * mqa-exact.gguf (`deepseek2`, an exact conversion) against mqa.gguf (`llama`, the original):
#     llama-perplexity within 0.1 %, and the same 64 greedy tokens (llama-completion);
#   both with an F32 KV cache and flash attention off (with it on, llama.cpp keeps the cache in F16),
#   so neither run quantises weights or activations;
#   * transmla50.gguf / transmla31.gguf / output_aware50.gguf against this library's in-memory
#     perplexity of the same converted models, scored as llama-perplexity scores: within 0.5 %.
# Usage: run_export.sh EXPORT_MODELS_BINARY WORKDIR
# Environment: TRANSMLA_LLAMA_CPP_BIN (a directory with the llama.cpp tools; default: built or
# reused by scripts/build-llama-cpp.sh), TRANSMLA_MODEL / TRANSMLA_REQUIRE_MODEL as for the model
# tests, TRANSMLA_EXPORT_CHUNKS (default 4 windows of 512 tokens).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$1"
work="$2"
chunks="${TRANSMLA_EXPORT_CHUNKS:-4}"
ctx=512
threads="$(nproc 2>/dev/null || echo 2)"

model="${TRANSMLA_MODEL:-$HOME/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [[ ! -f "$model" ]]; then
    if [[ "${TRANSMLA_REQUIRE_MODEL:-0}" == 1 ]]; then echo "run_export: $model is missing" >&2; exit 1; fi
    echo "TRANSMLA_MODEL_SKIPPED: $model is missing (scripts/fetch-model.sh fetches it)"
    exit 0
fi
llama="${TRANSMLA_LLAMA_CPP_BIN:-$(bash "$root/scripts/build-llama-cpp.sh" | tail -n 1)}"
for t in llama-perplexity llama-completion; do
    [[ -x "$llama/$t" ]] || { echo "run_export: $llama/$t is missing" >&2; exit 1; }
done

rm -rf "$work"
mkdir -p "$work"
echo "== export_models (this library: convert, export, read back, perplexity)"
"$bin" "$work/models" --chunks "$chunks" --ctx "$ctx" --calib-seqs 8

ppl() {  # ppl NAME: llama-perplexity of models/NAME.gguf, log in work/NAME.ppl.log
    "$llama/llama-perplexity" -m "$work/models/$1.gguf" -f "$work/models/eval.txt" -c "$ctx" -b "$ctx" \
        --chunks "$chunks" -t "$threads" -ctk f32 -ctv f32 -fa off --no-warmup -lv 4 >"$work/$1.ppl.log" 2>&1 ||
        { tail -n 30 "$work/$1.ppl.log" >&2; echo "run_export: llama-perplexity failed on $1" >&2; exit 1; }
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$work/$1.ppl.log" | tail -n 1
}
gen() {  # gen NAME: 64 greedy tokens (llama-completion, F32 cache, no flash attention)
    "$llama/llama-completion" -m "$work/models/$1.gguf" -p "The GNU General Public License is" -n 64 --temp 0 \
        --top-k 1 --ignore-eos -no-cnv --no-warmup --no-display-prompt -t "$threads" -c 256 -ctk f32 -ctv f32 \
        -fa off </dev/null >"$work/$1.gen.txt" 2>"$work/$1.gen.log" ||
        { tail -n 30 "$work/$1.gen.log" >&2; echo "run_export: llama-completion failed on $1" >&2; exit 1; }
    cat "$work/$1.gen.txt"
}

echo "== llama.cpp ($llama)"
declare -A P
for m in original mqa mqa-exact transmla50 transmla31 output_aware50; do
    P[$m]="$(ppl "$m")"
    [[ -n "${P[$m]}" ]] || { tail -n 20 "$work/$m.ppl.log" >&2; echo "run_export: no perplexity for $m" >&2; exit 1; }
    kv="$(grep -m1 -o 'llama_kv_cache: size = .*' "$work/$m.ppl.log" || true)"
    echo "$m: llama.cpp perplexity ${P[$m]}  ($kv)"
done
g0="$(gen mqa)"
g1="$(gen mqa-exact)"

python3 - "$work/models/reference.json" "${P[original]}" "${P[mqa]}" "${P[mqa-exact]}" "${P[transmla50]}" \
    "${P[transmla31]}" "${P[output_aware50]}" "$g0" "$g1" <<'PY'
import json, sys
ref = json.load(open(sys.argv[1]))["models"]
lo, lm, le, l50, l31, loa = map(float, sys.argv[2:8])
g0, g1 = sys.argv[8], sys.argv[9]
ok = True
def check(what, a, b, tol):
    global ok
    d = abs(a / b - 1)
    good = d <= tol
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} {what}: {a:.4f} vs {b:.4f} ({100*d:.4f} %, limit {100*tol:g} %)")
print(f"info original SmolLM2 (llama, F32): llama.cpp {lo:.4f}, this library {ref['original']['perplexity']:.4f}")
check("exact deepseek2 vs original llama, both in llama.cpp", le, lm, 1e-3)
check("TransMLA 50 % in llama.cpp vs this library", l50, ref["transmla50"]["perplexity"], 5e-3)
check("TransMLA 31.25 % in llama.cpp vs this library", l31, ref["transmla31"]["perplexity"], 5e-3)
check("output-aware 50 % in llama.cpp vs this library", loa, ref["output_aware50"]["perplexity"], 5e-3)
same = g0 == g1 and len(g0) > 0
ok &= same
print(f"{'ok  ' if same else 'FAIL'} 64 greedy tokens of the exact deepseek2 file equal the original's: {g1[:60]!r}...")
if not same:
    print("original:", repr(g0)); print("exported:", repr(g1))
sys.exit(0 if ok else 1)
PY
