"""Noise models applied to clean 32x32 crops: gaussian, poisson, impulse, bernoulli and text
(pixelate is made from the high-resolution source instead, in :mod:`.crops`)."""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .specs import SIZE, DataError, NoiseSpec, parse_noise_spec

_TEXT_BANK = 4096  # rendered text masks per set
_TEXT_SLOTS = 6  # strings per image at most (the first always drawn)
_TEXT_CHARS = string.ascii_letters + string.digits + "!?#&%@$*+-=<>/"
_FONTS: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(size: int):
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except Exception:  # Pillow without FreeType: the fixed-size bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _text_bank(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 32, 32) uint8 alpha masks, each one random string at a random size and place."""
    bank = np.empty((count, SIZE, SIZE), np.uint8)
    sizes = rng.integers(9, 21, count)
    lengths = rng.integers(2, 9, count)
    chars = rng.integers(0, len(_TEXT_CHARS), (count, 8))
    pos = rng.integers(-4, SIZE - 8, (count, 2))
    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    for i in range(count):
        draw.rectangle((0, 0, SIZE, SIZE), fill=0)
        text = "".join(_TEXT_CHARS[c] for c in chars[i, : lengths[i]])
        draw.text((int(pos[i, 0]), int(pos[i, 1])), text, fill=255, font=_font(int(sizes[i])))
        bank[i] = np.asarray(canvas)
    return bank


def _rounded(x: np.ndarray) -> np.ndarray:
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def _gaussian(clean, sigma, rng, text_bank):
    """Additive N(0, sigma^2) on the 0-255 scale, rounded and clipped."""
    x = clean.astype(np.float32)
    x += rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma)
    return _rounded(x)


def _poisson(clean, lam, rng, text_bank):
    """x in [0, 1] -> Poisson(lam * x) / lam."""
    return _rounded(rng.poisson(clean.astype(np.float64) * (lam / 255.0)).astype(np.float64)
                    * (255.0 / lam))


def _impulse(clean, p, rng, text_bank):
    """Each pixel, with probability p, replaced by a uniformly random colour."""
    hit = rng.random((clean.shape[0], 1) + clean.shape[2:]) < p
    return np.where(hit, rng.integers(0, 256, clean.shape, dtype=np.uint8), clean)


def _bernoulli(clean, p, rng, text_bank):
    """Each pixel, with probability p, set to 0 (black)."""
    keep = rng.random((clean.shape[0], 1) + clean.shape[2:]) >= p
    return clean * keep.astype(np.uint8)


def _text(clean, _, rng, text_bank):
    """1-6 random strings (PIL's default font) in random colours, sizes and places."""
    if clean.shape[2:] != (SIZE, SIZE):
        raise DataError(f"text noise needs 32x32 images, got {clean.shape[2:]}")
    if text_bank is None:
        text_bank = _text_bank(rng, _TEXT_BANK)
    n = clean.shape[0]
    x = clean.astype(np.float32)
    for slot in range(_TEXT_SLOTS):
        on = rng.random(n) < (1.0 if slot == 0 else 0.5)
        pick = rng.integers(0, len(text_bank), n)
        colour = rng.integers(0, 256, (n, 3, 1, 1)).astype(np.float32)
        alpha = text_bank[pick][:, None].astype(np.float32) * np.float32(1 / 255)
        alpha *= on[:, None, None, None]
        x += alpha * (colour - x)
    return _rounded(x)


_NOISES = {"gaussian": _gaussian, "poisson": _poisson, "impulse": _impulse,
           "bernoulli": _bernoulli, "text": _text}


def apply_noise(clean: np.ndarray, noise: str | NoiseSpec, rng: np.random.Generator,
                text_bank: np.ndarray | None = None) -> np.ndarray:
    """Noisy copy of clean uint8 images (N, 3, H, W) (any H, W; text needs 32x32).
    ``pixelate`` needs the high-resolution source and is not available here."""
    spec = parse_noise_spec(noise)
    clean = np.asarray(clean)
    if clean.dtype != np.uint8 or clean.ndim != 4 or clean.shape[1] != 3:
        raise DataError(f"apply_noise needs uint8 images of shape (N, 3, H, W), got "
                        f"{clean.dtype} {clean.shape}")
    if spec.kind == "pixelate":
        raise DataError("pixelate noise is made from the high-resolution source (point_sample), "
                        "not from clean 32x32 images")
    model = _NOISES.get(spec.kind)
    if model is None:  # only a hand-built NoiseSpec gets here; parse_noise_spec checks the kind
        raise DataError(f"unknown noise {spec}")
    return model(clean, spec.param, rng, text_bank)


def noisy_copies(clean: np.ndarray, spec: NoiseSpec, rng: np.random.Generator, copies: int):
    """``copies`` independent noisy versions of clean (N, 3, 32, 32); one text bank serves them all."""
    bank = _text_bank(rng, _TEXT_BANK) if spec.kind == "text" else None
    outs = [np.empty_like(clean) for _ in range(copies)]
    for s in range(0, len(clean), 4096):
        for out in outs:
            out[s:s + 4096] = apply_noise(clean[s:s + 4096], spec, rng, bank)
    return outs
