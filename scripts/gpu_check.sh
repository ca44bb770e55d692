#!/usr/bin/env bash
# Prepares the GPU check (docs/GPU.md): builds examples/gpu_check.rs with CUDA into
# target/gpu/ (scripts/cuda_build.sh; its options pass through, e.g. --compute-cap 80), then
# prints the device-tool calls that carry it to the GPU machine and run it there.
#   bash scripts/gpu_check.sh [--compute-cap N] [--cudnn]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

bash scripts/cuda_build.sh --example gpu_check "$@"

cat <<EOF

== On the GPU machine (the device tool's \`run\`), from the repository root:
1. First, a short call that only looks (seconds; shows the GPU, the CUDA libraries found and
   whether target/gpu/gpu_check resolves them all):
     run(carry=["target/gpu"], command="bash scripts/gpu_run.sh --probe", timeout_s=120)
2. Then the check itself (gpu_check's arguments after the script's name) and PyTorch's
   timings of the same sizes on the same GPU:
     run(carry=["target/gpu"], command="bash scripts/gpu_run.sh --with-pytorch", timeout_s=420)
   Same machine while it is warm: call 2 right after 1, then give_back.
Carried: target/gpu ($(du -sh target/gpu | cut -f1), $(head -2 target/gpu/BUILD.txt |
    tr '\n' ';' | sed 's/;$//; s/;/; /g'))
EOF
