#!/usr/bin/env python3
"""Reference logits from stock Hugging Face transformers.

Usage: hf_logits.py MODEL_DIR TOKENS_FILE OUT_FILE [--attn-impl {sdpa,eager}]

Loads MODEL_DIR (config.json + *.safetensors, e.g. a dense DeepSeek-V3
checkpoint written by transmla) with
AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32): stock
modeling code only (no trust_remote_code, no hub kernels), on the CPU.
TOKENS_FILE holds one sequence of whitespace-separated integer token ids.  One
forward pass is run with no KV cache, and the logits are written to OUT_FILE as
raw little-endian float32, shape [T][vocab], row-major.  Prints T, vocab, the
argmax of the last position and the load / forward times.

Needs torch, transformers >= 5 and safetensors from PyPI (checked with torch
2.15.0 and transformers 5.24.0 / 5.25.0).
"""
import argparse
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("tokens_file")
    ap.add_argument("out_file")
    ap.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers attention implementation (default: sdpa)")
    args = ap.parse_args()

    with open(args.tokens_file) as f:
        ids = [int(t) for t in f.read().split()]
    if not ids:
        sys.exit(f"{args.tokens_file}: no token ids")

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation=args.attn_impl,
        use_kernels=False)  # >= 5.25 defaults to hub kernels (needs `kernels` + network)
    model.eval()
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    t2 = time.perf_counter()

    logits = out.logits[0].to(torch.float32).numpy()  # [T, vocab]
    np.ascontiguousarray(logits, dtype="<f4").tofile(args.out_file)
    T, vocab = logits.shape
    print(f"T={T} vocab={vocab} argmax_last={int(logits[-1].argmax())} "
          f"load_s={t1 - t0:.3f} forward_s={t2 - t1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
