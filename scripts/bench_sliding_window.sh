#!/usr/bin/env bash
# Segments a 4096x4096 16-bit TIFF with sliding windows, unetpp's `predict` and MONAI's
# `sliding_window_inference` on the same network and weights (MONAI's BasicUNetPlusPlus,
# default features), on 2 threads: wall time and peak memory (max RSS, /usr/bin/time) of
# each, and how far their probability maps are apart.
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
window=${WINDOW:-256}; batch=${BATCH:-4}; overlap=${OVERLAP:-0.25}
for round in 1 2; do
  echo "--- round $round"
  /usr/bin/time -f "unetpp: %e s wall, %M KiB max RSS" \
    target/release/examples/predict --weights "$dir/monai.safetensors" --format monai \
      --input "$dir/big.tif" --out "$dir/unetpp" --mode last --window "$window" \
      --window-batch "$batch" --overlap "$overlap" --blend gaussian --probabilities --quiet
  OMP_NUM_THREADS=2 /usr/bin/time -f "MONAI: %e s wall, %M KiB max RSS" \
    "$py" scripts/bench_sliding_window.py run "$dir" --window "$window" --batch "$batch" --overlap "$overlap"
done
"$py" - "$dir" <<'PY'
import sys, numpy as np, tifffile
d = sys.argv[1]
a = tifffile.imread(f"{d}/unetpp/big_prob_1.tif"); b = tifffile.imread(f"{d}/monai_prob.tif")
print(f"probability maps: max |difference| {np.abs(a - b).max():.2e}, labels differ at {np.mean((a > 0.5) != (b > 0.5)):.2e} of pixels")
PY
