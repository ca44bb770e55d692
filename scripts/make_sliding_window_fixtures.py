"""Sliding-window and test-time-augmentation fixtures for tests/sliding_window.rs.

tests/fixtures/sliding_window.safetensors holds a MONAI BasicUNetPlusPlus (spatial_dims=2,
small features, random weights and instance-norm affines, eval mode) under `net/`, and for
each case `<case>/input` and `<case>/output`:

- MONAI's own `monai.inferers.sliding_window_inference` with the network's last head (its
  logits) as the predictor, in float32, with the case's window, overlap, blending, batch of
  windows and padding; `tol.<case>` is that float32 result's error against the same call in
  float64 (relative to the output's largest magnitude): the bound the Rust side scales.
- `tta_flips`, `tta_rot`: softmax probabilities averaged over flips (and flips with the last
  two axes swapped), in the order unetpp's `Tta` runs them (flip mask 0..2^rank, bit a = axis a).
- `sw_tta`: MONAI's sliding window with that flip average as the predictor.

    ../venv/bin/python scripts/make_sliding_window_fixtures.py
"""

import pathlib

import monai
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import BasicUNetPlusPlus
from safetensors.torch import save_file

torch.manual_seed(0)
net = BasicUNetPlusPlus(
    spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4), deep_supervision=False
).eval()
with torch.no_grad():
    for name, p in net.named_parameters():
        if ".adn.N." in name:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
net64 = BasicUNetPlusPlus(
    spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 16, 32, 4), deep_supervision=False
).double().eval()
net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})


def last(m):
    def f(x):
        y = m(x)
        return y[-1] if isinstance(y, (list, tuple)) else y

    return f


def tta(m, x, rotations):
    """Mean softmax over the flips (and the transposed flips) of the spatial axes."""
    rank = x.dim() - 2
    total, n = None, 0
    for transpose in ([False, True] if rotations else [False]):
        for mask in range(1 << rank):
            dims = [a + 2 for a in range(rank) if mask >> a & 1]
            xt = x.transpose(-2, -1) if transpose else x
            if dims:
                xt = xt.flip(dims)
            y = torch.softmax(last(m)(xt), dim=1)
            if dims:
                y = y.flip(dims)
            if transpose:
                y = y.transpose(-2, -1)
            total = y if total is None else total + y
            n += 1
    return total / n


out = {f"net/{k}": v.contiguous() for k, v in net.state_dict().items()}
cases = {
    # name: input shape, sliding-window arguments
    "constant": ((1, 1, 72, 100), dict(roi_size=(32, 32), sw_batch_size=1, overlap=0.25, mode="constant")),
    "gaussian": ((2, 1, 72, 100), dict(roi_size=(32, 48), sw_batch_size=3, overlap=0.5, mode="gaussian")),
    "sigma": ((1, 1, 64, 80), dict(roi_size=(32, 32), sw_batch_size=4, overlap=(0.5, 0.25), mode="gaussian", sigma_scale=0.25)),
    # An axis shorter than the window is padded (zeros, then edge replication) and cropped back.
    "pad_zero": ((1, 1, 20, 90), dict(roi_size=(32, 32), sw_batch_size=2, overlap=0.25, mode="gaussian")),
    "pad_edge": ((1, 1, 20, 90), dict(roi_size=(32, 32), sw_batch_size=2, overlap=0.25, mode="gaussian", padding_mode="replicate")),
}
with torch.no_grad():
    for case, (shape, kw) in cases.items():
        x = torch.rand(*shape)
        y = sliding_window_inference(x, predictor=last(net), **kw)
        y64 = sliding_window_inference(x.double(), predictor=last(net64), **kw)
        out[f"{case}/input"] = x.contiguous()
        out[f"{case}/output"] = y.contiguous()
        out[f"tol.{case}"] = torch.tensor([((y.double() - y64).abs().max() / y64.abs().max()).item()], dtype=torch.float64)
        print(case, tuple(y.shape), "f32 error", out[f"tol.{case}"].item())

    for case, rot in [("tta_flips", False), ("tta_rot", True)]:
        x = torch.rand(1, 1, 32, 48)
        y = tta(net, x, rot)
        y64 = tta(net64, x.double(), rot)
        out[f"{case}/input"] = x
        out[f"{case}/output"] = y.contiguous()
        out[f"tol.{case}"] = torch.tensor([((y.double() - y64).abs().max() / y64.abs().max()).item()], dtype=torch.float64)
        print(case, tuple(y.shape), "f32 error", out[f"tol.{case}"].item())

    x = torch.rand(1, 1, 48, 80)
    kw = dict(roi_size=(32, 32), sw_batch_size=2, overlap=0.5, mode="gaussian")
    y = sliding_window_inference(x, predictor=lambda w: tta(net, w, False), **kw)
    y64 = sliding_window_inference(x.double(), predictor=lambda w: tta(net64, w, False), **kw)
    out["sw_tta/input"] = x
    out["sw_tta/output"] = y.contiguous()
    out["tol.sw_tta"] = torch.tensor([((y.double() - y64).abs().max() / y64.abs().max()).item()], dtype=torch.float64)
    print("sw_tta", tuple(y.shape), "f32 error", out["tol.sw_tta"].item())

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sliding_window.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, monai {monai.__version__})")
