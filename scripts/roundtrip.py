"""The shared part of the round-trip scripts: PyTorch model -> safetensors -> the
`import_pytorch` example, which loads it and writes it back -> `load_state_dict(strict=True)`
-> the largest output difference."""

import pathlib
import subprocess
import tempfile

import torch
from safetensors.torch import load_file, save_file


def randomise_batch_norm_statistics(model):
    """Running statistics away from 0 / 1, so that a mix-up of them shows."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))


def roundtrip(make, source_flag, export_flag, x, model=None):
    """Exports `model` (default: `make()`), lets `import_pytorch SOURCE_FLAG FILE EXPORT_FLAG BACK`
    load and write it back, loads BACK into a fresh `make()` strictly, and prints the largest
    output difference on `x`."""
    m = make() if model is None else model
    tmp = pathlib.Path(tempfile.mkdtemp())
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp / "model.safetensors"))
    subprocess.run(
        ["cargo", "run", "--release", "--quiet", "--example", "import_pytorch", "--",
         source_flag, str(tmp / "model.safetensors"), "--out", str(tmp / "mask.png"),
         export_flag, str(tmp / "back.safetensors")],
        check=True,
    )
    back = make()
    back.load_state_dict(load_file(str(tmp / "back.safetensors")), strict=True)
    as_list = lambda y: y if isinstance(y, (list, tuple)) else [y]
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(as_list(m(x)), as_list(back(x))))
    print(f"load_state_dict(strict=True): ok; largest output difference after the round trip: {diff:g}")
