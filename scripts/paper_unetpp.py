"""The paper's UNet++ in PyTorch, with the same weight names as the Rust crate.

Used by `bench_pytorch.py` (speed reference) and `make_fixtures.py` (parity fixtures).
Nodes X^{i,j} with i + j <= depth; node (i, 0) reads the max-pooled X^{i-1,0}; node (i, j>0)
reads [U(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}] (the official code's order). U is a 2x2
stride-2 transposed convolution; H is (3x3 conv + ReLU) twice; heads are 1x1 convs.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class PaperUNetPlusPlus(nn.Module):
    def __init__(self, in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512), depth=4,
                 heads=None, level=None):
        super().__init__()
        self.depth = depth
        self.level = depth if level is None else level
        self.heads_cols = list(range(1, depth + 1)) if heads is None else list(heads)
        f = widths
        self.blocks = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i, j in self.nodes():
            if j == 0:
                cin = in_channels if i == 0 else f[i - 1]
            else:
                cin = (j + 1) * f[i]
                self.ups[f"up_{i}_{j}"] = nn.ConvTranspose2d(f[i + 1], f[i], 2, stride=2)
            self.blocks[f"x_{i}_{j}"] = Block(cin, f[i])
        self.heads = nn.ModuleDict({f"head_{j}": nn.Conv2d(f[0], num_classes, 1) for j in self.heads_cols})

    def nodes(self):
        return [(d - j, j) for d in range(self.level + 1) for j in range(d + 1)]

    def forward(self, x):
        out = {}
        for i, j in self.nodes():
            if j == 0:
                inp = x if i == 0 else F.max_pool2d(out[(i - 1, 0)], 2)
            else:
                up = self.ups[f"up_{i}_{j}"](out[(i + 1, j - 1)])
                inp = torch.cat([up] + [out[(i, c)] for c in range(j)], dim=1)
            out[(i, j)] = self.blocks[f"x_{i}_{j}"](inp)
        return [self.heads[f"head_{j}"](out[(0, j)]) for j in self.heads_cols]

    def rust_state_dict(self):
        """State dict under the crate's names (see docs/weights.md)."""
        sd = {}
        for k, v in self.state_dict().items():
            k = k.replace("blocks.", "", 1).replace("ups.", "", 1).replace("heads.", "", 1)
            sd[k] = v.detach().contiguous()
        return sd
