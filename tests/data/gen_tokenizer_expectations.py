#!/usr/bin/env python3
"""Writes tests/data/smollm2_tokenizer_expectations.json: token ids of test strings as produced by
an independent implementation, Hugging Face `tokenizers`, configured like SmolLM2's own
tokenizer.json (pre-tokenizer Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)], BPE model, ByteLevel decoder) and built from
the vocabulary and merges stored in the GGUF (read with the `gguf` package).

Not needed at test time. To regenerate (versions used are recorded in the JSON):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf tokenizers
    /tmp/venv/bin/python tests/data/gen_tokenizer_expectations.py "$(scripts/fetch-model.sh | tail -n1)"
"""
import hashlib
import json
import random
import sys
from importlib.metadata import version
from pathlib import Path

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

HERE = Path(__file__).resolve().parent


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_llama3(tokens, merges):
    """SmolLM2's vocabulary behind Llama 3's pre-tokenizer and BPE(ignore_merges=True): exercises
    the library's llama3 splitting and ignore_merges against HF on a real vocabulary."""
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    return tk


def build(tokens, merges, specials):
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    if specials:
        tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tk


FIXED = [
    "Hello world",
    "Hello, world! How's it going?",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "multiple     spaces between    words",
    "I'm sure you'll see they've done what he'd said; it's John's. WE'RE LOUD 'S 'T",
    "''s quoted ' single ' apostrophes '",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e-5 1,000,000 2026-11-24",
    "phone: +1 (555) 010-9999, price $19.99, 50% off!!!",
    "Punctuation... !? ?! -- --- (parens) [brackets] {braces} <angle> @#$%^&*_=+|\\/~`",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00c5ngstr\u00f6m",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002\u4e2d\u6587\u5b57\u7b26\u3002\ud55c\uad6d\uc5b4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
    "emoji \U0001F600\U0001F680 \U0001F44D\U0001F3FD family \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "superscripts x\u00b2 + y\u00b3 \u00bd \u2153 roman \u216b fullwidth \uff11\uff12\uff13 arabic-indic \u0661\u0662",
    "nbsp\u00a0here, ideographic\u3000space, line\u2028separator, thin\u2009space",
    "def f(x):\n    return x ** 2  # comment\n\nprint(f(3))\n",
    "int main() { return 0; }",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b <filename>x.py",
    "",
    " ",
    "\n",
    "a",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "GPT-2's tokenizer uses byte-level BPE; SmolLM2 isolates digits: 2025.",
    # bytes whose character is not in the vocabulary are dropped before merging
    "a\x04b", "!\x04!", "x\U00050000y", "\x13\x14 \x16z\x1d",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3
    + list("0123456789") * 2
    + list(" " * 12) + ["\n", "\t", "\r", "\u00a0", "\u3000", "\u2003"]
    + list(".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`")
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S"]
    + list("\u00e9\u00e8\u00fc\u00f1\u00e7\u00df\u00f8\u00e5\u0153")
    + list("\u0416\u0436\u03a9\u03c9\u05d0\u0627\u0928\u0915\u093f\u0e01\u4e2d\u6587\u3042\u30ab\ud55c")
    + list("\u00b2\u00bd\u2167\uff15\u0663\u0967") + ["\U0001F600", "\U0001F44D", "\u200d", "\u0301"]
)


def random_strings(n, seed=20261124):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(length)))
    return out


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else str(Path.home() / ".cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf")
    r = gguf.GGUFReader(model)
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    merges = field_strings(r, "tokenizer.ggml.merges")
    types = field_ints(r, "tokenizer.ggml.token_type")
    pre = bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert pre == "smollm", pre
    specials = [t for t, ty in zip(tokens, types) if ty == 3]

    plain = build(tokens, merges, [])          # control tokens are plain text
    special = build(tokens, merges, specials)  # control tokens in the text are matched
    llama3 = build_llama3(tokens, merges)

    cases = []
    for text in FIXED + random_strings(300):
        ids = plain.encode(text, add_special_tokens=False).ids
        ids_special = special.encode(text, add_special_tokens=False).ids
        if not any(ch in text for ch in "\x04\x13\x14\x16\x1d\U00050000"):
            assert plain.decode(ids) == text, text
        ids_llama3 = llama3.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "ids_special": ids_special, "ids_llama3": ids_llama3})

    gpl = Path("/usr/share/common-licenses/GPL-3")
    files = []
    if gpl.exists():
        data = gpl.read_bytes()
        files.append({"path": str(gpl), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "ids": plain.encode(data.decode("utf-8"), add_special_tokens=False).ids})

    out = {
        "generator": "tests/data/gen_tokenizer_expectations.py",
        "tool": f"tokenizers {version('tokenizers')} (HF), vocab/merges read with gguf {version('gguf')}",
        "model_sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest(),
        "pre_tokenizer": pre,
        "cases": cases,
        "files": files,
    }
    dest = HERE / "smollm2_tokenizer_expectations.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {dest}: {len(cases)} cases, {len(files)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
