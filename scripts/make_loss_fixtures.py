"""Loss fixtures from PyTorch for tests/losses.rs.

Writes tests/fixtures/losses.safetensors: random logits and targets (float64), and the
values and input gradients of the losses in `unetpp::loss` as PyTorch computes them:
`F.binary_cross_entropy_with_logits` and `F.cross_entropy` (class weights, ignore_index)
directly, the soft Dice terms by their formula in torch.

    ../venv/bin/python scripts/make_loss_fixtures.py
"""

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(3)
out = {}
dt = torch.float64


def grad_of(fn, x):
    x = x.clone().requires_grad_(True)
    v = fn(x)
    v.backward()
    return v.detach(), x.grad.detach()


def dice_batch(logits, y, s=1.0):
    p = torch.sigmoid(logits)
    return (2 * (p * y).sum() + s) / (p.sum() + y.sum() + s)


def dice_per_image(logits, y, s=1.0):
    p = torch.sigmoid(logits).flatten(1)
    y = y.flatten(1)
    return (2 * (p * y).sum(1) + s) / (p.sum(1) + y.sum(1) + s)


# Binary: (3, 1, 8, 8); image 2 has an empty mask.
logits = torch.randn(3, 1, 8, 8, dtype=dt) * 3
masks = (torch.rand(3, 1, 8, 8, dtype=dt) > 0.6).to(dt)
masks[2] = 0
out["bin_logits"] = logits
out["bin_masks"] = masks
out["bce"] = F.binary_cross_entropy_with_logits(logits, masks).reshape(())
out["dice_batch"] = dice_batch(logits, masks).reshape(())
out["dice_per_image"] = dice_per_image(logits, masks)


def paper(x, y=masks):
    return 0.5 * F.binary_cross_entropy_with_logits(x, y) + (1 - dice_per_image(x, y)).mean()


def common(x, y=masks):
    return 0.5 * F.binary_cross_entropy_with_logits(x, y) + 1 - dice_batch(x, y)


out["bce_dice_paper"], out["bce_dice_paper_grad"] = grad_of(paper, logits)
out["bce_dice_common"], out["bce_dice_common_grad"] = grad_of(common, logits)

# Extreme logits: BCE stays finite.
ext = torch.tensor([[[[100.0, -100.0], [50.0, -80.0]]]], dtype=dt)
ext_y = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]], dtype=dt)
out["ext_logits"], out["ext_masks"] = ext, ext_y
out["ext_bce"], out["ext_bce_grad"] = grad_of(
    lambda x: F.binary_cross_entropy_with_logits(x, ext_y), ext
)

# Deep supervision: four heads, weights 0.1..0.4.
heads = torch.randn(4, 2, 1, 8, 8, dtype=dt) * 2
hmask = (torch.rand(2, 1, 8, 8, dtype=dt) > 0.5).to(dt)
out["ds_heads"], out["ds_masks"] = heads, hmask
ws = [0.1, 0.2, 0.3, 0.4]
out["ds_weighted"] = sum(w * paper(heads[i], hmask) for i, w in enumerate(ws)).reshape(())
out["ds_equal"] = (sum(paper(heads[i], hmask) for i in range(4)) / 4).reshape(())

# Multi-class: (2, 3, 6, 5) logits, labels with some ignored (255).
C = 3
ml = torch.randn(2, C, 6, 5, dtype=dt) * 2
labels = torch.randint(0, C, (2, 6, 5))
labels_ign = labels.clone()
labels_ign[0, :2, :] = 255
cw = torch.tensor([0.2, 1.0, 2.5], dtype=dt)
out["mc_logits"] = ml
out["mc_labels"] = labels.to(torch.int64)
out["mc_labels_ignore"] = labels_ign.to(torch.int64)
out["mc_class_weights"] = cw
out["ce"] = F.cross_entropy(ml, labels).reshape(())
out["ce_weighted"] = F.cross_entropy(ml, labels, weight=cw).reshape(())
out["ce_weighted_ignore"] = F.cross_entropy(ml, labels_ign, weight=cw, ignore_index=255).reshape(())


def dice_mc(x, lab, ignore=None, s=1.0, first=0):
    valid = torch.ones_like(lab, dtype=dt) if ignore is None else (lab != ignore).to(dt)
    safe = torch.where(lab == ignore, torch.zeros_like(lab), lab) if ignore is not None else lab
    p = torch.softmax(x, 1) * valid[:, None]
    y = F.one_hot(safe, C).permute(0, 3, 1, 2).to(dt) * valid[:, None]
    inter = (p * y).sum((0, 2, 3))
    den = p.sum((0, 2, 3)) + y.sum((0, 2, 3))
    return ((2 * inter + s) / (den + s))[first:].mean()


out["dice_mc"] = dice_mc(ml, labels).reshape(())
out["dice_mc_ignore_nobg"] = dice_mc(ml, labels_ign, ignore=255, first=1).reshape(())


def ce_dice(x):
    return F.cross_entropy(x, labels_ign, weight=cw, ignore_index=255) + 1 - dice_mc(
        x, labels_ign, ignore=255
    )


out["ce_dice"], out["ce_dice_grad"] = grad_of(ce_dice, ml)

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "losses.safetensors"
save_file({k: v.contiguous() for k, v in out.items()}, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__})")
