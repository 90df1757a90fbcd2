#!/usr/bin/env python3
"""Writes tests/data/pretokenizer_pieces.json: how Hugging Face `tokenizers` pre-tokenizers cut
300 random strings, for the four splitting rules the library implements by hand:
  gpt2    ByteLevel(add_prefix_space=False, use_regex=True)
  smollm  Sequence[Digits(individual_digits=True), ByteLevel(...)]
  llama3  Split(Regex(<Llama 3 pattern>), "isolated")     (as in Llama 3's tokenizer.json)
  qwen2   Split(Regex(<Qwen2 pattern>), "isolated")       (as in Qwen2's tokenizer.json)
Pieces are stored as raw text (ByteLevel's byte→character mapping undone). No model needed.
    /tmp/venv/bin/pip install tokenizers && /tmp/venv/bin/python tests/data/gen_pretokenizer_pieces.py
"""
import json
import random
import sys
from importlib.metadata import version
from pathlib import Path

from tokenizers import Regex, pre_tokenizers as P

HERE = Path(__file__).resolve().parent
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# GPT-2 byte<->unicode table, to undo ByteLevel's mapping
_bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
_cs, _n = _bs[:], 0
for _b in range(256):
    if _b not in _bs:
        _bs.append(_b)
        _cs.append(256 + _n)
        _n += 1
UNMAP = {chr(c): b for b, c in zip(_bs, _cs)}


def raw(piece):
    return bytes(UNMAP[ch] for ch in piece).decode("utf-8")


POOL = (list("abcXYZ") * 4 + list("0123456789") * 2 + [" "] * 10 + ["\n", "\r", "\t", "\r\n", "\n\n", "  "] * 2
        + list(".,!?'\"()-_/\\@#$%&*+=<>") + ["'s", "'S", "'ll", "'LL", "'Re", "'ve", "'d", "'M", "'t"]
        + list("\u00e9\u00df\u0416\u4e2d\u3042\u0627\u0915\u093f") + ["\u00a0", "\u3000", "\u2003", "\u00b2", "\u216b",
                                                                     "\u0663", "\U0001F600", "\u0301"])


def main():
    rng = random.Random(424242)
    texts = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    tools = {
        "gpt2": P.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": P.Sequence([P.Digits(individual_digits=True), P.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "llama3": P.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        "qwen2": P.Split(Regex(QWEN2), behavior="isolated", invert=False),
    }
    cases = []
    for t in texts:
        c = {"text": t}
        for name, pt in tools.items():
            pieces = [p for p, _ in pt.pre_tokenize_str(t)]
            c[name] = [raw(p) for p in pieces] if name in ("gpt2", "smollm") else pieces
            assert "".join(c[name]) == t, (name, t)
        cases.append(c)
    out = {"generator": "tests/data/gen_pretokenizer_pieces.py", "tool": f"tokenizers {version('tokenizers')} (HF)",
           "patterns": {"llama3": LLAMA3, "qwen2": QWEN2}, "cases": cases}
    (HERE / "pretokenizer_pieces.json").write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n",
                                                   encoding="utf-8")
    print(f"wrote {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
