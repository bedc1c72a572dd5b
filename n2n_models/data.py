"""Noise2Noise training pairs and validation sets.

``load_pairs`` returns :class:`Pairs`: two independently noisy copies of each training image
(``train_a``, ``train_b``) and, for validation, one noisy copy with its clean reference
(``val_noisy``, ``val_clean``). All four are contiguous CPU ``torch.uint8`` tensors of shape
(N, 3, 32, 32). Plain numpy / torch / PIL; nothing is downloaded and nothing here imports ray.

Data sources (``data``)
-----------------------
``photos`` (default)
    The colour photographs shipped on disk by scikit-image (its ``data`` folder) and matplotlib
    (``sample_data/grace_hopper.jpg``), read with PIL. ``VAL_PHOTOS`` are held out: validation
    crops come only from them, training crops only from the others (see :func:`photo_files`).
``synthetic``
    Procedural dead-leaves scenes (overlapping ellipses and rectangles with colour gradients and
    stripe textures), no files; validation scenes come from a separate seed stream.
``folder:DIR``
    Every PNG/JPEG/TIFF/BMP file under DIR, searched recursively (names starting with "." are
    ignored). The readable images are sorted by relative path and every 10th one (index 0, 10,
    20, ...) is kept for validation only. Grayscale, RGBA/LA/palette (alpha composited over black),
    16-bit and float images become 8-bit RGB; images too small for the smallest crop are
    upscaled. Other files and unreadable images are skipped and counted (``warnings.warn`` and
    ``progress``). All readable images are decoded into memory while a set is generated.
``epfl:DIR``
    The EE-559 course files ``DIR/train_data.pkl`` = ``(noisy_a, noisy_b)`` and
    ``DIR/val_data.pkl`` = ``(noisy, clean)``, loaded with ``torch.load(weights_only=True)`` only.
    The first ``train_size`` / ``val_size`` images are used. The noise is in the files, so the
    ``noise`` argument is validated but otherwise ignored. Nothing is cached.

Noise (``noise``)
-----------------
Clean 32x32 images are area-averaged (box-filtered) downsamples of random crops taken at a
random integer scale ``f`` (a 32f x 32f source region, ``f`` uniform in ``IMAGE_FACTORS`` for
photos/folders, capped by the image size, with a random horizontal flip; ``SYNTHETIC_FACTORS``
for synthetic scenes, rendered at that resolution).

``pixelate`` (default, the course's noise)
    Each noisy copy is a point sample of the source region: every output pixel takes one
    independently chosen sub-pixel of its f x f block (same sub-pixel for R, G and B). Its
    expectation is the area average, i.e. the clean image (:func:`point_sample`,
    :func:`area_downsample`).
``gaussian:SIGMA``  additive N(0, SIGMA^2) on the 0-255 scale, rounded and clipped.
``poisson:LAMBDA``  x in [0, 1] -> Poisson(LAMBDA * x) / LAMBDA.
``impulse:P``       each pixel, with probability P, replaced by a uniformly random colour.
``bernoulli:P``     each pixel, with probability P, set to 0 (black).
``text``            1-6 random strings (PIL's default font) in random colours, sizes and places
                    (about 30% of the pixels changed on average).

Determinism and caching
-----------------------
Everything is a function of (data, noise, train_size, val_size, seed) through seeded numpy
Generators. Crop positions do not depend on the noise kind, and the validation set does not
depend on ``train_size``. Generated sets are cached under ``cache_dir`` (default
:func:`default_cache_dir`) in a file keyed by a hash of the full specification (including the
folder's file names, sizes and mtimes and ``FORMAT_VERSION``); the file is written atomically and
a corrupt one is regenerated. (Synthetic scenes use float32 ``np.sin``, whose last bit may differ
between CPU instruction sets, so bit-identical synthetic data is guaranteed per machine.)

PSNR convention used for the documented numbers: images in [0, 1], per-image
``10*log10(1/mean((x-y)^2))``, averaged over images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import string
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = [
    "DataError",
    "Pairs",
    "DataSpec",
    "NoiseSpec",
    "PhotoSplit",
    "load_pairs",
    "parse_data_spec",
    "parse_noise_spec",
    "default_cache_dir",
    "cache_path",
    "photo_files",
    "read_image",
    "folder_split",
    "area_downsample",
    "point_sample",
    "apply_noise",
    "render_synthetic",
    "FORMAT_VERSION",
    "IMAGE_FACTORS",
    "SYNTHETIC_FACTORS",
    "VAL_PHOTOS",
]

#: Bump whenever generated data would change for the same arguments (invalidates caches).
FORMAT_VERSION = 1
#: Output crop size.
SIZE = 32
#: Downsampling factors (inclusive) for photo/folder crops; tuned so that pixelate-noisy
#: validation inputs from ``photos`` score about 20.7 dB like the course data.
IMAGE_FACTORS = (5, 16)
#: Supersampling factors (inclusive) at which synthetic scenes are rendered.
SYNTHETIC_FACTORS = (2, 4)
#: Image file suffixes read by ``folder:`` (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Colour photographs in scikit-image's data folder used by ``photos``. Left out: grayscale
#: images, synthetic ones (color.png, phantom.png, chessboard_RGB.png, logo.png, horse.png) and
#: retina.jpg (an almost featureless, oversampled fundus image: its crops are nearly noise-free).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
)
#: From matplotlib's ``sample_data``.
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
#: Held out of training: validation crops come only from these. The two motorcycle photos are a
#: stereo pair of one scene, so they are held out together. With this split and IMAGE_FACTORS,
#: pixelate-noisy validation inputs score ~20.7 dB and gaussian:25 ones ~20.3 dB (little clipping).
VAL_PHOTOS = ("chelsea.png", "motorcycle_left.png", "motorcycle_right.png")

Progress = Callable[[str], None] | None


class DataError(ValueError):
    """Any bad data/noise argument or unusable input file. The message says what and how to fix."""


def _one_line(exc: BaseException | str, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Pairs:
    """Noise2Noise data; unpacks as ``train_a, train_b, val_noisy, val_clean``."""

    train_a: torch.Tensor
    train_b: torch.Tensor
    val_noisy: torch.Tensor
    val_clean: torch.Tensor
    description: str = ""

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.train_a, self.train_b, self.val_noisy, self.val_clean))

    def __len__(self) -> int:
        return 4


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    kind: str  # "photos" | "synthetic" | "folder" | "epfl"
    path: Path | None = None  # absolute, resolved (folder / epfl)

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class NoiseSpec:
    kind: str  # "pixelate" | "gaussian" | "poisson" | "impulse" | "bernoulli" | "text"
    param: float | None = None

    def __str__(self) -> str:
        if self.param is None:
            return self.kind
        p = repr(float(self.param))
        return f"{self.kind}:{p[:-2] if p.endswith('.0') else p}"


_DATA_HELP = "use photos, synthetic, folder:DIR or epfl:DIR"
_NOISE_HELP = ("use pixelate, gaussian:SIGMA, poisson:LAMBDA, impulse:P, bernoulli:P or text "
               "(e.g. gaussian:25)")


def parse_data_spec(data: str | DataSpec) -> DataSpec:
    """Validate a data source string (cheap: checks directories exist, reads no image)."""
    if isinstance(data, DataSpec):
        return data
    if not isinstance(data, str):
        raise DataError(f"data source must be a string, got {type(data).__name__}; {_DATA_HELP}")
    text = data.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("photos", "synthetic"):
        if sep:
            raise DataError(f"data source {kind!r} takes no ':' argument (got {data!r}); {_DATA_HELP}")
        return DataSpec(kind)
    if kind in ("folder", "epfl"):
        if not arg.strip():
            raise DataError(f"data source {kind!r} needs a directory: write {kind}:DIR (got {data!r})")
        path = Path(os.path.expanduser(arg.strip())).resolve()
        if not path.exists():
            raise DataError(f"{kind} directory {str(path)!r} does not exist; check the path in {data!r}")
        if not path.is_dir():
            raise DataError(f"{kind} path {str(path)!r} is not a directory; pass the folder, not a file")
        if kind == "epfl":
            for name in ("train_data.pkl", "val_data.pkl"):
                if not (path / name).is_file():
                    raise DataError(f"epfl directory {str(path)!r} has no {name}; it must hold "
                                    "train_data.pkl and val_data.pkl from the course")
        return DataSpec(kind, path)
    raise DataError(f"unknown data source {data!r}; {_DATA_HELP}")


_NOISE_RANGES = {
    # kind: (low, high, low_inclusive, high_inclusive, meaning)
    "gaussian": (0.0, 255.0, True, True, "SIGMA (std on the 0-255 scale) must be in [0, 255]"),
    "poisson": (0.0, 1e6, False, True, "LAMBDA (photons at full intensity) must be in (0, 1e6]"),
    "impulse": (0.0, 1.0, True, False, "P (replacement probability) must be in [0, 1)"),
    "bernoulli": (0.0, 1.0, True, False, "P (drop probability) must be in [0, 1)"),
}


def parse_noise_spec(noise: str | NoiseSpec) -> NoiseSpec:
    """Validate a noise string such as ``pixelate`` or ``gaussian:25``."""
    if isinstance(noise, NoiseSpec):
        return noise
    if not isinstance(noise, str):
        raise DataError(f"noise must be a string, got {type(noise).__name__}; {_NOISE_HELP}")
    kind, sep, arg = noise.strip().partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind in ("pixelate", "text"):
        if sep:
            raise DataError(f"noise {kind!r} takes no parameter (got {noise!r}); write just {kind}")
        return NoiseSpec(kind)
    if kind in _NOISE_RANGES:
        low, high, low_in, high_in, meaning = _NOISE_RANGES[kind]
        if not arg:
            raise DataError(f"noise {kind!r} needs a parameter: write {kind}:VALUE; {meaning}")
        try:
            value = float(arg)
        except ValueError:
            raise DataError(f"noise parameter {arg!r} in {noise!r} is not a number; {meaning}") from None
        ok = math.isfinite(value) and (value >= low if low_in else value > low) and (
            value <= high if high_in else value < high)
        if not ok:
            raise DataError(f"noise parameter {arg!r} in {noise!r} is out of range; {meaning}")
        return NoiseSpec(kind, value)
    raise DataError(f"unknown noise {noise!r}; {_NOISE_HELP}")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/n2n-search`` or ``~/.cache/n2n-search``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".cache"
    return root / "n2n-search"


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Image reading
# --------------------------------------------------------------------------------------------


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


def _ensure_min_size(img: np.ndarray, min_side: int) -> np.ndarray:
    """Upscale (bicubic) so that both sides are at least ``min_side``."""
    h, w = img.shape[:2]
    if min(h, w) >= min_side:
        return img
    scale = min_side / min(h, w)
    nh, nw = max(min_side, math.ceil(h * scale)), max(min_side, math.ceil(w * scale))
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))


# --------------------------------------------------------------------------------------------
# Photos source
# --------------------------------------------------------------------------------------------


class PhotoSplit(NamedTuple):
    train: tuple[Path, ...]
    val: tuple[Path, ...]


def photo_files() -> PhotoSplit:
    """The ``photos`` source's files: (train, val), disjoint, each sorted by name."""
    candidates: list[Path] = []
    try:
        import skimage

        skdir = Path(os.path.dirname(skimage.__file__)) / "data"
        candidates += [skdir / n for n in SKIMAGE_PHOTOS]
    except ImportError:
        pass
    try:
        import matplotlib

        mpldir = Path(matplotlib.get_data_path()) / "sample_data"
        candidates += [mpldir / n for n in MATPLOTLIB_PHOTOS]
    except ImportError:
        pass
    present = sorted((p for p in candidates if p.is_file()), key=lambda p: p.name)
    train = tuple(p for p in present if p.name not in VAL_PHOTOS)
    val = tuple(p for p in present if p.name in VAL_PHOTOS)
    if not train or not val:
        missing = sorted(set(SKIMAGE_PHOTOS + MATPLOTLIB_PHOTOS) - {p.name for p in present})
        raise DataError("the photos source needs the sample photos of scikit-image and matplotlib "
                        f"(missing: {', '.join(missing)}); reinstall them or use --data synthetic")
    return PhotoSplit(train, val)


# --------------------------------------------------------------------------------------------
# Folder source
# --------------------------------------------------------------------------------------------


def _scan_folder(root: Path) -> tuple[list[Path], int]:
    """Image-suffixed files under root (recursive, sorted by relative path) and the count of
    other files."""
    images: list[Path] = []
    others = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES:
                images.append(p)
            else:
                others += 1
    images.sort(key=lambda p: p.relative_to(root).as_posix())
    return images, others


def folder_split(files: Sequence) -> tuple[list, list]:
    """Split a sorted list into (train, val): every 10th item (index 0, 10, ...) is validation."""
    files = list(files)
    return [f for i, f in enumerate(files) if i % 10], [f for i, f in enumerate(files) if i % 10 == 0]


def _folder_identity(root: Path) -> tuple[dict, list[Path], int]:
    files, others = _scan_folder(root)
    if not files:
        raise DataError(f"folder {str(root)!r} contains no images ({', '.join(IMAGE_SUFFIXES)}); "
                        "point folder: at a directory of photos")
    listing, kept = [], []
    for p in files:
        try:
            st = p.stat()
        except OSError:  # vanished or unreadable: skipped like any unreadable image
            others += 1
            continue
        listing.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
        kept.append(p)
    return {"kind": "folder", "path": str(root), "files": listing}, kept, others


def _load_folder_images(root: Path, files: list[Path], others: int, min_side: int,
                        progress: Progress) -> tuple[list[np.ndarray], list[np.ndarray]]:
    good: list[tuple[Path, np.ndarray]] = []
    bad = 0
    for p in files:
        try:
            img = read_image(p)
        except Exception:  # PIL raises many types for corrupt / unsupported files
            bad += 1
            continue
        if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            bad += 1
            continue
        good.append((p, _ensure_min_size(img, min_side)))
    if others or bad:
        msg = (f"folder {str(root)!r}: skipped {others} non-image file(s) and {bad} unreadable "
               f"image file(s); using {len(good)} image(s)")
        warnings.warn(msg, stacklevel=3)
        if progress:
            progress(msg)
    if len(good) < 2:
        raise DataError(f"folder {str(root)!r} has {len(good)} readable image(s); at least 2 are "
                        "needed (every 10th is held out for validation)")
    train, val = folder_split(good)
    return [a for _, a in train], [a for _, a in val]


# --------------------------------------------------------------------------------------------
# Pixelate sampling (exposed for tests and analysis)
# --------------------------------------------------------------------------------------------


def area_downsample(region: np.ndarray, f: int) -> np.ndarray:
    """(H*f, W*f, C) -> (H, W, C) float64 block means: the clean image (before rounding)."""
    region = np.asarray(region)
    hf, wf, c = region.shape
    if hf % f or wf % f:
        raise DataError(f"region of shape {region.shape} is not a multiple of factor {f}")
    return region.reshape(hf // f, f, wf // f, f, c).mean(axis=(1, 3), dtype=np.float64)


def point_sample(region: np.ndarray, f: int, rng: np.random.Generator, copies: int = 1) -> np.ndarray:
    """(H*f, W*f, C) -> (copies, H, W, C): each output pixel is one uniformly random sub-pixel of
    its f x f block, the same sub-pixel for all channels, independently per pixel and copy."""
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


def _pack_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H*W,) uint32 holding the three bytes (one gather per pixel)."""
    h, w, _ = img.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[:, :, :3] = img
    return rgba.view(np.uint32).reshape(h * w)


def _summed_area(img: np.ndarray) -> np.ndarray:
    h, w, _ = img.shape
    dtype = np.int32 if h * w * 255 < 2**31 - 1 else np.int64
    sat = np.zeros((h + 1, w + 1, 3), dtype)
    np.cumsum(np.cumsum(img, axis=0, dtype=dtype), axis=1, dtype=dtype, out=sat[1:, 1:])
    return sat


_GRID = np.arange(SIZE)
_GRID1 = np.arange(SIZE + 1)


def _crops(packed: np.ndarray | None, sat: np.ndarray | None, width: int, y0: np.ndarray,
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


def _store(out: np.ndarray, idx: np.ndarray, hwc: np.ndarray, flip: np.ndarray | None) -> None:
    if flip is not None and flip.any():
        hwc = hwc.copy()
        hwc[flip] = hwc[flip][:, :, ::-1]
    out[idx] = hwc.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# Crop sets from images (photos / folder)
# --------------------------------------------------------------------------------------------

_CHUNK = 2048  # crops per vectorised group


def _crops_from_images(images: list[np.ndarray], n: int, crop_rng: np.random.Generator,
                       noise_rng: np.random.Generator, factors: tuple[int, int], n_point: int,
                       need_clean: bool, progress: Progress, label: str):
    """Plan n random crops over images, return (clean or None, [noisy copies]) as NCHW uint8."""
    fmin, fmax = factors
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

    clean = np.empty((n, 3, SIZE, SIZE), np.uint8) if need_clean else None
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
            packed = _pack_rgb(im) if n_point else None
            sat = _summed_area(im) if need_clean else None
            if progress and time.monotonic() - t0 > 5:
                progress(f"{label}: image {i + 1}/{len(images)}")
                t0 = time.monotonic()
        for s in range(a, b, _CHUNK):
            idx = order[s:min(b, s + _CHUNK)]
            c, pts = _crops(packed, sat, im.shape[1], y0[idx], x0[idx], fv, n_point, noise_rng)
            if c is not None:
                _store(clean, idx, c, flip[idx])
            for k in range(n_point):
                _store(noisy[k], idx, pts[k], flip[idx])
    return clean, noisy


# --------------------------------------------------------------------------------------------
# Synthetic source: dead-leaves scenes
# --------------------------------------------------------------------------------------------

_LEAVES = 420  # shapes per scene
_RMIN, _RMAX = 0.6, 24.0  # shape radius range in output pixels (power law r^-3)


def render_synthetic(rng: np.random.Generator, count: int, f: int) -> np.ndarray:
    """``count`` dead-leaves scenes of (32f, 32f, 3) uint8: overlapping ellipses and rectangles,
    sizes following a scale-invariant r^-3 law, each with a colour, a linear gradient and
    (some) a stripe texture, over a gradient background."""
    B, R, s = count, SIZE * f, float(f)
    K = _LEAVES
    q = 1.0 - (_RMIN / _RMAX) ** 2
    radius = _RMIN / np.sqrt(1.0 - rng.random(K) * q)  # output pixels; shared by the batch
    is_rect = rng.random(K) < 0.4
    label = np.zeros((B, R, R), np.int16)  # 0 = background, k = shape k (later on top)
    flat_label = label.reshape(-1)
    boff = (np.arange(B) * R)[:, None]
    full = np.arange(R)
    # per-shape, per-image parameters
    cy = rng.random((K, B)).astype(np.float32) * R
    cx = rng.random((K, B)).astype(np.float32) * R
    ea = (radius[:, None] * s * (0.45 + 0.55 * rng.random((K, B)))).astype(np.float32)
    eb = ea * (0.25 + 0.75 * rng.random((K, B))).astype(np.float32)
    th = rng.random((K, B)) * np.pi
    cos, sin = np.cos(th).astype(np.float32), np.sin(th).astype(np.float32)
    for k in range(K):
        h = int(math.ceil(radius[k] * s)) + 1
        if 2 * h + 1 >= R:
            ys = np.broadcast_to(full, (B, R))
            xs = ys
        else:
            win = np.arange(-h, h + 1)
            ys = np.clip(cy[k].astype(np.int64)[:, None] + win, 0, R - 1)
            xs = np.clip(cx[k].astype(np.int64)[:, None] + win, 0, R - 1)
        dy = (ys + np.float32(0.5) - cy[k][:, None]).astype(np.float32)[:, :, None]
        dx = (xs + np.float32(0.5) - cx[k][:, None]).astype(np.float32)[:, None, :]
        c, sn = cos[k][:, None, None], sin[k][:, None, None]
        u = dx * c + dy * sn
        v = dy * c - dx * sn
        ia, ib = (1.0 / ea[k])[:, None, None], (1.0 / eb[k])[:, None, None]
        if is_rect[k]:
            mask = (np.abs(u) * ia < 1) & (np.abs(v) * ib < 1)
        else:
            u *= ia
            v *= ib
            mask = u * u + v * v < 1
        idx = (boff + ys)[:, :, None] * R + xs[:, None, :]
        flat_label[idx[mask]] = k + 1
    # colour parameters per (image, label), label 0 = background; flattened tables
    n = K + 1
    lum = rng.uniform(20, 235, (B, n, 1))
    base = (lum + rng.normal(0, 35, (B, n, 3))).astype(np.float32).reshape(B * n, 3)
    span = np.concatenate([np.full((1,), R / 2.0), radius * s])[None, :]  # px
    grad = rng.normal(0, 1, (B, n, 2)) * (30.0 / span)[:, :, None]
    centre = np.concatenate([np.full((B, 1, 2), R / 2.0), np.stack([cy.T, cx.T], -1)], axis=1)
    period = s * rng.uniform(0.7, 6.0, (B, n))
    ang = rng.random((B, n)) * np.pi
    kvec = np.stack([np.sin(ang), np.cos(ang)], -1) * (2 * np.pi / period)[:, :, None]
    amp = np.where(rng.random((B, n)) < 0.3, rng.uniform(10, 50, (B, n)), 0.0)
    amp[:, 0] = 0.0
    phase = rng.random((B, n)) * 2 * np.pi
    # value(y, x) = base + g.(p - c) + amp * sin(k.(p - c) + phase), p = pixel centre
    const = -(grad * centre).sum(-1) + 0.5 * grad.sum(-1)  # folds in the +0.5 pixel centre
    kphase = phase - (kvec * centre).sum(-1) + 0.5 * kvec.sum(-1)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32).reshape(-1)  # noqa: E731
    gy, gx, gc = f32(grad[..., 0]), f32(grad[..., 1]), f32(const)
    ky, kx, kp, am = f32(kvec[..., 0]), f32(kvec[..., 1]), f32(kphase), f32(amp)
    lab = (label + (np.arange(B, dtype=np.int32) * n)[:, None, None]).reshape(-1)
    pix_y = np.broadcast_to(np.arange(R, dtype=np.float32)[None, :, None], (B, R, R)).reshape(-1)
    pix_x = np.broadcast_to(np.arange(R, dtype=np.float32)[None, None, :], (B, R, R)).reshape(-1)
    shade = gy[lab] * pix_y
    shade += gx[lab] * pix_x
    shade += gc[lab]
    striped = np.flatnonzero(am[lab])
    if len(striped):
        ls = lab[striped]
        shade[striped] += am[ls] * np.sin(ky[ls] * pix_y[striped] + kx[ls] * pix_x[striped] + kp[ls])
    shade += np.float32(0.5)  # round half up via truncation below
    out = base[lab]
    out += shade[:, None]
    np.clip(out, 0, 255.5, out=out)
    return out.astype(np.uint8).reshape(B, R, R, 3)


def _crops_from_synthetic(n: int, crop_rng: np.random.Generator, noise_rng: np.random.Generator,
                          n_point: int, need_clean: bool, progress: Progress, label: str):
    """n synthetic scenes, each rendered at a random factor f and reduced like a photo crop."""
    fmin, fmax = SYNTHETIC_FACTORS
    f = crop_rng.integers(fmin, fmax + 1, n)
    clean = np.empty((n, 3, SIZE, SIZE), np.uint8) if need_clean else None
    noisy = [np.empty((n, 3, SIZE, SIZE), np.uint8) for _ in range(n_point)]
    t0 = time.monotonic()
    done = 0
    for fv in range(fmin, fmax + 1):
        sel = np.flatnonzero(f == fv)
        batch = max(16, (1 << 20) // (SIZE * fv) ** 2)
        for s in range(0, len(sel), batch):
            idx = sel[s:s + batch]
            scenes = render_synthetic(crop_rng, len(idx), fv)  # (g, R, R, 3)
            R = SIZE * fv
            stacked = scenes.reshape(len(idx) * R, R, 3)
            packed = _pack_rgb(stacked) if n_point else None
            sat = _summed_area(stacked) if need_clean else None
            y0 = np.arange(len(idx), dtype=np.int64) * R
            x0 = np.zeros(len(idx), np.int64)
            c, pts = _crops(packed, sat, R, y0, x0, fv, n_point, noise_rng)
            if c is not None:
                _store(clean, idx, c, None)
            for k in range(n_point):
                _store(noisy[k], idx, pts[k], None)
            done += len(idx)
            if progress and time.monotonic() - t0 > 5:
                progress(f"{label}: {done}/{n} synthetic scenes")
                t0 = time.monotonic()
    return clean, noisy


# --------------------------------------------------------------------------------------------
# Noise on clean images
# --------------------------------------------------------------------------------------------

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


def apply_noise(clean: np.ndarray, noise: str | NoiseSpec, rng: np.random.Generator,
                text_bank: np.ndarray | None = None) -> np.ndarray:
    """Noisy copy of clean uint8 images (N, 3, H, W) (any H, W; text needs 32x32).
    ``pixelate`` needs the high-resolution source and is not available here."""
    spec = parse_noise_spec(noise)
    clean = np.asarray(clean)
    if clean.dtype != np.uint8 or clean.ndim != 4 or clean.shape[1] != 3:
        raise DataError(f"apply_noise needs uint8 images of shape (N, 3, H, W), got "
                        f"{clean.dtype} {clean.shape}")
    n = clean.shape[0]
    pshape = (n, 1) + clean.shape[2:]
    k, p = spec.kind, spec.param
    if k == "pixelate":
        raise DataError("pixelate noise is made from the high-resolution source (point_sample), "
                        "not from clean 32x32 images")
    if k == "gaussian":
        x = clean.astype(np.float32)
        x += rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(p)
    elif k == "poisson":
        x = rng.poisson(clean.astype(np.float64) * (p / 255.0)).astype(np.float64) * (255.0 / p)
    elif k == "impulse":
        hit = rng.random(pshape) < p
        return np.where(hit, rng.integers(0, 256, clean.shape, dtype=np.uint8), clean)
    elif k == "bernoulli":
        keep = rng.random(pshape) >= p
        return clean * keep.astype(np.uint8)
    elif k == "text":
        if clean.shape[2:] != (SIZE, SIZE):
            raise DataError(f"text noise needs 32x32 images, got {clean.shape[2:]}")
        if text_bank is None:
            text_bank = _text_bank(rng, _TEXT_BANK)
        x = clean.astype(np.float32)
        for slot in range(_TEXT_SLOTS):
            on = rng.random(n) < (1.0 if slot == 0 else 0.5)
            pick = rng.integers(0, len(text_bank), n)
            colour = rng.integers(0, 256, (n, 3, 1, 1)).astype(np.float32)
            alpha = text_bank[pick][:, None].astype(np.float32) * np.float32(1 / 255)
            alpha *= on[:, None, None, None]
            x += alpha * (colour - x)
    else:  # pragma: no cover - parse_noise_spec guarantees one of the kinds above
        raise DataError(f"unknown noise {spec}")
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def _noisy_copies(clean: np.ndarray, spec: NoiseSpec, rng: np.random.Generator, copies: int):
    bank = _text_bank(rng, _TEXT_BANK) if spec.kind == "text" else None
    outs = [np.empty_like(clean) for _ in range(copies)]
    for s in range(0, len(clean), 4096):
        for out in outs:
            out[s:s + 4096] = apply_noise(clean[s:s + 4096], spec, rng, bank)
    return outs


# --------------------------------------------------------------------------------------------
# EPFL course files
# --------------------------------------------------------------------------------------------


def _unpickling_reason(e: BaseException) -> str:
    """The specific line of torch's long weights-only refusal message (its wording varies)."""
    reasons = []
    for line in str(e).splitlines()[1:]:
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not line.startswith(("Check the documentation", "Please file an issue")):
            reasons.append(line)
    return reasons[0] if reasons else "it holds Python objects other than tensors"


def _load_epfl_file(path: Path, names: str) -> tuple[torch.Tensor, torch.Tensor]:
    fix = f"it must be torch.save(({names})) of two uint8 tensors of shape (N, 3, 32, 32)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = _unpickling_reason(e)
        raise DataError(f"{path} is not plain tensor data, refused to unpickle it ({why[:120]}); "
                        f"{fix}") from None
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {fix}") from None
    except Exception as e:  # truncated / corrupt: RuntimeError, EOFError, zip errors, ...
        why = _one_line(e, 200).split(". ")[0]
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {why[:120]}); "
                        f"{fix}") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2 or not all(
            isinstance(t, torch.Tensor) for t in obj):
        what = type(obj).__name__ + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else "")
        raise DataError(f"{path} holds a {what}, not a pair of tensors; {fix}")
    for t in obj:
        if t.dtype != torch.uint8:
            raise DataError(f"{path} holds tensors of dtype {t.dtype}, expected torch.uint8; {fix}")
        if t.dim() != 4 or tuple(t.shape[1:]) != (3, SIZE, SIZE):
            raise DataError(f"{path} holds a tensor of shape {tuple(t.shape)}, expected "
                            f"(N, 3, 32, 32); {fix}")
    if obj[0].shape[0] != obj[1].shape[0]:
        raise DataError(f"{path} holds tensors with {obj[0].shape[0]} and {obj[1].shape[0]} images; "
                        f"{fix}")
    return obj[0], obj[1]


def _take(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.contiguous() if n == t.shape[0] else t[:n].clone(memory_format=torch.contiguous_format)


def _load_epfl(root: Path, train_size: int, val_size: int, progress: Progress) -> Pairs:
    if progress:
        progress(f"loading course data from {root}")
    a, b = _load_epfl_file(root / "train_data.pkl", "noisy_a, noisy_b")
    vn, vc = _load_epfl_file(root / "val_data.pkl", "noisy, clean")
    if train_size > a.shape[0]:
        raise DataError(f"train_size {train_size} is larger than the {a.shape[0]} pairs in "
                        f"{root / 'train_data.pkl'}; ask for at most {a.shape[0]}")
    if val_size > vn.shape[0]:
        raise DataError(f"val_size {val_size} is larger than the {vn.shape[0]} images in "
                        f"{root / 'val_data.pkl'}; ask for at most {vn.shape[0]}")
    return Pairs(_take(a, train_size), _take(b, train_size), _take(vn, val_size),
                 _take(vc, val_size), f"epfl:{root} (noise from the files)")


# --------------------------------------------------------------------------------------------
# Generation, seeding, caching
# --------------------------------------------------------------------------------------------


def _words(text: str) -> list[int]:
    d = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(d[i:i + 4], "little") for i in range(0, 16, 4)]


def _rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed] + _words("\x1f".join(parts))))


def _identity(spec: DataSpec) -> tuple[dict, object]:
    """Cache identity of a source and whatever is needed to load it later."""
    if spec.kind == "photos":
        split = photo_files()
        ident = {"kind": "photos",
                 "train": [[p.name, p.stat().st_size] for p in split.train],
                 "val": [[p.name, p.stat().st_size] for p in split.val]}
        return ident, split
    if spec.kind == "synthetic":
        return {"kind": "synthetic", "leaves": _LEAVES, "radii": [_RMIN, _RMAX]}, None
    if spec.kind == "folder":
        ident, files, others = _folder_identity(spec.path)
        return ident, (files, others)
    raise AssertionError(spec.kind)


def _cache_key(ident: dict, noise: NoiseSpec, train_size: int, val_size: int, seed: int) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "source": ident, "noise": str(noise),
                       "train_size": train_size, "val_size": val_size, "seed": seed,
                       "image_factors": IMAGE_FACTORS, "synthetic_factors": SYNTHETIC_FACTORS},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_file(cache_dir: Path, spec: DataSpec, noise: NoiseSpec, train_size: int,
                val_size: int, seed: int, key: str) -> Path:
    slug = str(noise).replace(":", "-")
    return Path(cache_dir) / f"{spec.kind}_{slug}_{train_size}+{val_size}_seed{seed}_{key[:16]}.pt"


def _generate(spec: DataSpec, loader, noise: NoiseSpec, train_size: int, val_size: int,
              seed: int, progress: Progress) -> dict[str, np.ndarray]:
    pix = noise.kind == "pixelate"
    out = {}
    if spec.kind == "photos":
        def read(p: Path) -> np.ndarray:
            try:
                return _ensure_min_size(read_image(p), SIZE * IMAGE_FACTORS[0])
            except Exception as e:
                raise DataError(f"sample photo {p} is unreadable ({_one_line(e, 100)}); reinstall "
                                "scikit-image/matplotlib or use --data synthetic") from None

        train_imgs = [read(p) for p in loader.train]
        val_imgs = [read(p) for p in loader.val]
    elif spec.kind == "folder":
        files, others = loader
        train_imgs, val_imgs = _load_folder_images(spec.path, files, others,
                                                   SIZE * IMAGE_FACTORS[0], progress)
    for part, n, imgs in (("train", train_size, None), ("val", val_size, None)):
        crop_rng = _rng(seed, spec.kind, part, "crops")
        noise_rng = _rng(seed, spec.kind, part, "noise", str(noise))
        label = f"{part} {spec.kind}/{noise}"
        n_point = (2 if part == "train" else 1) if pix else 0
        need_clean = part == "val" or not pix
        if spec.kind == "synthetic":
            clean, pts = _crops_from_synthetic(n, crop_rng, noise_rng, n_point, need_clean,
                                               progress, label)
        else:
            imgs = train_imgs if part == "train" else val_imgs
            clean, pts = _crops_from_images(imgs, n, crop_rng, noise_rng, IMAGE_FACTORS, n_point,
                                            need_clean, progress, label)
        if not pix:
            pts = _noisy_copies(clean, noise, noise_rng, 2 if part == "train" else 1)
        if part == "train":
            out["train_a"], out["train_b"] = pts
        else:
            out["val_noisy"], out["val_clean"] = pts[0], clean
    return out


_KEYS = ("train_a", "train_b", "val_noisy", "val_clean")


def _read_cache(path: Path, key: str, train_size: int, val_size: int) -> dict | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("key") != key:
            return None
        for name in _KEYS:
            t = obj[name]
            n = train_size if name.startswith("train") else val_size
            if (not isinstance(t, torch.Tensor) or t.dtype != torch.uint8
                    or tuple(t.shape) != (n, 3, SIZE, SIZE) or not t.is_contiguous()):
                return None
        return obj
    except Exception:
        return None


def _write_cache(path: Path, key: str, tensors: dict[str, torch.Tensor], description: str,
                 progress: Progress) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save({"key": key, "description": description, **tensors}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        if progress:
            progress(f"cached at {path}")
    except OSError as e:
        warnings.warn(f"could not write data cache {path}: {_one_line(e)}; continuing without it",
                      stacklevel=3)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def cache_path(data: str = "photos", noise: str = "pixelate", train_size: int = 50_000,
               val_size: int = 1_000, seed: int = 0, cache_dir: str | os.PathLike | None = None
               ) -> Path | None:
    """Where ``load_pairs`` with these arguments caches its data (None for ``epfl``)."""
    spec = parse_data_spec(data)
    nspec = parse_noise_spec(noise)
    if spec.kind == "epfl":
        return None
    ident, _ = _identity(spec)
    key = _cache_key(ident, nspec, train_size, val_size, seed)
    return _cache_file(Path(cache_dir) if cache_dir is not None else default_cache_dir(), spec,
                       nspec, train_size, val_size, seed, key)


def load_pairs(data: str = "photos", noise: str = "pixelate", train_size: int = 50_000,
               val_size: int = 1_000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
               progress: Callable[[str], None] | None = None) -> Pairs:
    """Noise2Noise training pairs and a validation set; see the module docstring.

    Raises DataError (one line saying what is wrong and how to fix it) for any bad argument or
    unusable input. Deterministic in (data, noise, train_size, val_size, seed); generated data is
    cached under ``cache_dir`` (default :func:`default_cache_dir`)."""
    spec = parse_data_spec(data)
    nspec = parse_noise_spec(noise)
    train_size = _check_int("train_size", train_size, 1)
    val_size = _check_int("val_size", val_size, 1)
    seed = _check_int("seed", seed, 0)
    if progress is not None and not callable(progress):
        raise DataError("progress must be a callable taking one string, or None")
    if spec.kind == "epfl":
        return _load_epfl(spec.path, train_size, val_size, progress)

    ident, loader = _identity(spec)
    key = _cache_key(ident, nspec, train_size, val_size, seed)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_file(cdir, spec, nspec, train_size, val_size, seed, key)
    description = f"{spec}, noise {nspec}, {train_size} train + {val_size} val, seed {seed}"
    if spec.kind == "folder" and loader[1]:
        if progress:
            progress(f"folder {str(spec.path)!r}: {loader[1]} non-image file(s) ignored")
    if path.is_file():
        obj = _read_cache(path, key, train_size, val_size)
        if obj is not None:
            if progress:
                progress(f"loaded {description} from cache {path}")
            return Pairs(*(obj[k] for k in _KEYS), description)
        if progress:
            progress(f"cache file {path} is unreadable or stale; regenerating")
    if progress:
        progress(f"generating {description}")
    t0 = time.monotonic()
    arrays = _generate(spec, loader, nspec, train_size, val_size, seed, progress)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in _KEYS}
    if progress:
        progress(f"generated in {time.monotonic() - t0:.1f} s")
    _write_cache(path, key, tensors, description, progress)
    return Pairs(*(tensors[k] for k in _KEYS), description)
