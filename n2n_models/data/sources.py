"""The generated ``--data`` sources (photos, synthetic, folder:DIR), each listing, splitting and
reading its own images, and :func:`source_for`, which picks the source object for a DataSpec."""

from __future__ import annotations

import os
import warnings
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import GeneratedSource, Source, Split
from .course import CourseFiles
from .crops import MIN_SIDE, crops_from_images
from .images import ensure_min_size, read_image
from .specs import DataError, DataSpec, Progress, one_line
from .synthetic import LEAVES, RADII, crops_from_synthetic

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
#: Each photo is halved across its long side: the first half (left, or top for a portrait) gives
#: training crops; the second is held out and halved again, across its own long side, into a
#: validation and a test quarter. So validation and test each span every scene, and share no pixel
#: with training or with each other (the split's noise levels: docs/search-quality.md).
#: Image file suffixes read by ``folder:`` (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _image_crops(train: list[np.ndarray], val: list[np.ndarray], test: list[np.ndarray]) -> Split:
    return Split(partial(crops_from_images, train), partial(crops_from_images, val),
                 partial(crops_from_images, test))


def _halves(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    return (img[:, : w // 2], img[:, w // 2:]) if w >= h else (img[: h // 2], img[h // 2:])


def photo_regions(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training half, validation quarter, test quarter) of one photo, each upscaled to the
    smallest crop if it falls short of it."""
    train, held_out = _halves(img)
    return tuple(ensure_min_size(np.ascontiguousarray(r), MIN_SIDE) for r in (train, *_halves(held_out)))


class Photos(GeneratedSource):
    """``photos`` (default): the colour photographs shipped on disk by scikit-image (its ``data``
    folder) and matplotlib (``sample_data/grace_hopper.jpg``), read with PIL. Every photo gives
    training crops from one half, validation and test crops from a quarter each
    (:func:`photo_regions`)."""

    kind = "photos"
    split_text = ("every photo gives training crops from one half (left, or top), validation crops from "
                  "one quarter and test crops from the other quarter of the second half")

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.files = self.list_files()
        if not self.files:
            raise DataError("the photos source needs the sample photos of scikit-image and matplotlib "
                            f"(missing: {', '.join(SKIMAGE_PHOTOS + MATPLOTLIB_PHOTOS)}); reinstall them "
                            "or use --data synthetic")

    @staticmethod
    def list_files() -> list[Path]:
        """The sample photos installed here, sorted by name."""
        candidates: list[Path] = []
        # imported here, not at the top: both are optional, and matplotlib is slow to import
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
        return sorted((p for p in candidates if p.is_file()), key=lambda p: p.name)

    @staticmethod
    def read(path: Path) -> np.ndarray:
        try:
            return ensure_min_size(read_image(path), MIN_SIDE)
        except Exception as e:
            raise DataError(f"sample photo {path} is unreadable ({one_line(e, 100)}); reinstall "
                            "scikit-image/matplotlib or use --data synthetic") from None

    def identity(self) -> dict:
        return {"kind": "photos", "split": "train half, val quarter, test quarter",
                "files": [[p.name, p.stat().st_size] for p in self.files]}

    def open(self, progress: Progress) -> Split:
        regions = [photo_regions(self.read(p)) for p in self.files]
        return _image_crops(*(list(split) for split in zip(*regions)))


def photo_files() -> list[Path]:
    """The ``photos`` source's files, sorted by name."""
    return Photos.list_files()


def folder_split(files: Sequence) -> tuple[list, list, list]:
    """Split a sorted list into (train, val, test) by item: of every ten, the first (index 0, 10,
    ...) is validation, the sixth (index 5, 15, ...) test, the other eight training."""
    files = list(files)
    return ([f for i, f in enumerate(files) if i % 10 not in (0, 5)],
            [f for i, f in enumerate(files) if i % 10 == 0], [f for i, f in enumerate(files) if i % 10 == 5])


class Folder(GeneratedSource):
    """``folder:DIR``: every PNG/JPEG/TIFF/BMP file under DIR, searched recursively (names starting
    with "." are ignored). The readable images, sorted by relative path, are split by
    :func:`folder_split`. Grayscale, RGBA/LA/palette (alpha composited over black), 16-bit and
    float images become 8-bit RGB; images too small for the smallest crop are upscaled. Other
    files and unreadable images are skipped and counted (``warnings.warn`` and ``progress``).
    All readable images are decoded into memory while a set is generated."""

    kind = "folder"
    split_text = ("by file: of every ten images (sorted by path) the first validates, the sixth tests "
                  "and the other eight train")

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec)
        self.root: Path = spec.path
        self.listing, self.files, self.others = self.list_files()

    def list_files(self) -> tuple[list, list[Path], int]:
        """[relative path, size, mtime] of each image file (the cache identity), the files, and
        the count of files skipped as non-images or unreadable to stat."""
        files, others = self._scan()
        if not files:
            raise DataError(f"folder {str(self.root)!r} contains no images "
                            f"({', '.join(IMAGE_SUFFIXES)}); point folder: at a directory of photos")
        listing, kept = [], []
        for p in files:
            try:
                st = p.stat()
            except OSError:  # vanished or unreadable: skipped like any unreadable image
                others += 1
                continue
            listing.append([p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns])
            kept.append(p)
        return listing, kept, others

    def _scan(self) -> tuple[list[Path], int]:
        images: list[Path] = []
        others = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(p)
                else:
                    others += 1
        images.sort(key=lambda p: p.relative_to(self.root).as_posix())
        return images, others

    split = staticmethod(folder_split)

    @staticmethod
    def read(path: Path) -> np.ndarray | None:
        """The image upscaled to the smallest crop, or None when it cannot be used."""
        try:
            img = read_image(path)
        except Exception:  # PIL raises many types for corrupt / unsupported files
            return None
        if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            return None
        return ensure_min_size(img, MIN_SIDE)

    def identity(self) -> dict:
        return {"kind": "folder", "path": str(self.root), "files": self.listing}

    def notes(self) -> list[str]:
        if not self.others:
            return []
        return [f"folder {str(self.root)!r}: {self.others} non-image file(s) ignored"]

    def open(self, progress: Progress) -> Split:
        # split the readable images only, so an unreadable file never leaves validation short
        good = [img for img in map(self.read, self.files) if img is not None]
        bad = len(self.files) - len(good)
        if self.others or bad:
            msg = (f"folder {str(self.root)!r}: skipped {self.others} non-image file(s) and {bad} "
                   f"unreadable image file(s); using {len(good)} image(s)")
            # blame the caller of load_pairs: open <- generate <- load <- load_pairs <- caller
            warnings.warn(msg, stacklevel=5)
            if progress:
                progress(msg)
        if len(good) < 6:
            raise DataError(f"folder {str(self.root)!r} has {len(good)} readable image(s); at least "
                            "6 are needed (of every ten, one validates, one tests, the others train)")
        return _image_crops(*self.split(good))


class Synthetic(GeneratedSource):
    """``synthetic``: procedural dead-leaves scenes, no files; validation and test scenes come
    from seed streams of their own, not from separate files."""

    kind = "synthetic"
    split_text = "training, validation and test scenes come from three separate random streams"

    def identity(self) -> dict:
        return {"kind": "synthetic", "leaves": LEAVES, "radii": list(RADII)}

    def open(self, progress: Progress) -> Split:
        return Split(crops_from_synthetic, crops_from_synthetic, crops_from_synthetic)


SOURCES: dict[str, type[Source]] = {
    "photos": Photos, "synthetic": Synthetic, "folder": Folder, "epfl": CourseFiles}


def split_text(data: str | DataSpec) -> str:
    """How the ``--data`` source splits training, validation and test (one sentence part)."""
    from .specs import parse_data_spec

    return SOURCES[parse_data_spec(data).kind].split_text


def source_for(spec: DataSpec) -> Source:
    """The source object for a parsed ``--data`` (lists its files; reads no image)."""
    return SOURCES[spec.kind](spec)
