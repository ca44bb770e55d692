#!/usr/bin/env bash
# RoIAlign and NMS: unetpp (CPU kernel and composed path) and torchvision, back to back on
# this machine with the same inputs and threads (docs/PERFORMANCE.md). About 3 minutes on 2 cores.
# With --maskrcnn, whole maskrcnn_resnet50_fpn detection and training steps instead (about
# 5 minutes).
#   bash scripts/bench_detection.sh [--maskrcnn]   # PYTHON defaults to ../venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-../venv/bin/python}
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
cargo build --release --example bench_detection -q
echo "== $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [ "${1:-}" = "--maskrcnn" ]; then
    for what in --maskrcnn --maskrcnn-train; do
        ./target/release/examples/bench_detection --runs "${RUNS:-5}" "$what"
        (cd scripts && "$PYTHON" bench_detection.py --runs "${RUNS:-5}" "$what")
    done
    exit 0
fi
./target/release/examples/bench_detection --runs "${RUNS:-5}"
(cd scripts && "$PYTHON" bench_detection.py --runs "${RUNS:-5}")
