"""What every data source provides (:class:`Source`), and the seeding, noise and caching shared by
the sources whose pairs are generated from clean crops (:class:`GeneratedSource`)."""

from __future__ import annotations

import hashlib
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple

import numpy as np
import torch

from .cache import cache_file, cache_key, read_cache, write_cache
from .noise import noisy_copies
from .specs import SPLIT_KEYS, TRAIN_CLEAN, DataSpec, NoiseSpec, Pairs, Progress, Sizes

#: Makes one set of crops: (n, crop_rng, noise_rng, n_point, progress, label) ->
#: (clean (n, 3, 32, 32) uint8, n_point point-sampled noisy copies of the same shape).
CropMaker = Callable[[int, np.random.Generator, np.random.Generator, int, Progress, str],
                     tuple[np.ndarray, list[np.ndarray]]]


class Split(NamedTuple):
    """Where training, validation and test crops come from; no two share a pixel of an image,
    and for folders and course files no two share an image."""

    train: CropMaker
    val: CropMaker
    test: CropMaker


class Source(ABC):
    """A ``--data`` source: turns a noise, sizes and a seed into :class:`Pairs`."""

    kind: ClassVar[str]
    #: How the source splits training, validation and test, for reports.
    split_text: ClassVar[str]

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec

    @abstractmethod
    def cache_file(self, noise: NoiseSpec, sizes: Sizes, seed: int,
                   cache_dir: str | os.PathLike | None) -> Path | None:
        """Where :meth:`load` caches this set, or None when it caches nothing."""

    @abstractmethod
    def load(self, noise: NoiseSpec, sizes: Sizes, seed: int,
             cache_dir: str | os.PathLike | None, progress: Progress) -> Pairs:
        """The pairs, from the cache when a valid one is there."""


def _words(text: str) -> list[int]:
    d = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(d[i:i + 4], "little") for i in range(0, 16, 4)]


def _rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed] + _words("\x1f".join(parts))))


class GeneratedSource(Source):
    """A source whose pairs are cut from clean images or scenes, noised, and cached.

    Every set is a function of (source, noise, sizes, seed) through seeded numpy Generators, one
    stream per (source kind, split, purpose): crop positions do not depend on the noise kind, and
    no split depends on another's size."""

    @abstractmethod
    def identity(self) -> dict:
        """What the cache key hashes for this source (JSON-serialisable)."""

    @abstractmethod
    def open(self, progress: Progress) -> Split:
        """Read whatever the crops are cut from, once, split into training, validation and test."""

    def notes(self) -> list[str]:
        """Progress lines to show before loading (e.g. files a folder ignores)."""
        return []

    def cache_file(self, noise, sizes, seed, cache_dir) -> Path:
        key = cache_key(self.identity(), noise, sizes, seed)
        return cache_file(cache_dir, self.kind, noise, sizes, seed, key)

    def load(self, noise, sizes, seed, cache_dir, progress) -> Pairs:
        key = cache_key(self.identity(), noise, sizes, seed)
        path = cache_file(cache_dir, self.kind, noise, sizes, seed, key)
        description = f"{self.spec}, noise {noise}, {sizes}, seed {seed}"
        for note in self.notes():
            if progress:
                progress(note)
        if path.is_file():
            obj = read_cache(path, key, sizes)
            if obj is not None:
                if progress:
                    progress(f"loaded {description} from cache {path}")
                return Pairs(*(obj[k] for k in SPLIT_KEYS), description, train_clean=obj[TRAIN_CLEAN])
            if progress:
                progress(f"cache file {path} is unreadable or stale; regenerating")
        if progress:
            progress(f"generating {description}")
        t0 = time.monotonic()
        arrays = self.generate(noise, sizes, seed, progress)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in (*SPLIT_KEYS, TRAIN_CLEAN)}
        if progress:
            progress(f"generated in {time.monotonic() - t0:.1f} s")
        # blame a failed write on whoever called load_pairs: load <- load_pairs <- caller
        write_cache(path, key, tensors, description, progress, stacklevel=3)
        return Pairs(*(tensors[k] for k in SPLIT_KEYS), description, train_clean=tensors[TRAIN_CLEAN])

    def generate(self, noise: NoiseSpec, sizes: Sizes, seed: int,
                 progress: Progress) -> dict[str, np.ndarray]:
        """The six arrays (SPLIT_KEYS) and the clean training images (TRAIN_CLEAN), NCHW uint8,
        without the cache."""
        # pixelate noise is a point sample of the high-resolution source, so it is made with the
        # crops; every other noise is applied to the clean crops afterwards
        pix = noise.kind == "pixelate"
        split = self.open(progress)
        out = {}
        for part, make_crops in split._asdict().items():
            n = getattr(sizes, part)
            crop_rng = _rng(seed, self.kind, part, "crops")
            noise_rng = _rng(seed, self.kind, part, "noise", str(noise))
            label = f"{part} {self.kind}/{noise}"
            copies = 2 if part == "train" else 1
            clean, pts = make_crops(n, crop_rng, noise_rng, copies if pix else 0, progress, label)
            if not pix:
                pts = noisy_copies(clean, noise, noise_rng, copies)
            if part == "train":
                out["train_a"], out["train_b"] = pts
                out[TRAIN_CLEAN] = clean
            else:
                out[f"{part}_noisy"], out[f"{part}_clean"] = pts[0], clean
        return out
