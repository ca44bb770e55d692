#!/usr/bin/env bash
# Runs a binary made by scripts/cuda_build.sh on the GPU machine (docs/GPU.md), from the
# repository root there, with target/gpu carried over. That machine has no Rust and no CUDA
# toolkit: the CUDA libraries come from PyTorch's pip wheels (site-packages/nvidia/*/lib) and
# libcuda.so.1 from the driver. This finds them, puts them on LD_LIBRARY_PATH, checks with
# ldd that the binary resolves every library, and runs it.
#   bash scripts/gpu_run.sh --probe              # only print what it finds (seconds)
#   bash scripts/gpu_run.sh [--bin NAME] [ARGS]  # run target/gpu/NAME ARGS (default gpu_check)
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash scripts/gpu_run.sh [--probe] [--bin NAME] [--] [ARGS...]

On the GPU machine, from the repository root, with target/gpu carried there:
finds the CUDA libraries (PyTorch's pip wheels, the driver), sets LD_LIBRARY_PATH, checks
that target/gpu/NAME resolves all its libraries, then runs `target/gpu/NAME ARGS...`.

  --probe      print the GPUs, the libraries found and each binary's ldd check, run nothing
  --bin NAME   the binary to run (default: gpu_check); a test binary takes cargo test's
               arguments, e.g. --bin conv_layer -- --test-threads 1
  --with-pytorch  afterwards, time PyTorch on the same GPU with the sizes gpu_check times
               (scripts/bench_pytorch.py --device cuda: 1x1x256² and 8x3x512², L1-L4 and a
               training step)
  -h, --help   print this help
EOF
}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

probe=0
pytorch=0
bin=gpu_check
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --probe) probe=1; shift ;;
        --with-pytorch) pytorch=1; shift ;;
        --bin) [ $# -ge 2 ] || { echo "gpu_run: --bin needs a NAME" >&2; exit 2; }
            bin="$2"; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done

# cuda_build.sh gzips the binaries when they exceed what one call carries (or with --gzip).
shopt -s nullglob
for gz in target/gpu/*.gz; do
    exe="${gz%.gz}"
    if [ ! -f "$exe" ] || [ "$gz" -nt "$exe" ]; then
        gzip -dc "$gz" >"$exe.part" && chmod +x "$exe.part" && mv "$exe.part" "$exe"
        echo "== unpacked $gz"
    fi
done
shopt -u nullglob

# Library folders, most specific first: the nvidia/<pkg>/lib folders of every site-packages
# that python3 knows (PyTorch's CUDA wheels: nvidia/cu13/lib for CUDA 13, nvidia/cublas/lib
# and the like for CUDA 12, nvidia/cudnn/lib), then the same under the usual prefixes when
# python3 is missing or is not the one PyTorch was installed with.
lib_dirs=()
add_dir() {
    local d
    d="$(realpath -e "$1" 2>/dev/null)" || return 0
    [ -d "$d" ] || return 0
    for seen in ${lib_dirs[@]+"${lib_dirs[@]}"}; do [ "$seen" = "$d" ] && return 0; done
    lib_dirs+=("$d")
}
for py in python3 python; do
    command -v "$py" >/dev/null 2>&1 || continue
    while IFS= read -r d; do add_dir "$d"; done < <("$py" - 2>/dev/null <<'EOF' || true
import glob, os, site, sys
roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
try:
    import nvidia
    roots += [os.path.dirname(p) for p in nvidia.__path__]
except ImportError:
    pass
for root in roots:
    for d in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        print(d)
EOF
)
done
shopt -s nullglob
for d in "${VIRTUAL_ENV:-/nonexistent}"/lib/python3*/site-packages/nvidia/*/lib \
         "${CONDA_PREFIX:-/nonexistent}"/lib/python3*/site-packages/nvidia/*/lib \
         "$HOME"/.local/lib/python3*/site-packages/nvidia/*/lib \
         /usr/local/lib/python3*/{site,dist}-packages/nvidia/*/lib \
         /usr/lib/python3*/{site,dist}-packages/nvidia/*/lib \
         /opt/conda/lib/python3*/site-packages/nvidia/*/lib; do
    add_dir "$d"
done
if [ ${#lib_dirs[@]} -eq 0 ]; then
    # PyTorch in a virtualenv that is neither active nor at a usual place: look for it.
    while IFS= read -r d; do add_dir "$d"; done < <(timeout 30 find / -xdev -maxdepth 9 \
        -type d -path '*-packages/nvidia/*/lib' 2>/dev/null | sort || true)
fi
# The driver's libcuda.so.1: the loader's cache knows it on most machines; containers often
# mount it in one of these folders instead.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
             /usr/lib/wsl/lib /run/nvidia/driver/usr/lib/x86_64-linux-gnu; do
        [ -e "$d/libcuda.so.1" ] && add_dir "$d"
    done
fi
shopt -u nullglob
# torch 2.15's CUDA wheels bring no cuRAND, which candle needs to open a device: then the
# stand-in that cuda_build.sh leaves in target/gpu/fallback (scripts/curand_fallback.c) goes
# last on the path.
curand_note=""
has_curand=0
for d in ${lib_dirs[@]+"${lib_dirs[@]}"}; do [ -e "$d/libcurand.so.10" ] && has_curand=1; done
ldconfig -p 2>/dev/null | grep -q 'libcurand\.so\.10 ' && has_curand=1
if [ "$has_curand" = 0 ] && [ -e target/gpu/fallback/libcurand.so.10 ]; then
    add_dir target/gpu/fallback
    curand_note="no libcurand.so.10 here: using target/gpu/fallback/libcurand.so.10, a \
host-side stand-in (scripts/curand_fallback.c); random tensors are not cuRAND's sequences"
fi
joined="$(IFS=:; echo "${lib_dirs[*]+${lib_dirs[*]}}")"
export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== GPUs"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || echo "nvidia-smi -L failed"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>/dev/null ||
        true
else
    echo "nvidia-smi not found"
fi
echo "== CUDA library folders (LD_LIBRARY_PATH, in this order)"
for d in ${lib_dirs[@]+"${lib_dirs[@]}"}; do echo "   $d"; done
[ ${#lib_dirs[@]} -gt 0 ] || echo "   none found: is PyTorch with CUDA installed with pip?"
echo "== CUDA libraries found"
for lib in libcuda.so.1 libcudart.so libcublas.so libcublasLt.so libcurand.so libnvrtc.so \
           libcudnn.so; do
    hits=()
    for d in ${lib_dirs[@]+"${lib_dirs[@]}"}; do
        for f in "$d/$lib"*; do [ -e "$f" ] && hits+=("$f"); done
    done
    if [ ${#hits[@]} -eq 0 ]; then
        cached="$(ldconfig -p 2>/dev/null | awk -v l="$lib" 'index($1, l) == 1 {print $NF}' |
            tr '\n' ' ')"
        echo "   $lib*: ${cached:-not found}${cached:+(loader cache)}"
    else
        echo "   $lib*: ${hits[*]}"
    fi
done
[ -n "$curand_note" ] && echo "== WARNING: $curand_note"
echo "== this machine: $(uname -m), $(ldd --version 2>/dev/null | head -1)"
[ -f target/gpu/BUILD.txt ] && { echo "== target/gpu/BUILD.txt"; sed 's/^/   /' target/gpu/BUILD.txt; }

# ldd -r on a binary: prints its CUDA libraries and their paths; returns 1, with a message
# naming what is missing, when a library, a symbol or a symbol version does not resolve (the
# binary binds every symbol at start, so any of these stops it).
check_binary() {
    local exe="$1" report missing
    report="$(ldd -r "$exe" 2>&1)" || true
    grep -E 'libcu|libnvrtc|libstdc|not found|undefined symbol' <<<"$report" | awk '{sub(/^[ \t]*/, "   "); print}'
    missing="$(grep -E 'not found|undefined symbol' <<<"$report" || true)"
    if [ -n "$missing" ]; then
        echo "gpu_run: $exe cannot start, some libraries do not resolve:" >&2
        awk '{sub(/^[ \t]*/, "   "); print}' <<<"$missing" >&2
        echo "   searched: LD_LIBRARY_PATH=$LD_LIBRARY_PATH and the loader's cache." >&2
        echo "   A 'libX.so.N => not found' needs PyTorch's CUDA wheel of that major (pip" \
             "package nvidia-*), or libcuda.so.1 of the driver; a 'version GLIBC_...' line" \
             "means this machine's C library is older than the build machine's; an" \
             "'undefined symbol' means an older library than the one built against." >&2
        return 1
    fi
}

if [ "$probe" = 1 ]; then
    shopt -s nullglob
    bins=(target/gpu/*)
    shopt -u nullglob
    for exe in ${bins[@]+"${bins[@]}"}; do
        case "$exe" in *.gz|*/BUILD.txt) continue ;; esac
        [ -f "$exe" ] || continue
        echo "== ldd $exe"
        check_binary "$exe" || true
    done
    [ ${#bins[@]} -gt 0 ] || echo "== no target/gpu here: carry target/gpu (scripts/gpu_check.sh)"
    exit 0
fi

exe="target/gpu/$bin"
if [ ! -f "$exe" ]; then
    echo "gpu_run: no $exe here: build it with scripts/cuda_build.sh and carry target/gpu" >&2
    exit 127
fi
[ -x "$exe" ] || chmod +x "$exe"
echo "== ldd $exe"
check_binary "$exe" || exit 127
echo "== $exe $*"
if [ "$pytorch" = 0 ]; then
    exec "$exe" "$@"
fi
status=0
"$exe" "$@" || status=$?
echo "== PyTorch on the same GPU (scripts/bench_pytorch.py --device cuda)"
for size in "--size 256 --batch 1 --in-channels 1" "--size 512 --batch 8 --in-channels 3"; do
    # shellcheck disable=SC2086 # the sizes are separate words
    python3 scripts/bench_pytorch.py --device cuda --runs 5 --train $size || status=$?
done
exit "$status"
