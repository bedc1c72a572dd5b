"""The finish of a Population Based Training search under a time budget: the best member, from its
best checkpoint, trains on alone with the resources of every trial slot (as many as one node holds),
its lr falling linearly to 0 as the time ends. It runs in the experiment's refit folder, an
experiment folder of its own (analysis.experiment_file), so the report exports its best epoch.

Why (docs/search-quality.md, sessions 9 and 10): on two cores the population's second member was
worth less than the second core given to the first (UNet trains 571 images/s on two threads, 371
on one), and the lr held constant to the end let a UNet in bfloat16 diverge after 36 epochs."""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import ray
from ray import tune

from analysis.experiment_file import FINISH_SPACE, REFIT_FOLDER
from n2n_models.classical import yardstick_line
from n2n_models.config import HPARAM_KEYS, OPEN_EPOCHS, check_config

from .experiment import Experiment, is_uri
from .experiment_folder import experiment_exists
from .progress import log
from .refit import fit_folder, folder_tuner
from .summary import ended, print_next_steps

#: The share of a --time-budget that the finish takes from a Population Based Training search.
FINISH_SHARE = 0.5
#: What the finish's lr line leaves for starting the trial (Tune's time budget counts it)
START_SECONDS = 20.0


@dataclasses.dataclass(frozen=True)
class Leader:
    """The member the finish continues: its trial, the epoch of its best validation, that epoch's
    checkpoint folder and configuration."""
    trial_id: str
    epoch: int
    val_psnr: float
    checkpoint: Path
    config: dict


def find_leader(experiment: Experiment) -> Leader | None:
    """The best member by validation PSNR at its best epoch whose checkpoint and configuration are
    on disk (analysis.export.best_checkpoint, the report's rule); None when there is none."""
    from analysis.export import best_checkpoint
    from analysis.load import ExperimentError, epoch_config, load_experiment

    try:
        exp = load_experiment(experiment.path)
    except ExperimentError:
        return None
    best = best_checkpoint(exp)
    if best is None:
        return None
    config = epoch_config(exp.path / exp.trials.loc[best.trial_id]["folder"], best.epoch)
    if config is None:
        return None
    return Leader(best.trial_id, best.epoch, best.config_psnr_mean, best.path.parent, config)


def finish_experiment(experiment: Experiment, leader: Leader, cpus: float, gpus: float) -> Experiment:
    """The finish as an experiment of its own: the leader's configuration at its best epoch, one
    trial (its seed), `cpus` and `gpus`, open-ended in epochs."""
    hparams = {k: leader.config[k] for k in HPARAM_KEYS if k in leader.config}
    hparams["label"] = "finish"
    return dataclasses.replace(
        experiment, space=FINISH_SPACE, searcher="grid", scheduler="fifo", num_samples=1,
        epochs=OPEN_EPOCHS, storage=experiment.path, name=REFIT_FOLDER, refit_seeds=0, finish=False,
        seeds=int(leader.config.get("seeds", 1) or 1),
        cpus_per_trial=cpus, gpus_per_trial=gpus, max_concurrent=1,
        configs=[check_config(hparams, "the finish's configuration")])


def finish_resources(cpus: float, gpus: float, slots: int) -> tuple[float, float]:
    """Every trial slot's CPUs and GPUs, as far as one node holds them (a trial runs on one node),
    and at most one GPU (a trial trains on one)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    node_cpus = max((n.get("CPU", 0) for n in nodes), default=cpus)
    node_gpus = max((n.get("GPU", 0) for n in nodes), default=gpus)
    finish_cpus = max(cpus, math.floor(min(cpus * slots, node_cpus)))  # whole CPUs: torch's threads
    finish_gpus = 0.0 if not gpus else max(gpus, min(gpus * slots, node_gpus, 1.0))
    return float(finish_cpus), finish_gpus


def run_finish(experiment: Experiment, data: dict, cpus: float, gpus: float, slots: int,
               yardsticks: dict | None, seconds: float) -> int:
    """Train the finish (or continue an interrupted one) within `seconds` and print its summary;
    returns the exit status (130 when interrupted)."""
    from trainables import make_trainable

    if is_uri(experiment.path):
        log("no finish: it starts from a checkpoint on this machine's disk, and the experiment is at "
            f"{experiment.path}; the report exports the search's best member")
        print_next_steps(experiment)
        return 0
    path = f"{experiment.path}/{REFIT_FOLDER}"
    leader = find_leader(experiment)
    if experiment_exists(path):
        finish = Experiment.load(path)
        tuner = tune.Tuner.restore(path, trainable=make_trainable(data, finish.cpus_per_trial,
                                                                  finish.gpus_per_trial or 0, yardsticks),
                                   resume_errored=True)
    else:
        if leader is None:
            log("no finish: no member has a readable checkpoint; the report exports the search's best trial")
            print_next_steps(experiment)
            return 0
        cpus, gpus = finish_resources(cpus, gpus, slots)
        finish = finish_experiment(experiment, leader, cpus, gpus)
        anneal = max(seconds - START_SECONDS, 1.0)
        log(f"finish: member {leader.trial_id} from its epoch {leader.epoch} ({leader.val_psnr:.2f} dB validation) "
            f"trains on alone with {cpus:g} CPU and {gpus:g} GPU, its lr falling to 0 over {anneal / 60:.1f} min, "
            f"in {finish.path}")
        finish.save()
        space = {**finish.configs[0], **experiment.trial_constants(), "epochs": OPEN_EPOCHS, "seeds": finish.seeds,
                 "seed": int(leader.config.get("seed", 0) or 0), "start_from": str(leader.checkpoint),
                 "anneal_s": anneal}
        tuner = folder_tuner(make_trainable(data, cpus, gpus, yardsticks), space, experiment, 1, 1, seconds,
                             stop={"time_total_s": max(seconds, 0)})
    return fit_folder(tuner, experiment, finish, functools.partial(print_finish, leader=leader), yardsticks)


def print_finish(rows, seconds: float, yardsticks: dict | None = None, interrupted: bool = False,
                 leader: Leader | None = None) -> None:
    if rows.empty:
        print("\nFinish: no result; the report exports the search's best member instead.")
        return
    row = rows.iloc[0]
    print(f"\nFinish {ended(seconds, interrupted)}: the best member trained on for {row['epochs']:.0f} epochs, "
          f"best after {row['best_epoch']:.0f}: validation {row['val_psnr']:.2f} dB, test {row['test_psnr']:.2f} dB")
    line = yardstick_line(yardsticks, row["test_psnr"], "the finish")
    if line:
        print(line)
    if leader is not None and leader.val_psnr > row["val_psnr"]:  # analysis.export.exported's rule
        print(f"The member's epoch {leader.epoch} had the higher validation PSNR ({leader.val_psnr:.2f} dB): "
              f"the report exports it")
