"""The best checkpoint of an experiment and its export as `best_model.pt`.

Best = the configuration (trial) with the highest seed-mean validation PSNR at any epoch, at that
epoch; Tune keeps the best checkpoints by val_psnr, so that epoch's checkpoint is on disk. From it
the replica (seed) with the highest validation PSNR is exported, with everything needed to use
it and to re-measure it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from n2n_models.checkpoint import CHECKPOINT_FILE, TrialCheckpoint, checkpoint_folders, checkpoint_index, read_checkpoint
from n2n_models.config import model_hparams, training_knobs, trial_seeds
from n2n_models.export import save_model
from n2n_models.provenance import MODEL_KEY, for_model_file

from .experiment_file import EXPERIMENT_FILE, FINISH_SPACE, REFIT_FOLDER
from .load import ExperimentData, ExperimentError, load_experiment


@dataclass
class BestCheckpoint:
    trial_id: str
    epoch: int
    seed: int
    val_psnr: float  # of that seed's replica
    test_psnr: float  # of that seed's replica at that epoch (recorded, never used to choose)
    config_psnr_mean: float
    config_psnr_std: float
    path: Path  # the checkpoint file
    state: TrialCheckpoint


def _load(folder: Path) -> TrialCheckpoint | None:
    try:
        return read_checkpoint(folder)
    except Exception:  # noqa: BLE001 - a damaged checkpoint is skipped, the next best is taken
        return None


def find_checkpoint(trial_dir: Path, epoch: int) -> tuple[Path, TrialCheckpoint] | None:
    """The trial's checkpoint written at `epoch` (read from the file, not the name), or None."""
    folders = checkpoint_folders(trial_dir)
    folders.sort(key=lambda d: checkpoint_index(d.name) != epoch - 1)  # the likely one first
    for folder in folders:
        state = _load(folder)
        if state is not None and state.epoch == epoch:
            return folder / CHECKPOINT_FILE, state
    return None


def load_refit(exp: ExperimentData) -> ExperimentData | None:
    """The experiment's refit (its best configuration trained again), when there is one."""
    folder = exp.path / REFIT_FOLDER
    if not (folder / EXPERIMENT_FILE).is_file():
        return None
    try:
        return load_experiment(folder)
    except ExperimentError:
        return None


def exported(exp: ExperimentData, refit: ExperimentData | None) -> tuple[ExperimentData, BestCheckpoint | None]:
    """Where the model a user takes home comes from: the refit's best checkpoint when the refit
    (`load_refit(exp)`) has one, else the search's own; returns (that experiment, its best checkpoint).
    A finish (FINISH_SPACE: the search's best member trained on) is the same model further on, so
    validation picks between them: the finish's best epoch unless the member's was better."""
    if refit is not None:
        best = best_checkpoint(refit)
        if best is not None and refit.spec.get("space") == FINISH_SPACE:
            own = best_checkpoint(exp)
            if own is not None and own.config_psnr_mean > best.config_psnr_mean:
                return exp, own
        if best is not None:
            return refit, best
    return exp, best_checkpoint(exp)


def best_checkpoint(exp: ExperimentData) -> BestCheckpoint | None:
    """The best (trial, epoch) by seed-mean PSNR whose checkpoint exists; None if there is none."""
    stats = exp.history.dropna(subset=["psnr_mean"]).sort_values(["psnr_mean", "trial_id"], ascending=[False, True])
    for row in stats.itertuples(index=False):
        trial = exp.trials.loc[row.trial_id]
        if not trial["folder"]:
            continue
        found = find_checkpoint(exp.path / trial["folder"], int(row.epoch))
        if found is None:
            continue
        seeds = exp.seeds[(exp.seeds["trial_id"] == row.trial_id) & (exp.seeds["epoch"] == row.epoch)]
        seeds = seeds.dropna(subset=["psnr"]).sort_values(["psnr", "seed"], ascending=[False, True])
        if seeds.empty:
            continue
        best = seeds.iloc[0]
        return BestCheckpoint(trial_id=row.trial_id, epoch=int(row.epoch), seed=int(best["seed"]),
                              val_psnr=float(best["psnr"]), test_psnr=float(best.get("test_psnr", float("nan"))),
                              config_psnr_mean=float(row.psnr_mean),
                              config_psnr_std=float(row.psnr_std) if math.isfinite(row.psnr_std) else float("nan"),
                              path=found[0], state=found[1])
    return None


def _plain(value):
    """JSON-like Python values only (weights_only loading accepts nothing else)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def export_best(exp: ExperimentData, best: BestCheckpoint, path: str | Path) -> dict:
    """Write the best replica as a self-describing model file; returns its description."""
    trial = exp.trials.loc[best.trial_id]
    config = dict(trial["config"])
    seeds = trial_seeds(config)
    replicas = best.state.replicas
    if best.seed not in seeds or len(replicas) != len(seeds):
        raise ValueError(f"checkpoint {best.path} holds {len(replicas)} replicas, the trial config names seeds {seeds}")
    spec = exp.spec
    meta = {
        "config": config,
        "training": training_knobs(config),
        "data": {"data": spec.get("data"), "noise": spec.get("noise"), "train_size": spec.get("train_size"),
                 "val_size": spec.get("val_size"), "data_seed": spec.get("data_seed", 0)},
        "val_psnr": best.val_psnr,
        "test_psnr": best.test_psnr,
        "config_val_psnr_mean": best.config_psnr_mean,
        "config_val_psnr_std": best.config_psnr_std,
        "seed": best.seed,
        "epoch": best.epoch,
        "experiment": exp.name,
        "space": spec.get("space"),
        "trial_id": best.trial_id,
        "checkpoint": str(best.path.relative_to(exp.path)),
        MODEL_KEY: for_model_file(exp.path, exp.path / trial["folder"]),
    }
    payload = save_model(path, config.get("model", "tnet"), model_hparams(config),
                         replicas[seeds.index(best.seed)], **_plain(meta))
    return {k: v for k, v in payload.items() if k != "state_dict"}
