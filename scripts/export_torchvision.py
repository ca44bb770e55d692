"""Writes a torchvision Mask R-CNN state_dict as safetensors, for unetpp::maskrcnn::MaskRcnn.

    python scripts/export_torchvision.py model.pth out.safetensors   # a torch.save'd state_dict,
                                                                     # model, or {"model": ...}
    python scripts/export_torchvision.py --coco out.safetensors      # torchvision's COCO weights
                                                                     # (downloads them once)
    python scripts/export_torchvision.py --random N out.safetensors  # random weights, N classes

The file's metadata records `num_classes` (from `roi_heads.box_predictor.cls_score`) and whether
the weights are torchvision's COCO ones. In Rust:

    let mut cfg = MaskRcnnConfig::mask_rcnn(num_classes)?;
    cfg.resnet.bn_eps = 0.0;   // torchvision's COCO weights use frozen batch-norm with eps 0
    let model = MaskRcnn::load_torchvision(&cfg, "out.safetensors", &device)?;

Older checkpoints (torchvision < 0.13 names such as `roi_heads.mask_head.mask_fcn1.weight` or
`backbone.fpn.inner_blocks.0.weight`) are written as they are: unetpp reads both.
"""

import sys

import torch
import torchvision
from safetensors.torch import save_file


def state_of(obj):
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def main(argv):
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

    coco = False
    if len(argv) == 2 and argv[0] == "--coco":
        state = maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1).state_dict()
        coco, dst = True, argv[1]
    elif len(argv) == 3 and argv[0] == "--random":
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=int(argv[1]))
        state, dst = model.state_dict(), argv[2]
    elif len(argv) == 2:
        state, dst = state_of(torch.load(argv[0], map_location="cpu", weights_only=False)), argv[1]
    else:
        sys.exit(__doc__)
    tensors = {
        k: v.detach().float().contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")
    }
    classes = tensors["roi_heads.box_predictor.cls_score.weight"].shape[0]
    meta = {"num_classes": str(classes), "coco": str(coco).lower(), "torchvision": torchvision.__version__}
    save_file(tensors, dst, metadata=meta)
    print(f"wrote {len(tensors)} tensors ({classes} classes) to {dst}")


if __name__ == "__main__":
    main(sys.argv[1:])
