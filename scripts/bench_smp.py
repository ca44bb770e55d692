"""smp side of `cargo run --release --example bench_smp`: segmentation_models_pytorch's
UnetPlusPlus (resnet34 encoder without downloaded weights, default decoder, one class) on the
same shapes, median seconds after one warm-up.

    ../venv/bin/python scripts/bench_smp.py [--runs 5]
"""
import argparse

import segmentation_models_pytorch as smp
import torch

from bench_pytorch import median_seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    print(f"torch {torch.__version__}, smp {smp.__version__}, threads: {torch.get_num_threads()}")
    torch.manual_seed(0)
    net = smp.UnetPlusPlus("resnet34", encoder_weights=None, classes=1)
    net.eval()
    for n, hw in [(1, 256), (1, 512)]:
        x = torch.rand(n, 3, hw, hw)

        def infer():
            with torch.no_grad():
                net(x)

        print(f"smp UnetPlusPlus resnet34 inference {n}x3x{hw}x{hw}: {median_seconds(infer, a.runs):.3f} s")
    net.train()
    x = torch.rand(2, 3, 256, 256)

    def step():
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()

    print(f"smp UnetPlusPlus resnet34 training step 2x3x256x256: {median_seconds(step, a.runs):.3f} s")


if __name__ == "__main__":
    main()
