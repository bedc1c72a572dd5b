"""The on-disk cache of generated sets: one file per (source identity, noise, sizes, seed), named
by a hash of all of them, written atomically and regenerated when unreadable."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .crops import IMAGE_FACTORS
from .specs import SIZE, SPLIT_KEYS, TRAIN_CLEAN, NoiseSpec, Progress, Sizes, one_line
from .synthetic import SYNTHETIC_FACTORS

#: Bump whenever generated data would change for the same arguments (invalidates caches).
FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/n2n-search`` or ``~/.cache/n2n-search``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".cache"
    return root / "n2n-search"


def cache_key(ident: dict, noise: NoiseSpec, sizes: Sizes, seed: int) -> str:
    """Hash of everything the set depends on; ``ident`` is the source's identity (for a folder,
    its file names, sizes and mtimes)."""
    blob = json.dumps({"format": FORMAT_VERSION, "source": ident, "noise": str(noise),
                       "train_size": sizes.train, "val_size": sizes.val, "test_size": sizes.test, "seed": seed,
                       "image_factors": IMAGE_FACTORS, "synthetic_factors": SYNTHETIC_FACTORS},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_file(cache_dir: str | os.PathLike | None, kind: str, noise: NoiseSpec, sizes: Sizes,
               seed: int, key: str) -> Path:
    """The file for ``key`` under ``cache_dir`` (default :func:`default_cache_dir`)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    slug = str(noise).replace(":", "-")
    return folder / f"{kind}_{slug}_{sizes.train}+{sizes.val}+{sizes.test}_seed{seed}_{key[:16]}.pt"


def read_cache(path: Path, key: str, sizes: Sizes) -> dict | None:
    """The cached tensors, or None when the file is unreadable, stale or of the wrong shape (or
    lacks the clean training images, which files written before they were kept do)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("key") != key:
            return None
        for name in (*SPLIT_KEYS, TRAIN_CLEAN):
            t = obj[name]
            n = sizes.of(name)
            if (not isinstance(t, torch.Tensor) or t.dtype != torch.uint8
                    or tuple(t.shape) != (n, 3, SIZE, SIZE) or not t.is_contiguous()):
                return None
        return obj
    except Exception:
        return None


def write_cache(path: Path, key: str, tensors: dict[str, torch.Tensor], description: str,
                progress: Progress, stacklevel: int = 1) -> None:
    """Write through a temporary file and ``os.replace``, so a killed writer leaves no partial
    file under the final name. A cache that cannot be written is a warning, not an error, blamed
    on the frame ``stacklevel`` up from the caller (1: the caller itself)."""
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
        warnings.warn(f"could not write data cache {path}: {one_line(e)}; continuing without it",
                      stacklevel=stacklevel + 1)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
