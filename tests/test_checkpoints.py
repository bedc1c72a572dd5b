"""Checkpoints: a damaged one falls back to the previous good one; code smuggled into a
checkpoint file is never run."""
import os
import pickle

import pytest
from ray import tune

from n2n_models.checkpoint import CHECKPOINT_FILE, write_checkpoint
from n2n_models.data import load_pairs
from n2n_models.train import ReplicaTrainer, TrainSpec
from trainables.n2n import load_checkpoint

numeric = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

SPEC = TrainSpec("tnet", lr=1e-3, batch_size=32, epochs=3, seeds=(0, 1))


def write_checkpoints(trial_dir):
    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=8, seed=0)
    trainer = ReplicaTrainer(SPEC)
    paths = []
    for epoch in range(3):
        trainer.train_epoch(pairs.train_a, pairs.train_b)
        path = trial_dir / f"checkpoint_{epoch:06d}"
        path.mkdir(parents=True)
        write_checkpoint(path, trainer.state_dict(), {"best_epoch": epoch + 1})
        paths.append(path)
    return paths


@numeric
def test_truncated_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
    paths = write_checkpoints(tmp_path / "trial")
    newest = paths[-1] / CHECKPOINT_FILE
    newest.write_bytes(newest.read_bytes()[:1000])
    trainer = ReplicaTrainer(SPEC)
    with pytest.warns(UserWarning, match="is unreadable") as caught:
        extra, resumed = load_checkpoint(trainer, tune.Checkpoint.from_directory(str(paths[-1])))
    assert resumed and trainer.epoch == 2 and extra["best_epoch"] == 2
    assert any("earlier checkpoint" in str(w.message) for w in caught)


@numeric
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


@numeric
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


@pytest.mark.slow
def test_tune_names_checkpoint_folders_as_this_module_expects(local_ray, tmp_path):
    """n2n_models.checkpoint relies on Tune naming a trial's checkpoint folders checkpoint_<index>
    in report order (not a documented contract): a Ray upgrade that changes it fails here."""
    from n2n_models.checkpoint import checkpoint_folders, checkpoint_index, read_checkpoint

    def reports_three_checkpoints(config):
        import tempfile

        for epoch in range(1, 4):
            with tempfile.TemporaryDirectory() as d:
                write_checkpoint(d, {"epoch": epoch, "replicas": []}, {})
                tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))

    tuner = tune.Tuner(reports_three_checkpoints, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x"))
    result = tuner.fit()[0]
    assert result.error is None
    folders = checkpoint_folders(result.path)
    assert [read_checkpoint(f).epoch for f in folders] == [1, 2, 3]
    assert [checkpoint_index(f.name) for f in folders] == [0, 1, 2]
