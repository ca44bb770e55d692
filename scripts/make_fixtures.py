"""Writes the parity fixtures of tests/fixtures/ with PyTorch (see scripts/requirements.txt).

    ../venv/bin/python scripts/make_fixtures.py

- bilinear.safetensors: F.interpolate(mode="bilinear") forward and input gradients for several
  sizes, both align_corners settings (checked by tests/parity_pytorch.rs).
- paper_unetpp_small.safetensors: a narrow paper-configuration UNet++ (widths 4..64, depth 4,
  four heads) with random weights, an input and the four head outputs.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from paper_unetpp import PaperUNetPlusPlus

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")


def bilinear():
    torch.manual_seed(0)
    t = {}
    cases = [((3, 4), (6, 8)), ((5, 7), (10, 14)), ((3, 4), (7, 5)), ((6, 5), (4, 3)), ((1, 3), (4, 4))]
    for n, (src, dst) in enumerate(cases):
        x = torch.randn(2, 3, *src, dtype=torch.float64)
        r = torch.randn(2, 3, *dst, dtype=torch.float64)
        t[f"case{n}.input"] = x
        t[f"case{n}.grad_output"] = r
        for ac in (False, True):
            xv = x.clone().requires_grad_(True)
            y = F.interpolate(xv, size=dst, mode="bilinear", align_corners=ac)
            (y * r).sum().backward()
            t[f"case{n}.ac{int(ac)}.output"] = y.detach()
            t[f"case{n}.ac{int(ac)}.grad_input"] = xv.grad
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "bilinear.safetensors"))


def paper_small():
    torch.manual_seed(1)
    net = PaperUNetPlusPlus(widths=(4, 8, 16, 32, 64)).eval()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        ys = net(x)
    t = {f"weights.{k}": v for k, v in net.rust_state_dict().items()}
    t["input"] = x
    for j, y in zip(net.heads_cols, ys):
        t[f"output.head_{j}"] = y
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "paper_unetpp_small.safetensors"))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    bilinear()
    paper_small()
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")
