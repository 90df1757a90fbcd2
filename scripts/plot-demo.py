#!/usr/bin/env python3
"""Pictures of the smollm2_demo report (README command 1 runs this after the demo).

    python3 scripts/plot-demo.py [REPORT.json] [OUT_DIR]      # defaults: build/smollm2_demo_report.json docs/img

Writes three PNGs into OUT_DIR, each with the run's date and machine (CPU model, ISA) in its footer:
  demo_perplexity_vs_kv_bytes.png  perplexity against KV cache bytes per token, one marker per row
  demo_layer_attn_error.png        per-layer attention-output error of every converted row
  demo_decode_time.png             decode-attention time per token against context length
Every number comes from the report; rows are grouped by their "method" field, so a row added to
the demo shows up here without changes. Needs matplotlib (scripts/run-demo.sh installs it into a
virtual environment).
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {  # method prefix -> colour, marker; anything else gets the next colour of the cycle
    "original": ("black", "*"),
    "exact": ("tab:green", "D"),
    "TransMLA": ("tab:blue", "o"),
    "MHA2MLA": ("tab:red", "s"),
}


def style(method, _cycle=iter(["tab:purple", "tab:orange", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]),
          _seen={}):
    for prefix, st in STYLE.items():
        if method.startswith(prefix):
            return st
    if method not in _seen:
        _seen[method] = (next(_cycle, "tab:gray"), "^")
    return _seen[method]


def machine_line(rep):
    m = rep.get("machine", {})
    isa = set(m.get("isa", []))
    if "avx512f" in isa:
        extra = [n for f, n in (("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"), ("amx_tile", "AMX")) if f in isa]
        isa_s = "AVX-512" + (" (" + ", ".join(extra) + ")" if extra else "")
    elif "avx2" in isa:
        isa_s = "AVX2" + (" + FMA" if "fma" in isa else "")
    else:
        isa_s = "SSE2"
    t = rep.get("threads", {})
    threads = f"{t['team']} threads" if "team" in t else ""
    if t.get("rows_on_fewer"):
        threads += f" ({len(t['rows_on_fewer'])} rows on fewer: CPUs busy)"
    parts = [m.get("date", "?"), m.get("cpu", "unknown CPU"), isa_s, f"{m.get('cpus', '?')} CPUs", threads]
    return "  |  ".join(p for p in parts if p)


def finish(fig, rep, path, note=""):
    foot = machine_line(rep) + "\nsmollm2_demo, SmolLM2-135M-Instruct, conversions without fine-tuning"
    if note:
        foot += "\n" + note
    lines = foot.count("\n") + 1
    fig.text(0.5, 0.01, foot, ha="center", va="bottom", fontsize=7.5, color="dimgray")
    fig.tight_layout(rect=(0, 0.025 + 0.028 * lines, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot-demo: wrote {path}")


def plot_perplexity(rep, path):
    rows = rep["rows"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    base = next((r for r in rows if r["method"].startswith("original")), rows[0])
    ppl0 = base["perplexity"]["perplexity"]
    ax.axhline(ppl0, color="black", lw=0.8, ls=":", zorder=0)
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    lower = {}  # a method whose points lie under another's at the same cache size is labelled underneath
    for method, rs in by_method.items():
        for r in rs:
            same = [o["perplexity"]["perplexity"] for m2, os_ in by_method.items() if m2 != method for o in os_
                    if o["kv_bytes_per_token_fp32"] == r["kv_bytes_per_token_fp32"]]
            y = r["perplexity"]["perplexity"]
            if any(y * (1 + 1e-3) < v < y * 1.6 for v in same) or (method.startswith("exact") and same):
                lower[method] = True
    for method, rs in by_method.items():
        colour, marker = style(method)
        rs = sorted(rs, key=lambda r: r["kv_bytes_per_token_fp32"])
        xs = [r["kv_bytes_per_token_fp32"] / 1024 for r in rs]
        ys = [r["perplexity"]["perplexity"] for r in rs]
        ax.plot(xs, ys, color=colour, marker=marker, ms=12 if marker == "*" else 6, lw=1,
                ls="-" if len(rs) > 1 else "none", label=method, zorder=2 if marker == "*" else 3,
                mfc="none" if method.startswith("exact") else colour, mew=1.5)
        below = lower.get(method, False)  # exact sits on the original: underneath too
        for r, x, y in zip(rs, xs, ys):
            what = r["budget"] if len(rs) > 1 else f"{method.split(' ')[0]} {r['budget']}"
            ax.annotate(f"{what}: {y:,.2f}" if y < 100 else f"{what}: {y:,.0f}", (x, y),
                        textcoords="offset points", xytext=(6, -13) if below else (-6, 7), fontsize=8, color=colour)
    ax.set_yscale("log")
    top = max(r["perplexity"]["perplexity"] for r in rows)
    ax.set_ylim(min(ppl0, min(r["perplexity"]["perplexity"] for r in rows)) / 1.6, top * 1.8)
    ax.set_xlabel(f"KV cache per token, all {rep.get('layers', '?')} layers (KiB, fp32)")
    ax.set_ylabel("perplexity (log scale; lower is better)")
    ev = rep.get("evaluation", {})
    ax.set_title(f"Perplexity vs KV cache size ({ev.get('max_tokens', '?')} tokens, windows of "
                 f"{ev.get('window', '?')}; no fine-tuning)", fontsize=10)
    ax.set_xlim(0, max(r["kv_bytes_per_token_fp32"] for r in rows) / 1024 * 1.12)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    finish(fig, rep, path)


def plot_layer_error(rep, path):
    # Lossy rows on a linear axis (top); rows that lose nothing (exact mode: fp64 rounding, about
    # 1e-15) would flatten that axis, so they get a log axis of their own underneath.
    series = []
    for r in rep["rows"]:
        conv = r.get("conversion")
        if not conv:
            continue
        layers = conv["layers"]
        xs = [l.get("layer", i) for i, l in enumerate(layers)]
        ys = [abs(l["attn_output_error"]) if l.get("attn_output_error") is not None else math.nan for l in layers]
        series.append((r, xs, ys))
    lossless = [s for s in series if max(y for y in s[2] if not math.isnan(y)) < 1e-6]
    lossy = [s for s in series if s not in lossless]
    if lossless:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        ax2 = None
    for target, group in ((ax, lossy), (ax2, lossless)):
        for r, xs, ys in group:
            colour, marker = style(r["method"])
            ls = "--" if r["budget"] not in ("50%", "100%") else "-"
            target.plot(xs, [max(y, 1e-18) for y in ys], color=colour, marker=marker, ms=3.5, lw=1, ls=ls,
                        label=f"{r['method']} {r['budget']}")
    top = max((y for _, _, ys in lossy for y in ys if not math.isnan(y)), default=1.0)
    ax.set_ylim(0, top * 1.45)  # room for the legend above the lines
    ax.set_ylabel("relative error")
    ax.set_title("Per-layer attention-output error on held-out text (each layer alone, original inputs)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", ncol=3)
    last = ax
    if ax2 is not None:
        ax2.set_yscale("log")
        ax2.set_ylim(1e-17, 1e-13)
        ax2.set_ylabel("log scale")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=8, loc="upper right")
        last = ax2
    last.set_xlabel("layer")
    finish(fig, rep, path, "error = ||out_converted - out_GQA|| / ||out_GQA|| of the layer's attention block on "
                           "256 held-out calibration-text tokens")


def plot_decode(rep, path):
    dc = rep["decode_curve"]
    ctx = dc["contexts"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for c in dc["curves"]:
        colour, marker = style(c["method"])
        ms = [u / 1000 for u in c["us_per_token"]]
        ax.plot(ctx, ms, color=colour, marker=marker, lw=1.2,
                label=f"{c['method']} {c['budget']} ({c['attention'].upper()}, {c['kv_values_per_token_per_layer']:.0f} "
                      f"values/token/layer)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ctx)
    ax.set_xticklabels([str(c) for c in ctx])
    ax.set_xlabel("context length (cached tokens)")
    ax.set_ylabel("decode attention, ms per token (all layers)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Decode-attention time per token vs context (median of {dc.get('reps', '?')} steps per layer)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    finish(fig, rep, path, "one token's attention blocks of all layers (projections, RoPE, cache append, attention), "
                           "random cache contents, wall clock")


def main():
    report = sys.argv[1] if len(sys.argv) > 1 else "build/smollm2_demo_report.json"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/img"
    with open(report) as f:
        rep = json.load(f)
    os.makedirs(out, exist_ok=True)
    plot_perplexity(rep, os.path.join(out, "demo_perplexity_vs_kv_bytes.png"))
    plot_layer_error(rep, os.path.join(out, "demo_layer_attn_error.png"))
    plot_decode(rep, os.path.join(out, "demo_decode_time.png"))


if __name__ == "__main__":
    main()
