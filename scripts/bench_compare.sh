#!/usr/bin/env bash
# The benchmark suite of docs/PERFORMANCE.md: unetpp's convolutions, candle's stock ones and
# PyTorch, back to back on this machine, same threads. Takes about 15 minutes on 2 cores.
#   bash scripts/bench_compare.sh            # PYTHON defaults to ../venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-../venv/bin/python}
# Absolute, without resolving the venv's symlink (which would leave the venv).
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
cargo build --release --example bench_forward -q
ours() { ./target/release/examples/bench_forward "$@"; }
torch() { (cd scripts && "$PYTHON" bench_pytorch.py "$@"); }

echo "== $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== forward 1x1x256x256"
ours --runs 7; ours --runs 7 --stock; torch --runs 7
echo "== forward 1x3x512x512"
ours --runs 3 --in-channels 3 --size 512; ours --runs 1 --in-channels 3 --size 512 --stock
torch --runs 3 --in-channels 3 --size 512
echo "== forward 8x3x512x512 (stock candle skipped: minutes per pass)"
ours --runs 1 --in-channels 3 --size 512 --batch 8; torch --runs 1 --in-channels 3 --size 512 --batch 8
echo "== training step, batch 2, 256x256"
ours --runs 3 --batch 2 --train --no-forward; ours --runs 1 --batch 2 --train --no-forward --stock
torch --runs 3 --batch 2 --train --no-forward
echo "== training step, batch 8, 256x256"
ours --runs 2 --batch 8 --train --no-forward; torch --runs 2 --batch 8 --train --no-forward
echo "== peak memory, one L4 inference at 1x1x512x512"
ours --memory --size 512; ours --memory --size 512 --stock; torch --memory --size 512
