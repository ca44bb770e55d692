"""PyTorch side of the forward benchmark: the paper's UNet++ pruned to L1-L4.

    ../venv/bin/python scripts/bench_pytorch.py [--size 256] [--batch 1] [--runs 5] [--train]

Same network, input and statistics as `cargo run --release --example bench_forward`: median
seconds of a forward pass under torch.no_grad() (eager, f32, all CPU threads) after one
warm-up; `--train` adds one training step of the full network (four heads, 0.5*BCE + (1 -
soft Dice) per head, AdamW).
"""
import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from paper_unetpp import PaperUNetPlusPlus


def median_seconds(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bce_dice(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return 0.5 * bce + (1 - dice)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--train", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(a.batch, 1, a.size, a.size)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"UNet++ paper configuration, input {a.batch}x1x{a.size}x{a.size}, f32, median of {a.runs} runs")
    print("level  parameters  median s")
    for k in range(1, 5):
        net = PaperUNetPlusPlus(level=k, heads=[k]).eval()
        params = sum(p.numel() for p in net.parameters())
        with torch.no_grad():
            t = median_seconds(lambda: net(x), a.runs)
        print(f"L{k}     {params:>10}  {t:8.3f}")
    if a.train:
        net = PaperUNetPlusPlus().train()
        opt = torch.optim.AdamW(net.parameters())
        target = (x > 0).float()

        def step():
            opt.zero_grad()
            loss = sum(bce_dice(y, target) for y in net(x)) / 4
            loss.backward()
            opt.step()

        print(f"training step (L4, 4 heads, AdamW): median {median_seconds(step, a.runs):.3f} s")


if __name__ == "__main__":
    main()
