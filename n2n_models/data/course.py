"""The ``epfl:DIR`` source: the EE-559 course's ready-made pairs, read from its two files with
``torch.load(weights_only=True)`` only."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from .base import Source
from .specs import SIZE, DataError, Pairs, Progress, Sizes, one_line


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
        why = one_line(e, 200).split(". ")[0]
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


class CourseFiles(Source):
    """``epfl:DIR``: ``DIR/train_data.pkl`` = ``(noisy_a, noisy_b)`` and ``DIR/val_data.pkl`` =
    ``(noisy, clean)``. The training file holds noisy pairs only, so the validation file is cut in
    two halves of distinct images: validation comes from the first half, test from the second;
    the first ``sizes.train`` / ``sizes.val`` / ``sizes.test`` images of each are used. The noise
    is in the files, so the ``noise`` argument is validated but otherwise ignored, and nothing is
    generated, so nothing is cached."""

    kind = "epfl"
    split_text = ("the course's validation file is cut in two halves: the first validates, the second "
                  "tests (its training file holds noisy pairs only)")

    def cache_file(self, noise, sizes, seed, cache_dir) -> None:
        return None

    def load(self, noise, sizes: Sizes, seed, cache_dir, progress: Progress) -> Pairs:
        root = self.spec.path
        if progress:
            progress(f"loading course data from {root}")
        a, b = _load_epfl_file(root / "train_data.pkl", "noisy_a, noisy_b")
        vn, vc = _load_epfl_file(root / "val_data.pkl", "noisy, clean")
        if sizes.train > a.shape[0]:
            raise DataError(f"train_size {sizes.train} is larger than the {a.shape[0]} pairs in "
                            f"{root / 'train_data.pkl'}; ask for at most {a.shape[0]}")
        half = vn.shape[0] // 2
        for name, n in (("val_size", sizes.val), ("test_size", sizes.test)):
            if n > half:
                raise DataError(f"{name} {n} is larger than half of the {vn.shape[0]} images in "
                                f"{root / 'val_data.pkl'} (one half validates, the other tests); "
                                f"ask for at most {half}")
        return Pairs(_take(a, sizes.train), _take(b, sizes.train), _take(vn, sizes.val),
                     _take(vc, sizes.val), _take(vn[half:], sizes.test), _take(vc[half:], sizes.test),
                     f"epfl:{root} (noise from the files)")
