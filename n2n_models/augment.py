"""Flips, rotations and swaps of the training pairs (TrainSpec.augment).

In each epoch every pair is turned by one of the eight symmetries of the square (four rotations,
each with or without a mirror), the same one on both of its images, and, with Noise2Noise
targets, its two noisy copies trade places with probability 1/2: either copy is as good an input,
or target, as the other. A network that overfits its pairs (UNet on 20,000 CBSD432 crops, after
about 13 epochs: docs/search-quality.md) sees sixteen versions of each. What each pair gets is
drawn from the epoch alone, not from a replica's seed, so replicas trained together or alone see
the same data, and a run resumed from a checkpoint the same as an uninterrupted one.
"""
from __future__ import annotations

import torch

SYMMETRIES = 8  # of the square: codes 0-3 rotate by code x 90 degrees, 4-7 also mirror left to right
_SEED = 0x5EED_A06


def pair_transforms(epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetry code (0-7) of each of n pairs in `epoch`, and whether its copies swap."""
    g = torch.Generator().manual_seed(_SEED * 1_000_003 + epoch)
    return torch.randint(0, SYMMETRIES, (n,), generator=g), torch.rand(n, generator=g) < 0.5


def symmetry(x: torch.Tensor, code: int) -> torch.Tensor:
    """Images (N, C, H, W) turned by symmetry `code` (pair_transforms' numbering)."""
    x = torch.rot90(x, code % 4, (2, 3))
    return x.flip(3) if code >= 4 else x


def augment_pairs(a: torch.Tensor, b: torch.Tensor, epoch: int, swap: bool,
                  out_a: torch.Tensor, out_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Epoch `epoch`'s version of the pairs (a[i], b[i]), written into out_a and out_b (tensors
    like a and b, kept from epoch to epoch: a captured CUDA graph reads them by address); with
    `swap` (Noise2Noise targets), half of the pairs trade input and target. Returns (out_a, out_b)."""
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"augment turns images by 90 degrees and needs square ones, got {tuple(a.shape[-2:])}")
    codes, swaps = pair_transforms(epoch, len(a))
    if not swap:
        swaps = torch.zeros_like(swaps)
    for code in range(SYMMETRIES):
        for swapped in (False, True):
            ids = ((codes == code) & (swaps == swapped)).nonzero().squeeze(1).to(a.device)
            if len(ids):
                source_a, source_b = (b, a) if swapped else (a, b)
                out_a[ids] = symmetry(source_a[ids], code)
                out_b[ids] = symmetry(source_b[ids], code)
    return out_a, out_b
