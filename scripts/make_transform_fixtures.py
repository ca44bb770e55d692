"""Mask R-CNN transform fixtures from torchvision for tests/maskrcnn_transform.rs.

Writes tests/fixtures/transform.safetensors with inputs built from a fixed seed and what
torchvision 0.29's `GeneralizedRCNNTransform` (models/detection/transform.py) and
`paste_masks_in_image` (models/detection/roi_heads.py) compute on them. Each case `{c}` has
its inputs `{c}_img{i}` (C, H, W) f32 and:

- eval mode (`forward(images)`): `{c}_batch_shape` the padded batch's shape, `{c}_sizes` the
  (N, 2) i64 image sizes after resizing, `{c}_resized{i}` each normalized and resized image
  (the batch itself is not stored: the script checks that it holds them, zeros elsewhere);
- train mode with targets (`forward(images, targets)`, a single min size so that
  torchvision's random choice has one outcome; eval mode for case `c`, which has several):
  `{c}_boxes{i}`, `{c}_masks{i}` (uint8), `{c}_labels{i}` in, `{c}_out_boxes{i}`,
  `{c}_out_masks{i}` out;
- `postprocess` in eval mode: `{c}_pp_boxes{i}` (K, 4) in the resized image, `{c}_pp_masks{i}`
  (K, 1, 28, 28) probabilities in, `{c}_pp_out_boxes{i}`, `{c}_pp_out_masks{i}` (K, 1, H, W)
  out, for the original sizes `{c}_orig_sizes`.

Cases: `a` min 26 max 40 on four sizes (23 high: the short side comes out 25, not 26, as
23 * (26 / 23) < 26 in f64; 10×36: max_size binds), `b` where max_size binds with
size_divisible 16, `c` min sizes (16, 26, 20) (eval uses the last), `d` a fixed size
(torchvision's tuple is (width, height)) on the first image of `a`, `e` one channel and its
own mean and std.

Direct `paste_masks_in_image` cases `paste_{name}_masks`, `_boxes`, `_out`, with image size
`_size` and padding `_padding`: `edges` (14×14 masks; boxes partly outside, tiny, inverted,
on the edges, negative fractions truncated toward zero), `random` (28×28), `pad0` and `pad2`
(the inputs of `random`, padding 0 and 2) and `empty` (K = 0). No box lies wholly outside
the image: torchvision raises a shape error for many of those.

Bounds: beside the float32 outputs, `tol.{output}` holds PyTorch's float32 error on each
kind of output (`resized`, `out_boxes`, `pp_out_boxes`, `pp_out_masks`, `paste_out`, the
largest over the cases, as max |f32 - f64| / max(1, |f64|) per element), from the same
transform run on the inputs cast to float64; the tests allow 4 times that or 8 float32 ulps
(`make_resnet_fixtures.py` says why). Measured here: boxes 5e-8, masks 1.6e-6, resized
images 6.2e-6 (the source coordinates of the bilinear resize round in float32); the old bound
was 1e-5. The float32 outputs are the targets: both sides do the same elementwise float32
arithmetic (the resize ratios are float32 in torchvision even for float64 boxes). The
integer boxes that masks are pasted in (boxes widened by (M + 2 padding) / M, truncated) are
checked to truncate alike in float32 and float64 and, unless exactly on an integer, to lie
more than 4 times PyTorch's float32 error from one.

The whole file stays under 300 KB.

    ../venv/bin/python scripts/make_transform_fixtures.py
"""

import pathlib
import sys

import torch
from safetensors.torch import save_file
from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_resnet_fixtures import TORCH_ERR_MULTIPLE, as_double, max_error  # noqa: E402

torch.manual_seed(5)
out = {}
tol = {}
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def record_error(kind, t32, t64):
    """PyTorch's float32 error on one output of kind `kind`, pooled into `tol.{kind}`."""
    tol[kind] = max(tol.get(kind, 0.0), max_error(t32, t64, "rel1"))


def check_paste_margin(boxes, masks, padding):
    """The boxes paste_masks_in_image truncates, widened by (M + 2 padding) / M: none within
    TORCH_ERR_MULTIPLE times PyTorch's float32 error of an integer."""
    m = masks.shape[-1]
    scale = (m + 2 * padding) / m
    x32, x64 = expand_boxes(boxes.float(), scale), expand_boxes(boxes.double(), scale)
    err = max_error(x32, x64)
    assert torch.equal(x32.long(), x64.long()), "float32 and float64 paste in different integer boxes"
    # Edges exactly on an integer (boxes clipped to the image with padding 0) truncate alike.
    d = (x64 - x64.round()).abs()
    d = d[d != 0]
    margin = float(d.min()) if len(d) else float("inf")
    assert margin > TORCH_ERR_MULTIPLE * err, f"a pasted box edge {margin:.2e} from an integer (error {err:.2e})"


def random_targets(h, w, k):
    """`k` boxes inside an h×w image, labels 1..9 and uint8 masks."""
    x = torch.rand(k, 2) * (w - 2)
    y = torch.rand(k, 2) * (h - 2)
    x1, x2 = x.min(1).values, x.max(1).values + 1.0
    y1, y2 = y.min(1).values, y.max(1).values + 1.0
    boxes = torch.stack([x1, y1, x2, y2], 1)
    masks = (torch.rand(k, h, w) > 0.5).to(torch.uint8)
    labels = torch.randint(1, 10, (k,), dtype=torch.int64)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def random_detections(h, w, k):
    """`k` boxes in an h×w (resized) image, as the box head gives them, and mask logits."""
    xy = torch.rand(k, 2) * torch.tensor([w, h]) * 0.9
    wh = torch.rand(k, 2) * torch.tensor([w, h]) * 0.5 + 0.2
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]).float())], 1)
    masks = torch.sigmoid(torch.randn(k, 1, 28, 28) * 3)
    return boxes, masks


def case(name, shapes, ks, same_images_as=None, **cfg):
    """Case `name` on random images of `shapes` (or those of case `same_images_as`, which
    are not stored again), with ks[i] targets and detections on image i."""
    if same_images_as is None:
        images = [torch.rand(*s) for s in shapes]
        for i, img in enumerate(images):
            out[f"{name}_img{i}"] = img
    else:
        images = [out[f"{same_images_as}_img{i}"] for i in range(len(shapes))]
    t = GeneralizedRCNNTransform(**cfg)

    t.eval()
    batch, _ = t(images)
    batch64, _ = t(as_double(images))
    assert batch64.image_sizes == batch.image_sizes
    out[f"{name}_batch_shape"] = torch.tensor(batch.tensors.shape, dtype=torch.int64)
    out[f"{name}_sizes"] = torch.tensor(batch.image_sizes, dtype=torch.int64)
    for i, (h, w) in enumerate(batch.image_sizes):
        resized = batch.tensors[i, :, :h, :w]
        assert torch.equal(resized, t.resize(t.normalize(images[i]))[0])
        padded = batch.tensors[i].clone()
        padded[:, :h, :w] = 0
        assert not padded.any()
        out[f"{name}_resized{i}"] = resized
        record_error("resized", resized, batch64.tensors[i, :, :h, :w])

    targets = [random_targets(s[1], s[2], k) for s, k in zip(shapes, ks)]
    for i, tg in enumerate(targets):
        out[f"{name}_boxes{i}"] = tg["boxes"]
        out[f"{name}_masks{i}"] = tg["masks"]
        out[f"{name}_labels{i}"] = tg["labels"]
    # With several min sizes, training draws one at random: take eval mode (the last) then.
    t.train(len(t.min_size) == 1)
    train_batch, train_targets = t(images, [dict(tg) for tg in targets])
    with torch.random.fork_rng():  # training draws its min size: leave the stream as it was
        _, train_targets64 = t(as_double(images), [as_double(tg) for tg in targets])
    assert torch.equal(train_batch.tensors, batch.tensors)
    for i, (tg, tg64) in enumerate(zip(train_targets, train_targets64)):
        out[f"{name}_out_boxes{i}"] = tg["boxes"]
        out[f"{name}_out_masks{i}"] = tg["masks"]
        record_error("out_boxes", tg["boxes"], tg64["boxes"])
        assert torch.equal(tg["masks"], tg64["masks"])

    t.eval()
    orig = [tuple(img.shape[-2:]) for img in images]
    out[f"{name}_orig_sizes"] = torch.tensor(orig, dtype=torch.int64)
    results = []
    for i, ((h, w), k) in enumerate(zip(batch.image_sizes, ks)):
        boxes, masks = random_detections(h, w, k)
        out[f"{name}_pp_boxes{i}"], out[f"{name}_pp_masks{i}"] = boxes, masks
        results.append({"boxes": boxes, "masks": masks})
    results64 = t.postprocess(as_double(results), batch.image_sizes, orig)
    results = t.postprocess(results, batch.image_sizes, orig)
    for i, (r, r64) in enumerate(zip(results, results64)):
        out[f"{name}_pp_out_boxes{i}"] = r["boxes"]
        out[f"{name}_pp_out_masks{i}"] = r["masks"]
        check_paste_margin(r64["boxes"], r64["masks"], 1)
        record_error("pp_out_boxes", r["boxes"], r64["boxes"])
        record_error("pp_out_masks", r["masks"], r64["masks"])


case("a", [(3, 23, 30), (3, 30, 20), (3, 20, 20), (3, 10, 36)], [2, 1, 0, 1],
     min_size=26, max_size=40, **IMAGENET)
case("b", [(3, 10, 38), (3, 14, 50)], [1, 2], min_size=26, max_size=40, size_divisible=16,
     **IMAGENET)
case("c", [(3, 17, 22), (3, 24, 18)], [1, 1], min_size=(16, 26, 20), max_size=40, **IMAGENET)
case("d", [(3, 23, 30)], [2], same_images_as="a", min_size=26, max_size=40, fixed_size=(32, 22),
     **IMAGENET)
case("e", [(1, 20, 30)], [1], min_size=24, max_size=40, image_mean=[0.5], image_std=[0.25])


def paste(name, masks, boxes, size, padding=1, inputs_of=None):
    """Case `name`; with `inputs_of`, its masks and boxes are those of that case."""
    if inputs_of is None:
        out[f"paste_{name}_masks"] = masks
        out[f"paste_{name}_boxes"] = boxes
    out[f"paste_{name}_size"] = torch.tensor(size, dtype=torch.int64)
    out[f"paste_{name}_padding"] = torch.tensor([padding], dtype=torch.int64)
    out[f"paste_{name}_out"] = paste_masks_in_image(masks, boxes, size, padding=padding)
    check_paste_margin(boxes, masks, padding)
    pasted64 = paste_masks_in_image(masks.double(), boxes.double(), size, padding=padding)
    record_error("paste_out", out[f"paste_{name}_out"], pasted64)


edge_boxes = torch.tensor([
    [-5.3, -2.2, 12.7, 9.9],     # top-left corner, partly outside
    [20.5, 15.2, 41.0, 33.8],    # bottom-right, partly outside
    [-0.7, -0.4, 0.6, 0.3],      # tiny, negative fractions truncate toward zero
    [10.0, 10.0, 10.2, 10.1],    # smaller than a pixel
    [0.0, 0.0, 30.0, 24.0],      # the whole image
    [20.0, 15.0, 19.0, 14.0],    # inverted: nothing pasted
    [29.0, 23.0, 29.5, 23.5],    # last pixel
    [-1.9, 5.0, 3.0, 7.0],       # just over the left edge
])
paste("edges", torch.rand(8, 1, 14, 14), edge_boxes, (24, 30))
random_boxes, random_masks = random_detections(24, 30, 4)
random_boxes = random_boxes * 1.2 - 3.0
paste("random", random_masks, random_boxes, (24, 30))
paste("pad0", random_masks, random_boxes, (24, 30), padding=0, inputs_of="random")
paste("pad2", random_masks, random_boxes, (24, 30), padding=2, inputs_of="random")
paste("empty", torch.rand(0, 1, 28, 28), torch.zeros(0, 4), (21, 17))

for kind, err in tol.items():
    out[f"tol.{kind}"] = torch.tensor(err, dtype=torch.float64)
    print(f"tol.{kind} = {err:.2e}")
out = {k: v.contiguous().clone() for k, v in out.items()}
path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/transform.safetensors"
save_file(out, str(path))
print(f"wrote {len(out)} tensors to {path} ({path.stat().st_size} bytes)")
