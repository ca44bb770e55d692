"""Round trip MONAI -> unetpp -> MONAI: a BasicUNetPlusPlus through
`import_pytorch --monai … --export-monai …`, then `load_state_dict(strict=True)` and the
outputs compared (scripts/roundtrip.py).

    ../venv/bin/python scripts/roundtrip_monai.py     # from the repository root
"""

import pathlib
import sys

import torch
from monai.networks.nets import BasicUNetPlusPlus

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from roundtrip import roundtrip  # noqa: E402

torch.manual_seed(1)
make = lambda: BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 64, 8), deep_supervision=True).eval()
m = make()
with torch.no_grad():
    for name, p in m.named_parameters():
        if ".adn.N." in name:
            p.add_(0.2 * torch.randn_like(p))
roundtrip(make, "--monai", "--export-monai", torch.randn(2, 1, 64, 48), model=m)
