"""Interop fixtures for tests/interop.rs.

- tests/fixtures/monai_unetpp.safetensors: two BasicUNetPlusPlus (spatial_dims=2) from
  pip-installed MONAI with small features and random weights (instance-norm scales and shifts
  randomised too), in eval mode: their state_dicts, an input and every output (prefixes `a/`, `a2/`, `b/`).
- tests/fixtures/nested_unet.safetensors: the same for the NestedUNet layout of
  pytorch-nested-unet (prefixes `c/`, `d/`). That code is not on PyPI (and GitHub is not
  reachable from here), so `NestedUNetLayout` below rebuilds it from its documented structure
  (docs/research/peer-layouts.md, section 3), with the widths as a parameter to keep the
  fixture small.

    ../venv/bin/python scripts/make_interop_fixtures.py
"""

import pathlib

import monai
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNetPlusPlus
from safetensors.torch import save_file

torch.manual_seed(0)
out = {}
configs = {
    # deep supervision on, 1 input channel, 3 classes, square input
    "a": dict(in_channels=1, out_channels=3, features=(4, 4, 8, 16, 32, 4), deep_supervision=True, shape=(2, 1, 32, 32)),
    # deep supervision on, odd sizes (MONAI replicate-pads each short up-sampled map)
    "a2": dict(in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4), deep_supervision=True, shape=(1, 1, 37, 45)),
    # deep supervision off, 3 input channels, 1 class, non-square input
    "b": dict(in_channels=3, out_channels=1, features=(6, 6, 12, 24, 48, 6), deep_supervision=False, shape=(1, 3, 48, 32)),
}
for key, c in configs.items():
    shape = c.pop("shape")
    m = BasicUNetPlusPlus(spatial_dims=2, **c).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".adn.N." in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    x = torch.randn(*shape)
    with torch.no_grad():
        ys = m(x)
    for name, t in m.state_dict().items():
        out[f"{key}/{name}"] = t.contiguous()
    out[f"{key}/input"] = x
    for k, y in enumerate(ys):
        out[f"{key}/output{k}"] = y.contiguous()
    print(key, len(m.state_dict()), "tensors;", [tuple(y.shape) for y in ys])

fixtures = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
path = fixtures / "monai_unetpp.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, monai {monai.__version__})")


class VGGBlock(torch.nn.Module):
    """conv 3x3 (bias) -> batch-norm -> ReLU, twice; modules named conv1, bn1, conv2, bn2."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(cout)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class NestedUNetLayout(torch.nn.Module):
    """NestedUNet's structure: nodes conv{i}_{j}, i + j <= 4; node (i, 0) reads the 2x2
    max-pooled (i-1, 0); node (i, j>0) reads [x_i_0, ..., x_i_{j-1}, up(x_{i+1,j-1})], up being
    bilinear x2 with align_corners=True; heads `final` on x0_4 or `final1..4`."""

    def __init__(self, num_classes, input_channels, deep_supervision, nb):
        super().__init__()
        self.ds = deep_supervision
        self.nodes = [(i, j) for d in range(5) for j in range(d + 1) for i in [d - j]]
        for i, j in self.nodes:
            cin = (input_channels if i == 0 else nb[i - 1]) if j == 0 else nb[i] * j + nb[i + 1]
            self.add_module(f"conv{i}_{j}", VGGBlock(cin, nb[i]))
        if deep_supervision:
            for k in range(1, 5):
                self.add_module(f"final{k}", torch.nn.Conv2d(nb[0], num_classes, 1))
        else:
            self.final = torch.nn.Conv2d(nb[0], num_classes, 1)

    def forward(self, x):
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)
        xs = {}
        for i, j in self.nodes:
            if j == 0:
                inp = x if i == 0 else F.max_pool2d(xs[(i - 1, 0)], 2)
            else:
                inp = torch.cat([xs[(i, c)] for c in range(j)] + [up(xs[(i + 1, j - 1)])], 1)
            xs[(i, j)] = getattr(self, f"conv{i}_{j}")(inp)
        if self.ds:
            return [getattr(self, f"final{k}")(xs[(0, k)]) for k in range(1, 5)]
        return self.final(xs[(0, 4)])


torch.manual_seed(1)
out = {}
for key, ds, cin, classes, shape in [("c", False, 3, 2, (2, 3, 32, 48)), ("d", True, 1, 1, (1, 1, 32, 32))]:
    m = NestedUNetLayout(classes, cin, ds, nb=[4, 6, 8, 10, 12]).eval()
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
        for name, p in m.named_parameters():
            if ".bn" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    x = torch.randn(*shape)
    with torch.no_grad():
        ys = m(x)
    ys = ys if isinstance(ys, list) else [ys]
    for name, t in m.state_dict().items():
        out[f"{key}/{name}"] = t.contiguous()
    out[f"{key}/input"] = x
    for k, y in enumerate(ys):
        out[f"{key}/output{k}"] = y.contiguous()
    print(key, len(m.state_dict()), "tensors;", [tuple(y.shape) for y in ys])
path = fixtures / "nested_unet.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes)")
