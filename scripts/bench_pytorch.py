"""PyTorch side of the benchmarks: the paper's UNet++ pruned to L1-L4, a training step, memory.

    ../venv/bin/python scripts/bench_pytorch.py [--size 256] [--batch 1] [--in-channels 1]
        [--runs 5] [--train] [--no-forward] [--memory]

Same network, input and statistics as `cargo run --release --example bench_forward`: median
seconds of a forward pass under torch.no_grad() (eager, f32, all CPU threads) after one
warm-up; `--train` adds one training step of the full network (four heads, 0.5*BCE + (1 -
soft Dice) per head, AdamW); `--memory` runs one L4 inference and prints the process's peak
resident memory.
"""
import argparse
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from paper_unetpp import PaperUNetPlusPlus


SYNC = lambda: None  # noqa: E731 (replaced by torch.cuda.synchronize on a GPU)


def median_seconds(fn, runs):
    fn()
    SYNC()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        SYNC()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bce_dice(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return 0.5 * bce + (1 - dice)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions on CUDA")
    a = ap.parse_args()
    global SYNC
    dev = torch.device(a.device)
    if dev.type == "cuda":
        SYNC = torch.cuda.synchronize
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    b, c, s = a.batch, a.in_channels, a.size
    x = torch.randn(b, c, s, s).to(dev)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"PyTorch {torch.__version__}, {where}, {platform.machine()}")
    print(f"UNet++ paper configuration, input {b}x{c}x{s}x{s}, f32")
    if a.memory:
        net = PaperUNetPlusPlus(in_channels=c, level=4, heads=[4]).to(dev).eval()
        before = peak_rss_mib()
        with torch.no_grad():
            net(x)
        print(f"peak RSS: {peak_rss_mib():.0f} MiB after one L4 inference ({before:.0f} MiB before it)")
        return
    if not a.no_forward:
        print(f"median of {a.runs} runs")
        print("level  parameters  median s")
        for k in range(1, 5):
            net = PaperUNetPlusPlus(in_channels=c, level=k, heads=[k]).to(dev).eval()
            params = sum(p.numel() for p in net.parameters())
            with torch.no_grad():
                t = median_seconds(lambda: net(x), a.runs)
            print(f"L{k}     {params:>10}  {t:8.3f}")
    if a.train:
        net = PaperUNetPlusPlus(in_channels=c).to(dev).train()
        opt = torch.optim.AdamW(net.parameters())
        target = (x[:, :1] > 0).float()

        phases = [[], [], [], []]
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for run in range(a.runs + 1):
            sync()
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = sum(bce_dice(y, target) for y in net(x)) / 4
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
            t2 = time.perf_counter()
            opt.step()
            sync()
            t3 = time.perf_counter()
            if run > 0:
                for p, t in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    p.append(t)
        fwd, bwd, stp, t = (statistics.median(p) for p in phases)
        print(
            f"training step (L4, 4 heads, AdamW, batch {b}): median of {a.runs} runs {t:.3f} s "
            f"(forward + loss {fwd:.3f} s, backward {bwd:.3f} s, optimizer {stp:.3f} s)"
        )

if __name__ == "__main__":
    main()
