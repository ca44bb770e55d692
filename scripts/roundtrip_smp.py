"""Round trip smp -> unetpp -> smp: builds a segmentation_models_pytorch UnetPlusPlus
(resnet34 encoder, random weights), exports it, lets the `import_pytorch` example load it and
write it back under smp's names, then loads that with `load_state_dict(strict=True)` and
compares the outputs.

    ../venv/bin/python scripts/roundtrip_smp.py     # from the repository root
"""

import pathlib
import subprocess
import tempfile

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

torch.manual_seed(3)
make = lambda: smp.UnetPlusPlus(encoder_name="resnet34", encoder_weights=None, classes=2, decoder_channels=(64, 32, 16, 16, 8)).eval()
m = make()
with torch.no_grad():
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn_like(b))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand_like(b))
tmp = pathlib.Path(tempfile.mkdtemp())
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp / "smp.safetensors"))
subprocess.run(
    ["cargo", "run", "--release", "--quiet", "--example", "import_pytorch", "--",
     "--smp", str(tmp / "smp.safetensors"), "--out", str(tmp / "mask.png"),
     "--export-smp", str(tmp / "back.safetensors")],
    check=True,
)
back = make()
back.load_state_dict(load_file(str(tmp / "back.safetensors")), strict=True)
x = torch.randn(2, 3, 64, 96)
with torch.no_grad():
    diff = float((m(x) - back(x)).abs().max())
print(f"load_state_dict(strict=True): ok; largest output difference after the round trip: {diff:g}")
