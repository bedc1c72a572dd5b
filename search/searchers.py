"""Searchers: Optuna TPE (seeded, told about diverged trials), random sampling, the report's grids."""
from __future__ import annotations

import optuna
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from .spaces import SPACES


class DivergenceAwareOptunaSearch(OptunaSearch):
    """Tells Optuna that a diverged trial FAILED. Plain OptunaSearch would tell it the NaN value,
    which Optuna refuses, leaving the trial RUNNING in the study and TPE none the wiser."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and result.get("diverged"):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(experiment, slots: int):
    space = SPACES[experiment.space]
    if experiment.searcher == "optuna":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # TuneConfig.max_concurrent_trials limits how many it proposes at once
        return DivergenceAwareOptunaSearch(seed=experiment.search_seed)
    if experiment.searcher == "grid":
        return BasicVariantGenerator(points_to_evaluate=[dict(c) for c in space.cells],
                                     max_concurrent=slots, random_state=experiment.search_seed)
    return BasicVariantGenerator(max_concurrent=slots, random_state=experiment.search_seed)
