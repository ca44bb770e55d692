"""Round trip NestedUNet -> unetpp -> NestedUNet: the layout (scripts/nested_unet_layout.py)
with deep supervision through `import_pytorch --nested-unet … --export-nested-unet …`, then
`load_state_dict(strict=True)` and the outputs compared (scripts/roundtrip.py).

    ../venv/bin/python scripts/roundtrip_nested_unet.py     # from the repository root
"""

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nested_unet_layout import NestedUNetLayout  # noqa: E402
from roundtrip import randomise_batch_norm_statistics, roundtrip  # noqa: E402

torch.manual_seed(4)
make = lambda: NestedUNetLayout(2, 3, True, nb=[8, 16, 32, 64, 128]).eval()
m = make()
randomise_batch_norm_statistics(m)
roundtrip(make, "--nested-unet", "--export-nested-unet", torch.randn(2, 3, 64, 48), model=m)
