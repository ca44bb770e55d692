#!/usr/bin/env bash
# Segments a 4096x4096 16-bit TIFF with sliding windows, unetpp's `predict` and MONAI's
# `sliding_window_inference` on the same network and weights (MONAI's BasicUNetPlusPlus,
# default features), on 2 threads: wall time and peak memory (max RSS, /usr/bin/time) of
# each, at 1 and 4 windows per forward pass, and how far their probability maps are apart.
#
#     bash scripts/bench_sliding_window.sh [DIR]   (default out/bench-sw; needs ../venv)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-out/bench-sw}
py=${PYTHON:-../venv/bin/python}
grep -m1 "model name" /proc/cpuinfo || true
echo "simd flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
cargo build --release --example predict -q
[ -f "$dir/big.tif" ] || "$py" scripts/bench_sliding_window.py setup "$dir"
window=${WINDOW:-256}; overlap=${OVERLAP:-0.25}
# PyTorch allocates through glibc too; `predict` asks glibc to keep freed memory for reuse
# (unetpp::device::keep_freed_memory), so MONAI also runs with the same setting.
keep="glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"
for batch in ${BATCHES:-1 4}; do
  echo "--- $batch window(s) per forward pass"
  /usr/bin/time -f "unetpp: %e s wall, %M KiB max RSS" \
    target/release/examples/predict --weights "$dir/monai.safetensors" --format monai \
      --input "$dir/big.tif" --out "$dir/unetpp" --mode last --window "$window" \
      --window-batch "$batch" --overlap "$overlap" --blend gaussian --probabilities --quiet
  OMP_NUM_THREADS=2 /usr/bin/time -f "MONAI: %e s wall, %M KiB max RSS" \
    "$py" scripts/bench_sliding_window.py run "$dir" --window "$window" --batch "$batch" --overlap "$overlap"
  OMP_NUM_THREADS=2 GLIBC_TUNABLES=$keep /usr/bin/time -f "MONAI, freed memory kept: %e s wall, %M KiB max RSS" \
    "$py" scripts/bench_sliding_window.py run "$dir" --window "$window" --batch "$batch" --overlap "$overlap"
done
"$py" - "$dir" <<'PY'
import sys, numpy as np, tifffile
d = sys.argv[1]
a = tifffile.imread(f"{d}/unetpp/big_prob_1.tif"); b = tifffile.imread(f"{d}/monai_prob.tif")
print(f"probability maps: max |difference| {np.abs(a - b).max():.2e}, labels differ at {np.mean((a > 0.5) != (b > 0.5)):.2e} of pixels")
PY
