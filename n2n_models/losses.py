"""Training losses named by the report and the Noise2Noise paper: l2, l1, hdr, annealed l0.

Each loss maps (prediction, target, progress) to the per-sample loss, shape (N,), so that fused
seed replicas and plain training reduce it the same way. `progress` is the fraction of training
done, in [0, 1]; only the annealed L0 loss uses it. Only tensor methods are used, so the names
import without torch (the command line checks a loss name before it loads torch).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOSSES = ("l2", "l1", "hdr", "l0")


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """The mean over every dimension but the first, in memory order (flatten(1) would copy a
    channels-last tensor first)."""
    return x.mean(tuple(range(1, x.dim()))) if x.dim() > 1 else x


def l2(pred: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    return _per_sample((pred - target) ** 2)


def l1(pred: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    return _per_sample((pred - target).abs())


def hdr(pred: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """The Noise2Noise paper's HDR loss (f - y)^2 / (f + 0.01)^2, no gradient through the
    denominator. f is clamped at 0 there: the paper's images are non-negative, but a network's
    output can dip below -0.01 and make the denominator vanish."""
    return _per_sample((pred - target) ** 2 / (pred.detach().clamp_min(0) + 0.01) ** 2)


def l0_gamma(progress: float) -> float:
    """Annealing schedule of the L0 loss: gamma goes linearly from 2 to 0 over training."""
    return 2.0 * (1.0 - min(max(progress, 0.0), 1.0))


def l0(pred: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """Annealed L0: (|f - y| + 1e-8) ** gamma with gamma = l0_gamma(progress)."""
    return _per_sample(((pred - target).abs() + 1e-8) ** l0_gamma(progress))


PROGRESS_LOSSES = ("l0",)  # the losses whose value depends on `progress`, not only on (pred, target)


def get_loss(name: str):
    """The loss function called `name` (one of LOSSES)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return globals()[name]
