"""Searchers: Optuna TPE (seeded, told about diverged trials, never retraining a configuration it
already tried), random sampling, the report's grids."""
from __future__ import annotations

import optuna
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from .spaces import space_of
from .tune_internals import optuna_trials


class DivergenceAwareOptunaSearch(OptunaSearch):
    """Tells Optuna that a diverged trial FAILED. Plain OptunaSearch would tell it the NaN value,
    which Optuna refuses, leaving the trial RUNNING in the study and TPE none the wiser."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        super().on_trial_complete(trial_id, *_as_told(result, error))


def _as_told(result, error) -> tuple:
    """What Optuna is told of a trial's end: a diverged trial as a failure without a value."""
    return (None, True) if result and result.get("diverged") else (result, error)


class RepeatAwareOptunaSearch(DivergenceAwareOptunaSearch):
    """TPE on a discrete space proposes its favourite configuration again and again; with the same
    seeds a repeat would retrain identical numbers. Here a repeat is not trained: Optuna is told the
    earlier trial's result (at once, or when that trial ends) and asked for another configuration.
    Every proposal counts towards `proposals` (the search's --num-samples); when they are spent the
    searcher reports FINISHED, so a search may end with fewer trials than samples.

    The state lives in instance attributes, so OptunaSearch's save/restore (a pickle of __dict__)
    carries it through --resume (search/tune_internals.py)."""

    def __init__(self, *args, proposals: int, log=print, **kwargs):
        super().__init__(*args, **kwargs)
        self._proposals_left = proposals
        self._first_trial = {}   # configuration key -> trial id that trains it
        self._outcome = {}       # trial id -> (result, error) once it ended
        self._waiting = {}       # trial id -> Optuna stand-ins to tell its outcome when it ends
        self._repeats = 0
        self._log = log

    @staticmethod
    def _key(params: dict):
        return tuple(sorted(params.items()))

    def suggest(self, trial_id):
        while self._proposals_left > 0:
            config = super().suggest(trial_id)
            if config is None:
                return None
            self._proposals_left -= 1
            key = self._key(optuna_trials(self)[trial_id].params)
            first = self._first_trial.setdefault(key, trial_id)
            if first == trial_id:
                return config
            # a repeat: move Optuna's trial under a stand-in id and answer it with `first`'s outcome
            self._repeats += 1
            stand_in = f"{trial_id}~repeat{self._repeats}"
            optuna_trials(self)[stand_in] = optuna_trials(self).pop(trial_id)
            self._log(f"proposal repeats trial {first} ({_describe(config)}): not retrained, "
                      f"its result is reused ({self._repeats} repeat{'s' if self._repeats > 1 else ''} so far)")
            if first in self._outcome:
                super().on_trial_complete(stand_in, *self._outcome[first])
            else:
                self._waiting.setdefault(first, []).append(stand_in)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self._outcome[trial_id] = _as_told(result, error)
        for told in (trial_id, *self._waiting.pop(trial_id, [])):
            super().on_trial_complete(told, *self._outcome[trial_id])


def _describe(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()
                     if k not in ("epochs", "seeds", "fused"))


def make_searcher(experiment, slots: int, log=print):
    space = space_of(experiment)
    if experiment.searcher == "optuna":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # TuneConfig.max_concurrent_trials limits how many it proposes at once
        return RepeatAwareOptunaSearch(seed=experiment.search_seed, proposals=experiment.num_samples, log=log)
    if experiment.searcher == "grid":
        return BasicVariantGenerator(points_to_evaluate=[dict(c) for c in space.cells],
                                     max_concurrent=slots, random_state=experiment.search_seed)
    return BasicVariantGenerator(max_concurrent=slots, random_state=experiment.search_seed)
