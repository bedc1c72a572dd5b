"""Clean 32x32 crops and their pixelate (point-sampled) noisy copies, cut from high-resolution
images: random regions, area averages and per-pixel sub-pixel picks."""

from __future__ import annotations

import time

import numpy as np

from .specs import SIZE, DataError, Progress

#: Downsampling factors (inclusive) for photo/folder crops; tuned so that pixelate-noisy
#: validation inputs from ``photos`` score like the course data (see docs/benchmarks.md,
#: "Data: noise levels of the built-in sets").
IMAGE_FACTORS = (5, 16)
#: Smallest side an image needs for a crop at the lowest factor; smaller images are upscaled.
MIN_SIDE = SIZE * IMAGE_FACTORS[0]

_CHUNK = 2048  # crops per vectorised group
_GRID = np.arange(SIZE)
_GRID1 = np.arange(SIZE + 1)


def area_downsample(region: np.ndarray, f: int) -> np.ndarray:
    """(H*f, W*f, C) -> (H, W, C) float64 block means: the clean image (before rounding)."""
    region = np.asarray(region)
    hf, wf, c = region.shape
    if hf % f or wf % f:
        raise DataError(f"region of shape {region.shape} is not a multiple of factor {f}")
    return region.reshape(hf // f, f, wf // f, f, c).mean(axis=(1, 3), dtype=np.float64)


def point_sample(region: np.ndarray, f: int, rng: np.random.Generator, copies: int = 1) -> np.ndarray:
    """(H*f, W*f, C) -> (copies, H, W, C): each output pixel is one uniformly random sub-pixel of
    its f x f block, the same sub-pixel for all channels, independently per pixel and copy.
    This is ``pixelate`` noise: its expectation is :func:`area_downsample`, the clean image."""
    region = np.asarray(region)
    hf, wf, c = region.shape
    if hf % f or wf % f:
        raise DataError(f"region of shape {region.shape} is not a multiple of factor {f}")
    h, w = hf // f, wf // f
    r = rng.integers(0, f * f, size=(copies, h, w))
    dy, dx = np.divmod(r, f)
    ys = np.arange(h)[None, :, None] * f + dy
    xs = np.arange(w)[None, None, :] * f + dx
    return region[ys, xs]


def pack_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H*W,) uint32 holding the three bytes (one gather per pixel)."""
    h, w, _ = img.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[:, :, :3] = img
    return rgba.view(np.uint32).reshape(h * w)


def summed_area(img: np.ndarray) -> np.ndarray:
    h, w, _ = img.shape
    dtype = np.int32 if h * w * 255 < 2**31 - 1 else np.int64
    sat = np.zeros((h + 1, w + 1, 3), dtype)
    np.cumsum(np.cumsum(img, axis=0, dtype=dtype), axis=1, dtype=dtype, out=sat[1:, 1:])
    return sat


def crops(packed: np.ndarray | None, sat: np.ndarray | None, width: int, y0: np.ndarray,
          x0: np.ndarray, f: int, n_point: int, rng: np.random.Generator | None):
    """For crops of one image at factor f: clean (g, 32, 32, 3) uint8 from the summed-area table
    (rounded block means) if sat is given, and n_point point-sampled copies (n_point, g, 32, 32, 3)."""
    clean = None
    if sat is not None:
        ys = y0[:, None] + _GRID1 * f
        xs = x0[:, None] + _GRID1 * f
        c = sat[ys[:, :, None], xs[:, None, :]]
        s = c[:, 1:, 1:] - c[:, :-1, 1:] - c[:, 1:, :-1] + c[:, :-1, :-1]
        ff = f * f
        s *= 2
        s += ff
        s //= 2 * ff
        clean = s.astype(np.uint8)
    noisy = None
    if n_point:
        g = len(y0)
        r = rng.integers(0, f * f, size=(n_point, g, SIZE, SIZE), dtype=np.int32)
        dy, dx = np.divmod(r, f)
        rows = (y0[:, None, None] + (_GRID * f)[:, None]) + dy
        cols = (x0[:, None, None] + (_GRID * f)[None, :]) + dx
        idx = rows.astype(np.int64) * width + cols
        noisy = packed[idx].view(np.uint8).reshape(n_point, g, SIZE, SIZE, 4)[..., :3]
    return clean, noisy


def store(out: np.ndarray, idx: np.ndarray, hwc: np.ndarray, flip: np.ndarray | None) -> None:
    if flip is not None and flip.any():
        hwc = hwc.copy()
        hwc[flip] = hwc[flip][:, :, ::-1]
    out[idx] = hwc.transpose(0, 3, 1, 2)


def crops_from_images(images: list[np.ndarray], n: int, crop_rng: np.random.Generator,
                      noise_rng: np.random.Generator, n_point: int, progress: Progress, label: str):
    """Plan n random crops over images, return (clean, [noisy copies]) as NCHW uint8.

    A crop is a 32f x 32f region at an integer factor f uniform in ``IMAGE_FACTORS`` (capped by
    the image size), area-averaged to 32x32, with a random horizontal flip. Crop positions come
    from crop_rng alone, so they do not depend on the noise kind."""
    fmin, fmax = IMAGE_FACTORS
    hs = np.array([im.shape[0] for im in images])
    ws = np.array([im.shape[1] for im in images])
    fcap = np.minimum(fmax, np.minimum(hs, ws) // SIZE)
    assert (fcap >= fmin).all()
    img = crop_rng.integers(0, len(images), n)
    hi = fcap[img]
    f = fmin + np.floor(crop_rng.random(n) * (hi - fmin + 1)).astype(np.int64)
    f = np.minimum(f, hi)
    y0 = np.floor(crop_rng.random(n) * (hs[img] - SIZE * f + 1)).astype(np.int64)
    x0 = np.floor(crop_rng.random(n) * (ws[img] - SIZE * f + 1)).astype(np.int64)
    flip = crop_rng.random(n) < 0.5

    clean = np.empty((n, 3, SIZE, SIZE), np.uint8)
    noisy = [np.empty((n, 3, SIZE, SIZE), np.uint8) for _ in range(n_point)]
    order = np.lexsort((f, img))
    si, sf = img[order], f[order]
    starts = np.flatnonzero(np.r_[True, (si[1:] != si[:-1]) | (sf[1:] != sf[:-1])])
    ends = np.r_[starts[1:], n]
    t0 = time.monotonic()
    current, packed, sat = -1, None, None
    for a, b in zip(starts, ends):
        i, fv = int(si[a]), int(sf[a])
        im = images[i]
        if i != current:
            current = i
            packed = pack_rgb(im) if n_point else None
            sat = summed_area(im)
            if progress and time.monotonic() - t0 > 5:
                progress(f"{label}: image {i + 1}/{len(images)}")
                t0 = time.monotonic()
        for s in range(a, b, _CHUNK):
            idx = order[s:min(b, s + _CHUNK)]
            c, pts = crops(packed, sat, im.shape[1], y0[idx], x0[idx], fv, n_point, noise_rng)
            store(clean, idx, c, flip[idx])
            for k in range(n_point):
                store(noisy[k], idx, pts[k], flip[idx])
    return clean, noisy
