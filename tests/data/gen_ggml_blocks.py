#!/usr/bin/env python3
"""Writes two fixtures decoded by an independent implementation, the numpy dequantizers of the
`gguf` Python package (llama.cpp's gguf-py):

tests/data/ggml_blocks.json — for each ggml type, a few blocks of random bytes (the fp16/f32
    scale fields set to random finite values so the results are finite) and their dequantised
    values.
tests/data/smollm2_tensor_stats.json — for every tensor of the SmolLM2 GGUF: type, ne, and the
    sum, sum of squares and a strided sample of 8 of its dequantised values.

Not needed at test time. To regenerate:
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf numpy
    /tmp/venv/bin/python tests/data/gen_ggml_blocks.py "$(scripts/fetch-model.sh | tail -n1)"
"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

HERE = Path(__file__).resolve().parent

# offsets of the fp16 scale fields inside one block, per type (ggml-common.h)
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [],
}
N_BLOCKS = 3


def random_blocks(rng, t):
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    if t == T.F16:
        return rng.normal(size=bs * 64).astype(np.float16).view(np.uint8)
    if t == T.BF16:
        f = rng.normal(size=bs * 64).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(N_BLOCKS, ts), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        d = rng.uniform(-2.0, 2.0, size=N_BLOCKS).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(N_BLOCKS, 2)
    if t == T.MXFP4:  # E8M0 exponent byte: keep the values finite, include the subnormal codes 0, 1
        raw[:, 0] = rng.integers(100, 150, size=N_BLOCKS, dtype=np.uint8)
        raw[0, 0] = 0
        raw[1, 0] = 1
    return raw.reshape(-1)


def blocks_fixture():
    rng = np.random.default_rng(20261124)
    out = []
    for t in [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
              T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4]:
        raw = random_blocks(rng, t)
        vals = dequantize(raw, t).astype(np.float32).reshape(-1)
        assert np.all(np.isfinite(vals)), t.name
        out.append({"type": t.name, "id": int(t), "bytes": raw.tobytes().hex(),
                    "values": [float(f"{v:.9g}") for v in vals]})
    return out


def tensor_stats(model):
    r = gguf.GGUFReader(model)
    out = []
    for t in r.tensors:
        v = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        v64 = v.astype(np.float64)
        stride = max(1, v.size // 8)
        out.append({"name": t.name, "type": t.tensor_type.name, "ne": [int(x) for x in t.shape],
                    "n": int(v.size), "sum": float(v64.sum()), "sumsq": float((v64 * v64).sum()),
                    "stride": stride, "sample": [float(f"{x:.9g}") for x in v[::stride][:8]]})
    return out


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else str(Path.home() / ".cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf")
    tool = f"gguf {version('gguf')} (gguf.quants.dequantize), numpy {version('numpy')}"
    (HERE / "ggml_blocks.json").write_text(json.dumps({"tool": tool, "types": blocks_fixture()}) + "\n")
    (HERE / "smollm2_tensor_stats.json").write_text(
        json.dumps({"tool": tool, "tensors": tensor_stats(model)}) + "\n")
    print("wrote ggml_blocks.json and smollm2_tensor_stats.json", file=sys.stderr)


if __name__ == "__main__":
    main()
