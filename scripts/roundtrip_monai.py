"""Round trip MONAI -> unetpp -> MONAI: builds a BasicUNetPlusPlus, exports it, lets the
`import_pytorch` example load it and write it back under MONAI's names, then loads that file
with `load_state_dict(strict=True)` and compares the outputs.

    ../venv/bin/python scripts/roundtrip_monai.py     # from the repository root
"""

import subprocess
import tempfile
import pathlib

import torch
from monai.networks.nets import BasicUNetPlusPlus
from safetensors.torch import load_file, save_file

torch.manual_seed(1)
m = BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8), deep_supervision=True).eval()
with torch.no_grad():
    for name, p in m.named_parameters():
        if ".adn.N." in name:
            p.add_(0.2 * torch.randn_like(p))
tmp = pathlib.Path(tempfile.mkdtemp())
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp / "monai.safetensors"))
subprocess.run(
    ["cargo", "run", "--release", "--quiet", "--example", "import_pytorch", "--",
     "--monai", str(tmp / "monai.safetensors"), "--out", str(tmp / "mask.png"),
     "--export-monai", str(tmp / "back.safetensors")],
    check=True,
)
back = BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8), deep_supervision=True).eval()
missing, unexpected = back.load_state_dict(load_file(str(tmp / "back.safetensors")), strict=True)
x = torch.randn(2, 1, 64, 48)
with torch.no_grad():
    diff = max(float((a - b).abs().max()) for a, b in zip(m(x), back(x)))
print(f"load_state_dict(strict=True): ok; largest output difference after the round trip: {diff:g}")
