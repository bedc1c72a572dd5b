"""The refit: after a search, its best configuration is trained again at the full budget with fresh
seeds, in the experiment's refit folder (an experiment folder of its own, analysis.experiment_file).
Its replicas give the model a user takes home (the best by validation, exported by the report) and
a test PSNR, mean ± std over replicas, that no choice of the search was biased towards."""
from __future__ import annotations

import dataclasses
import time
import warnings

import pandas as pd
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from analysis.experiment_file import REFIT_FOLDER
from n2n_models.classical import yardstick_line
from n2n_models.config import HPARAM_KEYS, check_config

from .experiment import Experiment
from .experiment_folder import drop_superseded_results, experiment_exists
from .progress import ProgressLog, log
from .summary import print_next_steps
from .tune_internals import InterruptWatch


def refit_experiment(experiment: Experiment, config: dict) -> Experiment:
    """The refit of `config` (a trial's configuration) as an experiment of its own: one
    configuration, `experiment.refit_seeds` replicas, the search's epochs and data."""
    hparams = {k: config[k] for k in HPARAM_KEYS if k in config}
    hparams["label"] = "refit"
    return dataclasses.replace(
        experiment, space="refit", searcher="grid", scheduler="fifo", num_samples=experiment.refit_seeds,
        seeds=1, storage=experiment.path, name=REFIT_FOLDER, refit_seeds=0,
        configs=[check_config(hparams, "the refit's configuration")])


def refit_seeds(experiment: Experiment) -> list[int]:
    """Fresh seeds: the search's trials used 0 .. seeds-1, so its best trial is not retrained."""
    return list(range(experiment.seeds, experiment.seeds + experiment.refit_seeds))


def run_refit(experiment: Experiment, config: dict, trainable, slots: int, yardsticks: dict | None = None,
              seconds: float | None = None) -> int:
    """Train the refit (or continue an interrupted one) within `seconds` (None: no limit) and
    print its summary; returns the exit status (130 when interrupted)."""
    refit = refit_experiment(experiment, config)
    seeds = refit_seeds(experiment)
    log(f"refit: the best configuration again with {len(seeds)} fresh seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}), {experiment.epochs} epochs, in {refit.path}")
    if experiment_exists(refit.path):
        tuner = tune.Tuner.restore(refit.path, trainable=trainable, resume_errored=True)
    else:
        refit.save()
        space = {**refit.configs[0], "epochs": experiment.epochs, "seeds": 1, "fused": experiment.fused,
                 "seed": tune.grid_search(seeds)}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=BasicVariantGenerator(max_concurrent=slots), num_samples=1, reuse_actors=True,
                trial_name_creator=_name, trial_dirname_creator=_name, time_budget_s=seconds),
            run_config=tune.RunConfig(
                name=REFIT_FOLDER, storage_path=experiment.path,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_psnr",
                                                        checkpoint_score_order="max"),
                failure_config=tune.FailureConfig(max_failures=2),
                callbacks=[ProgressLog(len(seeds), log)], verbose=0))
    start = time.time()
    interrupted = InterruptWatch()
    with interrupted, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is already reported")
        results = tuner.fit()
    for result in results:
        drop_superseded_results(result.path)
    replicas = replica_rows(results)
    print_refit(replicas, time.time() - start, yardsticks)
    print_next_steps(experiment)
    return 130 if interrupted.seen else 0


def _name(trial) -> str:
    return f"trial_{trial.trial_id}"


def replica_rows(results) -> pd.DataFrame:
    """One row per refit replica: its seed, best validation epoch, and validation and test PSNR
    there (the epoch chosen by validation only)."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        if result.error is not None or history is None or history.empty or "val_psnr" not in history:
            continue
        best = history.loc[history["val_psnr"].fillna(-1e9).idxmax()]
        rows.append({"seed": (result.config or {}).get("seed"), "epoch": int(best["training_iteration"]),
                     "val_psnr": float(best["val_psnr"]), "test_psnr": float(best.get("test_psnr", float("nan")))})
    return pd.DataFrame(rows, columns=["seed", "epoch", "val_psnr", "test_psnr"])


def mean_std(values: pd.Series) -> str:
    return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def print_refit(replicas: pd.DataFrame, seconds: float, yardsticks: dict | None = None) -> None:
    if replicas.empty:
        print("\nRefit: no replica produced a result; the report exports the search's best trial instead.")
        return
    print(f"\nRefit done in {seconds / 60:.1f} min: {len(replicas)} replica{'s' if len(replicas) > 1 else ''} of the "
          f"best configuration, each at its best validation epoch: validation {mean_std(replicas['val_psnr'])} dB, "
          f"test {mean_std(replicas['test_psnr'])} dB (mean ± std over replicas)")
    line = yardstick_line(yardsticks, replicas["test_psnr"].mean(), "the refit")
    if line:
        print(line)
