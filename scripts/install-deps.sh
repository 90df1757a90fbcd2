#!/usr/bin/env bash
# Installs the Debian packages transmla needs that are missing (uses sudo when not root).
set -euo pipefail
pkgs=(cmake g++ make libeigen3-dev libxsimd-dev xtl-dev doctest-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev
      clang libclang-rt-14-dev python3 python3-pip)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3/pip may come from elsewhere (pyenv): accept any working interpreter.
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    kept=()
    for p in "${missing[@]}"; do [[ "$p" == python3 || "$p" == python3-pip ]] || kept+=("$p"); done
    missing=("${kept[@]}")
fi
# The demo's pictures need `python3 -m venv` (scripts/run-demo.sh): Debian's python3 has it only
# with python3-venv; other interpreters (pyenv) bring their own.
if ! { command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null; }; then
    missing+=(python3-venv)
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "install-deps: all Debian packages present"
fi
