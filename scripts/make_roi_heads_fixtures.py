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
features, `box_pooled4`), as torchvision computes them in float64 (the heads, features and
proposals cast with `.double()`), except `box_pooled4`, torchvision's float32 RoIAlign output,
whose arithmetic the Rust kernel repeats; the state_dict's key names (metadata `keys`). Then
the loss functions on fixed random inputs: `fastrcnn_loss` (`frl_*`) and `maskrcnn_loss`
(`mrl_*`), with the gradients of their inputs and the projected mask targets (float32: both
sides do the same elementwise arithmetic).

Bounds: `tol.{output}` holds PyTorch's own float32 error on each compared output (`boxes`,
`scores`, `masks` over both images), as `make_resnet_fixtures.float32_runs` measures it (the
largest difference from the float64 result over four float32 runs that sum in different
orders; one run for the losses); the tests allow 4 times that or 8 ulps
(make_resnet_fixtures.py says why). Measured here (torch 2.15, AMD EPYC): logits and
regression 1.8e-5, boxes 6.2e-5 px (the floor, 8 ulps of 544 px, decides), scores and masks
1.4e-6, pooled features 7.1e-5, losses 4e-8 to 1.5e-7, gradients 7e-10 to 1.6e-9; ours is at
most 2 times that (the old bounds were fixed, 1e-7 to 1e-3).

Discrete steps: the score threshold, NMS, small-box removal and the cut at 20 are checked with
`check_decisions` (below): every float32 run decides as float64 does, and no decision that can
reach the output lies within 4 times PyTorch's float32 error of flipping; nor does the pyramid
level of a proposal or of a detected box (which the mask pooler reads). The proposals come from
the first generator seed from 5 up that passes (5).

    ../venv/bin/python scripts/make_roi_heads_fixtures.py
"""

import copy
import pathlib
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss, project_masks_on_boxes

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_resnet_fixtures import (  # noqa: E402  (the shared formula and tolerances)
    TORCH_ERR_MULTIPLE,
    as_double,
    fill,
    float32_runs,
    name_hash,
    torch_error,
)

NUM_CLASSES = 5
DETECTIONS = 20
SCORE_THRESH = 0.21
IMAGE_SIZES = [(480, 544), (416, 512)]
PADDED = (480, 544)
STRIDES = [4, 8, 16, 32]
CHANNELS = 256


class DecisionRecorder:
    """Records the inputs and outcome of torchvision's discrete detection steps while a model
    runs, in call order, in `calls`: every `batched_nms` and `remove_small_boxes` call (rpn.py
    and roi_heads.py call them through `torchvision.ops.boxes`), with the scores of the boxes
    that `remove_small_boxes` sees, and the class scores that
    `RoIHeads.postprocess_detections` compares with its score threshold. The RPN's per-level
    top-n indices are put in anchor order (NMS sorts by score anyway), so that the boxes of
    every call line up across runs even where near-equal objectness sorts otherwise."""

    def __init__(self):
        self.calls = []
        self._scores = []  # the scores of the boxes of the next remove_small_boxes calls

    def __enter__(self):
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork
        from torchvision.ops import boxes as box_ops

        self._saved = (
            box_ops.batched_nms,
            box_ops.remove_small_boxes,
            RoIHeads.postprocess_detections,
            RegionProposalNetwork._get_top_n_idx,
        )
        nms, small, post, top_n_idx = self._saved

        def get_top_n_idx(rpn, objectness, num_anchors_per_level):
            idx = top_n_idx(rpn, objectness, num_anchors_per_level).sort(dim=1).values
            self._scores.extend(torch.sigmoid(torch.gather(objectness, 1, idx)))
            return idx

        def batched_nms(boxes, scores, idxs, thr):
            keep = nms(boxes, scores, idxs, thr)
            self.calls.append(
                dict(kind="nms", boxes=boxes.clone(), scores=scores.clone(), idxs=idxs.clone(), thr=thr, keep=keep)
            )
            return keep

        def remove_small_boxes(boxes, min_size):
            keep = small(boxes, min_size)
            scores = self._scores.pop(0)
            assert scores.shape == boxes.shape[:1]
            self.calls.append(dict(kind="small", boxes=boxes.clone(), scores=scores, thr=min_size, keep=keep))
            return keep

        def postprocess_detections(heads, class_logits, box_regression, proposals, image_shapes):
            scores = class_logits.softmax(-1)[:, 1:]
            over = scores > heads.score_thresh
            self.calls.append(
                dict(kind="score", scores=scores, thr=heads.score_thresh, keep=over, images=len(proposals))
            )
            for s, o in zip(scores.split([len(p) for p in proposals]), over.split([len(p) for p in proposals])):
                self._scores.append(s.reshape(-1)[o.reshape(-1)])
            return post(heads, class_logits, box_regression, proposals, image_shapes)

        box_ops.batched_nms, box_ops.remove_small_boxes = batched_nms, remove_small_boxes
        RoIHeads.postprocess_detections = postprocess_detections
        RegionProposalNetwork._get_top_n_idx = get_top_n_idx
        return self

    def __exit__(self, *exc):
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork
        from torchvision.ops import boxes as box_ops

        (
            box_ops.batched_nms,
            box_ops.remove_small_boxes,
            RoIHeads.postprocess_detections,
            RegionProposalNetwork._get_top_n_idx,
        ) = self._saved


def nms_iou(boxes, idxs):
    """The IoU matrix torchvision's CPU `batched_nms` compares with its threshold, in the boxes'
    dtype: with the per-class coordinate offsets it adds for up to 1000 boxes, and -1 between
    boxes of different classes."""
    if boxes.numel() <= 4000 and len(boxes) > 0:
        boxes = boxes + (idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes)))[:, None]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    return torch.where(idxs[:, None] == idxs[None, :], iou, torch.full_like(iou, -1.0))


def greedy_nms(order, over):
    """Indices kept by greedy NMS visiting `order`, `over[i, j]` true where i suppresses j."""
    alive = np.ones(len(order), dtype=bool)
    kept = []
    for i in order:
        if alive[i]:
            kept.append(int(i))
            alive &= ~over[i]
    return kept


def nms_margin_problems(boxes, scores, idxs, thr, d_iou, d_score, top_n):
    """Why NMS on float64 inputs could keep other boxes (or the same in another order, among
    the first `top_n` + 1 kept, which a cut at `top_n` and an ordered comparison see) once IoUs
    move by up to `d_iou` and scores by up to `d_score`: a list of strings, empty if none.
    Checked one change at a time: every IoU within `d_iou` of the threshold flipped, every
    pair of overlapping boxes (IoU above threshold − `d_iou`) with scores within `d_score`
    swapped in the visiting order; and no two kept boxes within `d_score` of each other."""
    s = scores.double().numpy()
    iou = nms_iou(boxes.double(), idxs).numpy()
    np.fill_diagonal(iou, -1.0)
    order = np.argsort(-s, kind="stable")
    over = iou > thr
    base = greedy_nms(order, over)[: top_n + 1]
    problems = []
    gaps = -np.diff(s[base])
    if len(gaps) and gaps.min() <= d_score:
        k = int(gaps.argmin())
        problems.append(f"kept boxes {k} and {k + 1} differ in score by {gaps.min():.2e} <= {d_score:.2e}")
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    for i, j in zip(*np.nonzero(np.triu(np.abs(iou - thr) <= d_iou, 1))):
        flipped = over.copy()
        flipped[i, j] = flipped[j, i] = not over[i, j]
        if greedy_nms(order, flipped)[: top_n + 1] != base:
            problems.append(f"IoU {iou[i, j]:.6f} of boxes {i}, {j} within {d_iou:.2e} of {thr}")
    close = np.abs(s[:, None] - s[None, :]) <= d_score
    for i, j in zip(*np.nonzero(np.triu(close & (iou > thr - d_iou), 1))):
        swapped = order.copy()
        swapped[pos[i]], swapped[pos[j]] = j, i
        if greedy_nms(swapped, over)[: top_n + 1] != base:
            problems.append(f"overlapping boxes {i}, {j} with scores within {d_score:.2e}")
    return problems


def _amax(t):
    return float(t.abs().max()) if t.numel() else 0.0


def check_decisions(runs32, calls64, top_n):
    """Fails unless every decision recorded in `calls64` (a `DecisionRecorder`'s calls in the
    float64 run) came out the same in every float32 run (`runs32`, name -> calls) and either
    has a margin wider than TORCH_ERR_MULTIPLE times PyTorch's float32 error of its inputs
    (the largest over the float32 runs) or cannot reach the output. `top_n(call index)` is
    how many kept boxes of that NMS call reach the output (the rest are cut). A box near the
    small-box or score threshold cannot reach it when its score stays below that of the first
    box cut after the next NMS (greedy NMS lets a box act only on boxes of lower score).
    Returns one line per call: its narrowest margin against the error."""
    k = TORCH_ERR_MULTIPLE
    cut = {}
    for n, c in enumerate(calls64):
        if c["kind"] == "nms":
            kept, t = c["keep"], top_n(n)
            cut[n] = float(c["scores"][kept[t]]) if len(kept) > t else -float("inf")
    nms_after = lambda n, count: [cut[m] for m in sorted(cut) if m > n][:count]
    report = []
    for n, c in enumerate(calls64):
        others = [calls[n] for calls in runs32.values()]
        for o in others:
            same = o["kind"] == c["kind"] and torch.equal(o["keep"], c["keep"])
            assert same, f"call {n} ({c['kind']}): float32 decides otherwise"
        err_s = max(_amax(o["scores"].double() - c["scores"]) for o in others)
        if c["kind"] == "small":
            def sides(b):
                return torch.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).double()
            err = max(_amax(sides(o["boxes"]) - sides(c["boxes"])) for o in others)
            # A side of exactly 0 is a box clipped wholly onto one image edge: 0 in any precision.
            v = sides(c["boxes"])
            near = ((v - c["thr"]).abs() <= k * err) & (v != 0)
            reach = c["scores"].double() >= nms_after(n, 1)[0] - k * err_s
            bad = near.any(1) & reach
            assert not bad.any(), (
                f"call {n}: a box that can reach the output has a side within {k} x {err:.2e} of min_size {c['thr']}"
            )
            w = v[reach][v[reach] != 0]
            margin = float((w - c["thr"]).abs().min()) if len(w) else float("inf")
            report.append(
                f"small-box cut at {c['thr']}: {int(near.any(1).sum())} boxes within {k:g} x error ({err:.2e}), "
                f"none that can reach the output (those: margin {margin:.2e})"
            )
        elif c["kind"] == "score":
            near = (c["scores"] - c["thr"]).abs() <= k * err_s
            lowest_cut = min(nms_after(n, c["images"]))
            assert not near.any() or c["thr"] + 2 * k * err_s < lowest_cut, (
                f"call {n}: a score within {k} x {err_s:.2e} of the threshold can reach the output"
            )
            margin = float((c["scores"] - c["thr"]).abs().min())
            report.append(
                f"score threshold {c['thr']}: closest score {margin:.2e} away (error {err_s:.2e}); "
                f"the output starts at {lowest_cut:.3f}"
            )
        else:
            iou64 = nms_iou(c["boxes"], c["idxs"])
            same = iou64 >= 0
            err_iou = max(_amax((nms_iou(o["boxes"], o["idxs"]).double() - iou64)[same]) for o in others)
            problems = nms_margin_problems(
                c["boxes"], c["scores"], c["idxs"], c["thr"], k * err_iou, k * err_s, top_n(n)
            )
            assert not problems, f"call {n} (NMS at {c['thr']}, {len(c['boxes'])} boxes): " + "; ".join(problems[:5])
            s = c["scores"][c["keep"][: top_n(n) + 1]].double()
            gap = float((s[:-1] - s[1:]).min()) if len(s) > 1 else float("inf")
            report.append(
                f"NMS at {c['thr']} on {len(c['boxes'])} boxes, {len(c['keep'])} kept: closest of the first "
                f"{top_n(n) + 1} kept scores {gap:.2e} (error {err_s:.2e}), IoU error {err_iou:.2e}, "
                f"no single flip within {k:g} x error changes the output"
            )
    return report


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


def level_expr(boxes):
    """`LevelMapper`'s 4 + log2(sqrt(area) / 224) + 1e-6 in the boxes' dtype: its floor,
    clamped to 2..5, is the pyramid level a box is pooled from."""
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return 4 + torch.log2(s / 224) + torch.tensor(1e-6, dtype=s.dtype)


def level_margin(runs, ref):
    """How far the level expression of the float64 boxes `ref` is from the boundaries that
    change the level (3, 4 and 5; below 3 every box is clamped to the first level), and
    PyTorch's float32 error of that expression (float32 boxes of `runs`, or `ref` itself cast
    to float32 where the boxes are inputs)."""
    x = level_expr(ref.double())
    err = max(float((level_expr(r).double() - x).abs().max()) for r in runs)
    margin = float((x[:, None] - torch.tensor([3.0, 4.0, 5.0], dtype=x.dtype)).abs().min())
    return margin, err


def heads_forward(heads, features, proposals):
    """The pooled box features (first 4 channels), logits, box regression and detections,
    with the decisions `DecisionRecorder` records."""
    with torch.no_grad(), DecisionRecorder() as rec:
        pooled = heads.box_roi_pool(features, proposals, IMAGE_SIZES)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        result, _ = heads(features, proposals, IMAGE_SIZES)
    out = {"box_pooled4": pooled[:, :4].contiguous(), "box_logits": logits, "box_regression": regression}
    for i, r in enumerate(result):
        for k in ["boxes", "scores", "labels", "masks"]:
            out[f"det{i}_{k}"] = r[k].contiguous()
    return out, rec.calls


def detections(heads, heads64, features, proposals):
    """The eval-mode outputs for `proposals`, float64 where the tests compare with float64,
    with `tol.*`; or an AssertionError naming a decision with too narrow a margin."""
    k = TORCH_ERR_MULTIPLE
    runs = float32_runs(heads_forward, heads, features, proposals)
    ref, calls64 = heads_forward(heads64, as_double(features), as_double(proposals))
    report = check_decisions({n: r[1] for n, r in runs.items()}, calls64, lambda n: DETECTIONS)
    # Pyramid levels: of the proposals (inputs, so only float32's own rounding of the
    # expression counts) and of the detected boxes (the mask pooler's input).
    margin, err = level_margin([torch.cat(proposals)], torch.cat(proposals).double())
    assert margin > k * err, f"a proposal's level is decided {margin:.2e} from a boundary (error {err:.2e})"
    report.append(f"proposal levels: {margin:.2e} from a boundary, error {err:.2e}")
    boxes = lambda out: torch.cat([out[f"det{i}_boxes"] for i in range(2)])
    margin, err = level_margin([boxes(r[0]) for r in runs.values()], boxes(ref))
    assert margin > k * err, f"a detection's level is decided {margin:.2e} from a boundary (error {err:.2e})"
    report.append(f"detection levels: {margin:.2e} from a boundary, error {err:.2e}")
    out = {}
    for key, r in ref.items():
        f32 = {n: x[0][key] for n, x in runs.items()}
        if key.endswith("labels"):
            for x in f32.values():
                assert torch.equal(x, r), key
            out[key] = r
            continue
        group = key.split("_", 1)[1] if key.startswith("det") else key
        out[f"tol.{group}"] = max(out.get(f"tol.{group}", 0.0), torch_error(f32, r))
        # The pooled features go through RoIAlign only, whose float32 arithmetic the Rust
        # kernel repeats: torchvision's float32 result is the sharper target there.
        out[key] = f32["default"] if key == "box_pooled4" else r
    for i in range(2):
        assert len(out[f"det{i}_labels"]) == DETECTIONS
    return out, report


def first_seed_with_wide_margins(seeds, attempt):
    """The first seed whose `attempt(seed) -> (result, report lines)` raises no AssertionError
    (a decision with too narrow a margin), as `(seed, result)`, after printing its report."""
    for seed in seeds:
        try:
            result, report = attempt(seed)
        except AssertionError as e:
            print(f"seed {seed}: {e}")
            continue
        print(f"seed {seed}:")
        for line in report:
            print("  " + line)
        return seed, result
    raise SystemExit("no seed gives wide margins")


def main():
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    )
    heads = model.roi_heads.eval()
    heads.detections_per_img = DETECTIONS
    heads.score_thresh = SCORE_THRESH
    fill(heads)
    scramble(heads)
    keys = list(heads.state_dict().keys())
    heads64 = copy.deepcopy(heads).double()

    features = {
        str(l): feature(l, (2, CHANNELS, PADDED[0] // s, PADDED[1] // s)) for l, s in enumerate(STRIDES)
    }
    def attempt(seed):
        gen = torch.Generator().manual_seed(seed)
        proposals = [random_proposals(60, h, w, gen) for (h, w) in IMAGE_SIZES]
        out, report = detections(heads, heads64, features, proposals)
        return (out, proposals, gen), report

    _, (out, proposals, gen) = first_seed_with_wide_margins(range(5, 40), attempt)
    for i, p in enumerate(proposals):
        out[f"proposals{i}"] = p
    for i in range(2):
        print(f"image {i}: labels {out[f'det{i}_labels'].tolist()}")
        scores = [round(v, 4) for v in out[f"det{i}_scores"].tolist()]
        print("  scores", scores, "mask std", float(out[f"det{i}_masks"].std()))
    levels = heads.box_roi_pool.map_levels(proposals)
    print("proposals per pyramid level:", torch.bincount(levels.flatten(), minlength=4).tolist())

    # fastrcnn_loss on fixed inputs: two images of 25 and 15 sampled proposals.
    frl_logits = torch.randn(40, NUM_CLASSES, generator=gen)
    frl_regression = torch.randn(40, 4 * NUM_CLASSES, generator=gen)
    frl_labels = [torch.randint(0, NUM_CLASSES, (n,), generator=gen) for n in (25, 15)]
    frl_targets = [torch.randn(n, 4, generator=gen) for n in (25, 15)]

    def frl(dtype):
        logits = frl_logits.clone().to(dtype).requires_grad_(True)
        regression = frl_regression.clone().to(dtype).requires_grad_(True)
        cls_loss, box_loss = fastrcnn_loss(logits, regression, frl_labels, [t.to(dtype) for t in frl_targets])
        (cls_loss + box_loss).backward()
        return dict(
            frl_cls_loss=cls_loss.detach(),
            frl_box_loss=box_loss.detach(),
            frl_grad_logits=logits.grad,
            frl_grad_regression=regression.grad,
        )

    frl32, frl64 = frl(torch.float32), frl(torch.float64)
    out.update(
        frl_logits=frl_logits,
        frl_regression=frl_regression,
        frl_labels0=frl_labels[0],
        frl_labels1=frl_labels[1],
        frl_targets0=frl_targets[0],
        frl_targets1=frl_targets[1],
    )
    for key in frl32:
        out[key] = frl32[key]
        out[f"tol.{key}"] = torch_error(frl32[key], frl64[key])

    # maskrcnn_loss on fixed inputs: 3 and 2 positive proposals on 40x56 and 36x48 images.
    mrl_sizes = [(40, 56), (36, 48)]
    mrl_gt = [blob_masks(g, h, w, gen) for g, (h, w) in zip((3, 2), mrl_sizes)]
    mrl_gt_labels = [torch.randint(1, NUM_CLASSES, (m.shape[0],), generator=gen) for m in mrl_gt]
    mrl_props = [random_proposals(n, h, w, gen) for n, (h, w) in zip((3, 2), mrl_sizes)]
    mrl_idxs = [torch.tensor([2, 0, 1]), torch.tensor([1, 1])]
    mrl_logits = torch.randn(5, NUM_CLASSES, 28, 28, generator=gen)

    def mrl(dtype):
        logits = mrl_logits.clone().to(dtype).requires_grad_(True)
        props = [p.to(dtype) for p in mrl_props]
        mask_loss = maskrcnn_loss(logits, props, mrl_gt, mrl_gt_labels, mrl_idxs)
        mask_loss.backward()
        targets = torch.cat([project_masks_on_boxes(m, p, i, 28) for m, p, i in zip(mrl_gt, props, mrl_idxs)])
        return dict(mrl_loss=mask_loss.detach(), mrl_grad_logits=logits.grad, mrl_targets=targets)

    mrl32, mrl64 = mrl(torch.float32), mrl(torch.float64)
    for i in range(2):
        out[f"mrl_gt_masks{i}"] = mrl_gt[i]
        out[f"mrl_gt_labels{i}"] = mrl_gt_labels[i]
        out[f"mrl_proposals{i}"] = mrl_props[i]
        out[f"mrl_matched{i}"] = mrl_idxs[i]
    out["mrl_logits"] = mrl_logits
    for key in mrl32:
        out[key] = mrl32[key]
        out[f"tol.{key}"] = torch_error(mrl32[key], mrl64[key])
    cls, box, mask = (float(x) for x in (frl32["frl_cls_loss"], frl32["frl_box_loss"], mrl32["mrl_loss"]))
    print(f"fastrcnn_loss {cls:.6f} {box:.6f}, maskrcnn_loss {mask:.6f}")

    for key, v in out.items():
        if key.startswith("tol."):
            out[key] = torch.tensor(v, dtype=torch.float64)
            print(f"  {key} = {v:.3e}")
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "roi_heads.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"keys": ",".join(keys)})
    print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
