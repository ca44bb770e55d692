#!/usr/bin/env bash
# RoIAlign and NMS: unetpp (CPU kernel and composed path) and torchvision, back to back on
# this machine with the same inputs and threads (docs/PERFORMANCE.md). About 3 minutes on 2 cores.
#   bash scripts/bench_detection.sh            # PYTHON defaults to ../venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-../venv/bin/python}
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
cargo build --release --example bench_detection -q
echo "== $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
./target/release/examples/bench_detection --runs "${RUNS:-5}"
(cd scripts && "$PYTHON" bench_detection.py --runs "${RUNS:-5}")
