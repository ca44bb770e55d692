"""Writes tests/fixtures/pool.safetensors with PyTorch (see scripts/requirements.txt):
F.max_pool2d and F.interpolate(mode="nearest") forward values and input gradients, in f64,
checked by tests/pooling.rs (both code paths of unetpp::ops::max_pool2d and
unetpp::ops::upsample_nearest2d, in f64 and f32).

    ../venv/bin/python scripts/make_pool_fixtures.py

Bounds: max-pooling and nearest up-sampling only select and add, so the f64 results are
exact up to the summation order of overlapping windows (tests/pooling.rs allows 1e-12,
relative); the f32 comparison allows 1e-6 (rounding of the f32 input and output).
Inputs have ties (values on a coarse grid) so that PyTorch's tie rule (the first maximum
in row-major order gets the gradient) is exercised.
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")


def main():
    torch.manual_seed(0)
    t = {}
    # (h, w, kernel, stride, padding)
    cases = [(4, 6, 2, 2, 0), (5, 7, 2, 2, 0), (7, 8, 3, 2, 1), (6, 5, 3, 1, 1), (9, 9, 3, 3, 0), (6, 6, 1, 2, 0)]
    for i, (h, w, k, s, p) in enumerate(cases):
        # Quarter steps in [-2, 2]: many ties, exact in f32.
        x = torch.randint(-8, 9, (2, 3, h, w), dtype=torch.float64) / 4
        xv = x.clone().requires_grad_(True)
        y = F.max_pool2d(xv, k, s, p)
        r = torch.randn_like(y)
        (y * r).sum().backward()
        t[f"pool.{i}.input"] = x
        t[f"pool.{i}.grad_output"] = r
        t[f"pool.{i}.output"] = y.detach()
        t[f"pool.{i}.grad_input"] = xv.grad
    t["pool.cases"] = torch.tensor([[k, s, p] for (_, _, k, s, p) in cases], dtype=torch.int64)
    for scale in (2, 3):
        x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
        xv = x.clone().requires_grad_(True)
        y = F.interpolate(xv, scale_factor=scale, mode="nearest")
        r = torch.randn_like(y)
        ((y * r).sum() + (xv * 3).sum()).backward()
        t[f"nearest.x{scale}.input"] = x
        t[f"nearest.x{scale}.grad_output"] = r
        t[f"nearest.x{scale}.output"] = y.detach()
        t[f"nearest.x{scale}.grad_input"] = xv.grad
    path = os.path.join(OUT, "pool.safetensors")
    save_file({k: v.contiguous() for k, v in t.items()}, path)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
