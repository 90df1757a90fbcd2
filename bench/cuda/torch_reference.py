#!/usr/bin/env python3
"""PyTorch side of the CUDA attention benchmarks (run on the GPU machine; not part of CI).

Times, on the same GPU and for the same shapes and names as bench_cuda:
  * GQA decode and prefill with torch.nn.functional.scaled_dot_product_attention (bf16),
  * absorbed MLA decode with a plain PyTorch reference (bmm for Q·Kᵀ over the [c | k_pe] rows,
    f32 softmax, bmm with the first r columns),
with CUDA events, warm-up and the median of the repetitions, and reports GB/s, TFLOP/s and % of
the time floor with the formulas of docs/performance.md against ceilings measured the same way as bench_cuda
(a 1 GiB device-to-device copy; a bf16 8192³ matmul).

With --bench-json FILE (the output of `bench_cuda --benchmark_format=json` or
`--benchmark_out=FILE`), it prints transmla and PyTorch side by side, per shape.

    python3 bench/cuda/torch_reference.py --bench-json bench_cuda.json [--filter gqa_decode] [--json torch.json]
"""
import argparse
import json
import math
import re
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    print("torch_reference.py: PyTorch is not installed; nothing measured", file=sys.stderr)
    sys.exit(77)


def median_seconds(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    return statistics.median(times)


def ceilings():
    n = 1 << 29  # 1 GiB of bf16
    src = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 2 / median_seconds(lambda: dst.copy_(src), reps=10) / 1e9
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    tf = 2 * m**3 / median_seconds(lambda: a @ b, reps=10) / 1e12
    return bw, tf


def sdpa_gqa(q, k, v, causal):
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except TypeError:  # torch < 2.5: expand the KV heads (more memory traffic than a native GQA kernel)
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal)


def gqa_decode(n_q, n_kv, d, batch, ctx):
    q = torch.randn(batch, n_q, 1, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, n_kv, ctx, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    t = median_seconds(lambda: sdpa_gqa(q, k, v, False))
    return t, 2.0 * ctx * n_kv * d * 2 * batch, 4.0 * ctx * n_q * d * batch


def mla_decode(heads, r, dr, batch, ctx):
    w = r + dr
    q = torch.randn(batch, heads, w, dtype=torch.bfloat16, device="cuda")
    cache = torch.randn(batch, ctx, w, dtype=torch.bfloat16, device="cuda")
    scale = 1.0 / math.sqrt(192.0)

    def run():
        s = torch.bmm(q, cache.transpose(1, 2)).float() * scale  # [B, H, L]
        p = torch.softmax(s, dim=-1).to(torch.bfloat16)
        return torch.bmm(p, cache[:, :, :r])  # V = the first r columns of the rows

    t = median_seconds(run)
    return t, 1.0 * ctx * w * 2 * batch, 2.0 * ctx * heads * (2.0 * r + dr) * batch


def gqa_prefill(n_q, n_kv, d, length):
    q = torch.randn(1, n_q, length, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, n_kv, length, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    t = median_seconds(lambda: sdpa_gqa(q, k, v, True))
    pairs = length * (length + 1) / 2
    return t, 2.0 * length * (2.0 * n_q * d + 2.0 * n_kv * d), 2.0 * pairs * n_q * 2 * d


def cases():
    batches, contexts = [1, 16, 64, 128], [1024, 4096, 16384, 32768]
    for name, nq, nkv, d in [("llama3_8b", 32, 8, 128), ("smollm2_135m", 9, 3, 64)]:
        for b in batches:
            for ctx in contexts:
                yield f"gqa_decode/{name}/batch:{b}/ctx:{ctx}", (lambda nq=nq, nkv=nkv, d=d, b=b, ctx=ctx: gqa_decode(nq, nkv, d, b, ctx))
    for name, h, r, dr in [("deepseek_v2_lite", 16, 512, 64), ("deepseek_v3", 128, 512, 64), ("smollm2_mla_r128", 9, 128, 64)]:
        for b in batches:
            for ctx in contexts:
                yield f"mla_decode/{name}/batch:{b}/ctx:{ctx}", (lambda h=h, r=r, dr=dr, b=b, ctx=ctx: mla_decode(h, r, dr, b, ctx))
    for length in [1024, 4096, 16384]:
        yield f"gqa_prefill/llama3_8b/len:{length}", (lambda n=length: gqa_prefill(32, 8, 128, n))
        yield f"gqa_prefill/smollm2_135m/len:{length}", (lambda n=length: gqa_prefill(9, 3, 64, n))


def load_bench(path):
    """transmla medians by base name (layout suffix kept as a variant)."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data.get("benchmarks", []):
        if b.get("aggregate_name") != "median":
            continue
        name = re.sub(r"_median$", "", b["run_name"] if "run_name" in b else b["name"])
        name = re.sub(r"/manual_time$", "", name)
        base, _, variant = name.rpartition("/") if name.split("/")[-1] in ("contiguous", "paged16", "paged64") else (name, "", "")
        out.setdefault(base, {})[variant or "-"] = b
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-json", help="bench_cuda JSON output to print side by side")
    ap.add_argument("--filter", default="", help="regular expression on the benchmark names")
    ap.add_argument("--json", help="write the PyTorch results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_reference.py: no CUDA GPU visible to PyTorch; nothing measured", file=sys.stderr)
        return 77
    bw, tf = ceilings()
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}: ceilings {bw:.0f} GB/s (copy), {tf:.1f} TFLOP/s (bf16 matmul)")
    ours = load_bench(args.bench_json) if args.bench_json else {}
    results = []
    hdr = f"{'benchmark':<48} {'torch us':>10} {'GB/s':>8} {'TFLOP/s':>8} {'%floor':>7}"
    if ours:
        hdr += f" | {'transmla us (layout)':>28} {'GB/s':>8} {'TFLOP/s':>8} {'%floor':>7} {'speedup':>8}"
    print(hdr)
    for name, fn in cases():
        if args.filter and not re.search(args.filter, name):
            continue
        try:
            t, nbytes, flops = fn()
        except torch.cuda.OutOfMemoryError:
            print(f"{name:<48} {'(out of memory)':>10}")
            torch.cuda.empty_cache()
            continue
        floor = max(nbytes / (bw * 1e9), flops / (tf * 1e12))
        row = dict(name=name, seconds=t, gbps=nbytes / t / 1e9, tflops=flops / t / 1e12, pct_floor=100 * floor / t)
        results.append(row)
        line = f"{name:<48} {t * 1e6:>10.1f} {row['gbps']:>8.0f} {row['tflops']:>8.2f} {row['pct_floor']:>7.1f}"
        for variant, b in sorted(ours.get(name, {}).items()):
            us = b["real_time"] * {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "us")]
            line += (f" | {us:>18.1f} ({variant:>8}) {b.get('GB/s', 0):>8.0f}"
                     f" {b.get('TFLOP/s', 0):>8.2f} {b.get('%floor', 0):>7.1f} {t * 1e6 / us:>8.2f}")
        print(line, flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, ceiling_gbps=bw,
                           ceiling_tflops=tf, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
