"""Writes test/fixtures/intake/pil-reference/: small JPEGs and the reference preprocessing's 8-bit output for each.

The intake's native JPEG path claims PIL's resampling to the bit (with DCT scaling off), in the order the
reference's Pillow (10.x; any of 3.3-12.x) runs it: horizontal pass first, whatever Pillow this script runs under
(preprocess.resize_reference_order). These fixtures let the
default test suite check that claim without Python: each case is a JPEG made here with Pillow, and the uint8 RGB
image the reference gets after its geometry step (LLaVA's expand2square with int(mean*255), then the processor's
resize: (S, S) for SigLIP-style processors, transformers' shortest-edge resize + centre crop for CLIP-style ones),
i.e. what is normalised next. Small sizes keep the files at a few KB; the arithmetic does not depend on them.

    tools/export/.venv/bin/python tools/export/pil_fixtures.py [--out test/fixtures/intake/pil-reference]
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib

import numpy as np
from PIL import Image, features

from preprocess import CLIP_MEAN, expand2square, resize_reference_order

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth gradients, hard-edged shapes and noise: the structures resampling errors show up on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            128 + 100 * np.sin(x / (7 + seed % 5) + y / 23),
            128 + 90 * np.cos(y / (5 + seed % 7) - x / 31),
            (x * 255 / max(w - 1, 1) + y * 128 / max(h - 1, 1)) % 256,
        ],
        axis=-1,
    )
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        img[y0 : y0 + h // 5, x0 : x0 + w // 6] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def geometry(img: Image.Image, mode: str, size: int, resample: int) -> Image.Image:
    img = img.convert("RGB")
    if mode == "pad":
        img = expand2square(img, tuple(int(m * 255) for m in CLIP_MEAN))
        return resize_reference_order(img, (size, size), resample)
    if mode == "crop":
        # transformers get_resize_output_image_size(default_to_square=False) and center_crop
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        rw, rh = (size, new_long) if w <= h else (new_long, size)
        img = resize_reference_order(img, (rw, rh), resample)
        left, top = (rw - size) // 2, (rh - size) // 2
        return img.crop((left, top, left + size, top + size))
    return resize_reference_order(img, (size, size), resample)


CASES = [
    # name, width, height, seed, jpeg options, [(mode, size, filter)]
    ("landscape", 333, 180, 1, {"quality": 85}, [("pad", 64, "bicubic"), ("crop", 64, "bicubic"), ("squash", 64, "bicubic"), ("pad", 64, "bilinear")]),
    ("portrait-444", 150, 277, 2, {"quality": 90, "subsampling": 0}, [("pad", 72, "bicubic"), ("crop", 72, "bicubic")]),
    ("progressive", 400, 390, 3, {"quality": 80, "progressive": True}, [("pad", 48, "bicubic"), ("squash", 48, "bilinear")]),
    ("grey", 260, 200, 4, {"quality": 85}, [("pad", 64, "bicubic")]),
    ("upscale", 41, 57, 5, {"quality": 95}, [("pad", 64, "bicubic"), ("crop", 64, "bicubic")]),
    # Height shrinks 5x, width 2x: Pillow 13 would run its vertical pass first here; the reference order is
    # horizontal first (resize_reference_order).
    ("portrait-tall", 120, 300, 6, {"quality": 85}, [("squash", 60, "bicubic"), ("squash", 48, "bilinear")]),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="test/fixtures/intake/pil-reference")
    out = pathlib.Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    import PIL

    manifest = {
        "generator": "tools/export/pil_fixtures.py",
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "pad_colour": [int(m * 255) for m in CLIP_MEAN],
        "cases": [],
    }
    for name, w, h, seed, opts, geoms in CASES:
        img = photo(w, h, seed)
        if name == "grey":
            img = img.convert("L")
        data = jpeg(img, **opts)
        (out / f"{name}.jpg").write_bytes(data)
        decoded = Image.open(io.BytesIO(data))
        for mode, size, filt in geoms:
            res = np.asarray(geometry(decoded, mode, size, FILTERS[filt]), dtype=np.uint8)
            file = f"{name}.{mode}-{size}-{filt}.rgb"
            (out / file).write_bytes(np.ascontiguousarray(res).tobytes())
            manifest["cases"].append(
                {"jpeg": f"{name}.jpg", "width": w, "height": h, "mode": mode, "size": size, "filter": filt, "rgb": file}
            )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
