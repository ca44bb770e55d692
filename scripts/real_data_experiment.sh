#!/usr/bin/env bash
# U-Net against UNet++ (deep supervision, accurate mode) on the fetched nuclei data sets, over
# several seeds: train on train/ (a fifth held out for validation), evaluate on test/, plain
# and with flip + rotation test-time augmentation. Prints a markdown table of test scores
# (mean ± standard deviation over the seeds) for docs/EXPERIMENTS.md.
#
#     python3 scripts/fetch_dataset.py && bash scripts/real_data_experiment.sh [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-3}
out=${OUT:-out/real}
grep -m1 "model name" /proc/cpuinfo || true
cargo build --release --example train --example evaluate -q
widths=16,32,64,128,256
run() { # dataset model seed epochs normalisation-flags...
  local data=$1 model=$2 seed=$3 epochs=$4; shift 4
  local dir="$out/$data/$model-$seed"
  mkdir -p "$out/$data"
  local t0=$SECONDS
  target/release/examples/train --model "$model" --images "data/$data/train/images" \
    --masks "data/$data/train/masks" --widths $widths --epochs "$epochs" --lr 1e-3 --augment \
    --seed "$seed" --out "$dir" "$@" > "$dir.train.log" 2>&1
  local secs=$((SECONDS - t0))
  local norm=()
  [ $# -gt 0 ] && norm=(--normalize percentiles --percentiles "${2}")
  for tta in none rotations; do
    target/release/examples/evaluate --weights "$dir/model.safetensors" \
      --images "data/$data/test/images" --masks "data/$data/test/masks" --tta "$tta" \
      "${norm[@]}" --csv "$dir/scores-$tta.csv" 2>/dev/null \
      | sed -n "s/^foreground: data-set IoU \([0-9.]*\), Dice \([0-9.]*\); mean per-image IoU \([0-9.]*\).*/$data $model $seed $tta \1 \2 \3 $secs/p"
  done
}
mkdir -p "$out"
results="$out/results.txt"; : > "$results"
for seed in $(seq 0 $((seeds - 1))); do
  for model in unet unetpp-ds; do
    run dsb2018_stardist "$model" "$seed" 20 | tee -a "$results"
    run cells3d_nuclei "$model" "$seed" 10 --percentiles 1,99.8 | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
groups = {}
for data, model, seed, tta, iou, dice, img_iou, secs in rows:
    groups.setdefault((data, model, tta), []).append((float(iou), float(dice), float(img_iou), float(secs)))
print("| data set | network | TTA | test IoU | test Dice | per-image IoU | training time |")
print("|---|---|---|---:|---:|---:|---:|")
f = lambda v: f"{st.mean(v):.4f} ± {st.stdev(v) if len(v) > 1 else 0:.4f}"
for (data, model, tta), v in sorted(groups.items()):
    cols = list(zip(*v))
    print(f"| {data} | {model} | {tta} | {f(cols[0])} | {f(cols[1])} | {f(cols[2])} | {st.mean(cols[3]):.0f} s |")
PY
