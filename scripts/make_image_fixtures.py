"""Makes the image files of tests/fixtures/images/ that tests/data.rs reads.

TIFFs are written by tifffile, JPEGs by Pillow; what Pillow decodes from each JPEG is saved as
a lossless PNG beside it (`*.pil.png`), so that the test compares our decoding with Pillow's.
The expected percentiles in tests/data.rs are numpy's, printed by this script.

    ../venv/bin/python scripts/make_image_fixtures.py
"""

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"


def smooth(h, w, channels, seed):
    """A smooth picture with some texture: JPEG's artefacts stay small and files tiny."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        fy, fx = rng.uniform(0.05, 0.3, size=2)
        plane = 0.5 + 0.35 * np.sin(fy * y + c) * np.cos(fx * x - c)
        plane += rng.normal(0, 0.02, size=(h, w))
        planes.append(plane)
    return np.clip(np.stack(planes, axis=-1), 0, 1)


def main():
    OUT.mkdir(parents=True, exist_ok=True)

    # 16-bit microscopy-like grey image: dim background, a few bright spots, one hot pixel.
    rng = np.random.default_rng(16)
    gray16 = rng.normal(400, 30, size=(12, 10))
    gray16[3:6, 2:5] += 2500
    gray16[8, 7] = 60000
    gray16 = np.clip(gray16, 0, 65535).astype(np.uint16)
    tifffile.imwrite(OUT / "gray16.tif", gray16)
    # The same, deflate-compressed and big-endian.
    tifffile.imwrite(OUT / "gray16_deflate_be.tif", gray16, compression="zlib", byteorder=">")

    values = gray16.astype(np.float64).ravel()
    print("gray16 first values:", values[:4].tolist())
    for q in [0.0, 1.0, 25.0, 50.0, 99.8, 100.0]:
        print(f"np.percentile(gray16, {q}) = {np.percentile(values, q)!r}")
    lo, hi = np.percentile(values, [1.0, 99.8])
    normalized = np.clip((values - lo) / (hi - lo), 0, 1).astype(np.float32)
    print("normalized [1, 99.8], indices 0, 33, 87:", [repr(float(normalized[i])) for i in (0, 33, 87)])

    # 16-bit RGB, planar-free, and an 8-bit grey TIFF.
    rgb16 = (smooth(6, 5, 3, 1) * 65535).astype(np.uint16)
    tifffile.imwrite(OUT / "rgb16.tif", rgb16, photometric="rgb")
    gray8 = (smooth(6, 5, 1, 2)[..., 0] * 255).astype(np.uint8)
    tifffile.imwrite(OUT / "gray8.tif", gray8)
    print("rgb16[0, 0] =", rgb16[0, 0].tolist(), " rgb16[5, 4] =", rgb16[5, 4].tolist())
    print("gray8[0, :3] =", gray8[0, :3].tolist())

    # A probability map and an instance-label mask, as other tools write them.
    prob = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    prob[2, 3] = 0.123456789
    tifffile.imwrite(OUT / "prob_f32.tif", prob)
    labels = np.zeros((4, 5), dtype=np.uint32)
    labels[1:3, 1:4] = 70000
    labels[0, 0] = 1
    tifffile.imwrite(OUT / "labels_u32.tif", labels)

    # JPEGs: colour 4:4:4 and 4:2:0, and grey, with Pillow's decoding of each.
    rgb = (smooth(16, 24, 3, 3) * 255).round().astype(np.uint8)
    gray = (smooth(16, 24, 1, 4)[..., 0] * 255).round().astype(np.uint8)
    for name, pixels, kwargs in [
        ("rgb444.jpg", rgb, {"subsampling": 0}),
        ("rgb420.jpg", rgb, {"subsampling": 2}),
        ("gray.jpg", gray, {}),
    ]:
        path = OUT / name
        Image.fromarray(pixels).save(path, quality=90, **kwargs)
        decoded = np.asarray(Image.open(path))
        Image.fromarray(decoded).save(OUT / (name + ".pil.png"))

    for path in sorted(OUT.iterdir()):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
