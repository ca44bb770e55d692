#!/usr/bin/env bash
# Runs the Rust and the PyTorch forward benchmarks back to back on this machine, so that the
# numbers in docs/PERFORMANCE.md come from one run. PYTHON defaults to ../venv/bin/python.
#   bash scripts/bench_compare.sh [--size 256 --batch 1 --runs 7 --train]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-../venv/bin/python}
# Absolute, without resolving the venv's symlink (which would leave the venv).
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
echo "== $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo build --release --example bench_forward -q
echo "== candle (unetpp)"
./target/release/examples/bench_forward "$@"
echo "== PyTorch"
(cd scripts && "$PYTHON" bench_pytorch.py "$@")
