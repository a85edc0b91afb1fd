"""Image preprocessing as the reference does it (LLaVA expand2square with the mean colour, then the processor)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import CLIPVisionModel

SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def preprocessor_config(model) -> dict:
    size = model.vision_tower.config.image_size
    common = {
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
    }
    if isinstance(model.vision_tower, CLIPVisionModel):
        return {
            "image_processor_type": "CLIPImageProcessor",
            **common,
            "size": {"shortest_edge": size},
            "do_center_crop": True,
            "crop_size": {"height": size, "width": size},
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
        }
    return {
        "image_processor_type": "SiglipImageProcessor",
        **common,
        "size": {"height": size, "width": size},
        "do_center_crop": False,
        "image_mean": SIGLIP_MEAN,
        "image_std": SIGLIP_STD,
    }


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize_reference_order(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """Image.resize as Pillow 3.3-12.x computes it: the horizontal pass first (8-bit intermediate), then the vertical.

    Pillow 13 runs the vertical pass first when the height shrinks much more than the width (python-pillow/Pillow
    #9549): for portrait images resized without padding (480x640 or 300x1000 to 384, 500x900 to 336) ~22-25% of the
    8-bit values then differ by a level or two from Pillow 10.4-12. The reference's environment (LLaVA-Unified's
    pins, 2024: Pillow 10.x) resized horizontally first, and so does the scorer's native path. Two one-axis resizes
    are exactly that two-pass resize in every Pillow version since 3.3 (a resize that keeps one side runs one pass;
    checked bit for bit against Pillow 10.4.0 under Pillow 13.0.0)."""
    w, h = size
    if img.size[0] != w:
        img = img.resize((w, img.size[1]), resample)
    if img.size[1] != h:
        img = img.resize((w, h), resample)
    return img


def preprocess_image(img: Image.Image, cfg: dict, pad_to_square: bool) -> np.ndarray:
    """float32 [3, S, S]: pad (optional), bicubic resize (shortest edge + centre crop for CLIP), rescale, normalise."""
    img = img.convert("RGB")
    mean, std = np.array(cfg["image_mean"], np.float32), np.array(cfg["image_std"], np.float32)
    if pad_to_square:
        img = expand2square(img, tuple(int(x * 255) for x in cfg["image_mean"]))
    if "shortest_edge" in cfg["size"]:
        s = cfg["size"]["shortest_edge"]
        # transformers' get_resize_output_image_size(default_to_square=False): the long side is truncated, not rounded
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(s * long / short)
        img = resize_reference_order(img, (s, new_long) if w <= h else (new_long, s), Image.BICUBIC)
        c = cfg["crop_size"]["height"]
        left, top = (img.size[0] - c) // 2, (img.size[1] - c) // 2
        img = img.crop((left, top, left + c, top + c))
    else:
        img = resize_reference_order(img, (cfg["size"]["width"], cfg["size"]["height"]), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) * np.float32(cfg["rescale_factor"])
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
