"""MONAI's side of the sliding-window benchmark (scripts/bench_sliding_window.sh).

    python scripts/bench_sliding_window.py setup DIR     # DIR/big.tif, DIR/monai.safetensors
    python scripts/bench_sliding_window.py run DIR [--window 256] [--batch 4] [--overlap 0.25]

`setup` writes a 4096x4096 16-bit TIFF (seeded blobs on a background, with noise: a synthetic
fluorescence image) and a MONAI BasicUNetPlusPlus with MONAI's default features
(32, 32, 64, 128, 256, 32), 1 input channel, 2 classes, seeded weights, exported to
safetensors for `predict --format monai`. `run` reads the TIFF with tifffile, scales it by
65535, runs `monai.inferers.sliding_window_inference` (Gaussian blending of the network's
softmax probabilities, as `predict` blends), writes DIR/monai_prob.tif (class 1) and prints the time.
"""

import argparse
import pathlib
import time

import numpy as np
import tifffile
import torch


def setup(out: pathlib.Path):
    from monai.networks.nets import BasicUNetPlusPlus
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    size = 4096
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), 800.0, np.float32)
    for _ in range(1500):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(6, 20)
        y0, y1 = int(max(cy - 3 * r, 0)), int(min(cy + 3 * r, size))
        x0, x1 = int(max(cx - 3 * r, 0)), int(min(cx + 3 * r, size))
        d2 = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2
        img[y0:y1, x0:x1] += rng.uniform(3000, 30000) * np.exp(-d2 / (2 * r * r))
    img += rng.normal(0, 200, img.shape)
    img = np.clip(img, 0, 65535).astype(np.uint16)
    tifffile.imwrite(out / "big.tif", img)
    torch.manual_seed(0)
    net = BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "monai.safetensors"))
    print(f"wrote {out / 'big.tif'} ({img.shape}, {img.dtype}) and {out / 'monai.safetensors'}")


def run(out: pathlib.Path, window: int, batch: int, overlap: float):
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNetPlusPlus
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    net = BasicUNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2).eval()
    net.load_state_dict(load_file(str(out / "monai.safetensors")))
    img = tifffile.imread(out / "big.tif").astype(np.float32) / 65535.0
    x = torch.from_numpy(img)[None, None]
    with torch.inference_mode():
        p = sliding_window_inference(
            x, (window, window), batch, lambda w: torch.softmax(net(w)[-1], 1), overlap=overlap, mode="gaussian"
        )
    tifffile.imwrite(out / "monai_prob.tif", p[0, 1].numpy())
    print(f"MONAI {x.shape[2]}x{x.shape[3]}: window {window}, batch {batch}, overlap {overlap}: "
          f"{time.perf_counter() - t0:.1f} s (torch {torch.__version__}, 2 threads)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["setup", "run"])
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--overlap", type=float, default=0.25)
    a = ap.parse_args()
    setup(a.dir) if a.what == "setup" else run(a.dir, a.window, a.batch, a.overlap)
