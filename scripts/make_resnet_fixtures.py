"""ResNet fixtures from torchvision for tests/encoders.rs.

The weights are not stored: every parameter and buffer is set from a formula of its name and
index (`value` below; tests/encoders.rs computes the same numbers), so the fixture holds only
the input and torchvision's outputs and stays small. Writes
tests/fixtures/resnet_torchvision.safetensors.

    ../venv/bin/python scripts/make_resnet_fixtures.py
"""

import pathlib

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file


def name_hash(name):
    h = 0
    for b in name.encode():
        h = (h * 31 + b) % 1000003
    return h


def value(name, shape):
    """(i·7919 + hash(name)) mod 1000 / 1000 − 0.5 for element i: exact in f64 on both sides."""
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.int64)
    return ((i * 7919 + name_hash(name)) % 1000).astype(np.float64) / 1000.0 - 0.5


def fill(model):
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            v = value(name, tuple(t.shape))
            leaf = name.rsplit(".", 1)[-1]
            if t.dim() == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                v = v * 2.0 * np.sqrt(3.0 / fan_in)  # uniform with variance 1 / fan_in
            elif t.dim() == 2:  # linear layers
                v = v * 2.0 * np.sqrt(3.0 / t.shape[1])
            elif leaf == "weight":
                v = 1.0 + 0.2 * v
            elif leaf == "bias":
                v = 0.2 * v
            elif leaf == "running_mean":
                v = 0.2 * v
            elif leaf == "running_var":
                v = 1.0 + v  # in [0.5, 1.5)
            else:
                continue
            t.copy_(torch.from_numpy(v.reshape(tuple(t.shape))).to(t.dtype))


def main():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 56)
    out = {"input": x}
    for arch in ["resnet18", "resnet34", "resnet50"]:
        m = getattr(torchvision.models, arch)(weights=None).eval()
        fill(m)
        with torch.no_grad():
            s = m.relu(m.bn1(m.conv1(x)))
            taps = [s]
            y = m.maxpool(s)
            for layer in [m.layer1, m.layer2, m.layer3, m.layer4]:
                y = layer(y)
                taps.append(y)
        for k, t in enumerate(taps):
            out[f"{arch}.tap{k}"] = t.contiguous()
        print(arch, [tuple(t.shape) for t in taps], [round(float(t.abs().max()), 3) for t in taps])

    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resnet_torchvision.safetensors"
    save_file(out, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
