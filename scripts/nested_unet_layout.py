"""The NestedUNet layout of pytorch-nested-unet (4uiiurz1), rebuilt from its documented
structure (docs/research/peer-layouts.md, section 3): the original is not on PyPI. Module names
follow the original's, so state_dicts are interchangeable; the widths are a parameter here
(the original fixes them at 32..512).
"""

import torch
import torch.nn.functional as F


class VGGBlock(torch.nn.Module):
    """conv 3x3 (bias) -> batch-norm -> ReLU, twice; modules named conv1, bn1, conv2, bn2."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(cout)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class NestedUNetLayout(torch.nn.Module):
    """NestedUNet's structure: nodes conv{i}_{j}, i + j <= 4; node (i, 0) reads the 2x2
    max-pooled (i-1, 0); node (i, j>0) reads [x_i_0, ..., x_i_{j-1}, up(x_{i+1,j-1})], up being
    bilinear x2 with align_corners=True; heads `final` on x0_4 or `final1..4`."""

    def __init__(self, num_classes, input_channels, deep_supervision, nb):
        super().__init__()
        self.ds = deep_supervision
        self.nodes = [(i, j) for d in range(5) for j in range(d + 1) for i in [d - j]]
        for i, j in self.nodes:
            cin = (input_channels if i == 0 else nb[i - 1]) if j == 0 else nb[i] * j + nb[i + 1]
            self.add_module(f"conv{i}_{j}", VGGBlock(cin, nb[i]))
        if deep_supervision:
            for k in range(1, 5):
                self.add_module(f"final{k}", torch.nn.Conv2d(nb[0], num_classes, 1))
        else:
            self.final = torch.nn.Conv2d(nb[0], num_classes, 1)

    def forward(self, x):
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)
        xs = {}
        for i, j in self.nodes:
            if j == 0:
                inp = x if i == 0 else F.max_pool2d(xs[(i - 1, 0)], 2)
            else:
                inp = torch.cat([xs[(i, c)] for c in range(j)] + [up(xs[(i + 1, j - 1)])], 1)
            xs[(i, j)] = getattr(self, f"conv{i}_{j}")(inp)
        if self.ds:
            return [getattr(self, f"final{k}")(xs[(0, k)]) for k in range(1, 5)]
        return self.final(xs[(0, 4)])
