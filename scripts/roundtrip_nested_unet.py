"""Round trip NestedUNet -> unetpp -> NestedUNet: builds the layout (scripts/nested_unet_layout.py)
with deep supervision, exports it, lets the `import_pytorch` example load it and write it back
(`--export-nested-unet`), then loads that with `load_state_dict(strict=True)` and compares.

    ../venv/bin/python scripts/roundtrip_nested_unet.py     # from the repository root
"""

import pathlib
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nested_unet_layout import NestedUNetLayout  # noqa: E402

torch.manual_seed(4)
make = lambda: NestedUNetLayout(2, 3, True, nb=[8, 16, 32, 64, 128]).eval()
m = make()
with torch.no_grad():
    for name, b in m.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn_like(b))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand_like(b))
tmp = pathlib.Path(tempfile.mkdtemp())
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp / "nested.safetensors"))
subprocess.run(
    ["cargo", "run", "--release", "--quiet", "--example", "import_pytorch", "--",
     "--nested-unet", str(tmp / "nested.safetensors"), "--out", str(tmp / "mask.png"),
     "--export-nested-unet", str(tmp / "back.safetensors")],
    check=True,
)
back = make()
back.load_state_dict(load_file(str(tmp / "back.safetensors")), strict=True)
x = torch.randn(2, 3, 64, 48)
with torch.no_grad():
    diff = max(float((a - b).abs().max()) for a, b in zip(m(x), back(x)))
print(f"load_state_dict(strict=True): ok; largest output difference after the round trip: {diff:g}")
