"""Gradient fixtures from PyTorch autograd for Mask R-CNN's training losses, for
tests/maskrcnn_gradients.rs.

    cd /work/main && ../venv/bin/python scripts/make_maskrcnn_grad_fixtures.py

Writes tests/fixtures/maskrcnn_grad.safetensors (about 600 kB) in about a minute.

The detector is the crate's `MaskRcnnConfig::compact(3, 32, 96)` built in torchvision 0.29:
torchvision's resnet18 with `BatchNorm2d` in training mode (batch statistics, as torchvision
builds a detector whose backbone is not pretrained, and as `compact` does), every stage
trainable, `BackboneWithFPN` with 32 channels and `LastLevelMaxPool`, anchors of 8-128 px
with ratios 0.5 / 1 / 2, `TwoMLPHead(32 * 7 * 7, 128)`, `FastRCNNPredictor(128, 3)`,
`MaskRCNNHeads(32, [32, 32], 1)`, `MaskRCNNPredictor(32, 32, 3)`: 3 classes, background
included. No weight is stored: every parameter and buffer is `make_resnet_fixtures.fill`'s
formula of its name, the weights of two or more dimensions `make_roi_heads_fixtures.scramble`'s
(tests/common/mod.rs `detection_weight`), except the biases in front of a ReLU, set to
`k * (2u ± 1.5)` for fill's `u` (`relu_shift`; see Kinks).

Inputs. A batch of two 96 x 96 images drawn from N(0, 1) and stored in f16 (exact in f32 and
f64); the second image counts as 88 x 80 (`image_sizes`), as if padded, which sets its masks'
size. Ground truth: four and three boxes with labels 1-2, near anchors of 8, 16, 32 and 64 px
so that RPN positives fall on four pyramid levels, with the ellipses inscribed in them as
masks (u8). The transform is not run (the batch is the network's input): it has no weights.

The losses, made independent of sampling. Both samplers (torchvision's
`BalancedPositiveNegativeSampler`, the crate's `sampler.rs`) keep `min(P, int(B f))` of the
`P` positives and `min(N, B - kept positives)` of the `N` negatives; the losses are means over
the kept set, so with `B` above the number of candidates and `f = 1` every candidate is kept
and the draw (torch's `randperm`, the crate's seeded one) cannot change them:

- RPN: `batch_size_per_image = 8192` (an image has 2307 anchors), `positive_fraction = 1`:
  `loss_objectness` and `loss_rpn_box_reg` from `model.rpn(images, features, targets)`;
- RoI heads on fixed proposals (`PROPOSALS` per image: `JITTERED` shifted and scaled copies
  of each ground-truth box, then random boxes; both sides append the ground truth):
  `model.roi_heads(features, proposals, image_sizes, targets)` in training mode,
  `batch_size_per_image = 4096`, `positive_fraction = 1`: `loss_classifier`, `loss_box_reg`,
  `loss_mask` (24 positive proposals, enough for the crate's Winograd weight gradient to run
  on the mask head's 14 x 14 convolutions).

`total` is their sum. The RPN's own proposals never reach a loss here: they come out of NMS
and top-n cuts, not a smooth function of the weights. At 96 px every box pools from the
finest level (the second starts at sqrt(area) = 112 px); the RPN losses reach all five.

torchvision's RPN passes float32 labels to `binary_cross_entropy_with_logits`, which then
returns a float32 loss for float64 logits; `targets_in_input_dtype` casts them so that the
float64 reference is float64 throughout (nothing changes in float32).

Weight-independent decisions are checked for margins in float64 (the script stops
otherwise): every anchor's and proposal's best IoU is more than `IOU_MARGIN` (100 times a
float32 IoU's error) from the matcher's thresholds (0.3 / 0.7, 0.5), every positive's best
ground truth beats its second by as much, every ground truth's best anchor (the low-quality
matches) is above 0.7 by the margin or beats the next one by it, and every proposal's
pooling level (`4 + log2(sqrt(area) / 224)`) is that far from an integer.

Gradients. For each loss (`total`, `classifier`, `box_reg`, `mask`, `objectness`,
`rpn_box_reg`), the gradient of each tensor of `TENSORS` (spread over the body, the pyramid,
the RPN head, the box and mask branches) that the loss reaches: its first rows (`TENSORS`
says how many; all for small tensors) elementwise, and the whole tensor through
`PROJECTIONS` projections onto the patterns of `pattern()`. A gradient that torch does not
compute (the RPN head for the RoI losses, the mask branch for the box losses) or that is
exactly 0 in float64 (the second pyramid level for the RoI losses) is not stored: the
crate's must be absent or 0.

Precision and bounds. The same weights and inputs run in float64 (`model.double()`, the
reference) and in float32 four ways that sum in different orders
(`float32_runs`: default, one thread, without oneDNN, channels-last).
PyTorch's own float32 error `torch_err = max |g32 - g64|` over those runs and `gmax = max
|g64|` are stored per gradient; the test requires of the crate in f32, under each of its
convolution kernels,

    max |ours - g64| <= 8 * torch_err + 1e-5 * gmax

the rule of scripts/make_gradient_fixtures.py, which explains it: a correct float32
implementation that sums in another order lands within a small multiple of PyTorch's error
(8 = 3 bits; measured here: at most 2.2 times), and the floor, about 100 f32 ulps of the
tensor's largest value, covers gradients PyTorch happens to get nearly exact. Each projection
row is `[<g64, p>, max over runs of sum |g32 - g64| |p|, sum |g64| |p|]`, checked as
`|<ours, p> - <g64, p>| <= 8 * (second) + 1e-5 * (third)`. The loss values are bounded the same
way (`loss.{k}` = `[value64, torch_err]`). The crate in f64 is checked too: its rows against
the reference rounded to f32 (within that rounding, half an f32 ulp, plus 1e-9 of gmax) and
its projections within 1e-9 of `sum |g64| |p|` (measured: about 1e-16), which no float32
noise can hide.

Kinks. ReLU and max-pool are not smooth: where a pre-activation sits within float32 noise of
0 (or two values of a pooling window that close), float32 may take the other branch and the
gradient changes by a whole term, for a correct implementation too. The image seed is the
first from 1 up where every ReLU input (body, RPN head, box head, mask head and predictor) is
at least `MARGIN` = 20 times PyTorch's rms float32 error of its tensor away from 0 and every
stem max-pool window's two largest values are as far apart (windows of exact zeros
excepted), as in make_gradient_fixtures.py. With fill's biases (±0.1) about 40 of the 1.8
million such inputs are closer on every seed tried; biases of ±(1.5-2.5) in the body's
batch-norm (unit-scale outputs) and 6 times that in the heads (whose pre-activations have
scales of 2-7) leave 0-6 (seed 8 is the first with none), and each channel still splits
between the two branches or nearly so.

Layout: `images` (f16), `image_sizes` (i64), `boxes{i}` (f32), `labels{i}` (i64), `masks{i}`
(u8), `proposals{i}` (f32); `grad.{loss}.{tensor}` (f32, the stored rows of the float64
gradient); `proj.{loss}.{tensor}` (f64, PROJECTIONS x 3); `stats.{loss}` (f64, T x 2:
`[torch_err, gmax]` of the stored rows, tensors in sorted order); `loss.{loss}` (f64, 2);
`checksum` (f64: sum and sum of |.| over every parameter, to catch a formula mismatch).
"""

import contextlib
import copy
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_resnet_fixtures import fill, value  # noqa: E402
from make_roi_heads_fixtures import scramble  # noqa: E402

OUT = HERE.parent / "tests" / "fixtures" / "maskrcnn_grad.safetensors"
NUM_CLASSES = 3
CHANNELS = 32
PADDED = (96, 96)
IMAGE_SIZES = [(96, 96), (88, 80)]
# Ground truth (x1, y1, x2, y2) and labels per image: boxes near anchors of 8, 16, 32 and 64
# px (positives on four pyramid levels), and boxes between them.
GT_BOXES = [
    [[1.9, 2.6, 63.4, 61.1], [30.5, 33.25, 62.75, 64.5], [50.2, 60.6, 90.9, 86.3], [70.3, 10.2, 78.6, 18.1]],
    [[20.4, 15.8, 70.3, 60.9], [6.1, 34.3, 64.7, 84.2], [39.6, 23.1, 55.9, 39.4]],
]
GT_LABELS = [[1, 2, 1, 2], [2, 1, 1]]
PROPOSALS = 20  # per image, before the ground truth is appended
JITTERED = 4  # copies of each ground-truth box among them
PROPOSAL_SEED = 5
RPN_BATCH, ROI_BATCH = 8192, 4096
IOU_MARGIN = 1e-5  # float32 IoUs are off by about 1e-7
MARGIN = 20.0
PROJECTIONS = 2
HEAD_SHIFT = 6.0
LOSSES = ["total", "classifier", "box_reg", "mask", "objectness", "rpn_box_reg"]
# Tensor name -> rows stored (None: all).
TENSORS = {
    "backbone.body.conv1.weight": 8,
    "backbone.body.bn1.weight": None,
    "backbone.body.layer2.0.conv1.weight": 4,
    "backbone.body.layer4.0.conv1.weight": 1,
    "backbone.body.layer4.0.downsample.1.weight": None,
    "backbone.body.layer4.1.bn2.bias": None,
    "backbone.fpn.inner_blocks.1.0.weight": 16,
    "backbone.fpn.inner_blocks.3.0.bias": None,
    "backbone.fpn.layer_blocks.0.0.weight": 8,
    "backbone.fpn.layer_blocks.1.0.weight": 8,
    "rpn.head.conv.0.0.weight": 8,
    "rpn.head.cls_logits.weight": None,
    "rpn.head.bbox_pred.weight": None,
    "rpn.head.bbox_pred.bias": None,
    "roi_heads.box_head.fc6.weight": 1,
    "roi_heads.box_head.fc7.bias": None,
    "roi_heads.box_predictor.cls_score.weight": None,
    "roi_heads.box_predictor.bbox_pred.weight": None,
    "roi_heads.mask_head.0.0.weight": 8,
    "roi_heads.mask_head.1.0.bias": None,
    "roi_heads.mask_predictor.conv5_mask.weight": 16,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": None,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": None,
}
# The heads' biases in front of a ReLU (see Kinks).
HEAD_RELU_BIASES = [
    "rpn.head.conv.0.0.bias",
    "roi_heads.box_head.fc6.bias",
    "roi_heads.box_head.fc7.bias",
    "roi_heads.mask_head.0.0.bias",
    "roi_heads.mask_head.1.0.bias",
    "roi_heads.mask_predictor.conv5_mask.bias",
]


def relu_shift(name):
    """The factor k of the shifted bias `k * (2u ± 1.5)` (u: fill's value) of `name`: 1 for the
    body's batch-norm biases, HEAD_SHIFT for HEAD_RELU_BIASES, None for the others (fill's
    0.2u)."""
    if name in HEAD_RELU_BIASES:
        return HEAD_SHIFT
    leaf = name.rsplit(".", 2)
    if name.startswith("backbone.body.") and name.endswith(".bias") and (leaf[-2].startswith("bn") or name.endswith("downsample.1.bias")):
        return 1.0
    return None


def build():
    """The compact detector with the formula's weights, in training mode."""
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    backbone = BackboneWithFPN(body, layers, [64, 128, 256, 512], CHANNELS, extra_blocks=LastLevelMaxPool())
    c = CHANNELS
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5),
        rpn_batch_size_per_image=RPN_BATCH,
        rpn_positive_fraction=1.0,
        box_head=TwoMLPHead(c * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, NUM_CLASSES),
        box_batch_size_per_image=ROI_BATCH,
        box_positive_fraction=1.0,
        mask_head=MaskRCNNHeads(c, [c, c], 1),
        mask_predictor=MaskRCNNPredictor(c, c, NUM_CLASSES),
    )
    fill(model)
    scramble(model)
    with torch.no_grad():
        for name, t in model.named_parameters():
            k = relu_shift(name)
            if k is not None:
                u = value(name, tuple(t.shape))
                t.copy_(torch.from_numpy(k * (2.0 * u + np.where(u >= 0, 1.5, -1.5))).to(t.dtype))
    return model.train()


def ellipse_masks(boxes, size):
    """The ellipses inscribed in `boxes`, on pixel centres, as u8 (G, H, W)."""
    h, w = size
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    out = []
    for x1, y1, x2, y2 in boxes:
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        out.append((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.uint8))
    return torch.from_numpy(np.stack(out))


def proposals_for(gt, size, gen):
    """Up to PROPOSALS boxes inside the image, at least 8 px wide and high: JITTERED copies
    of each ground-truth box (centre moved by up to 30% of its size, sides scaled by 0.7-1.4),
    then random boxes of 8-60 px."""
    h, w = size
    out = []
    for b in gt:
        bw, bh = b[2] - b[0], b[3] - b[1]
        for _ in range(JITTERED):
            s = torch.empty(2).uniform_(0.7, 1.4, generator=gen)
            d = torch.empty(2).uniform_(-0.3, 0.3, generator=gen)
            cx, cy = (b[0] + b[2]) / 2 + d[0] * bw, (b[1] + b[3]) / 2 + d[1] * bh
            nw, nh = bw * s[0], bh * s[1]
            out.append([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2])
    while len(out) < PROPOSALS:
        sz = torch.empty(2).uniform_(8, 60, generator=gen)
        x1 = torch.rand(1, generator=gen) * (w - sz[0])
        y1 = torch.rand(1, generator=gen) * (h - sz[1])
        out.append([x1, y1, x1 + sz[0], y1 + sz[1]])
    p = torch.tensor([[float(v) for v in b] for b in out], dtype=torch.float64)
    p[:, 0::2] = p[:, 0::2].clamp(0, w)
    p[:, 1::2] = p[:, 1::2].clamp(0, h)
    keep = ((p[:, 2] - p[:, 0]) >= 8) & ((p[:, 3] - p[:, 1]) >= 8)
    return p[keep].float()


def check_matching(iou, hi, lo, low_quality, what):
    """Fails unless the matcher's decisions on `iou` (ground truths x anchors or proposals, in
    float64) have IOU_MARGIN on every side: each column's best IoU away from `hi` and `lo`, its
    best ground truth ahead of the second where it is a positive, and (`low_quality`, the RPN)
    every ground truth's best anchor either above `hi` + margin or ahead of its next anchor,
    with an unambiguous ground truth. Returns the number of positive columns."""
    iou = iou.double()
    top = iou.topk(min(2, iou.shape[0]), dim=0).values
    best = top[0]
    assert ((best - hi).abs() > IOU_MARGIN).all(), f"{what}: an IoU within {IOU_MARGIN} of {hi}"
    assert ((best - lo).abs() > IOU_MARGIN).all(), f"{what}: an IoU within {IOU_MARGIN} of {lo}"
    pos = best >= hi
    if iou.shape[0] > 1:
        assert (top[0] - top[1])[pos].min() > IOU_MARGIN, f"{what}: a positive between two ground truths"
    if low_quality:
        for g in range(iou.shape[0]):
            row = iou[g].topk(2).values
            if row[0] < hi + IOU_MARGIN:
                assert row[0] - row[1] > IOU_MARGIN, f"{what}: ground truth {g}'s best anchor is ambiguous"
                col = iou[:, int(iou[g].argmax())].topk(min(2, iou.shape[0])).values
                assert len(col) == 1 or col[0] - col[1] > IOU_MARGIN, f"{what}: a low-quality match between two ground truths"
                pos[int(iou[g].argmax())] = True
    return int(pos.sum())


def check_levels(boxes, what):
    """Fails unless no box is within IOU_MARGIN of a pooling-level boundary; the boxes per
    level."""
    s = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double().sqrt()
    k = 4 + torch.log2(s / 224) + 1e-6
    margin = float((k - k.round()).abs().min())
    assert margin > IOU_MARGIN, f"{what}: a box at a pooling-level boundary ({margin:.1e})"
    return torch.bincount((k.floor().clamp(2, 5) - 2).long(), minlength=4).tolist()


class KinkRecorder:
    """Records every ReLU input (nn.ReLU modules, and fc6 / fc7 outputs, which TwoMLPHead
    passes to F.relu) and the stem's max-pool input, in call order."""

    def __init__(self, model):
        self.model, self.relu, self.pool, self.handles = model, [], [], []

    def __enter__(self):
        for m in self.model.modules():
            if isinstance(m, nn.ReLU):
                self.handles.append(m.register_forward_pre_hook(lambda _m, a: self.relu.append(a[0].detach().clone())))
        for m in (self.model.roi_heads.box_head.fc6, self.model.roi_heads.box_head.fc7):
            self.handles.append(m.register_forward_hook(lambda _m, _a, y: self.relu.append(y.detach().clone())))
        self.handles.append(
            self.model.backbone.body.maxpool.register_forward_pre_hook(lambda _m, a: self.pool.append(a[0].detach().clone()))
        )
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def window_gaps(x):
    """Per 3x3 / stride-2 / pad-1 window of `x`: the gap between its two largest values, and
    whether its largest is an exact 0."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), value=-float("inf"))
    top = torch.nn.functional.unfold(padded, 3, stride=2).topk(2, dim=1).values
    return top[:, 0] - top[:, 1], top[:, 0] == 0


def kink_margins(rec64, rec32):
    """The narrowest ReLU and max-pool margin in units of PyTorch's rms float32 error of each
    tensor, and the number of inputs under MARGIN."""
    worst, under = float("inf"), 0
    for x64, x32 in zip(rec64.relu, rec32.relu):
        rms = float((x32.double() - x64).pow(2).mean().sqrt())
        r = x64.abs() / max(rms, 1e-300)
        worst = min(worst, float(r.min()))
        under += int((r < MARGIN).sum())
    for x64, x32 in zip(rec64.pool, rec32.pool):
        rms = float((x32.double() - x64).pow(2).mean().sqrt())
        gap, zero = window_gaps(x64)
        r = (gap / max(rms, 1e-300))[~zero]
        worst = min(worst, float(r.min()))
        under += int((r < MARGIN).sum())
    return worst, under


def losses(model, batch, targets, proposals):
    """The five losses and their sum: the RPN's on every anchor, the RoI heads' on `proposals`
    and the ground truth."""
    features = model.backbone(batch)
    _, rpn = model.rpn(ImageList(batch, IMAGE_SIZES), features, targets)
    _, heads = model.roi_heads(features, proposals, IMAGE_SIZES, targets)
    out = {
        "classifier": heads["loss_classifier"],
        "box_reg": heads["loss_box_reg"],
        "mask": heads["loss_mask"],
        "objectness": rpn["loss_objectness"],
        "rpn_box_reg": rpn["loss_rpn_box_reg"],
    }
    out["total"] = sum(out[k] for k in LOSSES[1:])
    return out


def gradients(model, batch, targets, proposals):
    """Loss name -> (value, {tensor: gradient}) for the TENSORS each loss reaches in the
    autograd graph (whole tensors)."""
    params = dict(model.named_parameters())
    names = list(TENSORS)
    with targets_in_input_dtype():
        ls = losses(model, batch, targets, proposals)
    out = {}
    for k in LOSSES:
        assert ls[k].dtype == batch.dtype, (k, ls[k].dtype)
        g = torch.autograd.grad(ls[k], [params[n] for n in names], retain_graph=True, allow_unused=True)
        out[k] = (float(ls[k].detach()), {n: gi.detach().clone() for n, gi in zip(names, g) if gi is not None})
    return out


@contextlib.contextmanager
def targets_in_input_dtype():
    """torchvision's RPN passes float32 labels to `binary_cross_entropy_with_logits`, which
    then returns a float32 loss for float64 logits: the float64 model's `loss_objectness`
    (and so `total`) would be rounded to float32. Casting the targets to the logits' dtype
    changes nothing in float32."""
    saved = F.binary_cross_entropy_with_logits

    def bce(input, target, *args, **kwargs):
        return saved(input, target.to(input.dtype), *args, **kwargs)

    F.binary_cross_entropy_with_logits = bce
    try:
        yield
    finally:
        F.binary_cross_entropy_with_logits = saved


def float32_runs(run, model, *inputs):
    """`run(model, *inputs)` four ways that sum in different orders, name -> result: the
    default, one thread, without oneDNN, and channels-last (model and 4-D inputs); the same
    runs as `float32_runs` of make_resnet_fixtures.py (kept here so that this script stands
    alone)."""
    out = {"default": run(model, *inputs)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out["one_thread"] = run(model, *inputs)
    finally:
        torch.set_num_threads(threads)
    with torch.backends.mkldnn.flags(enabled=False):
        out["no_onednn"] = run(model, *inputs)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out["channels_last"] = run(last, *[channels_last(x) for x in inputs])
    return out


def channels_last(x):
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if isinstance(x, dict):
        return {k: channels_last(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(channels_last(v) for v in x)
    return x


def pattern(k, n):
    """Projection pattern k: ((i * 7919 + 101 * k + 13) mod 1000) / 1000 - 0.5 for element i,
    exact in f64 (tests/maskrcnn_gradients.rs computes the same)."""
    i = np.arange(n, dtype=np.int64)
    return torch.from_numpy(((i * 7919 + 101 * k + 13) % 1000).astype(np.float64) / 1000.0 - 0.5)


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model32 = build()
    model64 = build().double()

    boxes = [torch.tensor(b, dtype=torch.float32) for b in GT_BOXES]
    masks = [ellipse_masks(b, s) for b, s in zip(GT_BOXES, IMAGE_SIZES)]
    labels = [torch.tensor(lab, dtype=torch.int64) for lab in GT_LABELS]
    gen = torch.Generator().manual_seed(PROPOSAL_SEED)
    proposals = [proposals_for(b, s, gen) for b, s in zip(GT_BOXES, IMAGE_SIZES)]

    with torch.no_grad():
        zeros = torch.zeros(2, 3, *PADDED, dtype=torch.float64)
        maps = list(build().double().backbone(zeros).values())
        anchors = model64.rpn.anchor_generator(ImageList(zeros, IMAGE_SIZES), maps)
    per_level = [m.shape[-2] * m.shape[-1] * 3 for m in maps]
    for i in range(2):
        a = anchors[i]
        assert len(a) == sum(per_level) <= RPN_BATCH
        iou = box_iou(boxes[i].double(), a)
        pos = check_matching(iou, 0.7, 0.3, True, f"image {i} anchors")
        neg = int((iou.max(0).values < 0.3).sum())
        best = iou.max(1).values
        levels = [int(((iou >= 0.7) | (iou == best[:, None])).any(0)[sum(per_level[:k]):sum(per_level[:k + 1])].sum()) for k in range(5)]
        print(f"image {i}: {len(a)} anchors, {pos} positive (per level {levels}), {neg} negative, all sampled")
        allp = torch.cat([proposals[i], boxes[i]])
        assert len(allp) <= ROI_BATCH
        pos = check_matching(box_iou(boxes[i].double(), allp.double()), 0.5, 0.5, False, f"image {i} proposals")
        levels = check_levels(allp, f"image {i}")
        print(f"image {i}: {len(allp)} proposals with the ground truth, {pos} positive, per pooling level {levels}")

    def targets(dtype):
        return [{"boxes": b.to(dtype), "labels": lab, "masks": m} for b, lab, m in zip(boxes, labels, masks)]

    for seed in range(1, 200):
        batch = torch.randn(2, 3, *PADDED, generator=torch.Generator().manual_seed(seed)).half().float()
        rec64, rec32 = KinkRecorder(model64), KinkRecorder(model32)
        with torch.no_grad():
            with rec64:
                losses(model64, batch.double(), targets(torch.float64), [p.double() for p in proposals])
            with rec32:
                losses(model32, batch, targets(torch.float32), proposals)
        worst, under = kink_margins(rec64, rec32)
        count = sum(x.numel() for x in rec64.relu)
        print(f"image seed {seed}: narrowest kink margin {worst:.1f} x rms error, {under} of {count} ReLU inputs and pooling windows under {MARGIN:g}")
        if under == 0:
            break
    else:
        raise SystemExit("no image seed gives wide kink margins")

    ref = gradients(model64, batch.double(), targets(torch.float64), [p.double() for p in proposals])
    runs = float32_runs(gradients, model32, batch, targets(torch.float32), proposals)

    out = {"images": batch.half(), "image_sizes": torch.tensor(IMAGE_SIZES, dtype=torch.int64)}
    for i in range(2):
        out[f"boxes{i}"] = boxes[i]
        out[f"labels{i}"] = labels[i]
        out[f"masks{i}"] = masks[i]
        out[f"proposals{i}"] = proposals[i]
    for k in LOSSES:
        value64, g64 = ref[k]
        for r in runs.values():
            assert sorted(r[k][1]) == sorted(g64)
        # A gradient that is exactly 0 in float64 (a level no box of this loss pools from) is
        # not stored: the crate's must be absent or 0 too.
        names = sorted(n for n in g64 if g64[n].abs().max() > 0)
        stats = []
        for n in names:
            rows = TENSORS[n]
            head = lambda g: g if rows is None else g[:rows]
            err = max(float((head(r[k][1][n]).double() - head(g64[n])).abs().max()) for r in runs.values())
            gmax = float(head(g64[n]).abs().max())
            stats.append([err, gmax])
            out[f"grad.{k}.{n}"] = head(g64[n]).float().contiguous()
            flat = g64[n].flatten()
            proj = []
            for j in range(PROJECTIONS):
                p = pattern(j, flat.numel())
                worst = max(float(((r[k][1][n].flatten().double() - flat).abs() * p.abs()).sum()) for r in runs.values())
                proj.append([float((flat * p).sum()), worst, float((flat.abs() * p.abs()).sum())])
            out[f"proj.{k}.{n}"] = torch.tensor(proj, dtype=torch.float64)
            print(f"  {k:11s} {n:48s} max|g| {gmax:.3e}  torch f32 error {err:.2e} ({err / gmax:.1e} of max|g|)")
        out[f"stats.{k}"] = torch.tensor(stats, dtype=torch.float64)
        value_err = max(abs(r[k][0] - value64) for r in runs.values())
        out[f"loss.{k}"] = torch.tensor([value64, value_err], dtype=torch.float64)
        print(f"{k}: {value64:.9f} (torch f32 error {value_err:.1e})")
    params = [p.detach() for p in model64.parameters()]
    out["checksum"] = torch.tensor([sum(float(p.sum()) for p in params), sum(float(p.abs().sum()) for p in params)], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB), torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main()
