"""The refit: after a search, its best configuration is trained again at the full budget with fresh
seeds, in the experiment's refit folder (an experiment folder of its own, analysis.experiment_file).
Its replicas give the model a user takes home (the best by validation, exported by the report) and
a test PSNR, mean ± std over replicas, that no choice of the search was biased towards."""
from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from analysis.experiment_file import REFIT_FOLDER
from analysis.tables import mean_pm_std
from n2n_models.classical import yardstick_line
from n2n_models.config import HPARAM_KEYS, OPEN_EPOCHS, check_config

from .board import TrialBoard
from .experiment import Experiment
from .experiment_folder import experiment_exists
from .fitting import fit, run_config, TrialDirnames, trial_name
from .progress import log
from .spaces import space_of
from .summary import ended, print_next_steps, trial_rows




def refit_epochs(experiment: Experiment) -> int:
    """The search's epochs, or, under a time budget, as many as the time left allows: the search's
    trials are cut short to compare many configurations, the winner is trained to its plateau."""
    return experiment.epochs if experiment.time_budget_min is None else OPEN_EPOCHS


def refit_experiment(experiment: Experiment, config: dict) -> Experiment:
    """The refit of `config` (a trial's configuration) as an experiment of its own: one
    configuration, `experiment.refit_seeds` replicas, the search's data, refit_epochs."""
    hparams = {k: config[k] for k in HPARAM_KEYS if k in config}
    hparams["label"] = "refit"
    return dataclasses.replace(
        experiment, space="refit", searcher="grid", scheduler="fifo", num_samples=experiment.refit_seeds,
        seeds=1, epochs=refit_epochs(experiment), storage=experiment.path, name=REFIT_FOLDER, refit_seeds=0,
        configs=[check_config(hparams, "the refit's configuration")])


def refit_seeds(experiment: Experiment) -> list[int]:
    """Fresh seeds: the search's trials used 0 .. seeds-1, so its best trial is not retrained."""
    return list(range(experiment.seeds, experiment.seeds + experiment.refit_seeds))


def replica_stop(seconds: float | None, replicas: int, slots: int) -> dict | None:
    """Under a time budget, each replica's share of it: with fewer trial slots than replicas they
    train in waves, and a replica open-ended in epochs would otherwise leave none to the next."""
    if seconds is None:
        return None
    return {"time_total_s": max(seconds, 0) / math.ceil(replicas / max(slots, 1))}


def run_refit(experiment: Experiment, config: dict, trainable, slots: int, yardsticks: dict | None = None,
              seconds: float | None = None) -> int:
    """Train the refit (or continue an interrupted one) within `seconds` (None: no limit) and
    print its summary; returns the exit status (130 when interrupted)."""
    refit = refit_experiment(experiment, config)
    seeds = refit_seeds(experiment)
    length = f"{refit.epochs} epochs" if seconds is None else f"until the time budget ends ({max(seconds, 0) / 60:.1f} min)"
    log(f"refit: the best configuration again with {len(seeds)} fresh seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}), {length}, in {refit.path}")
    if experiment_exists(refit.path):
        tuner = tune.Tuner.restore(refit.path, trainable=trainable, resume_errored=True)
    else:
        refit.save()
        space = {**refit.configs[0], **experiment.trial_constants(), "epochs": refit.epochs, "seeds": 1,
                 "seed": tune.grid_search(seeds)}
        tuner = folder_tuner(trainable, space, experiment, len(seeds), slots, seconds,
                             stop=replica_stop(seconds, len(seeds), slots))
    return fit_folder(tuner, experiment, refit, print_refit, yardsticks)


def folder_tuner(trainable, space: dict, experiment: Experiment, trials: int, at_once: int, seconds: float | None,
                 stop: dict | None) -> tune.Tuner:
    """The Tuner of what trains in the experiment's refit folder after its search (the refit's
    replicas, or search.finish): `space`'s trials, `at_once` at a time, within `seconds`."""
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(max_concurrent=at_once), num_samples=1, reuse_actors=True,
            trial_name_creator=trial_name, trial_dirname_creator=TrialDirnames(f"{experiment.path}/{REFIT_FOLDER}"),
            time_budget_s=seconds),
        run_config=run_config(REFIT_FOLDER, experiment.path, trials, stop=stop,
                              callbacks=[TrialBoard(space_of(experiment).params, root=False,
                                                    time_budget=seconds is not None)]))


def fit_folder(tuner: tune.Tuner, experiment: Experiment, folder: Experiment, printer, yardsticks: dict | None) -> int:
    """Run `tuner` (folder_tuner's, or its restored state), print its results with `printer` and the
    commands to look further; returns the exit status (130 when interrupted)."""
    start = time.time()
    results, interrupted = fit(tuner)
    rows = trial_rows(folder, results)
    printer(rows[rows["status"] != "errored"].dropna(subset=["val_psnr"]), time.time() - start, yardsticks,
            interrupted=interrupted)
    print_next_steps(experiment)
    return 130 if interrupted else 0


def print_refit(replicas: pd.DataFrame, seconds: float, yardsticks: dict | None = None,
                interrupted: bool = False) -> None:
    if replicas.empty:
        print("\nRefit: no replica produced a result; the report exports the search's best trial instead.")
        return
    val, test = replicas["val_psnr"], replicas["test_psnr"]
    print(f"\nRefit {ended(seconds, interrupted)}: {len(replicas)} replica{'s' if len(replicas) > 1 else ''} of the "
          f"best configuration, each at its best validation epoch: validation {mean_pm_std(val.mean(), val.std(), 2)} "
          f"dB, test {mean_pm_std(test.mean(), test.std(), 2)} dB (mean ± std over replicas)")
    line = yardstick_line(yardsticks, replicas["test_psnr"].mean(), "the refit")
    if line:
        print(line)
