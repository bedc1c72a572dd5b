"""Speed and noise-level benchmark of n2n_models.data.

    python bench/data_speed.py [--cache-dir DIR] [--folder DIR]

Uses a fresh temporary cache directory unless --cache-dir is given (so the generation time is
real and the user's cache is untouched). Prints:
  - generation seconds of the paper-size default set (photos + pixelate, 50,000 + 1,000),
  - seconds to load that set back from the cache,
  - synthetic images per second (train pairs + val images, pixelate, including noise),
  - noisy-input validation PSNR (course convention) for pixelate/photos and gaussian:25/photos,
  - optionally the same generation timing for a folder: source.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from n2n_models.data import load_pairs  # noqa: E402


def psnr(noisy: torch.Tensor, clean: torch.Tensor) -> float:
    x = noisy.double() / 255
    y = clean.double() / 255
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="cache directory (default: a fresh temp dir)")
    ap.add_argument("--folder", default=None, help="also time folder:DIR at paper size")
    args = ap.parse_args()
    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="n2n-bench-")
        cache = Path(tmp.name)
    else:
        cache = Path(args.cache_dir)
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, cache: {cache}")

    p, t_gen = timed(lambda: load_pairs("photos", "pixelate", 50_000, 1_000, seed=0, cache_dir=cache))
    print(f"photos+pixelate 50000+1000 generate: {t_gen:6.2f} s")
    p2, t_load = timed(lambda: load_pairs("photos", "pixelate", 50_000, 1_000, seed=0, cache_dir=cache))
    assert all(torch.equal(a, b) for a, b in zip(p, p2))
    print(f"photos+pixelate 50000+1000 cached load: {t_load:6.2f} s")
    print(f"noisy-input val PSNR pixelate/photos: {psnr(p.val_noisy, p.val_clean):6.2f} dB")

    g, t_g = timed(lambda: load_pairs("photos", "gaussian:25", 50_000, 1_000, seed=0, cache_dir=cache))
    print(f"photos+gaussian:25 50000+1000 generate: {t_g:6.2f} s")
    print(f"noisy-input val PSNR gaussian:25/photos: {psnr(g.val_noisy, g.val_clean):6.2f} dB")

    n_train, n_val = 10_000, 1_000
    s, t_s = timed(lambda: load_pairs("synthetic", "pixelate", n_train, n_val, seed=0, cache_dir=cache))
    print(f"synthetic+pixelate {n_train}+{n_val} generate: {t_s:6.2f} s = "
          f"{(n_train + n_val) / t_s:7.0f} images/s")
    print(f"noisy-input val PSNR pixelate/synthetic: {psnr(s.val_noisy, s.val_clean):6.2f} dB")

    if args.folder:
        f, t_f = timed(lambda: load_pairs(f"folder:{args.folder}", "pixelate", 50_000, 1_000,
                                          seed=0, cache_dir=cache))
        print(f"folder+pixelate 50000+1000 generate: {t_f:6.2f} s, "
              f"val PSNR {psnr(f.val_noisy, f.val_clean):.2f} dB")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
