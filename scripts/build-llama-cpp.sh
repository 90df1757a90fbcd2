#!/usr/bin/env bash
# Builds stock upstream llama.cpp tools (llama-perplexity, llama-simple, llama-bench, llama-completion)
# for tests that compare transmla with the reference implementation, and prints the directory that
# holds the binaries as the last line of stdout (every other message goes to stderr).
#
# The llama.cpp sources come from the PyPI source distribution llama-cpp-python==0.3.36, which carries
# a complete llama.cpp tree under vendor/llama.cpp. The sdist is downloaded with
# `pip download --no-deps --no-binary :all:` (nothing of that package is installed or imported) and
# checked by size and SHA-256. It is built with plain CMake and the system compiler; no curl/OpenSSL,
# no network access during the build. Everything lives in a cache outside the repository:
#   $TRANSMLA_CACHE (default: ~/.cache/transmla)/llama.cpp-0.3.36-<key>/
# where <key> is a short hash of the compilers' versions, the build options and the CPU (the build
# uses GGML_NATIVE=ON, i.e. -march=native, so a binary is only valid on the CPU kind it was built on).
# A complete build (stamp file present) is re-used without network or rebuilding. The build runs in a
# temporary directory inside the cache that is renamed into place at the end, so an interrupted
# build never leaves a half-filled cache entry. Only the binaries are kept (they are linked
# statically against llama/ggml; they need only system libraries such as libgomp and libstdc++). The
# sdist (77 MB) stays in the cache too, so a rebuild (new compiler or CPU kind) needs no network.
# A cold build takes about 4-7 minutes on 2 cores; the entry is about 40 MB.
#
# Environment: TRANSMLA_CACHE (cache root), TRANSMLA_JOBS (parallel build jobs, default: nproc),
#              CC / CXX (compilers, default: cc / c++).
# Usage: scripts/build-llama-cpp.sh       # prints e.g. /root/.cache/transmla/llama.cpp-0.3.36-1a2b3c4d5e6f
#        LLAMA_BIN="$(scripts/build-llama-cpp.sh | tail -n1)"; "$LLAMA_BIN/llama-perplexity" --help
set -euo pipefail

PKG_SPEC="llama-cpp-python==0.3.36"
SDIST_NAME="llama_cpp_python-0.3.36.tar.gz"
SDIST_SIZE=76589250
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_SUBDIR="llama_cpp_python-0.3.36/vendor/llama.cpp"
NAME_PREFIX="llama.cpp-0.3.36"
TARGETS=(llama-perplexity llama-simple llama-bench llama-completion)
STAMP_NAME=".complete"
UPSTREAM_COMMIT="0c1e57098"   # the sdist's CHANGELOG: "update llama.cpp to ggml-org/llama.cpp@0c1e57098"
# LLAMA_CURL is deprecated (a no-op) in this tree; HTTPS support is now cpp-httplib + OpenSSL,
# switched off with LLAMA_OPENSSL=OFF. llama-cli is only configured with LLAMA_BUILD_SERVER=ON, so the
# non-interactive generator is llama-completion. LLAMA_BUILD_APP (the unified binary) is not needed.
# -U__AMX_INT8__: on CPUs with AMX (Sapphire Rapids and later) -march=native compiles ggml's AMX
# matmul kernels, which crashed every run on the first matmul here (SIGSEGV at ldtilecfg in
# ggml_backend_amx_mul_mat: the tile config it loads is garbage, the compiler having optimised the
# stack copy away; seen on an Intel Xeon with AMX, December 2026).
# Those kernels are compiled only when __AMX_INT8__ is defined, and -U undoes the built-in macro
# whatever the flag order (-mno-amx-* would have to follow -march=native, which ggml adds last).
# Without AMX ggml uses its AVX-512/AVX2 kernels, as on any other x86 CPU; a no-op on CPUs without AMX.
# The sdist is no git checkout (its vendor/llama.cpp/.git points nowhere), so the commit is given
# directly and CMake's git probing is short-circuited (GIT_EXECUTABLE/GIT_EXE=false), lest git finds
# a repository above the cache and stamps its commit into the binaries.
CMAKE_OPTIONS=(
    -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_C_FLAGS=-U__AMX_INT8__
    -DCMAKE_CXX_FLAGS=-U__AMX_INT8__
    -DGGML_NATIVE=ON
    -DGGML_CCACHE=OFF
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_COMMIT="$UPSTREAM_COMMIT"
    -DLLAMA_BUILD_NUMBER=0
)

CACHE="${TRANSMLA_CACHE:-${HOME:?HOME is not set; set TRANSMLA_CACHE}/.cache/transmla}"
CC="${CC:-cc}"
CXX="${CXX:-c++}"
# The cache key must describe the build completely: flags from the environment are not used.
unset CFLAGS CXXFLAGS CPPFLAGS LDFLAGS

say() { echo "build-llama-cpp: $*" >&2; }
die() { echo "build-llama-cpp: error: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is required (Debian: apt-get install python3 python3-pip)"
command -v cmake >/dev/null 2>&1 || die "cmake is required (Debian: apt-get install cmake)"
command -v tar >/dev/null 2>&1 || die "tar is required"
command -v "$CC" >/dev/null 2>&1 || die "C compiler '$CC' not found (Debian: apt-get install gcc; or set CC)"
command -v "$CXX" >/dev/null 2>&1 || die "C++ compiler '$CXX' not found (Debian: apt-get install g++; or set CXX)"

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
text_sha256() { python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'; }
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
# complete DIR -> 0 when DIR holds the stamp (written last) and every target as an executable.
complete() {
    local d="$1" t
    [[ -f "$d/$STAMP_NAME" ]] || return 1
    for t in "${TARGETS[@]}"; do
        [[ -x "$d/$t" && -f "$d/$t" ]] || return 1
    done
    return 0
}

# The cache key: everything that makes a binary valid or not here.
cpu_flags="$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo 2>/dev/null || true)"
[[ -n "$cpu_flags" ]] || say "warning: no CPU flags line in /proc/cpuinfo; the cache key covers only the compilers"
key_text="$(
    printf 'arch: %s\n' "$(uname -m)"
    printf 'cpu: %s\n' "$cpu_flags"
    printf 'cc: %s\n' "$("$CC" --version 2>&1 | head -n1)"
    printf 'cxx: %s\n' "$("$CXX" --version 2>&1 | head -n1)"
    printf 'options: %s\n' "${CMAKE_OPTIONS[*]}"
    printf 'targets: %s\n' "${TARGETS[*]}"
    printf 'source: %s\n' "$SDIST_SHA256"
)"
KEY="$(printf '%s' "$key_text" | text_sha256 | cut -c1-12)"

mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE (set TRANSMLA_CACHE to a writable place)"
CACHE="$(cd "$CACHE" && pwd -P)"   # print an absolute path even for a relative TRANSMLA_CACHE
DEST="$CACHE/$NAME_PREFIX-$KEY"
SDIST="$CACHE/$SDIST_NAME"

if complete "$DEST"; then
    say "using cached $DEST"
    echo "$DEST"
    exit 0
fi

# Serialise concurrent builds of the same key (another run may finish it while we wait).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.$NAME_PREFIX-$KEY.lock"
    if ! flock -n 9; then
        say "another build of $DEST is running; waiting for it"
        flock 9
    fi
    if complete "$DEST"; then
        say "using cached $DEST"
        echo "$DEST"
        exit 0
    fi
    # With the lock held, build directories of this key are leftovers of killed runs.
    for stale in "$CACHE/.build-$NAME_PREFIX-$KEY".*; do
        [[ -d "$stale" ]] && { say "removing the leftover $stale"; rm -rf "$stale"; }
    done
fi
[[ -e "$DEST" ]] && { say "removing incomplete $DEST"; rm -rf "$DEST"; }

TMPDIR_BUILD="$(mktemp -d "$CACHE/.build-$NAME_PREFIX-$KEY.XXXXXX")"
trap 'rm -rf "$TMPDIR_BUILD"' EXIT
# A signal to this script (Ctrl-C, kill, a test timeout) stops the build at once; the EXIT trap then
# removes the temporary directory. (bash defers a trapped signal until a foreground child ends, so
# the long steps run in the background, in their own process group, and are waited for.)
CHILD=""
on_signal() {
    say "interrupted; stopping the build"
    if [[ -n "$CHILD" ]]; then
        kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
        CHILD=""
    fi
    exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
# step CMD... : runs CMD as described above (plainly where setsid is missing).
step() {
    if command -v setsid >/dev/null 2>&1; then
        local rc=0
        setsid -w "$@" &
        CHILD=$!
        wait "$CHILD" || rc=$?
        CHILD=""
        return "$rc"
    fi
    "$@"
}

if ! valid "$SDIST" "$SDIST_SIZE" "$SDIST_SHA256"; then
    [[ -e "$SDIST" ]] && { say "removing invalid $SDIST"; rm -f "$SDIST"; }
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip is required to download $PKG_SPEC (Debian: apt-get install python3-pip)"
    say "downloading $PKG_SPEC source distribution from PyPI (about 77 MB) into $CACHE"
    # pip prepares the sdist's metadata, which fetches its build backend (scikit-build-core) into an
    # isolated environment; nothing is built or installed.
    if ! python3 -m pip download --no-deps --no-binary :all: --no-cache-dir --disable-pip-version-check \
            --quiet --dest "$TMPDIR_BUILD/dl" "$PKG_SPEC" >&2; then
        die "pip download $PKG_SPEC failed (is https://pypi.org reachable? proxy settings?)"
    fi
    [[ -f "$TMPDIR_BUILD/dl/$SDIST_NAME" ]] ||
        die "pip did not produce $SDIST_NAME (got: $(find "$TMPDIR_BUILD/dl" -mindepth 1 -printf '%f '))"
    valid "$TMPDIR_BUILD/dl/$SDIST_NAME" "$SDIST_SIZE" "$SDIST_SHA256" ||
        die "the downloaded sdist does not match the expected size/SHA-256; refusing to use it"
    mv -f "$TMPDIR_BUILD/dl/$SDIST_NAME" "$SDIST"
else
    say "using cached $SDIST"
fi

say "extracting $SDIST_SUBDIR"
mkdir -p "$TMPDIR_BUILD/src"
tar -xzf "$SDIST" -C "$TMPDIR_BUILD/src" --strip-components=3 --no-same-owner \
    --exclude="$SDIST_SUBDIR/.git" "$SDIST_SUBDIR" ||
    die "cannot extract $SDIST_SUBDIR from $SDIST"
[[ -f "$TMPDIR_BUILD/src/CMakeLists.txt" ]] || die "$SDIST has no $SDIST_SUBDIR/CMakeLists.txt"

JOBS="${TRANSMLA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
say "configuring (key $KEY: $("$CXX" --version 2>&1 | head -n1))"
step cmake -S "$TMPDIR_BUILD/src" -B "$TMPDIR_BUILD/build" \
      -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" -DGIT_EXECUTABLE="$(command -v false)" -DGIT_EXE="$(command -v false)" \
      "${CMAKE_OPTIONS[@]}" >&2 ||
    die "cmake configuration failed"
say "building ${TARGETS[*]} with $JOBS jobs (a cold build takes several minutes)"
step cmake --build "$TMPDIR_BUILD/build" --parallel "$JOBS" --target "${TARGETS[@]}" >&2 ||
    die "the build failed"

OUT="$TMPDIR_BUILD/out"
mkdir -p "$OUT"
for t in "${TARGETS[@]}"; do
    [[ -x "$TMPDIR_BUILD/build/bin/$t" ]] || die "the build did not produce bin/$t"
    cp "$TMPDIR_BUILD/build/bin/$t" "$OUT/$t"
done
# The binaries must not refer to anything in the (soon deleted) build tree.
if command -v ldd >/dev/null 2>&1; then
    for t in "${TARGETS[@]}"; do
        if ldd "$OUT/$t" 2>&1 | grep -E "not found|$TMPDIR_BUILD" >&2; then
            die "$t needs libraries that are not kept in the cache"
        fi
    done
fi
{
    printf 'built: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'source: %s (%s)\n' "$PKG_SPEC" "$SDIST_SUBDIR"
    printf '%s\n' "$key_text"
} >"$OUT/BUILD-INFO.txt"
printf '%s\n' "${TARGETS[@]}" >"$OUT/$STAMP_NAME"   # written last: marks the entry complete
mv -T "$OUT" "$DEST"   # same filesystem: atomic rename
say "ready: $DEST"
echo "$DEST"
