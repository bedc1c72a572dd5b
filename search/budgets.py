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
    minutes: float | None = None  # a search's --time-budget when none is given (the refit included)
    grid_train_size: int | None = None  # grids and --configs, when not train_size (they have no time budget)
    grid_epochs: int | None = None


BUDGETS = {
    "smoke": Budget(256, 64, 2, 1, 4, "seconds: tiny data, for tests (no refit)", refit_seeds=0),
    # sized by what it buys (docs/search-quality.md): TNet reaches its plateau on this data in about
    # 4 minutes of one core; Population Based Training trains its members for 4.5 minutes and its
    # best member alone for the rest (search.finish); with
    # TPE + ASHA the search takes 40% (trials of at most 4 epochs, as many as fit) and the refit
    # trains the winner for the rest
    # grids keep the smaller data and longer epochs they had: the report's tables at 5 seeds, UNet
    # among them, are already the longest quick runs
    "quick": Budget(10_000, 500, 4, 1, 64, "searches: 9 minutes on a 2-core laptop (Population Based Training; "
                    "with --scheduler asha, TPE + ASHA and a refit); grids: 2,500 pairs, 6 epochs (the default)",
                    minutes=9.0, grid_train_size=2_500, grid_epochs=6),
    "paper": Budget(50_000, 1_000, 50, 5, 64, "the report's setting: 50,000 pairs, 50 epochs, batch 32, 5 seeds",
                    refit_seeds=5),
}
