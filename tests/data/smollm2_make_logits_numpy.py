#!/usr/bin/env python3
"""Writes tests/data/smollm2_logits_numpy.json: a float64 numpy forward pass of SmolLM2-135M on
the tokens recorded in smollm2_logits_llamacpp.json — the tight check of the C++ forward.

Independent of the library: weights are dequantised by the PyPI `gguf` package (gguf-py,
`gguf.quants.dequantize`), the forward is this file's, and RoPE uses llama.cpp's own convention on
the file's rows as stored (the "NORM" interleaved pairing on the permuted Q/K rows), whereas the
C++ model un-permutes the rows and uses the half-split pairing. Activations are not quantised, so
it differs from llama.cpp (which quantises activations to 8 bits inside its Q4_1/Q8_0 matmuls).

  python3 -m venv v && v/bin/pip install numpy gguf
  v/bin/python smollm2_make_logits_numpy.py --model ~/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf \
      --tokens smollm2_logits_llamacpp.json --out smollm2_logits_numpy.json
"""
import argparse
import json

import numpy as np
import gguf
from gguf.quants import dequantize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--emulate-llamacpp", action="store_true",
                    help="round activations as llama.cpp's CPU matmuls do (8-bit blocks of 32 before "
                         "Q4_1/Q8_0 weights, f16 K/V cache and f16 attention operands) to explain the "
                         "difference from llama.cpp; not used for the stored file")
    a = ap.parse_args()
    emu = a.emulate_llamacpp

    def q8(v):  # llama.cpp's Q8_1 / Q8_0 activation blocks: 32 values, scale max|x|/127, round
        if not emu:
            return v
        sh = v.shape
        b = v.reshape(-1, 32)
        dsc = np.abs(b).max(axis=1, keepdims=True) / 127.0
        dsc16 = dsc.astype(np.float16).astype(np.float64)
        qv = np.round(np.divide(b, dsc, out=np.zeros_like(b), where=dsc > 0))
        return (qv * dsc16).reshape(sh)

    def f16(v):
        return v.astype(np.float16).astype(np.float64) if emu else v
    ref = json.load(open(a.tokens))
    tokens = ref["tokens"]
    probe = ref["probe_ids"]
    r = gguf.GGUFReader(a.model)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}

    def W(name):
        t = next(t for t in r.tensors if t.name == name)
        w = dequantize(t.data, t.tensor_type)  # numpy shape [out, in] (ggml ne reversed)
        return np.asarray(w, dtype=np.float64).reshape(list(reversed([int(x) for x in t.shape])))

    nl = f["llama.block_count"]
    nh = f["llama.attention.head_count"]
    nkv = f["llama.attention.head_count_kv"]
    D = f["llama.embedding_length"]
    d = D // nh
    eps = f["llama.attention.layer_norm_rms_epsilon"]
    base = f["llama.rope.freq_base"]
    emb = W("token_embd.weight")
    T = len(tokens)
    x = emb[tokens]  # [T, D]
    inv = base ** (-np.arange(0, d, 2) / d)  # [d/2]
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope_interleaved(v):  # v [T, H, d], pairs (2i, 2i+1)
        u, w = v[..., 0::2], v[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        o = np.empty_like(v)
        o[..., 0::2] = u * c - w * s
        o[..., 1::2] = u * s + w * c
        return o

    def rms(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(nl):
        p = f"blk.{l}."
        h = rms(x, W(p + "attn_norm.weight"))
        hq = q8(h)
        q = rope_interleaved((hq @ W(p + "attn_q.weight").T).reshape(T, nh, d))
        k = rope_interleaved((hq @ W(p + "attn_k.weight").T).reshape(T, nkv, d))
        v = (hq @ W(p + "attn_v.weight").T).reshape(T, nkv, d)
        o = np.empty((T, nh, d))
        for i in range(nh):
            kv = i // (nh // nkv)
            s = f16(q[:, i]) @ f16(k[:, kv]).T / np.sqrt(d) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            o[:, i] = f16(s) @ f16(v[:, kv])
        x = x + q8(o.reshape(T, D)) @ W(p + "attn_output.weight").T
        h = rms(x, W(p + "ffn_norm.weight"))
        hq = q8(h)
        g = hq @ W(p + "ffn_gate.weight").T
        u = hq @ W(p + "ffn_up.weight").T
        x = x + q8(g / (1 + np.exp(-g)) * u) @ W(p + "ffn_down.weight").T
    x = rms(x, W("output_norm.weight"))
    names = [t.name for t in r.tensors]
    out_w = W("output.weight") if "output.weight" in names else emb
    logits = q8(x) @ out_w.T  # [T, V]
    positions = []
    for i in range(T):
        lg = logits[i]
        mx = lg.max()
        top = np.argsort(-lg, kind="stable")[:20]
        positions.append({
            "pos": i,
            "top_ids": [int(j) for j in top],
            "top_logits": [float(lg[j]) for j in top],
            "probe_logits": [float(lg[j]) for j in probe],
            "logsumexp": float(mx + np.log(np.exp(lg - mx).sum())),
            "mean": float(lg.mean()),
        })
    out = {
        "producer": "float64 numpy forward (tests/data/smollm2_make_logits_numpy.py), weights dequantised by gguf-py",
        "model": ref["model"],
        "prompt": ref["prompt"],
        "tokens": tokens,
        "probe_ids": probe,
        "vocab": int(logits.shape[1]),
        "tied_embeddings": "output.weight" not in names,
        "positions": positions,
    }
    with open(a.out, "w") as fo:
        json.dump(out, fo, indent=1)


if __name__ == "__main__":
    main()
