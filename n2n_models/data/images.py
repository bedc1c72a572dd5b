"""Reading image files: any PIL-readable file as (H, W, 3) uint8 RGB, upscaled when too small for
the smallest crop."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageOps


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8. 16-bit -> 8-bit by /257, alpha composited over black."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF must not make an image unreadable
        pass
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255
        return np.ascontiguousarray(rgb.astype(np.uint8))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read any PIL-readable image file as (H, W, 3) uint8 RGB (the conversions ``folder:``
    applies: 16-bit /257, alpha composited over black, grayscale/palette/CMYK to RGB)."""
    with Image.open(path) as im:
        im.load()
        return _to_rgb8(im)


def ensure_min_size(img: np.ndarray, min_side: int) -> np.ndarray:
    """Upscale (bicubic) so that both sides are at least ``min_side``."""
    h, w = img.shape[:2]
    if min(h, w) >= min_side:
        return img
    scale = min_side / min(h, w)
    nh, nw = max(min_side, math.ceil(h * scale)), max(min_side, math.ceil(w * scale))
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
