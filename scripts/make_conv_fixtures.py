"""Strided-convolution fixtures from PyTorch for tests/conv_strided.rs.

Writes tests/fixtures/conv_strided.safetensors: for each case, an input `{case}_x`, kernel
`{case}_w`, bias `{case}_b` and upstream gradient `{case}_r` from a fixed seed, and what
torch.nn.functional.conv2d gives: the output `{case}_y` and the gradients `{case}_dx`,
`{case}_dw`, `{case}_db` of sum(y * r). Cases (name: kernel, stride, padding, input size)
cover a ResNet's stem (7x7/2/3), its stride-2 3x3 and 1x1 convolutions, heights and widths
with different remainders, a 5x5 stride-3 kernel and an unpadded 2x4 one. Also `add_relu_*`:
relu(a + b) with a quarter of the sums exactly zero, its output and the gradients `da`, `db`.

    ../venv/bin/python scripts/make_conv_fixtures.py
"""

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(5)
CASES = {
    # name: (n, c, o, (kh, kw), stride, padding, (h, w))
    "stem": (1, 3, 8, (7, 7), 2, 3, (30, 23)),
    "s2k3": (2, 6, 5, (3, 3), 2, 1, (17, 20)),
    "s2k1": (1, 7, 9, (1, 1), 2, 0, (15, 12)),
    "s3k5": (1, 4, 3, (5, 5), 3, 2, (19, 14)),
    "k2x4": (2, 3, 4, (2, 4), 1, 0, (9, 11)),
}
out = {}
for name, (n, c, o, (kh, kw), s, p, (h, w)) in CASES.items():
    x = torch.randn(n, c, h, w, requires_grad=True)
    wt = (torch.randn(o, c, kh, kw) * 0.3).requires_grad_(True)
    b = torch.randn(o, requires_grad=True)
    y = F.conv2d(x, wt, b, stride=s, padding=p)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    for k, v in {"x": x, "w": wt, "b": b, "r": r, "y": y, "dx": x.grad, "dw": wt.grad, "db": b.grad}.items():
        out[f"{name}_{k}"] = v.detach().contiguous()

# ops::add_relu, the residual connection's relu(a + b): a quarter of the sums exactly 0, where
# PyTorch's backward gives no gradient.
a = torch.randn(2, 3, 5, 6)
b = torch.randn(2, 3, 5, 6)
b.view(-1)[::4] = -a.view(-1)[::4]
a.requires_grad_(True)
b.requires_grad_(True)
y = torch.relu(a + b)
r = torch.randn_like(y)
(y * r).sum().backward()
for k, v in {"a": a, "b": b, "r": r, "y": y, "da": a.grad, "db": b.grad}.items():
    out[f"add_relu_{k}"] = v.detach().contiguous()

path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/conv_strided.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes)")
