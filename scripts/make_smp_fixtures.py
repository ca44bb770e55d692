"""segmentation_models_pytorch UnetPlusPlus fixtures for tests/interop.rs.

Every parameter and buffer (encoder, decoder, head) is set from the same formula of its name
and index as in scripts/make_resnet_fixtures.py (tests/common computes the same numbers), so
the fixture holds only inputs and outputs: tests/fixtures/smp_unetpp.safetensors.

    ../venv/bin/python scripts/make_smp_fixtures.py
"""

import pathlib
import sys

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_resnet_fixtures import fill  # noqa: E402  (the shared formula)

torch.manual_seed(2)
out = {}
for encoder, classes, dec in [
    ("resnet18", 2, (32, 16, 8, 8, 4)),
    ("resnet34", 1, (16, 16, 8, 8, 8)),
    ("resnet50", 3, (32, 16, 8, 8, 4)),
]:
    m = smp.UnetPlusPlus(encoder_name=encoder, encoder_weights=None, classes=classes, decoder_channels=dec).eval()
    fill(m)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = m(x)
    out[f"{encoder}/input"] = x
    out[f"{encoder}/output"] = y.contiguous()
    print(encoder, tuple(y.shape), round(float(y.abs().max()), 3))
path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "smp_unetpp.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, smp {smp.__version__})")
