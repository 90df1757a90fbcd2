#!/usr/bin/env bash
# The transformers half of the engine check (outside CI: torch does not fit the CI budget, see
# bench/RESULTS.md): stock Hugging Face transformers runs the DeepSeek-V3 directory that the engine
# test wrote (tests/export/export_models: transmla50-hf/) and its logits are compared with this
# library's logits of the same converted model on the same tokens.
#   bash scripts/check-transformers.sh [MODELS_DIR]   (default: build/tests/export/work/models)
# Installs, once, a virtual environment with pinned PyPI packages under
# ${TRANSMLA_CACHE:-~/.cache/transmla}/hf-venv (torch 2.15.0 — PyPI has no CPU-only Linux build, so
# this is about 2.8 GB of downloads, 5.6 GB on disk — transformers 5.24.0, safetensors, numpy).
# Passes when max |Δlogit| / max |logit| <= 1e-4.
set -euo pipefail
cd "$(dirname "$0")/.."
models="${1:-build/tests/export/work/models}"
[[ -d "$models/transmla50-hf" && -f "$models/tokens.txt" && -f "$models/transmla50.logits.f32" ]] ||
    { echo "check-transformers: $models has no transmla50-hf/ (run ctest -L export first)" >&2; exit 1; }
cache="${TRANSMLA_CACHE:-$HOME/.cache/transmla}"
venv="$cache/hf-venv"
pins=(torch==2.15.0 transformers==5.24.0 safetensors numpy)
if [[ ! -f "$venv/.complete" ]]; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    echo "check-transformers: installing ${pins[*]} into $venv (about 2.8 GB)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
    touch "$venv/.complete"
fi
"$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
"$venv/bin/python" scripts/hf_logits.py "$models/transmla50-hf" "$models/tokens.txt" "$out"
"$venv/bin/python" - "$out" "$models/transmla50.logits.f32" <<'PY'
import sys
import numpy as np
hf = np.fromfile(sys.argv[1], dtype=np.float32)
ours = np.fromfile(sys.argv[2], dtype=np.float32)
assert hf.size == ours.size, (hf.size, ours.size)
d = float(np.abs(hf - ours).max()) / float(np.abs(ours).max())
print(f"transformers vs this library, {hf.size} logits: max |diff| / max |logit| = {d:.3e} (limit 1e-4)")
sys.exit(0 if d <= 1e-4 else 1)
PY
