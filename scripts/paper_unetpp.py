"""The paper's UNet++ in PyTorch, with the same weight names as the Rust crate.

Used by `bench_pytorch.py` (speed reference), `make_fixtures.py` (parity fixtures) and
`make_gradient_fixtures.py` (gradient fixtures).
Nodes X^{i,j} with i + j <= depth; node (i, 0) reads the max-pooled X^{i-1,0}; node (i, j>0)
reads [U(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}] (the official code's order). U is a 2x2
stride-2 transposed convolution; H is (3x3 conv + ReLU) twice; heads are 1x1 convs.

Those are the defaults. The keyword options mirror the crate's `UNetPlusPlusConfig`
(src/unetpp/config.rs), with the crate's weight names (docs/weights.md):
- `norm`: None, "batch" (`nn.BatchNorm2d`), "instance" (`nn.InstanceNorm2d(affine=True)`)
  or ("group", g) (`nn.GroupNorm(g, c)`), after each 3x3 conv, as `norm1` / `norm2`;
- `activation`: "relu" or ("leaky", slope);
- `upsample`: "transposed", "nearest", "bilinear" or "bilinear_ac" (align_corners=True); the
  interpolating modes keep the channels of the coarser level;
- `concat`: "up_first" (the paper) or "skips_first" ([X^{i,0}, ..., X^{i,j-1}, U(...)]);
- `pad_to_multiple`: replicate-pad the input to a multiple of 2^depth (half before, the rest
  after, as the crate does) and crop the logits back;
- `plain`: the crate's plain U-Net on the same grid (`src/unet.rs`): encoder X^{i,0},
  decoder X^{i,L-i} reading [U(X^{i+1,L-i-1}), X^{i,0}], one head on X^{0,L}.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def make_norm(norm, c):
    if norm is None:
        return None
    if norm == "batch":
        return nn.BatchNorm2d(c)
    if norm == "instance":
        return nn.InstanceNorm2d(c, affine=True)
    if isinstance(norm, tuple) and norm[0] == "group":
        return nn.GroupNorm(norm[1], c)
    raise ValueError(f"unknown norm {norm!r}")


class Block(nn.Module):
    def __init__(self, cin, cout, norm=None, activation="relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        n1 = make_norm(norm, cout)
        if n1 is not None:
            self.norm1 = n1
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        n2 = make_norm(norm, cout)
        if n2 is not None:
            self.norm2 = n2
        self.activation = activation

    def act(self, x):
        if self.activation == "relu":
            return F.relu(x)
        return F.leaky_relu(x, self.activation[1])

    def forward(self, x):
        x = self.conv1(x)
        if hasattr(self, "norm1"):
            x = self.norm1(x)
        x = self.conv2(self.act(x))
        if hasattr(self, "norm2"):
            x = self.norm2(x)
        return self.act(x)


class PaperUNetPlusPlus(nn.Module):
    def __init__(self, in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512), depth=4,
                 heads=None, level=None, norm=None, activation="relu", upsample="transposed",
                 concat="up_first", pad_to_multiple=False, plain=False):
        super().__init__()
        if concat not in ("up_first", "skips_first"):
            raise ValueError(f"unknown concat order {concat!r}")
        if upsample not in ("transposed", "nearest", "bilinear", "bilinear_ac"):
            raise ValueError(f"unknown up-sampling {upsample!r}")
        self.depth = depth
        self.plain = plain
        self.level = depth if level is None else level
        if plain:
            self.heads_cols = [depth]
        else:
            self.heads_cols = list(range(1, depth + 1)) if heads is None else list(heads)
        self.upsample = upsample
        self.concat = concat
        self.pad_to_multiple = pad_to_multiple
        f = widths
        self.blocks = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i, j in self.nodes():
            if j == 0:
                cin = in_channels if i == 0 else f[i - 1]
            else:
                skips = 1 if plain else j
                up = f[i] if upsample == "transposed" else f[i + 1]
                cin = skips * f[i] + up
                if upsample == "transposed":
                    self.ups[f"up_{i}_{j}"] = nn.ConvTranspose2d(f[i + 1], f[i], 2, stride=2)
            self.blocks[f"x_{i}_{j}"] = Block(cin, f[i], norm, activation)
        self.heads = nn.ModuleDict({f"head_{j}": nn.Conv2d(f[0], num_classes, 1) for j in self.heads_cols})

    def nodes(self):
        if self.plain:
            d = self.depth
            return [(i, 0) for i in range(d + 1)] + [(i, d - i) for i in reversed(range(d))]
        return [(d - j, j) for d in range(self.level + 1) for j in range(d + 1)]

    def up(self, i, j, x):
        if self.upsample == "transposed":
            return self.ups[f"up_{i}_{j}"](x)
        size = (2 * x.shape[2], 2 * x.shape[3])
        if self.upsample == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.upsample == "bilinear_ac")

    def forward(self, x):
        crop = None
        if self.pad_to_multiple:
            m = 2 ** self.depth
            h, w = x.shape[2], x.shape[3]
            ph, pw = -h % m, -w % m
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
                crop = (ph // 2, pw // 2, h, w)
        out = {}
        for i, j in self.nodes():
            if j == 0:
                inp = x if i == 0 else F.max_pool2d(out[(i - 1, 0)], 2)
            else:
                up = self.up(i, j, out[(i + 1, j - 1)])
                skips = [out[(i, 0)]] if self.plain else [out[(i, c)] for c in range(j)]
                parts = [up] + skips if self.concat == "up_first" else skips + [up]
                inp = torch.cat(parts, dim=1)
            out[(i, j)] = self.blocks[f"x_{i}_{j}"](inp)
        ys = [self.heads[f"head_{j}"](out[(0, j)]) for j in self.heads_cols]
        if crop is not None:
            top, left, h, w = crop
            ys = [y[:, :, top:top + h, left:left + w] for y in ys]
        return ys

    def rust_state_dict(self):
        """State dict under the crate's names (see docs/weights.md); batch-norm's
        `num_batches_tracked` counters, which the crate does not keep, are left out."""
        sd = {}
        for k, v in self.state_dict().items():
            if k.endswith("num_batches_tracked"):
                continue
            k = k.replace("blocks.", "", 1).replace("ups.", "", 1).replace("heads.", "", 1)
            sd[k] = v.detach().contiguous()
        return sd
