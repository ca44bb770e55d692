"""Writes a MONAI BasicUNetPlusPlus state_dict as safetensors, for unetpp::interop::monai.

    python scripts/export_monai.py model.pt out.safetensors   # a torch.save'd state_dict or model

In Rust: `let (net, cfg) = unetpp::interop::monai::load_monai("out.safetensors", &device)?;`
"""

import sys

import torch
from safetensors.torch import save_file


def main(src, dst):
    obj = torch.load(src, map_location="cpu", weights_only=False)
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    save_file({k: v.detach().float().contiguous() for k, v in state.items()}, dst)
    print(f"wrote {len(state)} tensors to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
