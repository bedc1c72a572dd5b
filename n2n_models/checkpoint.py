"""The trial checkpoint, in one place: the file a trial writes into each checkpoint folder, its
layout, and reading it back. The trainable writes and resumes from it; the analysis finds the
best epoch's checkpoint and exports one replica from it. Imports no Ray.

A checkpoint file holds {"trainer": ReplicaTrainer.state_dict(), "extra": {...}}: the trainer's
state (its "epoch" and "replicas", a plain `build_model(...)` state dict per seed replica, the
same whether the replicas trained fused or not) and the trial's own bookkeeping (best epoch and
PSNR so far). Files load with weights_only=True: a checkpoint cannot run code.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

CHECKPOINT_FILE = "trainer.pt"

# Ray Tune names a trial's checkpoint folders checkpoint_000000, checkpoint_000001, ... in the
# order they were reported. Tune documents no such contract; this is the one place that relies on
# it (tests/test_checkpoints.py::test_tune_names_checkpoint_folders_as_this_module_expects breaks
# if an upgrade changes it).
CHECKPOINT_FOLDER_PREFIX = "checkpoint_"


@dataclasses.dataclass
class TrialCheckpoint:
    """One checkpoint's content: the trainer's state and the trial's bookkeeping."""

    trainer: dict
    extra: dict

    @property
    def epoch(self) -> int:
        """The number of epochs trained when it was written."""
        return int(self.trainer["epoch"])

    @property
    def replicas(self) -> list[dict]:
        """Each seed replica's state dict, in the order of the trial's seeds."""
        return self.trainer["replicas"]


def write_checkpoint(folder: str | os.PathLike, trainer_state: dict, extra: dict) -> Path:
    """Write a checkpoint file into `folder`; returns its path."""
    path = Path(folder) / CHECKPOINT_FILE
    torch.save({"trainer": trainer_state, "extra": extra}, path)
    return path


def read_checkpoint(folder: str | os.PathLike, map_location="cpu") -> TrialCheckpoint:
    """The checkpoint in `folder`. Raises what torch.load raises for a missing or damaged file
    (pickle.UnpicklingError for one that is not plain tensor data) and KeyError for another layout."""
    state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=map_location, weights_only=True)
    return TrialCheckpoint(trainer=state["trainer"], extra=state["extra"])


def is_checkpoint_folder(name: str) -> bool:
    """Whether a folder's base name is one of Tune's checkpoint folders."""
    return os.path.basename(name.rstrip("/")).startswith(CHECKPOINT_FOLDER_PREFIX)


def checkpoint_index(name: str) -> int | None:
    """The report index in a checkpoint folder's name (checkpoint N holds epoch N + 1 when every
    epoch reports one), or None where the name does not say."""
    try:
        return int(os.path.basename(name.rstrip("/")).removeprefix(CHECKPOINT_FOLDER_PREFIX))
    except ValueError:
        return None


def checkpoint_folders(trial_dir: str | os.PathLike) -> list[Path]:
    """A local trial folder's checkpoint folders that hold a checkpoint file, oldest first."""
    return sorted(d for d in Path(trial_dir).iterdir()
                  if d.is_dir() and is_checkpoint_folder(d.name) and (d / CHECKPOINT_FILE).is_file())
