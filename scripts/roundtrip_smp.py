"""Round trip smp -> unetpp -> smp: a segmentation_models_pytorch UnetPlusPlus (resnet34
encoder, random weights) through `import_pytorch --smp … --export-smp …`, then
`load_state_dict(strict=True)` and the outputs compared (scripts/roundtrip.py).

    ../venv/bin/python scripts/roundtrip_smp.py     # from the repository root
"""

import pathlib
import sys

import segmentation_models_pytorch as smp
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from roundtrip import randomise_batch_norm_statistics, roundtrip  # noqa: E402

torch.manual_seed(3)
make = lambda: smp.UnetPlusPlus(encoder_name="resnet34", encoder_weights=None, classes=2, decoder_channels=(64, 32, 16, 16, 8)).eval()
m = make()
randomise_batch_norm_statistics(m)
roundtrip(make, "--smp", "--export-smp", torch.randn(2, 3, 64, 96), model=m)
