"""Mask R-CNN RoI-heads fixtures from torchvision for tests/maskrcnn_roi_heads.rs.

The `RoIHeads` is the one `torchvision.models.detection.maskrcnn_resnet50_fpn` builds (box
pooler 7x7, TwoMLPHead 12544 -> 1024 -> 1024, FastRCNNPredictor, mask pooler 14x14, four
3x3 convolutions of 256, MaskRCNNPredictor), with 5 classes, at most 20 detections per
image and a score threshold of 0.21 (so that the threshold, NMS and the cut at 20 all act).
Neither its weights nor its input features are stored:

- every parameter is set by the shared formula of its name and index (`fill` from
  make_resnet_fixtures.py; tests/common/mod.rs computes the same numbers), then the weights
  of two or more dimensions by `scramble` below, the same rule with a term in i² (see its
  docstring for why); tests/maskrcnn_roi_heads.rs repeats both;
- the four FPN maps (256 channels, strides 4, 8, 16, 32 of a padded 480x544 batch of two
  images of sizes 480x544 and 416x512) come from `feature()` below, which the test repeats.

Stored: the random proposals (60 per image, from 8 to 500 pixels so that every pyramid level
is used), the eval-mode outputs (`det{i}_boxes`, `_scores`, `_labels`, `_masks`) and
intermediates (`box_logits`, `box_regression`, and the first 4 channels of the pooled box
features, `box_pooled4`); the state_dict's key names (metadata `keys`). Then the loss
functions on fixed random inputs: `fastrcnn_loss` (`frl_*`) and `maskrcnn_loss` (`mrl_*`),
with the gradients of their inputs and the projected mask targets.

The script stops if a score lies within 1e-5 of the threshold or of the cut at 20
detections: such near-ties would make the test's outcome depend on the last bits.

    ../venv/bin/python scripts/make_roi_heads_fixtures.py
"""

import pathlib
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss, project_masks_on_boxes

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_resnet_fixtures import fill, name_hash  # noqa: E402  (the shared formula)

NUM_CLASSES = 5
DETECTIONS = 20
SCORE_THRESH = 0.21
IMAGE_SIZES = [(480, 544), (416, 512)]
PADDED = (480, 544)
STRIDES = [4, 8, 16, 32]
CHANNELS = 256


def feature(level, shape):
    """((i² · 37 + i · 7919 + 101 · level) mod 10007) / 10007 · 2 − 1 for element i, in f64
    (exact: i² < 2^53), then f32."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    v = (((i * i * 37 + i * 7919 + 101 * level) % 10007).astype(np.float64) / 10007.0 - 0.5) * 8.0
    return torch.from_numpy(v.reshape(shape).astype(np.float32))


def scramble(model):
    """Re-sets every weight of two or more dimensions as `fill` does but with a term in i²
    added before the modulus, ((i² · 37 + i · 7919 + hash(name)) mod 10007) / 10007 − 0.5,
    times the same fan-in factor: `fill`'s values repeat every 1000 elements and drift
    slowly along a row, so successive rows of a linear layer are shifted copies of each
    other and fc7, the classifier and the mask convolutions give almost the same output for
    every box (every score ≈ 0.23, every label 1, flat masks)."""
    with torch.no_grad():
        for name, t in model.named_parameters():
            if t.dim() < 2:
                continue
            n = t.numel()
            i = np.arange(n, dtype=np.int64)
            v = ((i * i * 37 + i * 7919 + name_hash(name)) % 10007).astype(np.float64) / 10007.0 - 0.5
            fan_in = int(np.prod(t.shape[1:]))
            v = v * 2.0 * np.sqrt(3.0 / fan_in)
            t.copy_(torch.from_numpy(v.reshape(tuple(t.shape))).to(t.dtype))


def random_proposals(n, h, w, gen):
    """Boxes inside an h x w image, sqrt(area) log-uniform in [8, 500], aspect in [0.5, 2]."""
    size = torch.exp(torch.empty(n).uniform_(np.log(8.0), np.log(500.0), generator=gen))
    ratio = torch.exp(torch.empty(n).uniform_(np.log(0.5), np.log(2.0), generator=gen))
    bw = (size / ratio.sqrt()).clamp(max=w - 1.0)
    bh = (size * ratio.sqrt()).clamp(max=h - 1.0)
    x1 = torch.rand(n, generator=gen) * (w - bw)
    y1 = torch.rand(n, generator=gen) * (h - bh)
    return torch.stack([x1, y1, x1 + bw, y1 + bh], 1)


def blob_masks(g, h, w, gen):
    """g binary masks (uint8) of random ellipses."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    masks = []
    for _ in range(g):
        cy, cx = torch.rand(2, generator=gen) * torch.tensor([h, w])
        ry, rx = 3 + torch.rand(2, generator=gen) * torch.tensor([h / 2, w / 2])
        masks.append((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).to(torch.uint8))
    return torch.stack(masks)


def main():
    gen = torch.Generator().manual_seed(5)
    out = {}

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    )
    heads = model.roi_heads.eval()
    heads.detections_per_img = DETECTIONS
    heads.score_thresh = SCORE_THRESH
    fill(heads)
    scramble(heads)
    keys = list(heads.state_dict().keys())

    features = {
        str(l): feature(l, (2, CHANNELS, PADDED[0] // s, PADDED[1] // s)) for l, s in enumerate(STRIDES)
    }
    proposals = [random_proposals(60, h, w, gen) for (h, w) in IMAGE_SIZES]
    for i, p in enumerate(proposals):
        out[f"proposals{i}"] = p

    with torch.no_grad():
        pooled = heads.box_roi_pool(features, proposals, IMAGE_SIZES)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        result, _ = heads(features, proposals, IMAGE_SIZES)
        # Near-ties at the cut-offs would make the parity test fragile.
        heads.detections_per_img = 1000
        everything, _ = heads(features, proposals, IMAGE_SIZES)
        heads.detections_per_img = DETECTIONS
    out["box_pooled4"] = pooled[:, :4].contiguous()
    out["box_logits"] = logits
    out["box_regression"] = regression
    for i, r in enumerate(result):
        for k in ["boxes", "scores", "labels", "masks"]:
            out[f"det{i}_{k}"] = r[k].contiguous()
        print(f"image {i}: {len(r['boxes'])} detections, labels {r['labels'].tolist()}")
        print("  scores", [round(v, 4) for v in r["scores"].tolist()], "mask std", float(r["masks"].std()))
    scores = logits.softmax(-1)[:, 1:].flatten()
    print("candidates above the threshold:", int((scores > SCORE_THRESH).sum()), "of", scores.numel())
    for i, r in enumerate(everything):
        s = r["scores"]
        gap = float(s[DETECTIONS - 1] - s[DETECTIONS]) if len(s) > DETECTIONS else float("inf")
        print(f"image {i}: {len(s)} after NMS, score gap at the cut {gap:.2e}")
        assert gap > 1e-5
    near = (logits.softmax(-1)[:, 1:] - SCORE_THRESH).abs().min()
    print(f"closest score to the threshold: {float(near):.2e}")
    assert near > 1e-5
    levels = heads.box_roi_pool.map_levels(proposals)
    print("proposals per pyramid level:", torch.bincount(levels.flatten(), minlength=4).tolist())

    # fastrcnn_loss on fixed inputs: two images of 25 and 15 sampled proposals.
    frl_logits = torch.randn(40, NUM_CLASSES, generator=gen, requires_grad=True)
    frl_regression = torch.randn(40, 4 * NUM_CLASSES, generator=gen, requires_grad=True)
    frl_labels = [torch.randint(0, NUM_CLASSES, (n,), generator=gen) for n in (25, 15)]
    frl_targets = [torch.randn(n, 4, generator=gen) for n in (25, 15)]
    cls_loss, box_loss = fastrcnn_loss(frl_logits, frl_regression, frl_labels, frl_targets)
    (cls_loss + box_loss).backward()
    out.update(
        frl_logits=frl_logits.detach(),
        frl_regression=frl_regression.detach(),
        frl_labels0=frl_labels[0],
        frl_labels1=frl_labels[1],
        frl_targets0=frl_targets[0],
        frl_targets1=frl_targets[1],
        frl_cls_loss=cls_loss.detach(),
        frl_box_loss=box_loss.detach(),
        frl_grad_logits=frl_logits.grad,
        frl_grad_regression=frl_regression.grad,
    )

    # maskrcnn_loss on fixed inputs: 3 and 2 positive proposals on 40x56 and 36x48 images.
    mrl_sizes = [(40, 56), (36, 48)]
    mrl_gt = [blob_masks(g, h, w, gen) for g, (h, w) in zip((3, 2), mrl_sizes)]
    mrl_gt_labels = [torch.randint(1, NUM_CLASSES, (m.shape[0],), generator=gen) for m in mrl_gt]
    mrl_props = [random_proposals(n, h, w, gen) for n, (h, w) in zip((3, 2), mrl_sizes)]
    mrl_idxs = [torch.tensor([2, 0, 1]), torch.tensor([1, 1])]
    mrl_logits = torch.randn(5, NUM_CLASSES, 28, 28, generator=gen, requires_grad=True)
    mask_loss = maskrcnn_loss(mrl_logits, mrl_props, mrl_gt, mrl_gt_labels, mrl_idxs)
    mask_loss.backward()
    targets = torch.cat([project_masks_on_boxes(m, p, i, 28) for m, p, i in zip(mrl_gt, mrl_props, mrl_idxs)])
    for i in range(2):
        out[f"mrl_gt_masks{i}"] = mrl_gt[i]
        out[f"mrl_gt_labels{i}"] = mrl_gt_labels[i]
        out[f"mrl_proposals{i}"] = mrl_props[i]
        out[f"mrl_matched{i}"] = mrl_idxs[i]
    out.update(
        mrl_logits=mrl_logits.detach(),
        mrl_loss=mask_loss.detach(),
        mrl_grad_logits=mrl_logits.grad,
        mrl_targets=targets,
    )
    print(f"fastrcnn_loss {cls_loss.item():.6f} {box_loss.item():.6f}, maskrcnn_loss {mask_loss.item():.6f}")

    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "roi_heads.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"keys": ",".join(keys)})
    print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
