"""Mask R-CNN fixtures from torchvision for tests/maskrcnn.rs.

torchvision's `maskrcnn_resnet50_fpn` is built without any download (`weights=None`,
`weights_backbone=None`; so its batch-norm is `BatchNorm2d` in eval mode, the same as frozen
batch-norm with eps 1e-5), with 5 classes and min/max size 48/64, and every parameter and
buffer set from the shared formula of `make_resnet_fixtures.fill`, then every weight of two or
more dimensions re-set by `make_roi_heads_fixtures.scramble` (tests/common/mod.rs computes the
same numbers), so the fixture holds no weights; at most 20 detections per image. On two images of different sizes it records:
the transformed batch and image sizes, the pyramid (first four channels of every level and the
spatial sum of every channel), the RPN's proposals, and the final detections (boxes, labels,
scores, the pasted masks of the first eight and the sum of every pasted mask). Writes tests/fixtures/maskrcnn.safetensors.

    ../venv/bin/python scripts/make_maskrcnn_fixtures.py
"""

import pathlib

import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection import maskrcnn_resnet50_fpn

from make_resnet_fixtures import fill
from make_roi_heads_fixtures import scramble

torch.manual_seed(11)
model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5, min_size=48, max_size=64)
fill(model)
scramble(model)
model.eval()

images = [torch.rand(3, 40, 60), torch.rand(3, 50, 45)]
out = {"image0": images[0], "image1": images[1]}
with torch.no_grad():
    batch, _ = model.transform(images)
    out["batch"] = batch.tensors
    out["image_sizes"] = torch.tensor(batch.image_sizes, dtype=torch.int64)
    features = model.backbone(batch.tensors)
    for i, (name, f) in enumerate(features.items()):
        out[f"fpn{i}.head"] = f[:, :4].contiguous()
        out[f"fpn{i}.sums"] = f.sum(dim=(2, 3))
    proposals, _ = model.rpn(batch, features)
    for i, p in enumerate(proposals):
        out[f"proposals{i}"] = p
    # All candidates first: the cut at 20 and the 0.05 threshold must not sit on a near-tie.
    model.roi_heads.detections_per_img = 1000
    for i, d in enumerate(model(images)):
        sc = d["scores"]
        gap = float(sc[19] - sc[20]) if len(sc) > 20 else float("inf")
        print(f"image {i}: {len(sc)} candidates, gap at the cut {gap:.2e}, lowest {float(sc[-1]):.4f}")
        assert gap > 1e-4, "a near-tie at the cut"
    model.roi_heads.detections_per_img = 20
    detections = model(images)
    for i, d in enumerate(detections):
        out[f"det{i}.boxes"] = d["boxes"]
        out[f"det{i}.labels"] = d["labels"].to(torch.int64)
        out[f"det{i}.scores"] = d["scores"]
        out[f"det{i}.masks_first"] = d["masks"][:8].contiguous()
        out[f"det{i}.mask_sums"] = d["masks"].sum(dim=(1, 2, 3))
        print(f"image {i}: {len(proposals[i])} proposals, {len(d['boxes'])} detections, top scores {d['scores'][:3].tolist()}")

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "maskrcnn.safetensors"
keys = ",".join(model.state_dict().keys())
save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"state_dict_keys": keys})
print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) with torchvision {torchvision.__version__}")
