"""Fixtures from pip-installed MONAI for tests/interop.rs.

Two BasicUNetPlusPlus (spatial_dims=2) with small features and random weights (instance-norm
scales and shifts randomised too), in eval mode: their state_dicts, an input and every output.
Writes tests/fixtures/monai_unetpp.safetensors (tensors prefixed `a/` and `b/`).

    ../venv/bin/python scripts/make_interop_fixtures.py
"""

import pathlib

import monai
import torch
from monai.networks.nets import BasicUNetPlusPlus
from safetensors.torch import save_file

torch.manual_seed(0)
out = {}
configs = {
    # deep supervision on, 1 input channel, 2 classes, square input
    "a": dict(in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4), deep_supervision=True, shape=(2, 1, 32, 32)),
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

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "monai_unetpp.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, monai {monai.__version__})")
