"""Whole-network gradient fixtures for tests/gradient_parity.rs, from PyTorch autograd.

    cd /work/main && ../venv/bin/python scripts/make_gradient_fixtures.py

Every case is a network of one family with weights from a shared formula, an input `x` and a
fixed random weighting `r_h` of each output `h` (every deep-supervision head's logits, or
each ResNet feature tap). The loss is

    L = sum_h sum(r_h * y_h),

so `dL/dy_h = r_h`, and the fixture holds `dL/dw` for EVERY trainable parameter `w` and
`dL/dx` for the input. Families (`unetpp_cases`, `peer_cases`; tests/gradient_parity.rs
mirrors each case's configuration):

1. the paper's UNet++ (scripts/paper_unetpp.py, the crate's weight names): the paper layout
   at depth 4 with small widths, and depth 1-3 networks for every up-sampling mode
   (transposed, nearest, bilinear with align_corners false and true), every norm (none,
   batch in training mode, instance, group), both concat orders, ReLU and leaky ReLU,
   pad_to_multiple on an odd-sized input, and one network wide enough at 64x64 for the
   crate's Winograd kernels to run (forward, input and weight gradient);
2. the plain U-Net (src/unet.rs) on the same port (`plain=True`);
3. segmentation_models_pytorch 0.6.0 `UnetPlusPlus`, resnet18 encoder, train mode;
4. the NestedUNet layout (scripts/nested_unet_layout.py) and MONAI 1.6.1
   `BasicUNetPlusPlus` (odd input size), train mode;
5. torchvision's resnet18 body (the five taps the crate's `ResNet::features` returns), in
   train mode and with frozen (eval-mode, not trained) batch-norm.

Weights. Nothing is stored: every parameter and buffer is `formula(name, shape)` below, a
splitmix64 hash of the tensor's name and the element's index mapped to [-0.5, 0.5) and scaled
(fan-in for kernels), rounded to f32. tests/common/mod.rs (`hashed_uniform`, `hashed_weight`)
computes the same bits, so resnet18's 11M weights cost nothing. The names are the ones the
crate's loader sees: the crate's for families 1-2, smp's / torchvision's state_dict names for
3 and 5, MONAI's and NestedUNet's for 4 (loaded through `from_monai` / `from_nested_unet`).
For smp and ResNet the biases (all batch-norm shifts there) are `±(1.5 + 2|u|)` instead of
`0.2u`: with about a million ReLU inputs in those networks, batch-norm outputs centred on the
kink leave no input seed with the margin below; shifted by 1.5-2.5 they still split about
half and half between the ReLU's branches, but few sit near 0.

Precision. Each case runs twice in PyTorch from the same f32-representable weights, input
and `r_h`: in float64 (the reference) and in float32. Per gradient tensor the fixture keeps
the f64 gradient (rounded to f32 for most cases, kept in f64 where the Rust test also runs
the crate in f64) and `torch_err = max |g32 - g64|`, PyTorch's own f32 error, with
`gmax = max |g64|`. The Rust test runs the crate in f32 (under each of its convolution
kernels) and requires, per tensor,

    max |ours - g64| <= 8 * torch_err + 1e-5 * gmax.

Why these numbers: `torch_err` measures how well this gradient is determined in f32 for
this network and input (it grows with depth, the number of summed terms and cancellation);
a correct f32 implementation that sums in another order (GEMM blocking, Winograd transforms
whose matrices have entries up to 5 and cost a few bits, f64 batch-norm sums) lands within a
small multiple of it. 8 is that multiple (3 bits); the floor 1e-5 * gmax (about 100 f32 ulps
of the tensor's largest value) covers tensors where PyTorch's error happens to be tiny (a
handful of exactly summed terms). A gradient that vanishes mathematically (a convolution
bias in front of a batch or instance norm: max|g64| ~ 1e-16 of the others) is rounding noise
on both sides; its floor is 1e-5 of the size of the terms it sums, torch_err / 2^-24,
instead. Rounding the stored reference to f32 adds at most 6e-8 * gmax.

All of this is far below what a wrong gradient gives: candle's max-pool backward is off by a
factor 4 (75%), its nearest up-sampling backward drops whole contributions. Run on the crate
before its fix, 5 to 25 gradients of every UNet++ / U-Net / NestedUNet / MONAI case fail, by
up to 1e7 times PyTorch's error; candle's nearest up-sampling alone fails 25 gradients of
`instance_nearest`. Measured on the fixed crate here (AMD EPYC with AVX-512; all three
kernels; UNETPP_SIMD native, avx2 and scalar): our error is at most 10 times PyTorch's, above
8 only for biases (single sums, which PyTorch reduces pairwise) and then below the floor; no
tensor uses more than 0.37 of its bound.

For the cases kept in f64 the crate's f64 run must match within
1e-9 * (gmax + torch_err / 2^-24), the second term being the size of the summed terms (what
sets the noise of a gradient that vanishes mathematically): the mathematical check.

Kinks. ReLU / leaky ReLU and max-pool are not smooth: where a pre-activation is within f32
noise of 0, or two values of a pooling window within f32 noise of each other, f32 may take
the other branch and the gradient differs by a whole term, for a correct implementation too.
So each case's input is drawn from successive seeds until every ReLU input satisfies
`min |x64| >= MARGIN * rms(x32 - x64)` (PyTorch's typical f32 error on that tensor) and every
pooling window's gap between its two largest values satisfies the same (windows of exact ReLU
zeros excepted: their gradient dies at the ReLU whichever zero takes it). With MARGIN = 20 an
implementation whose f32 error is a few times PyTorch's is still many of its own standard
deviations away from taking another branch. The seeds and margins are printed.

Large tensors (smp and ResNet, whose encoder has 11M weights) are stored compactly: for a
parameter gradient with more than FULL_LIMIT elements, its 8 largest-|g| elements and 24
others (indices `idx.NAME`, values `grad.NAME`), and 4 projections onto pseudo-random tensors
`p_k = hashed_uniform("proj{k}.NAME")`: rows `proj.NAME = [<g64, p_k>, sum |g32 - g64| |p_k|,
sum |g64| |p_k|]`, checked as `|<ours, p_k> - <g64, p_k>| <= 8 * (second) + 1e-5 * (third)`; a
projection sees an error anywhere in the tensor. ResNet's `r_h` (the taps hold 95k values) is
`hashed_uniform("r.{h}")` too; every other case stores its `r_h` in f16 (exact in f32/f64).
Every other gradient, the input's included, is stored whole.

Layout, per case `C`: `C/input` (f16), `C/r.{h}` (f16), `C/grad.{name}` (the input's as
`grad.input`), `C/idx.{name}` (u32) and `C/proj.{name}` (f64, 4x3) for compact tensors,
`C/stats` (f64, T x 2: `[torch_err, gmax]` per gradient, names in sorted order),
`C/checksum` (f64: [sum w, sum |w|] over the trained parameters, to catch a formula mismatch),
`C/buffer.{name}` (NestedUNet's batch-norm statistics, which its importer needs).
Files: tests/fixtures/grad_unetpp.safetensors (families 1-2),
tests/fixtures/grad_peers.safetensors (3-5).
"""

import copy
import os
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from paper_unetpp import PaperUNetPlusPlus  # noqa: E402
from nested_unet_layout import NestedUNetLayout  # noqa: E402

OUT = HERE.parent / "tests" / "fixtures"
MARGIN = 20.0
FULL_LIMIT = 4096
TOP, SAMPLED, PROJECTIONS = 8, 24, 4
MASK64 = (1 << 64) - 1


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def hashed_uniform(name, n):
    """Element i: splitmix64(fnv1a(name) + (i + 1) * golden), top 24 bits, in [-0.5, 0.5)."""
    z = np.uint64(fnv1a(name)) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 16777216.0 - 0.5


def formula(name, shape, shifted=False):
    """The weight of tensor `name` (f32 values, as float64). `shifted`: biases of magnitude
    1.5 to 2.5, either sign (see the module documentation)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = hashed_uniform(name, n)
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        v = u * 2.0 * np.sqrt(3.0 / fan_in)
    elif leaf == "weight":
        v = 1.0 + 0.4 * u
    elif leaf == "bias" and shifted:
        v = 2.0 * u + np.where(u >= 0, 1.5, -1.5)
    elif leaf in ("bias", "running_mean"):
        v = 0.2 * u
    elif leaf == "running_var":
        v = 1.0 + u
    else:
        raise ValueError(f"no formula for {name}")
    return torch.from_numpy(v.astype(np.float32).astype(np.float64).reshape(tuple(shape)))


def fill(model, rename, shifted=False):
    """Sets every parameter and buffer of `model` (but the batch-norm counters) from
    `formula`, under the name `rename(torch_name)` (None: a tensor the crate does not have)."""
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            ours = rename(name)
            if name.endswith("num_batches_tracked") or ours is None:
                continue
            t.copy_(formula(ours, tuple(t.shape), shifted).to(t.dtype))


class Probes:
    """Records the inputs of every ReLU / leaky ReLU and max-pool while active."""

    def __init__(self):
        self.records = []

    def __enter__(self):
        self.saved = (torch.relu, torch.relu_, F.leaky_relu, F.max_pool2d)
        relu, relu_, leaky, pool = self.saved
        rec = self.records

        def p_relu(x, *a, **k):
            rec.append(("act", x.detach().clone(), None))
            return relu(x, *a, **k)

        def p_relu_(x, *a, **k):
            rec.append(("act", x.detach().clone(), None))
            return relu_(x, *a, **k)

        def p_leaky(x, *a, **k):
            rec.append(("act", x.detach().clone(), None))
            return leaky(x, *a, **k)

        def p_pool(x, kernel_size, stride=None, padding=0, *a, **k):
            rec.append(("pool", x.detach().clone(), (kernel_size, stride or kernel_size, padding)))
            return pool(x, kernel_size, stride, padding, *a, **k)

        torch.relu, torch.relu_, F.leaky_relu, F.max_pool2d = p_relu, p_relu_, p_leaky, p_pool
        return self

    def __exit__(self, *exc):
        torch.relu, torch.relu_, F.leaky_relu, F.max_pool2d = self.saved


def pool_gaps(x, geom):
    """Per window of max-pool `geom` on `x`: top-1 minus top-2 (windows whose maximum is an
    exact 0 of a non-negative map excluded: ReLU zeros, whose gradient the ReLU stops)."""
    k, s, p = (g if isinstance(g, int) else g[0] for g in geom)
    n, c, h, w = x.shape
    xp = F.pad(x, (p, p, p, p), value=float("-inf")) if p else x
    cols = F.unfold(xp.reshape(n * c, 1, h + 2 * p, w + 2 * p), k, stride=s)  # (NC, k*k, L)
    top = cols.topk(2, dim=1).values
    gap = top[:, 0] - top[:, 1]
    if x.min() >= 0:
        gap = gap[top[:, 0] != 0]
    return gap


def margin(rec64, rec32):
    """The smallest ratio of a kink's distance (f64) to PyTorch's f32 error there."""
    assert len(rec64) == len(rec32), "f32 and f64 runs took different paths"
    worst = float("inf")
    for (kind, x64, geom), (_, x32, _) in zip(rec64, rec32):
        err = float((x32.double() - x64).pow(2).mean().sqrt())
        if err == 0:
            continue
        if kind == "act":
            dist = float(x64.abs().min())
        else:
            gaps = pool_gaps(x64, geom)
            dist = float(gaps.min()) if gaps.numel() else float("inf")
        worst = min(worst, dist / err)
    return worst, len(rec64)


def run(model, forward, x, rs, frozen_bn):
    """Loss, gradients of the trained parameters (by torch name) and of the input."""
    for p in model.parameters():
        p.grad = None
    xv = x.clone().requires_grad_(True)
    with Probes() as probes:
        ys = forward(model, xv)
    loss = sum((r.to(y.dtype) * y).sum() for r, y in zip(rs, ys))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing}"
    grads = {n: g.detach().clone() for n, g in grads.items()}
    grads["input"] = xv.grad.detach().clone()
    return ys, grads, probes.records


def case(out, key, build, forward, shape, rename, *, train=True, frozen_bn=False, keep_f64=False,
         r_formula=False, seed=0, buffers=False, shifted=False, tries=100, full_limit=None):
    """Runs one case and writes its tensors into `out` under `key/`."""
    model64 = build().double()
    fill(model64, rename, shifted)
    for name, p in model64.named_parameters():
        if rename(name) is None:
            p.requires_grad_(False)
    if frozen_bn:
        for m in model64.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    model64.train(train)
    model32 = copy.deepcopy(model64).float()
    # Buffers and weights before any forward (training mode updates the running statistics).
    state0 = {rename(n): t.detach().clone() for n, t in model64.state_dict().items()
              if not n.endswith("num_batches_tracked") and rename(n) is not None}

    rs = None
    for s in range(seed, seed + tries):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(*shape, generator=g, dtype=torch.float32).half().float()
        if rs is None:
            with torch.no_grad():
                ys = forward(model32, x)
            if r_formula:
                rs = [torch.from_numpy(hashed_uniform(f"r.{h}", y.numel()).reshape(tuple(y.shape))) for h, y in enumerate(ys)]
            else:
                gr = torch.Generator().manual_seed(1000 + seed)
                rs = [torch.randn(*y.shape, generator=gr).half() for y in ys]
        _, g64, rec64 = run(model64, forward, x.double(), [r.double() for r in rs], frozen_bn)
        _, g32, rec32 = run(model32, forward, x, [r.float() for r in rs], frozen_bn)
        m, count = margin(rec64, rec32)
        if m >= MARGIN:
            break
    else:
        raise RuntimeError(f"{key}: no input seed with kink margin {MARGIN}")

    out[f"{key}/input"] = x.half()
    if not r_formula:
        for h, r in enumerate(rs):
            out[f"{key}/r.{h}"] = r
    named64 = {("input" if n == "input" else rename(n)): t for n, t in g64.items()}
    named32 = {("input" if n == "input" else rename(n)): t for n, t in g32.items()}
    stats, total = [], 0
    rng = np.random.default_rng(fnv1a(key) % (1 << 32))
    for name in sorted(named64):
        a, b = named64[name], named32[name].double()
        torch_err = float((b - a).abs().max())
        gmax = float(a.abs().max())
        stats.append([torch_err, gmax])
        total += a.numel()
        if name == "input" or full_limit is None or a.numel() <= full_limit:
            out[f"{key}/grad.{name}"] = a if keep_f64 else a.float()
            continue
        flat, flat32 = a.flatten().numpy(), b.flatten().numpy()
        top = np.argsort(-np.abs(flat), kind="stable")[:TOP]
        rest = np.setdiff1d(np.arange(flat.size), top)
        idx = np.sort(np.concatenate([top, rng.choice(rest, SAMPLED, replace=False)]))
        out[f"{key}/idx.{name}"] = torch.from_numpy(idx.astype(np.uint32))
        vals = torch.from_numpy(flat[idx])
        out[f"{key}/grad.{name}"] = vals if keep_f64 else vals.float()
        proj = []
        for k in range(PROJECTIONS):
            p = hashed_uniform(f"proj{k}.{name}", flat.size)
            proj.append([float(flat @ p), float(np.abs(flat32 - flat) @ np.abs(p)), float(np.abs(flat) @ np.abs(p))])
        out[f"{key}/proj.{name}"] = torch.tensor(proj, dtype=torch.float64)
    out[f"{key}/stats"] = torch.tensor(stats, dtype=torch.float64)
    trained = [n for n in named64 if n != "input"]
    out[f"{key}/checksum"] = torch.tensor(
        [sum(float(state0[n].sum()) for n in trained), sum(float(state0[n].abs().sum()) for n in trained)],
        dtype=torch.float64)
    if buffers:
        for n, t in state0.items():
            if n.endswith("running_mean") or n.endswith("running_var"):
                out[f"{key}/buffer.{n}"] = t.float()
    # Gradients that vanish mathematically (a conv bias before batch or instance norm) are
    # f32 noise on both sides; they are left out of this summary, not out of the fixture.
    top_g = max(st[1] for st in stats)
    rel = max(st[0] / st[1] for st in stats if st[1] > 1e-9 * top_g)
    zero = sum(st[1] <= 1e-9 * top_g for st in stats)
    print(f"{key:22s} seed {s:3d} margin {m:6.1f} ({count} kinks) {len(stats):3d} gradients "
          f"({zero} vanishing), {total:9d} values; torch f32 error up to {rel:.1e} of max|g|")


def paper(**kw):
    def build():
        return PaperUNetPlusPlus(**kw)
    return build


def paper_forward(model, x):
    return model(x)


def rust_name(name):
    """The crate's name for a parameter of PaperUNetPlusPlus."""
    return name.replace("blocks.", "", 1).replace("ups.", "", 1).replace("heads.", "", 1)


def unetpp_cases():
    out = {}
    # (key, options, input shape, keep f64): mirrored by CASES in tests/gradient_parity.rs.
    cases = [
        ("paper_d4", dict(widths=(4, 6, 8, 10, 12), depth=4), (2, 1, 32, 32), True),
        ("batch_transposed", dict(widths=(4, 8, 12), depth=2, num_classes=2, norm="batch"), (2, 1, 16, 24), False),
        ("instance_nearest", dict(in_channels=2, widths=(4, 4, 6, 6), depth=3, norm="instance",
                                  upsample="nearest"), (1, 2, 24, 32), True),
        ("group_bilinear_leaky", dict(widths=(4, 8, 12), depth=2, heads=[2], norm=("group", 2),
                                      activation=("leaky", 0.1), upsample="bilinear",
                                      concat="skips_first"), (2, 1, 16, 16), True),
        ("batch_bilinear_ac", dict(in_channels=3, num_classes=2, widths=(4, 4, 6, 8), depth=3, norm="batch",
                                   upsample="bilinear_ac", concat="skips_first"), (2, 3, 16, 24), True),
        ("pad_odd", dict(widths=(4, 6, 8), depth=2, pad_to_multiple=True), (2, 1, 13, 11), True),
        ("winograd", dict(widths=(32, 2), depth=1, upsample="nearest"), (1, 1, 64, 64), False),
        ("unet_d3", dict(widths=(4, 6, 8, 10), depth=3, plain=True), (2, 1, 16, 16), False),
        ("unet_batch_nearest", dict(widths=(4, 6, 8), depth=2, plain=True, norm="batch", upsample="nearest",
                                    concat="skips_first"), (2, 1, 16, 16), True),
    ]
    for n, (key, kw, shape, keep) in enumerate(cases):
        case(out, key, paper(**kw), paper_forward, shape, rust_name, keep_f64=keep, seed=10 * n)
    return out


def peer_cases():
    out = {}
    import segmentation_models_pytorch as smp
    import torchvision
    from monai.networks.nets import BasicUNetPlusPlus

    def smp_build():
        return smp.UnetPlusPlus(encoder_name="resnet18", encoder_weights=None, classes=1,
                                decoder_channels=(32, 16, 8, 8, 4))

    case(out, "smp_resnet18", smp_build, lambda m, x: [m(x)], (1, 3, 64, 64), lambda n: n, seed=100,
         shifted=True, tries=300, full_limit=FULL_LIMIT)

    def nested_build():
        return NestedUNetLayout(1, 1, True, nb=[4, 4, 6, 8, 10])

    case(out, "nested_ds", nested_build, lambda m, x: m(x), (2, 1, 32, 32), lambda n: n, seed=200,
         buffers=True)

    def monai_build():
        return BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 6, 8, 8, 12, 5),
                                 deep_supervision=True)

    case(out, "monai_odd", monai_build, lambda m, x: m(x), (2, 1, 37, 45), lambda n: n, seed=300)

    def resnet_build():
        return torchvision.models.resnet18(weights=None)

    def taps(m, x):
        s = m.relu(m.bn1(m.conv1(x)))
        ys, y = [s], m.maxpool(s)
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            y = layer(y)
            ys.append(y)
        return ys

    def tv_name(n):
        return None if n.startswith("fc.") else n

    case(out, "resnet18_train", resnet_build, taps, (1, 3, 64, 64), tv_name, r_formula=True, seed=400,
         shifted=True, keep_f64=True, tries=300, full_limit=FULL_LIMIT)
    case(out, "resnet18_frozen", resnet_build, taps, (1, 3, 64, 32), tv_name, r_formula=True, seed=500,
         shifted=True, tries=300, full_limit=FULL_LIMIT,
         train=False, frozen_bn=True)
    return out


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for file, make in [("grad_unetpp.safetensors", unetpp_cases), ("grad_peers.safetensors", peer_cases)]:
        out = make()
        path = OUT / file
        save_file({k: v.contiguous() for k, v in out.items()}, str(path))
        os.chmod(path, 0o644)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    import monai
    import segmentation_models_pytorch as smp
    import torchvision
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, monai {monai.__version__}, "
          f"smp {smp.__version__}")


if __name__ == "__main__":
    main()
