"""torchvision side of `cargo run --release --example bench_detection`: the same inputs (the
same 64-bit LCG, bit for bit), the same operations, median seconds after one warm-up.

    ../venv/bin/python scripts/bench_detection.py [--runs 5] [--boxes 1000] [--nms-boxes 5000]
"""
import argparse

import numpy as np
import torch
from torchvision import ops

from bench_pytorch import median_seconds  # the same statistic as the other benchmarks

MASK = (1 << 64) - 1


class Lcg:
    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & MASK
        return (self.state >> 11) / float(1 << 53)


def boxes(rng, n, hw, sizes):
    (h, w), (lo, hi) = hw, sizes
    out = []
    for _ in range(n):
        bw = lo + rng.next() * (hi - lo)
        bh = lo + rng.next() * (hi - lo)
        x1 = rng.next() * (w - bw)
        y1 = rng.next() * (h - bh)
        out.append([x1, y1, x1 + bw, y1 + bh])
    return torch.tensor(np.array(out, dtype=np.float32))


def maskrcnn_image():
    h, w = 800, 1024
    i = np.arange(3 * h * w, dtype=np.int64)
    return torch.from_numpy((((i * 7919) % 1000) / 1000.0).astype(np.float32)).reshape(3, h, w)


def train_step(runs):
    """One training step (losses and backward, no optimiser update) of maskrcnn_resnet50_fpn as
    torchvision fine-tunes it from a pretrained backbone: frozen batch-norm, the last three
    ResNet stages trainable. Four objects, as the Rust side."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91).train()
    image = maskrcnn_image()
    h, w = image.shape[1:]
    objects = [[100, 120, 300, 380], [400, 80, 560, 200], [600, 450, 900, 760], [200, 500, 260, 580]]
    masks = torch.zeros(len(objects), h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(objects):
        masks[k, y1:y2, x1:x2] = 1
    target = {
        "boxes": torch.tensor(objects, dtype=torch.float32),
        "labels": torch.tensor([1, 2, 3, 4]),
        "masks": masks,
    }
    total = []

    def step():
        model.zero_grad(set_to_none=True)
        loss = sum(model([image], [target]).values())
        loss.backward()
        total[:] = [loss.item()]

    t = median_seconds(step, runs)
    print(f"maskrcnn_resnet50_fpn train step 3x{h}x{w}, {len(objects)} objects: {t:.3f} s (loss {total[0]:.3f})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--boxes", type=int, default=1000)
    p.add_argument("--nms-boxes", type=int, default=5000)
    p.add_argument("--maskrcnn", action="store_true")
    p.add_argument("--maskrcnn-train", action="store_true")
    a = p.parse_args()
    print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}")
    if a.maskrcnn_train:
        train_step(a.runs)
        return
    if a.maskrcnn:
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        torch.manual_seed(0)
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
        image = maskrcnn_image()
        h, w = image.shape[1:]
        found = []

        def run():
            with torch.no_grad():
                found[:] = [len(model([image])[0]["boxes"])]

        t = median_seconds(run, a.runs)
        print(f"maskrcnn_resnet50_fpn detect 3x{h}x{w}: {t:.3f} s ({found[0]} detections)")
        return
    rng = Lcg(7)
    c, h, w, k = 256, 200, 304, a.boxes
    # The map's values do not change the work; the same formula as the Rust side.
    i = np.arange(c * h * w, dtype=np.int64)
    x = torch.from_numpy((((i * 7919) % 1000) / 1000.0 - 0.5).astype(np.float32))
    x = x.reshape(1, c, h, w)
    b = boxes(rng, k, (800.0, 1216.0), (16.0, 400.0))
    rois = torch.cat([torch.zeros(k, 1), b], 1)
    for size in [(7, 7), (14, 14)]:
        label = f"{k} boxes {size[0]}x{size[1]} on 1x{c}x{h}x{w}"
        with torch.no_grad():
            t = median_seconds(lambda: ops.roi_align(x, rois, size, 0.25, 2, False), a.runs)
        print(f"roi_align forward  torchvision {label}: {t:.4f} s")
        xg = x.clone().requires_grad_(True)
        g = torch.ones(k, c, *size)

        def step():
            xg.grad = None
            ops.roi_align(xg, rois, size, 0.25, 2, False).backward(g)

        print(f"roi_align fwd+bwd  torchvision {label}: {median_seconds(step, a.runs):.4f} s")
    rng = Lcg(11)
    n = a.nms_boxes
    b = boxes(rng, n, (800.0, 1216.0), (8.0, 300.0))
    scores = torch.tensor(np.array([rng.next() for _ in range(n)], dtype=np.float32))
    classes = torch.tensor([int(rng.next() * 80.0) for _ in range(n)])
    kept = ops.nms(b, scores, 0.7).numel()
    t = median_seconds(lambda: ops.nms(b, scores, 0.7), a.runs)
    print(f"nms {n} boxes iou 0.7: {t:.5f} s ({kept} kept)")
    kept = ops.batched_nms(b, scores, classes, 0.5).numel()
    t = median_seconds(lambda: ops.batched_nms(b, scores, classes, 0.5), a.runs)
    print(f"batched_nms {n} boxes 80 classes iou 0.5: {t:.5f} s ({kept} kept)")


if __name__ == "__main__":
    main()
