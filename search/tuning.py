"""The Tuner of one Experiment: its data, search space, searcher and scheduler; run or resume it
and print the summary."""
from __future__ import annotations

import dataclasses
import time

from ray import tune

from analysis.experiment_file import REFIT_FOLDER, YARDSTICKS_FILE
from n2n_models.classical import write_yardsticks
from n2n_models.provenance import data_cache_key, record_search
from trainables import make_trainable

from .board import TrialBoard
from .errors import SearchInterrupted, UsageError
from .experiment import Experiment
from .experiment_folder import experiment_exists, interrupted_hint, resolve_resume
from .fitting import fit, run_config, TrialDirnames, trial_name
from .progress import log
from .ray_session import check_reachable, connect, trial_resources
from .searchers import make_searcher, write_study
from .spaces import population_space, possible_values, space_of
from n2n_models.config import OPEN_EPOCHS

from .finish import FINISH_SHARE, run_finish
from .refit import refit_experiment, run_refit
from .schedulers import make_scheduler, scheduler_callbacks
from .summary import print_next_steps, print_summary
from .tune_internals import quiet_trials_without_results

METRIC, MODE = "best_val_psnr", "max"


def param_space(experiment: Experiment) -> dict:
    space = space_of(experiment)
    params = population_space(space.params)[0] if experiment.scheduler == "pbt" else space.params
    return {**params, "epochs": trial_epochs(experiment), "seeds": experiment.seeds, **experiment.trial_constants()}


def trial_epochs(experiment: Experiment) -> int:
    """A trial's epochs: the experiment's, or, for a population (PBT) under a time budget, as many as
    the time allows: its members train until the budget ends."""
    if experiment.scheduler == "pbt" and experiment.time_budget_min is not None:
        return OPEN_EPOCHS
    return experiment.epochs


def load_data(experiment: Experiment) -> dict:
    from n2n_models.data import TRAIN_CLEAN, DataError, load_pairs

    start = time.time()
    try:
        pairs = load_pairs(experiment.data, experiment.noise, train_size=experiment.train_size,
                           val_size=experiment.val_size, seed=experiment.data_seed, progress=log)
    except DataError as e:
        raise UsageError(str(e)) from None
    log(f"data: {experiment.data} + {experiment.noise}, {experiment.train_size} pairs, "
        f"{experiment.val_size} validation and {len(pairs.test_noisy)} test images "
        f"({time.time() - start:.1f} s)")
    arrays = pairs.arrays()
    if "clean" in possible_values(param_space(experiment), "target"):  # only then: they take memory
        arrays[TRAIN_CLEAN] = pairs.train_clean
    return {k: t.numpy() for k, t in arrays.items()}


def measure_yardsticks(experiment: Experiment, data: dict) -> dict:
    """The noisy input's and the classical denoisers' PSNR on the test images (strengths chosen on
    validation), cached beside the data set."""
    from n2n_models.classical import cached_yardsticks
    from n2n_models.data import DataError, cache_path

    start = time.time()
    try:
        cache = cache_path(experiment.data, experiment.noise, train_size=experiment.train_size,
                           val_size=experiment.val_size, seed=experiment.data_seed)  # as load_data asks
    except DataError:  # the data's folder is gone since it was loaded: measure without a cache
        cache = None
    result = cached_yardsticks(data, cache and cache.with_suffix(".yardsticks.json"), progress=log)
    best = result["methods"][result["best"]]
    log(f"yardsticks on the test images: noisy input {result['noisy_test_psnr']:.2f} dB, best classical "
        f"denoiser {best['test_psnr']:.2f} dB ({result['best']}; {time.time() - start:.1f} s)")
    return result


def record_provenance(experiment: Experiment) -> None:
    """This run's provenance record beside the experiment, when it differs from the last one."""
    cache = data_cache_key(experiment.data, experiment.noise, train_size=experiment.train_size,
                           val_size=experiment.val_size, seed=experiment.data_seed)  # as load_data asks
    record_search(experiment.path, cache, progress=log)


def run_experiment(experiment: Experiment, resume: bool = False, name_given: bool = True,
                   address: str | None = None) -> int:
    if resume:
        experiment = resolve_resume(experiment, name_given)
    elif experiment_exists(experiment.path):
        raise UsageError(f"experiment {experiment.path} exists; add --resume to continue it or pick another --name")
    try:
        with quiet_trials_without_results():
            return _run(experiment, resume, address)
    except KeyboardInterrupt:
        raise SearchInterrupted(interrupted_hint(experiment, resume)) from None


def _run(experiment: Experiment, resume: bool, address: str | None) -> int:
    began = time.time()
    if address:
        check_reachable(address)
    data = load_data(experiment)
    yardsticks = measure_yardsticks(experiment, data)
    connect(address)
    cpus, gpus, slots = trial_resources(experiment, joined=address is not None)
    trainable = make_trainable(data, cpus=cpus, gpus=gpus, yardsticks=yardsticks)
    if experiment.scheduler == "pbt" and not experiment.num_samples:  # a member per trial slot
        experiment = dataclasses.replace(experiment, num_samples=slots)
    if experiment.scheduler == "pbt" and experiment.num_samples > slots and not resume:
        raise UsageError(f"--scheduler pbt trains its whole population at once, and --num-samples "
                         f"{experiment.num_samples} is more than the {slots} trials this cluster runs at a time; "
                         f"ask for at most {slots} (or leave --num-samples out)")
    seconds = search_seconds(experiment)
    within = "" if seconds is None else (
        f", for {seconds / 60:.1f} of the {experiment.time_budget_min:g} minutes of --time-budget"
        + (" (the refit has the rest)" if experiment.refit_seeds else "")
        + (" (then the best member trains on alone with every slot's resources)" if experiment.finish else ""))
    if experiment.scheduler == "pbt":
        what = (f"a population of {experiment.num_samples} x {experiment.seeds} seeds, "
                + ("training until the time budget ends" if seconds else f"{experiment.epochs} epochs"))
    else:
        what = (f"{'up to ' if seconds else ''}{experiment.num_samples} configurations x {experiment.seeds} seeds, "
                f"{'at most ' if seconds else ''}{experiment.epochs} epochs")
    log(f"{'resuming' if resume else 'starting'} {experiment.path}: space {experiment.space}, "
        f"{experiment.searcher} + {experiment.scheduler}, {what}{within}; {slots} trials at a time "
        f"({cpus:g} CPU, {gpus:g} GPU each)")
    if resume:
        record_provenance(experiment)
        write_yardsticks(f"{experiment.path}/{YARDSTICKS_FILE}", yardsticks)
        tuner = tune.Tuner.restore(experiment.path, trainable=trainable, resume_errored=True)
    else:
        experiment.save()
        record_provenance(experiment)
        write_yardsticks(f"{experiment.path}/{YARDSTICKS_FILE}", yardsticks)
        mutations = population_space(space_of(experiment).params)[1] if experiment.scheduler == "pbt" else None
        scheduler = make_scheduler(experiment.scheduler, experiment.epochs, seconds, mutations, experiment.search_seed)
        params = param_space(experiment)
        board = TrialBoard(params, time_budget=seconds is not None, mutated=tuple(mutations or ()))
        tuner = tune.Tuner(
            trainable,
            param_space=params,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=make_searcher(experiment, slots, log),
                scheduler=scheduler, num_samples=experiment.num_samples,
                # Searchers take the limit here; Tune's own generators (grid, random) take it themselves
                max_concurrent_trials=slots if experiment.searcher == "optuna" else None, reuse_actors=True,
                trial_name_creator=trial_name, trial_dirname_creator=TrialDirnames(experiment.path),
                time_budget_s=seconds,
            ),
            run_config=run_config(experiment.name, experiment.storage, experiment.num_samples,
                                  callbacks=[*scheduler_callbacks(scheduler), board], keep_all=experiment.scheduler == "pbt"),
        )
    start = time.time()
    results, interrupted = fit(tuner)
    config = print_summary(experiment, results, time.time() - start, interrupted=interrupted, yardsticks=yardsticks)
    study = write_study(experiment.path, experiment.name) if experiment.searcher == "optuna" else None
    if study:
        log(f"Optuna study {experiment.name!r} kept in {study} (Optuna's journal file: optuna.load_study, "
            f"optuna-dashboard)")
    status = 130 if interrupted else 0
    if not interrupted and experiment.finish and config is not None:
        left = experiment.time_budget_min * 60 - (time.time() - began)
        if left < MIN_REFIT_SECONDS:
            log(f"no finish: {max(left, 0):.0f} s of --time-budget left; the report exports the search's best member")
            print_next_steps(experiment)
        else:
            status = run_finish(experiment, data, cpus, gpus, slots, yardsticks, seconds=left)
            if experiment_exists(f"{experiment.path}/{REFIT_FOLDER}"):  # the report of the finish's folder shows it
                record_provenance(dataclasses.replace(experiment, storage=experiment.path, name=REFIT_FOLDER))
    if not interrupted and experiment.refit_seeds and config is not None:
        left = None if experiment.time_budget_min is None else experiment.time_budget_min * 60 - (time.time() - began)
        if left is not None and left < MIN_REFIT_SECONDS:
            log(f"no refit: {max(left, 0):.0f} s of --time-budget left; the report exports the search's best trial")
            print_next_steps(experiment)
        else:
            status = run_refit(experiment, config, trainable, slots, yardsticks, seconds=left)
            record_provenance(refit_experiment(experiment, config))  # the report of the refit's folder shows it
    if status == 130:
        log(f"interrupted; the state is saved. Continue with: python search/run.py --resume "
            f"--name {experiment.name} --storage {experiment.storage}")
    return status


#: The share of a --time-budget kept for the refit when there is one, and the least time worth one:
#: the refit trains the winner to its plateau, about 4-5 minutes of one core for TNet on the quick
#: budget's data (docs/search-quality.md), so at 9 minutes it gets 60%.
REFIT_SHARE, MIN_REFIT_SECONDS = 0.6, 30


def search_seconds(experiment: Experiment) -> float | None:
    """The search's own time budget: --time-budget, less the refit's or the finish's share."""
    if experiment.time_budget_min is None:
        return None
    share = REFIT_SHARE if experiment.refit_seeds else FINISH_SHARE if experiment.finish else 0.0
    return experiment.time_budget_min * 60 * (1 - share)
