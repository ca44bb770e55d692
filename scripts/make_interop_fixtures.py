"""Interop fixtures for tests/interop.rs.

- tests/fixtures/monai_unetpp.safetensors: two BasicUNetPlusPlus (spatial_dims=2) from
  pip-installed MONAI with small features and random weights (instance-norm scales and shifts
  randomised too), in eval mode: their state_dicts, an input and every output (prefixes `a/`, `a2/`, `a3/`, `b/`).
- tests/fixtures/nested_unet.safetensors: the same for the NestedUNet layout of
  pytorch-nested-unet (prefixes `c/`, `d/`). That code is not on PyPI (and GitHub is not
  reachable from here), so `scripts/nested_unet_layout.py` rebuilds it from its documented structure
  (docs/research/peer-layouts.md, section 3), with the widths as a parameter to keep the
  fixture small.

    ../venv/bin/python scripts/make_interop_fixtures.py
"""

import pathlib
import sys

import monai
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNetPlusPlus
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

def record(out, key, m, x):
    """`m`'s state_dict, the input `x` and every output of `m(x)` under `key/`."""
    with torch.no_grad():
        ys = m(x)
    ys = ys if isinstance(ys, list) else [ys]
    for name, t in m.state_dict().items():
        out[f"{key}/{name}"] = t.contiguous()
    out[f"{key}/input"] = x
    for k, y in enumerate(ys):
        out[f"{key}/output{k}"] = y.contiguous()
    print(key, len(m.state_dict()), "tensors;", [tuple(y.shape) for y in ys])


torch.manual_seed(0)
out = {}
configs = {
    # deep supervision on, 1 input channel, 3 classes, square input
    "a": dict(in_channels=1, out_channels=3, features=(4, 4, 8, 16, 32, 4), deep_supervision=True, shape=(2, 1, 32, 32)),
    # deep supervision on, odd sizes (MONAI replicate-pads each short up-sampled map)
    "a2": dict(in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4), deep_supervision=True, shape=(1, 1, 37, 45)),
    # deep supervision on, features unlike the default's shape (f0 != f1, f5 of its own)
    "a3": dict(in_channels=1, out_channels=2, features=(4, 6, 8, 12, 16, 5), deep_supervision=True, shape=(1, 1, 32, 48)),
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
    record(out, key, m, x)

fixtures = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
path = fixtures / "monai_unetpp.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, monai {monai.__version__})")


from nested_unet_layout import NestedUNetLayout  # noqa: E402

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
    record(out, key, m, x)
path = fixtures / "nested_unet.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes)")
