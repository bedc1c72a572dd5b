"""Noise2Noise training pairs, validation and test sets (``load_pairs``) from the ``--data`` sources
and ``--noise`` models; plain numpy / torch / PIL, nothing downloaded, no ray."""

from __future__ import annotations

import os
from pathlib import Path

from .cache import FORMAT_VERSION, default_cache_dir
from .crops import IMAGE_FACTORS, area_downsample, point_sample
from .images import read_image
from .noise import apply_noise
from .sources import folder_split, photo_files, photo_regions, source_for, split_text
from .specs import (SPLIT_KEYS, TRAIN_CLEAN, DataError, DataSpec, NoiseSpec, Pairs, Progress, Sizes, check_int,
                    parse_data_spec, parse_noise_spec)
from .synthetic import SYNTHETIC_FACTORS, render_synthetic

__all__ = [
    "DataError",
    "Pairs",
    "DataSpec",
    "NoiseSpec",
    "Sizes",
    "SPLIT_KEYS",
    "TRAIN_CLEAN",
    "photo_regions",
    "split_text",
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
]


def load_pairs(data: str = "photos", noise: str = "pixelate", train_size: int = 50_000,
               val_size: int = 1_000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
               progress: Progress = None, test_size: int | None = None) -> Pairs:
    """Noise2Noise training pairs, a validation set and a test set.

    Returns :class:`Pairs`: two independently noisy copies of each training image (``train_a``,
    ``train_b``), its clean image where the source has one (``train_clean``, None for ``epfl``) and one noisy copy of each validation and test image with its clean reference
    (``val_noisy``, ``val_clean``, ``test_noisy``, ``test_clean``; ``test_size`` defaults to
    ``val_size``), contiguous CPU ``torch.uint8`` tensors of shape (N, 3, 32, 32). The three
    splits never share a pixel of an image; for folders and course files not even an image.
    ``data`` is ``photos``, ``synthetic``, ``folder:DIR`` or ``epfl:DIR`` (see the classes in
    :mod:`.sources` and :mod:`.course`); ``noise`` is ``pixelate`` (:func:`point_sample`) or one
    of the models in :mod:`.noise`.

    Raises DataError (one line saying what is wrong and how to fix it) for any bad argument or
    unusable input. Deterministic in (data, noise, the sizes, seed); generated data is
    cached under ``cache_dir`` (default :func:`default_cache_dir`) in a file keyed by a hash of
    all of them (see :mod:`.cache`)."""
    spec = parse_data_spec(data)
    nspec = parse_noise_spec(noise)
    sizes = _sizes(train_size, val_size, test_size)
    seed = check_int("seed", seed, 0)
    if progress is not None and not callable(progress):
        raise DataError("progress must be a callable taking one string, or None")
    return source_for(spec).load(nspec, sizes, seed, cache_dir, progress)


def _sizes(train_size, val_size, test_size) -> Sizes:
    val_size = check_int("val_size", val_size, 1)
    return Sizes(check_int("train_size", train_size, 1), val_size,
                 val_size if test_size is None else check_int("test_size", test_size, 1))


def cache_path(data: str = "photos", noise: str = "pixelate", train_size: int = 50_000,
               val_size: int = 1_000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
               test_size: int | None = None) -> Path | None:
    """Where ``load_pairs`` with these arguments caches its data (None for ``epfl``)."""
    return source_for(parse_data_spec(data)).cache_file(
        parse_noise_spec(noise), _sizes(train_size, val_size, test_size), seed, cache_dir)
