"""The scheduler of a search (ASHA, FIFO, or Population Based Training), and ASHA's rung records
kept with the experiment so that a resumed search stops the trials the uninterrupted one would have
stopped.

Tune saves the searcher's state and the callbacks' with the experiment, but not the scheduler's:
`Tuner.restore` brings back the scheduler as it was pickled when the Tuner was built, with empty
rungs, and a resumed ASHA would then let every trial pass the rungs it reaches first. KeepScheduler
is a callback that carries the scheduler's own state (TrialScheduler.save / restore) in the
callbacks' saved state; tests/test_search_quality.py checks the outcome end to end."""
from __future__ import annotations

import os
import tempfile

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

#: Population Based Training: how often (a share of the search's time, or of its epochs) the worse
#: half of the population takes the better half's weights and configuration and perturbs its
#: training knobs.
PBT_ROUNDS = 8


def make_scheduler(kind: str, epochs: int, seconds: float | None = None, mutations: dict | None = None,
                   seed: int = 0) -> TrialScheduler:
    """ASHA, FIFO or Population Based Training (PBT, perturbing `mutations`). ASHA counts epochs,
    or, when the search has `seconds` (its share of --time-budget), seconds of training: an epoch costs 2-4 times as much for some configurations
    (dropout, batch 16, width 128 on a CPU) as for others, and under a time budget configurations
    are compared at equal time, not at equal epochs (docs/search-quality.md)."""
    if kind == "pbt":
        import random

        random.seed(seed)  # PBT draws its perturbations from Python's random module
        return PopulationBasedTraining(
            time_attr="time_total_s" if seconds is not None else "training_iteration",
            perturbation_interval=seconds / PBT_ROUNDS if seconds is not None else max(1, epochs // PBT_ROUNDS),
            hyperparam_mutations=mutations, quantile_fraction=0.5, resample_probability=0.25,
            custom_explore_fn=KeepInRange(mutations))
    if kind == "asha" and seconds is not None:
        # rungs at 1/16, 1/8, 1/4, ... of the search's time; a trial still ends at its epochs
        return ASHAScheduler(time_attr="time_total_s", max_t=seconds, grace_period=seconds / 16,
                             reduction_factor=2)
    if kind == "asha":
        # first rung at an eighth of the epochs, the better half kept at each rung; what that
        # saves against the full grid: bench/search_efficiency.py, docs/benchmarks.md
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                             grace_period=max(1, epochs // 8), reduction_factor=2)
    return FIFOScheduler()


class KeepInRange:
    """PBT multiplies a number by 0.8 or 1.2 without looking at its range: bring each perturbed
    value back into its distribution's bounds (a randint's upper end excluded)."""

    def __init__(self, mutations: dict):
        self.bounds = {k: (v.lower, v.upper - (1 if isinstance(v, tune.search.sample.Integer) else 0))
                       for k, v in mutations.items() if isinstance(v, (tune.search.sample.Float, tune.search.sample.Integer))}

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.bounds.items():
            config[key] = type(config[key])(min(max(config[key], low), high))
        return config


class KeepScheduler(tune.Callback):
    """Saves `scheduler`'s state with the experiment and puts it back when the experiment is
    restored. It holds the same scheduler object that Tune runs: both are pickled together in the
    Tuner's state, so the restored callback refers to the restored scheduler."""

    def __init__(self, scheduler: TrialScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "scheduler.pkl")
            self.scheduler.save(path)
            with open(path, "rb") as f:
                return {"scheduler": f.read()}

    def set_state(self, state: dict):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "scheduler.pkl")
            with open(path, "wb") as f:
                f.write(state["scheduler"])
            self.scheduler.restore(path)


def scheduler_callbacks(scheduler: TrialScheduler) -> list:
    """The callbacks a search needs for `scheduler` to survive --resume."""
    return [KeepScheduler(scheduler)] if isinstance(scheduler, ASHAScheduler) else []
