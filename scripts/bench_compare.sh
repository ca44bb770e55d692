#!/usr/bin/env bash
# The benchmark suite of docs/PERFORMANCE.md: unetpp's convolutions, candle's stock ones and
# PyTorch, back to back on this machine, same threads; then Mask R-CNN against torchvision.
# Prints the CPU, its SIMD flags and the level each kernel family takes first. About 25
# minutes on 2 cores.
#   bash scripts/bench_compare.sh            # PYTHON defaults to ../venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-../venv/bin/python}
# Absolute, without resolving the venv's symlink (which would leave the venv).
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
cargo build --release --example bench_forward --example bench_detection -q
ours() { ./target/release/examples/bench_forward "$@"; }
torch() { (cd scripts && "$PYTHON" bench_pytorch.py "$@"); }
# glibc keeps freed memory: what `--keep-freed-memory` (unetpp::device::keep_freed_memory)
# does inside the program, from outside it, for PyTorch.
KEEP="glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647"

model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
flags=$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' \
  | grep -xE 'avx2|fma|avx512f|avx512bw|avx512dq|avx512vl|avx512_vnni|avx512_bf16|avx512_fp16|amx_tile|amx_bf16|amx_int8' \
  | xargs)
echo "== $(date -u +%F) $(nproc) cores, ${model:-unknown CPU} ($(uname -m))"
echo "== SIMD flags: ${flags:-none of AVX2/AVX-512}"
ours --levels
echo "== forward 1x1x256x256"
ours --runs 7; ours --runs 7 --stock; torch --runs 7
for level in $(ours --levels | sed -n 's/^supported levels: //p' | tr ',' ' '); do
  echo "== forward 1x1x256x256, hand-written kernels forced to $level"
  UNETPP_SIMD=$level ours --runs 7
done
echo "== forward 1x3x512x512"
ours --runs 3 --in-channels 3 --size 512; ours --runs 1 --in-channels 3 --size 512 --stock
torch --runs 3 --in-channels 3 --size 512
echo "== forward 8x3x512x512 (stock candle skipped: minutes per pass)"
ours --runs 1 --in-channels 3 --size 512 --batch 8; torch --runs 1 --in-channels 3 --size 512 --batch 8
echo "== training step, batch 2, 256x256 (glibc's defaults)"
ours --runs 3 --batch 2 --train --no-forward; ours --runs 1 --batch 2 --train --no-forward --stock
torch --runs 3 --batch 2 --train --no-forward
echo "== training step, batch 2, 256x256, freed memory kept"
ours --runs 3 --batch 2 --train --no-forward --keep-freed-memory
GLIBC_TUNABLES=$KEEP torch --runs 3 --batch 2 --train --no-forward
echo "== training step, batch 8, 256x256 (glibc's defaults)"
ours --runs 2 --batch 8 --train --no-forward; torch --runs 2 --batch 8 --train --no-forward
echo "== training step, batch 8, 256x256, freed memory kept"
ours --runs 2 --batch 8 --train --no-forward --keep-freed-memory
GLIBC_TUNABLES=$KEEP torch --runs 2 --batch 8 --train --no-forward
echo "== peak memory, one L4 inference at 1x1x512x512"
ours --memory --size 512; ours --memory --size 512 --stock; torch --memory --size 512
echo "== Mask R-CNN (maskrcnn_resnet50_fpn): detection of one 3x800x1024 image, training step"
for what in --maskrcnn --maskrcnn-train; do
  ./target/release/examples/bench_detection --runs 3 "$what"
  (cd scripts && "$PYTHON" bench_detection.py --runs 3 "$what")
done
echo "== Mask R-CNN, freed memory kept"
for what in --maskrcnn --maskrcnn-train; do
  ./target/release/examples/bench_detection --runs 3 "$what" --keep-freed-memory
  (cd scripts && GLIBC_TUNABLES=$KEEP "$PYTHON" bench_detection.py --runs 3 "$what")
done
