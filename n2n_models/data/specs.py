"""The ``--data`` and ``--noise`` strings, parsed into DataSpec / NoiseSpec, the Pairs result and
DataError, the one-line error every bad argument or unusable input raises."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

#: Side of every output image (the course's 32x32 crops).
SIZE = 32

Progress = Callable[[str], None] | None


class DataError(ValueError):
    """Any bad data/noise argument or unusable input file. The message says what and how to fix."""


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True, eq=False)
class Pairs:
    """Noise2Noise data in three splits: training pairs, a validation set (what every decision of
    a search reads) and a test set (reported only, never read by a decision); unpacks as
    ``train_a, train_b, val_noisy, val_clean, test_noisy, test_clean`` (``SPLIT_KEYS``)."""

    train_a: torch.Tensor
    train_b: torch.Tensor
    val_noisy: torch.Tensor
    val_clean: torch.Tensor
    test_noisy: torch.Tensor
    test_clean: torch.Tensor
    description: str = ""
    #: The clean image of each training pair (Noise2Clean's target, ``--target clean``); None where
    #: the source has none (``epfl``: its training file holds noisy pairs only).
    train_clean: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.arrays().values())

    def __len__(self) -> int:
        return len(SPLIT_KEYS)

    def arrays(self) -> dict[str, torch.Tensor]:
        """The six tensors by name, in ``SPLIT_KEYS`` order."""
        return {k: getattr(self, k) for k in SPLIT_KEYS}


class Sizes(NamedTuple):
    """How many images each split holds: training pairs, validation and test images."""

    train: int
    val: int
    test: int

    def of(self, key: str) -> int:
        """The size of the split that the tensor named ``key`` (one of SPLIT_KEYS) belongs to."""
        return getattr(self, key.split("_")[0])

    def __str__(self) -> str:
        return f"{self.train} train + {self.val} val + {self.test} test"


#: The tensors of a data set, in the order Pairs unpacks them: two noisy copies of each training
#: image, and a noisy copy with its clean reference for each validation and each test image.
SPLIT_KEYS = ("train_a", "train_b", "val_noisy", "val_clean", "test_noisy", "test_clean")
#: The clean training images, which sources made from clean images also keep (Pairs.train_clean).
TRAIN_CLEAN = "train_clean"


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


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)
