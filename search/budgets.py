"""Budgets: how much data, how many epochs, seeds and samples a search spends."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Budget:
    train_size: int
    val_size: int
    epochs: int
    seeds: int
    num_samples: int
    description: str
    refit_seeds: int = 2  # replicas of the best configuration trained again after a search


BUDGETS = {
    "smoke": Budget(256, 64, 2, 1, 4, "seconds: tiny data, for tests (no refit)", refit_seeds=0),
    "quick": Budget(2_500, 500, 6, 1, 16, "a few minutes on a 2-core laptop (the default)"),
    "paper": Budget(50_000, 1_000, 50, 5, 64, "the report's setting: 50,000 pairs, 50 epochs, batch 32, 5 seeds",
                    refit_seeds=5),
}
