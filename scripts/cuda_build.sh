#!/usr/bin/env bash
# Builds unetpp with `--features cuda` on a machine that has no CUDA installed, for a GPU
# machine that has no Rust (docs/GPU.md): nvcc from NVIDIA's PyPI wheels in a virtualenv,
# link stubs for the CUDA libraries candle links (scripts/cuda_stubs.py), then a stripped
# binary in target/gpu/ to carry there and run with scripts/gpu_run.sh.
# The first run takes about 20 minutes on 2 cores (candle's kernels through nvcc, then candle);
# a rerun with nothing changed takes about 10 seconds.
#   bash scripts/cuda_build.sh --example quickstart [--compute-cap 90] [--cudnn]
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/cuda_build.sh [OPTIONS]

Builds `cargo build --release --features cuda` without a CUDA installation and strips what it
built into target/gpu/<name>, ready to carry to the GPU machine (scripts/gpu_run.sh runs it).

Options:
  --example NAME      build examples/NAME.rs (repeatable; default: gpu_check)
  --tests             build every test binary (the library's and tests/*.rs; about 450 MiB
                      gzipped, too much for one GPU call: prefer a few --test NAME)
  --test NAME         build the test binary tests/NAME.rs (repeatable)
  --compute-cap N     CUDA_COMPUTE_CAP for candle's kernels (default: 90, the H100/H200)
  --cudnn             build with --features cudnn (cuDNN convolutions) instead of cuda
  --gzip              store target/gpu/<name>.gz (about a quarter of the size; done anyway
                      when the binaries exceed the 64 MiB one GPU call carries)
  -h, --help          print this help

Compute capability: candle-kernels compiles its kernels to PTX for exactly one target,
`nvcc --ptx -gencode=arch=compute_<N>,code=sm_<N>`, where N >= 90 gets NVIDIA's 'a' suffix
(90 -> sm_90a); the driver compiles that PTX for the GPU when a module first loads. PTX for
sm_90a (Hopper's arch-specific features) loads on compute capability 9.0 only: an
H100/H200, not a Blackwell or an older GPU. PTX for a plain lower target (e.g. 80) loads on
that capability and every newer one, less the kernels the value leaves out: below 80 no
bf16 kernels, below 89 no fp8 kernels. So `--compute-cap 80` makes a binary for any GPU from
the A100 on; 90 (the default) one for the H100/H200 only. The value also selects the SASS of
candle's statically linked MoE/GGUF kernels (libmoe.a, sm_<N> only), which unetpp does not
call. Any value needs a driver for CUDA 13.0 (nvcc 13.0 writes PTX ISA 9.0).

Environment:
  UNETPP_CUDA_VENV    virtualenv for the CUDA wheels (default: ~/.cache/unetpp/cuda-venv;
                      must lie outside the repository)
  CARGO_TARGET_DIR    cargo's target folder (default: the repository's target/); the link
                      stubs go to its cuda-stubs/. The stripped binaries always go to the
                      repository's target/gpu/ (the path to carry).

Sets for cargo: PATH (nvcc first), NVCC, CUDA_HOME (the wheels' toolkit), CUDA_ROOT (the
stubs), CUDA_COMPUTE_CAP; unsets CUDA_PATH, CUDA_TOOLKIT_ROOT_DIR, CUDNN_LIB and
CUDARC_CUDA_VERSION so that no other CUDA on this machine gets into the build.
EOF
}

die() { echo "cuda_build: error: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

compute_cap=90
feature=cuda
examples=()
tests=()
all_tests=0
gzip=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --example) [ $# -ge 2 ] || die "--example needs a NAME"; examples+=("$2"); shift 2 ;;
        --test) [ $# -ge 2 ] || die "--test needs a NAME"; tests+=("$2"); shift 2 ;;
        --tests) all_tests=1; shift ;;
        --compute-cap) [ $# -ge 2 ] || die "--compute-cap needs a value (e.g. 90)"
            compute_cap="$2"; shift 2 ;;
        --cudnn) feature=cudnn; shift ;;
        --gzip) gzip=1; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
if [ ${#examples[@]} -eq 0 ] && [ ${#tests[@]} -eq 0 ] && [ "$all_tests" = 0 ]; then
    examples=(gpu_check)
fi
[[ "$compute_cap" =~ ^[0-9]+[af]?$ ]] ||
    die "--compute-cap '$compute_cap' is not a compute capability like 80, 90 or 90a"

targets=()
for name in ${examples[@]+"${examples[@]}"}; do
    [ -f "examples/$name.rs" ] || [ -f "examples/$name/main.rs" ] ||
        die "no example '$name' (examples/$name.rs does not exist)"
    targets+=(--example "$name")
done
for name in ${tests[@]+"${tests[@]}"}; do
    [ -f "tests/$name.rs" ] || [ -f "tests/$name/main.rs" ] ||
        die "no test '$name' (tests/$name.rs does not exist)"
    targets+=(--test "$name")
done
[ "$all_tests" = 1 ] && targets+=(--tests)

step "prerequisites"
for tool in python3 cargo cc gcc nm strip readelf gzip realpath; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH (needed: python3 for \
the CUDA wheels and the stubs, cargo for the build, gcc/cc as nvcc's host compiler and for \
the stubs, binutils' nm/strip/readelf)"
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "python3 is $(python3 --version 2>&1); the CUDA wheels need Python 3.9 or newer"

target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
stubs="$target_dir/cuda-stubs"
venv="${UNETPP_CUDA_VENV:-$HOME/.cache/unetpp/cuda-venv}"
case "$(realpath -m "$venv")/" in
    "$ROOT"/*) die "UNETPP_CUDA_VENV=$venv lies inside the repository; put it outside (it \
holds about 300 MB of CUDA toolkit)" ;;
esac

step "CUDA toolkit from PyPI wheels in $venv"
requirements="$ROOT/scripts/cuda-requirements.txt"
stamp="$venv/.unetpp-cuda-requirements"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" ||
        die "python3 -m venv $venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
if cmp -s "$requirements" "$stamp"; then
    echo "   wheels already installed (as pinned in scripts/cuda-requirements.txt)" >&2
else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" ||
        die "pip could not install scripts/cuda-requirements.txt into $venv (network to PyPI? \
disk space?); delete $venv to start over"
    cp "$requirements" "$stamp"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
nvccs=("$site"/nvidia/cu*/bin/nvcc)
[ -x "${nvccs[0]}" ] || die "no nvcc under $site/nvidia/cu*/bin after installing the wheels"
[ ${#nvccs[@]} -eq 1 ] || die "several toolkits in $site/nvidia (${nvccs[*]}); delete $venv"
cuda_home="$(dirname "$(dirname "${nvccs[0]}")")"
release="$("${nvccs[0]}" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\),.*/\1.\2/p')"
[ -n "$release" ] || die "cannot read the version from '${nvccs[0]} --version'"
cuda_major="${release%%.*}"
echo "   nvcc $release at ${nvccs[0]}" >&2

export PATH="$cuda_home/bin:$PATH"
export NVCC="$cuda_home/bin/nvcc"
export CUDA_HOME="$cuda_home"
export CUDA_ROOT="$stubs"
export CUDA_COMPUTE_CAP="$compute_cap"
unset CUDA_PATH CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB CUDARC_CUDA_VERSION

logs="$stubs/logs"
mkdir -p "$logs"
make_stubs() {
    local scan=()
    for d in "$target_dir/release/deps" "$target_dir/release/build"; do
        [ -d "$d" ] && scan+=(--scan "$d")
    done
    python3 "$ROOT/scripts/cuda_stubs.py" --out "$stubs" --cuda-major "$cuda_major" \
        ${scan[@]+"${scan[@]}"} "$@" || die "making the link stubs failed (see above)"
}

# Runs cargo: its messages go to $logs/$1.log and to the terminal (less a failed link's list of
# undefined symbols, thousands of lines long), its JSON to $logs/$1.json.
cargo_build() {
    local name="$1"; shift
    set +e
    cargo build --release --features "$feature" --keep-going \
        --message-format=json-render-diagnostics \
        "$@" 2>&1 >"$logs/$name.json" | tee "$logs/$name.log" |
        awk 'length($0) < 1000 && !/undefined (reference to|symbol:)|>>> / {print; fflush()}' >&2
    local status=${PIPESTATUS[0]}
    set -e
    return "$status"
}

# The stubs define what the compiled objects under the target folder call (none on a first
# run). A first build then fails at its link, on the CUDA symbols still missing: the stubs take
# them in, from the objects built by then and from the linker's messages, and cargo links
# again (only the final crates recompile). Building the library alone first would avoid that
# failed link but cost a second full build: without the dev-dependencies (clap, indicatif),
# cargo resolves other features for shared crates (syn), and everything above them rebuilds.
step "link stubs in $stubs/lib"
make_stubs
for attempt in 1 2 3; do
    step "cargo build --release --features $feature ${targets[*]} (CUDA_COMPUTE_CAP=$compute_cap)"
    if cargo_build targets "${targets[@]}"; then
        break
    fi
    before="$(cat "$stubs/symbols.txt")"
    make_stubs --link-log "$logs/targets.log"
    if [ "$before" = "$(cat "$stubs/symbols.txt")" ] || [ "$attempt" = 3 ]; then
        die "cargo build failed, and not on a missing CUDA symbol; see $logs/targets.log"
    fi
    echo "   the link lacked CUDA symbols, now in the stubs: linking again" >&2
done

step "stripped binaries in $ROOT/target/gpu"
mapfile -t built < <(python3 - "$logs/targets.json" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    msg = json.loads(line) if line.startswith("{") else {}
    exe = msg.get("executable")
    if (msg.get("reason") == "compiler-artifact" and exe
            and "custom-build" not in msg["target"]["kind"]):
        print(msg["target"]["name"] + "\t" + exe)
EOF
)
[ ${#built[@]} -gt 0 ] || die "cargo reported no executable in $logs/targets.json"
out="$ROOT/target/gpu"
rm -rf "$out"
mkdir -p "$out"
limit=$((64 * 1024 * 1024))
total=0
for entry in "${built[@]}"; do
    name="${entry%%$'\t'*}"
    exe="${entry#*$'\t'}"
    strip --strip-all -o "$out/$name" "$exe"
    size=$(stat -c %s "$out/$name")
    gz=$(gzip -c "$out/$name" | wc -c)
    total=$((total + size))
    needed="$(readelf -d "$out/$name" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
    if readelf -d "$out/$name" | grep -qE '\((RPATH|RUNPATH)\)'; then
        die "$out/$name has an RPATH/RUNPATH ($(readelf -d "$out/$name" |
            grep -E 'RPATH|RUNPATH')); the GPU machine must find the real libraries"
    fi
    case " $needed" in
        *" libcuda.so.1 "*) ;;
        *) die "$out/$name does not need libcuda.so.1: not a CUDA build? NEEDED: $needed" ;;
    esac
    case "$needed" in
        */*) die "$out/$name names a library by path (NEEDED: $needed)" ;;
    esac
    # The GPU machine's C and C++ runtimes must be at least these versions.
    versions="$(readelf -V "$out/$name" | grep -oE 'GLIBC(XX)?_[0-9.]+' | sort -uV |
        awk -F_ '{last[$1] = $0} END {print last["GLIBC"], last["GLIBCXX"]}')"
    awk -v n="target/gpu/$name" -v s="$size" -v g="$gz" -v v="$versions" 'BEGIN {
        printf "   %-24s %.1f MiB, %.1f MiB gzipped; needs %s\n", n, s / 1048576, g / 1048576, v
    }' >&2
    echo "   NEEDED: $needed" >&2
done
# A stand-in for libcurand.so.10, for a GPU machine whose PyTorch brings no cuRAND (torch 2.15
# does not); gpu_run.sh uses it only there. It must define every cuRAND function a binary binds.
step "cuRAND stand-in in target/gpu/fallback (scripts/curand_fallback.c)"
mkdir -p "$out/fallback"
cc -shared -fPIC -O2 -Wl,-soname,libcurand.so.10 -o "$out/fallback/libcurand.so.10" \
    "$ROOT/scripts/curand_fallback.c" -ldl -lm || die "compiling scripts/curand_fallback.c failed"
defined="$(nm -D --defined-only "$out/fallback/libcurand.so.10" | awk '{print $3}')"
for entry in "${built[@]}"; do
    name="${entry%%$'\t'*}"
    for sym in $(nm -D --undefined-only "$out/$name" | awk '$2 ~ /^curand/ {print $2}'); do
        if ! grep -qx "$sym" <<<"$defined"; then
            echo "   WARNING: $name binds $sym, which scripts/curand_fallback.c lacks: no stand-in" \
                "(add it there); the GPU machine then needs the real libcurand.so.10" >&2
            rm -rf "$out/fallback"
            break 2
        fi
    done
done
# One call to the GPU machine carries 64 MiB at most; a CUDA binary is about 55 MiB (candle's
# PTX and its MoE kernels' SASS) and gzips to a quarter of that. gpu_run.sh unpacks *.gz.
if [ "$gzip" = 1 ] || [ "$total" -gt "$limit" ]; then
    [ "$gzip" = 1 ] || echo "   $total bytes, over the 64 MiB carried in one call: gzipping" >&2
    total=0
    for entry in "${built[@]}"; do
        name="${entry%%$'\t'*}"
        gzip -f -n "$out/$name"
        total=$((total + $(stat -c %s "$out/$name.gz")))
        echo "   target/gpu/$name.gz" >&2
    done
fi
[ "$total" -le "$limit" ] ||
    die "target/gpu holds $total bytes, over the 64 MiB carried in one call even gzipped: \
build fewer targets at once (--test NAME instead of --tests)"
{
    echo "built $(date -u '+%F %T') UTC on $(uname -m), commit $(git rev-parse --short HEAD \
2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with changes)')"
    echo "features $feature, CUDA_COMPUTE_CAP=$compute_cap, nvcc $release"
    for entry in "${built[@]}"; do echo "binary ${entry%%$'\t'*}"; done
} >"$out/BUILD.txt"
step "done in $((SECONDS / 60)) min $((SECONDS % 60)) s; carry target/gpu, run: bash scripts/gpu_run.sh"
