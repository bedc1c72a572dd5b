"""Checkpoints: a damaged one falls back to the previous good one; code smuggled into a
checkpoint file is never run."""
import os
import pickle

import pytest
import torch
from ray import tune

from n2n_models.data import load_pairs
from n2n_models.train import ReplicaTrainer, TrainSpec
from trainables.n2n import CHECKPOINT_FILE, load_checkpoint

pytestmark = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

SPEC = TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=3, seeds=(0, 1))


def write_checkpoints(trial_dir):
    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=8, seed=0)
    trainer = ReplicaTrainer(SPEC)
    paths = []
    for epoch in range(3):
        trainer.train_epoch(pairs.train_a, pairs.train_b)
        path = trial_dir / f"checkpoint_{epoch:06d}"
        path.mkdir(parents=True)
        torch.save({"trainer": trainer.state_dict(), "extra": {"best_epoch": epoch + 1}}, path / CHECKPOINT_FILE)
        paths.append(path)
    return paths


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    paths = write_checkpoints(tmp_path / "trial")
    newest = paths[-1] / CHECKPOINT_FILE
    newest.write_bytes(newest.read_bytes()[:1000])
    trainer = ReplicaTrainer(SPEC)
    with pytest.warns(UserWarning, match="is unreadable") as caught:
        extra, resumed = load_checkpoint(trainer, tune.Checkpoint.from_directory(str(paths[-1])))
    assert resumed and trainer.epoch == 2 and extra["best_epoch"] == 2
    assert any("earlier checkpoint" in str(w.message) for w in caught)


def test_all_checkpoints_damaged_means_a_fresh_start(tmp_path):
    paths = write_checkpoints(tmp_path / "trial")
    for path in paths:
        (path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    trainer = ReplicaTrainer(SPEC)
    with pytest.warns(UserWarning, match="from the start"):
        extra, resumed = load_checkpoint(trainer, tune.Checkpoint.from_directory(str(paths[-1])))
    assert (extra, resumed, trainer.epoch) == ({}, False, 0)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    path = tmp_path / "trial" / "checkpoint_000000"
    path.mkdir(parents=True)
    with open(path / CHECKPOINT_FILE, "wb") as f:
        pickle.dump({"trainer": payload}, f)
    trainer = ReplicaTrainer(SPEC)
    with pytest.warns(UserWarning, match="is unreadable"):
        _, resumed = load_checkpoint(trainer, tune.Checkpoint.from_directory(str(path)))
    assert not resumed and not marker.exists(), "loading a checkpoint must never execute code"
