"""The Noise2Noise trainable: trains `seeds` replicas of one configuration and reports, every
epoch, their mean and spread with a checkpoint; resumes from `tune.get_checkpoint()`, or, when
Tune has none, starts from the config's `start_from` checkpoint; with `anneal_s` its lr falls
linearly to 0 over that many seconds of training, and the trial ends there (a search's finish,
search.finish).

The trial's device comes from `ray.get_gpu_ids()` (a fractional GPU share or none); the data
arrives through `tune.with_parameters` from the object store, loaded once by the driver.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
import time
import warnings

import numpy as np
import pyarrow.fs
import ray
import torch
from ray import tune

from n2n_models import build_model, count_parameters
from n2n_models.checkpoint import is_checkpoint_folder, read_checkpoint, write_checkpoint
from n2n_models.config import TRIAL_DEFAULTS, spec_from_config
from n2n_models.metrics import psnr_uint8
from n2n_models.train import ReplicaTrainer, training_target

from .image_grid import ImageGrid

def trial_device() -> torch.device:
    gpu_ids = ray.get_gpu_ids()
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU
    return torch.device("cpu")


def _candidates(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The given checkpoint, then the trial's older checkpoints, newest first."""
    fs, parent = checkpoint.filesystem, os.path.dirname(checkpoint.path.rstrip("/"))
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(parent))
    except OSError:
        return [checkpoint]
    others = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                     and is_checkpoint_folder(i.path) and i.path != checkpoint.path),
                    reverse=True)
    return [checkpoint] + [tune.Checkpoint(p, filesystem=fs) for p in others if p < checkpoint.path]


def load_checkpoint(trainer: ReplicaTrainer, latest: tune.Checkpoint | None) -> tuple[dict, bool]:
    """Restore the trial from `latest` (Tune's checkpoint to resume from) or, when that one is
    unreadable, the newest readable checkpoint before it; returns (extra state, resumed).
    A damaged checkpoint (truncated, not plain tensor data) is reported and skipped for the
    previous good one, or a fresh start, rather than failing the search. Files load with
    weights_only=True: a checkpoint cannot run code."""
    if latest is None:
        return {}, False
    for checkpoint in _candidates(latest):
        try:
            with checkpoint.as_directory() as d:
                state = read_checkpoint(d, map_location=trainer.device)
            trainer.load_state_dict(state.trainer)
        except pickle.UnpicklingError:
            warnings.warn(f"checkpoint {checkpoint.path} is unreadable (not plain tensor data: refused, since "
                          f"loading it could run code); trying the previous one")
            continue
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it cannot be used
            reason = str(e).splitlines()[0][:200] if str(e) else ""
            warnings.warn(f"checkpoint {checkpoint.path} is unreadable ({type(e).__name__}: {reason}); "
                          f"trying the previous one")
            continue
        if checkpoint is not latest:
            warnings.warn(f"resuming from the earlier checkpoint {checkpoint.path} (epoch {trainer.epoch})")
        return state.extra, True
    warnings.warn("no readable checkpoint for this trial; training it from the start")
    return {}, False


def train_n2n(config: dict, data: dict | None = None, yardsticks: dict | None = None):
    """Function trainable. `data` holds the uint8 arrays of the data set's three splits
    (n2n_models.data.SPLIT_KEYS, and the clean training images when a trial may train on them);
    `yardsticks` (n2n_models.classical) the noisy input's and the
    best classical denoiser's test PSNR, reported beside the trial's own.

    Validation PSNR is what every decision reads (ASHA, TPE, the best epoch and trial); test PSNR
    is reported for the record only."""
    for name in ("ray.tune", "ray.train"):  # keep the driver's console to our progress lines
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.time()
    from n2n_models.provenance import record_trial
    record_trial(tune.get_context().get_trial_dir())  # this machine's record, beside the trial's results
    spec = spec_from_config(config)
    device = trial_device()
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    arrays = {k: torch.as_tensor(np.array(v)).to(device) for k, v in data.items()}
    target = training_target(spec, arrays)
    trainer = ReplicaTrainer(spec, device=device, fused=config.get("fused"))
    extra, resumed = load_checkpoint(trainer, tune.get_checkpoint())
    if not resumed and config.get("start_from"):
        start_from(trainer, config["start_from"])
    anneal_s = config.get("anneal_s")
    trained_s, epoch_s = extra.get("trained_s", 0.0), 0.0  # training time so far, the last epoch's
    lr_factor = 1.0  # spec.lr's share the epoch trains at (anneal_s)
    best, best_epoch = extra.get("best_val_psnr", -math.inf), extra.get("best_epoch", 0)
    best_test = extra.get("best_epoch_test_psnr", float("nan"))
    with torch.random.fork_rng():  # counting must not shift the random stream training draws from
        params = count_parameters(build_model(spec.model, **spec.hparams))
    noisy_psnr = psnr_uint8(arrays["val_noisy"], arrays["val_clean"])
    noisy_test_psnr = psnr_uint8(arrays["test_noisy"], arrays["test_clean"])
    classical = (yardsticks or {}).get("methods", {}).get((yardsticks or {}).get("best"), {})
    grid = ImageGrid(int(config.get("grid_images", TRIAL_DEFAULTS["grid_images"])))
    while trainer.epoch < spec.epochs:
        inject_fault(config, trainer.epoch + 1, resumed)
        epoch_began = time.time()
        if anneal_s:  # the lr at the epoch's middle on a line from spec.lr to 0 at anneal_s
            if trained_s >= anneal_s:
                return
            # (an epoch's time is that of the last; never above the last epoch's lr when epochs vary)
            lr_factor = min(lr_factor, max(0.0, 1.0 - (trained_s + epoch_s / 2) / anneal_s))
            trainer.scale_lr(lr_factor)
        losses = trainer.train_epoch(arrays["train_a"], target)
        diverged = not bool(torch.isfinite(losses).all())
        nan = torch.full((trainer.k,), float("nan"))
        seed_psnr = trainer.evaluate(arrays["val_noisy"], arrays["val_clean"]) if not diverged else nan
        seed_test = trainer.evaluate(arrays["test_noisy"], arrays["test_clean"]) if not diverged else nan
        val_psnr, test_psnr = float(seed_psnr.mean()), float(seed_test.mean())
        if not diverged and val_psnr > best:
            best, best_epoch, best_test = val_psnr, trainer.epoch, test_psnr
            grid.write(trainer, arrays["val_noisy"], arrays["val_clean"], trainer.epoch, float(seed_psnr[0]),
                       spec.seeds[0])
        metrics = {
            "val_psnr": val_psnr,
            "val_psnr_std": float(seed_psnr.std(unbiased=True)) if trainer.k > 1 else 0.0,
            "best_val_psnr": best if best > -math.inf else float("nan"),
            "best_epoch": best_epoch,
            "test_psnr": test_psnr,
            "test_psnr_std": float(seed_test.std(unbiased=True)) if trainer.k > 1 else 0.0,
            "best_epoch_test_psnr": best_test,
            "train_loss": float(losses.mean()),
            "noisy_psnr": noisy_psnr,
            "noisy_test_psnr": noisy_test_psnr,
            "classical_test_psnr": classical.get("test_psnr", float("nan")),
            "params": params,
            "epoch": trainer.epoch,
            "lr_now": spec.lr * lr_factor,  # the lr the epoch trained at (anneal_s), else the config's
            "diverged": diverged,
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "device": str(device),
            "process_start": started,
            "reported_at": time.time(),
            "seed_psnr": {str(s): float(v) for s, v in zip(spec.seeds, seed_psnr)},
            "seed_test_psnr": {str(s): float(v) for s, v in zip(spec.seeds, seed_test)},
            "seed_loss": {str(s): float(v) for s, v in zip(spec.seeds, losses)},
        }
        epoch_s = time.time() - epoch_began
        trained_s += epoch_s
        with tempfile.TemporaryDirectory() as d:
            write_checkpoint(d, trainer.state_dict(), {"best_val_psnr": best, "best_epoch": best_epoch,
                                                       "best_epoch_test_psnr": best_test, "trained_s": trained_s})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if diverged:
            return


def start_from(trainer: ReplicaTrainer, folder: str):
    """Load the checkpoint in `folder` (another trial's) to train on from it: its weights, Adam's
    state, the weights' moving average and its epoch; its record of best epochs is not carried,
    this trial keeps its own."""
    try:
        state = read_checkpoint(folder, map_location=trainer.device)
        trainer.load_state_dict(state.trainer)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, the trial cannot start from it
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RuntimeError(f"cannot start from the checkpoint in {folder}: {reason}") from None


class InjectedFault(RuntimeError):
    """Raised on purpose by `fault_epoch`, to test that searches survive failing trials."""


def inject_fault(config: dict, epoch: int, resumed: bool):
    """Fault injection for tests of fault tolerance: with `fault_epoch: E` in the config the trial
    raises as it starts epoch E, once (a retry that resumed from a checkpoint passes), or on every
    attempt with `fault_repeat: True`."""
    if config.get("fault_epoch") == epoch and (config.get("fault_repeat") or not resumed):
        raise InjectedFault(f"injected fault at epoch {epoch}")


def make_trainable(data: dict, cpus: float = 1, gpus: float = 0, yardsticks: dict | None = None):
    """The trainable with its data in the object store and its resource request attached."""
    wrapped = tune.with_parameters(train_n2n, data=data, yardsticks=yardsticks)
    return tune.with_resources(wrapped, {"cpu": cpus, "gpu": gpus})
