"""Detection-utility fixtures from torchvision for tests/maskrcnn_utils.rs.

Writes tests/fixtures/boxes.safetensors with inputs built from a fixed seed and what
torchvision computes on them:

- BoxCoder (torchvision.models.detection._utils), weights (1, 1, 1, 1) and (10, 10, 5, 5):
  `enc_*` = encode_single(gt, proposals) on 200 random pairs, `dec_*` = decode(codes,
  [proposals]), a multi-class decode (4·C columns), deltas beyond the clip (`clamp_*`), and
  an f64 encode and decode (`f64_*`).
- AnchorGenerator (models.detection.anchor_utils) through its forward on an ImageList:
  `anchors_fpn_{H}x{W}` for the Mask R-CNN preset with FPN feature maps of strides
  4..64 (sizes rounded up, as a padded batch gives; `grid_fpn_{H}x{W}` holds them), a single
  level with sizes (128, 256, 512), and odd sizes and ratios whose half-sizes end in .5
  (ties of torch.round), with their cell anchors (`cell_*`).
- Matcher (models.detection._utils) with the RPN (0.7, 0.3, low-quality matches) and
  RoIHeads (0.5, 0.5) settings: `mq_{case}` quality matrices (box_iou of random boxes, and
  hand-made ties, duplicates, thresholds hit exactly...) and their labels `ml_{case}_rpn`,
  `ml_{case}_roi`.

Bounds: `tol.{output}` holds PyTorch's float32 error on each float32 box-coder output (the
same call on the inputs cast to float64; max |f32 - f64| / max(1, |f64|) per element); the
tests allow 4 times that or 8 float32 ulps (`make_resnet_fixtures.py` says why), against the
float32 outputs (both sides do the same elementwise float32 arithmetic). Measured here: 1e-6
to 2e-5 (encode subtracts nearby centres, then divides by the width and multiplies by 10).

    ../venv/bin/python scripts/make_box_fixtures.py
"""

import math
import pathlib
import sys

import torch
from safetensors.torch import save_file
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_resnet_fixtures import max_error  # noqa: E402

torch.manual_seed(11)
out = {}
f32 = torch.float32


def with_error(key, f, *inputs):
    """out[key] = f(*inputs), and tol.{key}: its float32 error against f on float64 inputs."""
    out[key] = f(*inputs)
    out[f"tol.{key}"] = torch.tensor(max_error(out[key], f(*[x.double() for x in inputs]), "rel1"), dtype=torch.float64)


def random_boxes(n, lo=0.0, hi=100.0, min_size=1.0, max_size=50.0, dtype=f32):
    xy = torch.rand(n, 2, dtype=dtype) * (hi - lo) + lo
    wh = torch.rand(n, 2, dtype=dtype) * (max_size - min_size) + min_size
    return torch.cat([xy, xy + wh], 1)


def jitter(boxes, scale=0.3):
    """Boxes near `boxes`: shifted and resized by up to `scale` of their size."""
    wh = boxes[:, 2:] - boxes[:, :2]
    ctr = boxes[:, :2] + 0.5 * wh
    ctr = ctr + (torch.rand_like(ctr) * 2 - 1) * scale * wh
    wh = wh * torch.exp((torch.rand_like(wh) * 2 - 1) * scale)
    return torch.cat([ctr - 0.5 * wh, ctr + 0.5 * wh], 1)


# BoxCoder ---------------------------------------------------------------------------------
coders = {"rpn": BoxCoder((1.0, 1.0, 1.0, 1.0)), "roi": BoxCoder((10.0, 10.0, 5.0, 5.0))}
proposals = random_boxes(200)
gt = jitter(proposals)
codes = torch.randn(200, 4)
out["bc_proposals"], out["bc_gt"], out["bc_codes"] = proposals, gt, codes
for name, coder in coders.items():
    with_error(f"enc_{name}", coder.encode_single, gt, proposals)
    with_error(f"dec_{name}", lambda c, p: coder.decode(c, [p]), codes, proposals)  # (200, 1, 4)

C = 5
mc_boxes = proposals[:40].clone()
mc_codes = torch.randn(40, 4 * C) * 2
out["mc_boxes"], out["mc_codes"] = mc_boxes, mc_codes
with_error("mc_dec_roi", lambda c, p: coders["roi"].decode(c, [p]), mc_codes, mc_boxes)  # (40, 5, 4)

# Log-scale deltas far above the clip ln(1000/16) ≈ 4.135 (and far below: no lower bound).
clamp_boxes = random_boxes(16, max_size=8.0)
clamp_codes = torch.randn(16, 4)
clamp_codes[:8, 2:] = torch.rand(8, 2) * 40 + 5
clamp_codes[8:, 2:] = -(torch.rand(8, 2) * 20 + 5)
out["clamp_boxes"], out["clamp_codes"] = clamp_boxes, clamp_codes
for name, coder in coders.items():
    with_error(f"clamp_dec_{name}", lambda c, p: coder.decode(c, [p]), clamp_codes, clamp_boxes)

f64_props = random_boxes(50, dtype=torch.float64)
f64_gt = jitter(f64_props)
f64_codes = torch.randn(50, 8, dtype=torch.float64)
out["f64_proposals"], out["f64_gt"], out["f64_codes"] = f64_props, f64_gt, f64_codes
out["f64_enc_roi"] = coders["roi"].encode_single(f64_gt, f64_props)
out["f64_dec_roi"] = coders["roi"].decode(f64_codes, [f64_props])  # (50, 2, 4)


# AnchorGenerator --------------------------------------------------------------------------
def anchors_for(gen, image_hw, grids, name):
    images = ImageList(torch.zeros(2, 3, *image_hw), [image_hw, image_hw])
    feats = [torch.zeros(2, 8, gh, gw) for gh, gw in grids]
    per_image = gen(images, feats)
    assert torch.equal(per_image[0], per_image[1])
    out[f"anchors_{name}"] = per_image[0]
    out[f"grid_{name}"] = torch.tensor(grids, dtype=torch.int64)
    out[f"image_{name}"] = torch.tensor(image_hw, dtype=torch.int64)


fpn = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
for h, w in [(64, 80), (96, 128), (100, 140)]:
    grids = [(math.ceil(h / s), math.ceil(w / s)) for s in (4, 8, 16, 32, 64)]
    anchors_for(fpn, (h, w), grids, f"fpn_{h}x{w}")
for level, cells in enumerate(fpn.cell_anchors):
    out[f"cell_fpn_{level}"] = cells

single = AnchorGenerator(((128, 256, 512),), ((0.5, 1.0, 2.0),))
anchors_for(single, (96, 128), [(6, 8)], "single")
out["cell_single_0"] = single.cell_anchors[0]

# Half-sizes s/2, s/4 of 2.5, 1.5, 3.5...: torch.round sends them to the even neighbour.
odd_sizes = ((5, 6, 7, 10, 14), (3, 9, 11))
odd_ratios = ((0.25, 1.0, 4.0), (1.0, 2.25, 0.5))
odd = AnchorGenerator(odd_sizes, odd_ratios)
anchors_for(odd, (50, 70), [(5, 7), (3, 4)], "odd")
for level, cells in enumerate(odd.cell_anchors):
    out[f"cell_odd_{level}"] = cells


# Matcher ----------------------------------------------------------------------------------
matchers = {"rpn": Matcher(0.7, 0.3, True), "roi": Matcher(0.5, 0.5, False)}
mq = {}

# IoUs of random boxes: half the predictions near a gt, so all three bands occur.
gts = random_boxes(8, max_size=30.0)
near = torch.cat([jitter(gts, scale) for scale in torch.linspace(0.05, 0.6, 19)], 0)
preds = torch.cat([near, random_boxes(300 - len(near), max_size=30.0)], 0)
mq["random"] = box_iou(gts, preds[torch.randperm(len(preds))])
# Sparse overlaps: most gts' best IoU is low, so low-quality matches decide.
mq["sparse"] = box_iou(random_boxes(5, max_size=10.0), random_boxes(200, max_size=10.0))

# Ties within a row's maximum, and across rows in a column (first gt wins).
mq["ties"] = torch.tensor(
    [
        [0.40, 0.10, 0.40, 0.20, 0.40, 0.00],
        [0.40, 0.60, 0.10, 0.60, 0.20, 0.00],
        [0.10, 0.60, 0.25, 0.25, 0.25, 0.25],
    ]
)
# Duplicate ground truths: identical rows, the first index wins.
dup = box_iou(gts[:3], near[:60])
mq["duplicates"] = torch.cat([dup, dup[1:2], dup[0:1]], 0)
# Everything below the low threshold.
mq["all_low"] = torch.rand(4, 30) * 0.25
# Column 0 is the best of gt 0 (0.40) but its own best gt is 1 (0.45); gt 1's best is col 2.
mq["low_quality"] = torch.tensor(
    [
        [0.40, 0.10, 0.05, 0.00, 0.35],
        [0.45, 0.20, 0.90, 0.10, 0.00],
        [0.10, 0.29, 0.20, 0.29, 0.28],
    ]
)
# A ground truth that overlaps nothing: its maximum is 0, so every 0 entry counts as its best.
mq["empty_gt"] = torch.tensor(
    [
        [0.00, 0.00, 0.00, 0.00],
        [0.80, 0.10, 0.00, 0.50],
    ]
)
# Qualities exactly at the thresholds (as float32, as the comparison is done).
at_thresholds = [[0.7, 0.3, 0.5, 0.69999, 0.29999, 0.49999, 1.0, 0.0]]
mq["thresholds"] = torch.tensor(at_thresholds)
mq["one_gt"] = torch.rand(1, 20)
mq["one_pred"] = torch.rand(6, 1)
# The same in float64, where 0.7 is the float64 0.7; and the float32 values widened to
# float64, which then fall just below (0.7f32 < 0.7) or above (0.3f32 > 0.3) the thresholds.
mq["thresholds_f64"] = torch.tensor(at_thresholds, dtype=torch.float64)
mq["thresholds_widened"] = mq["thresholds"].to(torch.float64)

for case, q in mq.items():
    out[f"mq_{case}"] = q
    for name, matcher in matchers.items():
        out[f"ml_{case}_{name}"] = matcher(q)

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "boxes.safetensors"
save_file({k: v.contiguous() for k, v in out.items()}, str(path))
print(", ".join(f"{k} = {float(v):.1e}" for k, v in out.items() if k.startswith("tol.")))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__})")
