"""Detection-op fixtures from torchvision for tests/detection_ops.rs.

Writes tests/fixtures/detection_ops.safetensors: inputs and what torchvision 0.29 computes for
them with `torchvision.ops.roi_align` (outputs and input gradients, aligned or not, several
sampling ratios and scales, boxes partly or wholly outside the map, empty and tiny boxes),
`torchvision.ops.MultiScaleRoIAlign` (an FPN of four levels, two images of different sizes),
`torchvision.ops.nms` / `batched_nms` (random, tied, identical and empty boxes, thousands of
boxes, both of batched_nms's code paths), `box_iou`, `clip_boxes_to_image`,
`remove_small_boxes` and `box_convert`.

Bounds: `tol.{output}` holds PyTorch's float32 error on each float32 output compared with a
tolerance (`roi_align.{i}.output` and `.grad_input`, `multiscale.{boxes,masks}.output`,
`multiscale.boxes.grad_feature` over the levels, `boxes.iou`, `boxes.area`, `boxes.convert`
over the conversions): max |f32 - f64| against the same call on the inputs cast to float64
(0 for the float64 RoIAlign case, whose floor is then in float64 ulps). The tests allow 4
times that or 8 ulps of the output's largest value (`make_resnet_fixtures.py` says why),
against the float32 outputs, as our kernels repeat torchvision's float32 arithmetic.
Measured here: 4e-8 (IoU) to 1.8e-5 (MultiScaleRoIAlign gradients; the sampling coordinates
of RoIAlign round in float32); the old bounds were 1e-6 and 1e-5, fixed.
The pyramid levels of the MultiScaleRoIAlign boxes (sizes near the boundaries 112, 224, 448)
come out the same in float64.

    ../venv/bin/python scripts/make_detection_fixtures.py
"""

import pathlib
import sys

import torch
import torchvision
from torchvision import ops
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_resnet_fixtures import max_error  # noqa: E402

torch.manual_seed(5)
out = {}


def record_error(key, t32, t64):
    """PyTorch's float32 error on output `key` (pooled with earlier ones of the same key)."""
    err = max_error(t32, t64) if t32.dtype == torch.float32 else 0.0
    out[f"tol.{key}"] = max(out.get(f"tol.{key}", 0.0), err)


def random_boxes(n, width, height, max_size, outside=0.0):
    x1 = torch.rand(n) * (width + 2 * outside) - outside
    y1 = torch.rand(n) * (height + 2 * outside) - outside
    w = torch.rand(n) * max_size
    h = torch.rand(n) * max_size
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


# ---- roi_align: one (2, 3, 12, 16) map, boxes in image coordinates (map × 1 / scale).
N, C, H, W = 2, 3, 12, 16
cases = [
    # (output size, spatial scale, sampling ratio, aligned)
    ((3, 3), 1.0, -1, False),
    ((3, 3), 1.0, -1, True),
    ((2, 4), 0.5, 2, False),
    ((2, 4), 0.5, 2, True),
    ((5, 5), 0.25, 0, False),
    ((4, 3), 0.25, 1, True),
    ((7, 7), 0.125, 3, False),
    ((3, 2), 1.0, -1, True),  # float64
]
for i, (size, scale, ratio, aligned) in enumerate(cases):
    dtype = torch.float64 if i == 7 else torch.float32
    x = torch.randn(N, C, H, W, dtype=dtype)
    boxes = random_boxes(14, W, H, 10, outside=3) / scale
    special = torch.tensor(
        [
            [3.0, 4.0, 3.0, 4.0],  # empty
            [5.0, 5.0, 5.4, 5.3],  # smaller than a pixel
            [-30.0, -30.0, -20.0, -25.0],  # wholly outside
            [0.0, 0.0, W, H],  # the whole map
            [-2.0, 8.0, 6.0, 20.0],  # across two borders
            [14.5, 10.5, 17.5, 13.0],  # the bottom-right corner
        ]
    ) / scale
    boxes = torch.cat([boxes, special]).to(dtype)
    ids = torch.randint(0, N, (len(boxes), 1)).to(dtype)
    rois = torch.cat([ids, boxes], 1)
    xg = x.clone().requires_grad_(True)
    y = ops.roi_align(xg, rois, size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    g = torch.randn_like(y)
    y.backward(g)
    p = f"roi_align.{i}."
    out[p + "input"] = x
    out[p + "rois"] = rois
    out[p + "output"] = y.detach()
    out[p + "grad_output"] = g
    out[p + "grad_input"] = xg.grad
    out[p + "config"] = torch.tensor([size[0], size[1], scale, ratio, float(aligned)], dtype=torch.float64)
    x64 = x.double().requires_grad_(True)
    y64 = ops.roi_align(x64, rois.double(), size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    y64.backward(g.double())
    record_error(p + "output", y, y64)
    record_error(p + "grad_input", xg.grad, x64.grad)

# ---- MultiScaleRoIAlign: two images, (256, 320) and (200, 288), batched to (256, 320);
# FPN maps at strides 4, 8, 16, 32 with two channels.
image_sizes = [(256, 320), (200, 288)]
feats = {str(l): torch.randn(2, 2, 256 // s, 320 // s) for l, s in enumerate([4, 8, 16, 32])}
sizes = torch.tensor([4.0, 20, 60, 100, 111.9, 112.1, 150, 223, 225, 300, 447, 449, 600, 900])
per_image = []
for img, (h, w) in enumerate(image_sizes):
    n = len(sizes)
    cx = torch.rand(n) * w
    cy = torch.rand(n) * h
    aspect = torch.rand(n) + 0.5
    bw = sizes * aspect.sqrt()
    bh = sizes / aspect.sqrt()
    b = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    per_image.append(b)
for name, size in [("boxes", 7), ("masks", 14)]:
    pooler = ops.MultiScaleRoIAlign(["0", "1", "2", "3"], size, 2)
    fg = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    y = pooler(fg, per_image, image_sizes)
    fg64 = {k: v.double().requires_grad_(True) for k, v in feats.items()}
    pooler64 = ops.MultiScaleRoIAlign(["0", "1", "2", "3"], size, 2)
    y64 = pooler64(fg64, [b.double() for b in per_image], image_sizes)
    p = f"multiscale.{name}."
    out[p + "output"] = y.detach()
    record_error(p + "output", y, y64)
    if name == "boxes":  # gradients once: they would double the fixture for the masks
        g = torch.randn_like(y)
        y.backward(g)
        y64.backward(g.double())
        out[p + "grad_output"] = g
        for k in fg:
            out[p + f"grad_feature{k}"] = fg[k].grad
            record_error(p + "grad_feature", fg[k].grad, fg64[k].grad)
    out[p + "levels"] = pooler.map_levels(per_image).to(torch.int64)
    assert torch.equal(pooler64.map_levels([b.double() for b in per_image]), pooler.map_levels(per_image))
for k, v in feats.items():
    out[f"multiscale.feature{k}"] = v
for i, b in enumerate(per_image):
    out[f"multiscale.boxes{i}"] = b
out["multiscale.image_sizes"] = torch.tensor(image_sizes, dtype=torch.int64)

# ---- NMS.
def nms_case(name, boxes, scores, thr, classes=None):
    p = f"nms.{name}."
    out[p + "boxes"] = boxes.contiguous()
    out[p + "scores"] = scores.contiguous()
    out[p + "threshold"] = torch.tensor([thr], dtype=torch.float64)
    if classes is None:
        out[p + "keep"] = ops.nms(boxes, scores, thr).to(torch.int64)
    else:
        out[p + "classes"] = classes.to(torch.int64)
        out[p + "keep"] = ops.batched_nms(boxes, scores, classes, thr).to(torch.int64)


nms_case("random", random_boxes(300, 100, 80, 30), torch.rand(300), 0.5)
nms_case("ties", random_boxes(200, 60, 60, 25), (torch.rand(200) * 5).floor() / 5, 0.3)
same = torch.tensor([[10.0, 10.0, 30.0, 40.0]]).repeat(40, 1)
nms_case(
    "identical",
    torch.cat([same, random_boxes(20, 50, 50, 20)]),
    torch.cat([torch.full((40,), 0.5), torch.rand(20)]),
    0.5,
)
empty = torch.tensor([[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 9.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
nms_case("empty_boxes", empty, torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.5)
nms_case("threshold_zero", random_boxes(150, 100, 100, 20), torch.rand(150), 0.0)
centres = torch.rand(20, 2) * 400
pick = torch.randint(0, 20, (3000,))
jitter = torch.randn(3000, 2) * 6
half = torch.rand(3000, 2) * 20 + 10
ctr = centres[pick] + jitter
nms_case("thousands", torch.cat([ctr - half, ctr + half], 1), torch.rand(3000), 0.7)
nms_case(
    "batched_offset",
    random_boxes(600, 120, 90, 30),
    (torch.rand(600) * 20).floor() / 20,
    0.5,
    torch.randint(0, 5, (600,)),
)
nms_case(
    "batched_per_class",
    random_boxes(2500, 300, 200, 40),
    torch.rand(2500),
    0.6,
    torch.randint(0, 7, (2500,)),
)

# ---- Box utilities.
b1 = torch.cat([random_boxes(30, 50, 40, 20, outside=5), torch.tensor([[3.0, 3.0, 3.0, 3.0]])])
b2 = torch.cat([random_boxes(40, 50, 40, 20, outside=5), torch.tensor([[3.0, 3.0, 3.0, 3.0]])])
out["boxes.a"] = b1
out["boxes.b"] = b2
out["boxes.iou"] = ops.box_iou(b1, b2)
out["boxes.area"] = ops.box_area(b1)
record_error("boxes.iou", out["boxes.iou"], ops.box_iou(b1.double(), b2.double()))
record_error("boxes.area", out["boxes.area"], ops.box_area(b1.double()))
out["boxes.clipped"] = ops.clip_boxes_to_image(b1, (30, 45))
out["boxes.small_kept"] = ops.remove_small_boxes(b1, 2.5).to(torch.int64)
for f in ["xyxy", "xywh", "cxcywh"]:
    for t in ["xyxy", "xywh", "cxcywh"]:
        if f != t:
            out[f"boxes.convert.{f}.{t}"] = ops.box_convert(b1, f, t)
            record_error("boxes.convert", out[f"boxes.convert.{f}.{t}"], ops.box_convert(b1.double(), f, t))

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "detection_ops.safetensors"
for k, v in out.items():
    if k.startswith("tol."):
        out[k] = torch.tensor(v, dtype=torch.float64)
        print(f"{k} = {v:.1e}")
save_file({k: v.detach().contiguous() for k, v in out.items()}, str(path))
print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {len(out)} tensors) with torchvision {torchvision.__version__}")
