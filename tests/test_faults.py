"""Faults a long search must survive: failing trials (retried from their checkpoint, or recorded
as errored), diverging trials (stopped cleanly and told to Optuna as failed)."""
import json
import math
import os

import pandas as pd
import pytest
from ray import tune

from search.cli import main

pytestmark = pytest.mark.slow  # long end-to-end searches: python -m pytest -m "not slow" leaves them out

SMALL = ["--data", "synthetic", "--train-size", "128", "--val-size", "32", "--seeds", "1", "--no-refit"]


def histories(experiment):
    return {json.loads((d / "params.json").read_text()).get("label", d.name): d
            for d in sorted(experiment.glob("trial_*"))}


def test_failing_trials_are_retried_from_checkpoint_or_recorded_as_errored(local_ray, tmp_path, space, capsys):
    name = space("faults", {"label": tune.choice(["healthy", "fails-once", "always-fails"]),
                            "fault_epoch": tune.choice([None, 2]), "fault_repeat": tune.choice([False, True])},
                 cells=[{"label": "healthy", "fault_epoch": None, "fault_repeat": False},
                        {"label": "fails-once", "fault_epoch": 2, "fault_repeat": False},
                        {"label": "always-fails", "fault_epoch": 2, "fault_repeat": True}])
    rc = main(["--space", name, *SMALL, "--epochs", "4", "--storage", str(tmp_path), "--name", "faults"])
    assert rc == 0, "the search completes although one trial keeps failing"
    trials = histories(tmp_path / "faults")
    for label in ("healthy", "fails-once"):
        history = pd.read_csv(trials[label] / "progress.csv")
        assert history["training_iteration"].tolist() == [1, 2, 3, 4], label
        assert history["epoch"].tolist() == [1, 2, 3, 4], f"{label} continued from its checkpoint"
    status = {trials_by_dir: t.status for t in tune.ExperimentAnalysis(str(tmp_path / "faults")).trials
              for trials_by_dir in [os.path.basename(t.path)]}
    assert status[trials["healthy"].name] == status[trials["fails-once"].name] == "TERMINATED"
    assert status[trials["always-fails"].name] == "ERROR"
    retried = pd.read_csv(trials["fails-once"] / "progress.csv")
    assert retried["process_start"].iloc[1] > retried["process_start"].iloc[0], "epoch 2 ran in a new attempt"
    failed = trials["always-fails"]
    assert (failed / "error.txt").exists() and "injected fault at epoch 2" in (failed / "error.txt").read_text()
    assert pd.read_csv(failed / "progress.csv")["training_iteration"].tolist() == [1]
    out = capsys.readouterr().out
    assert "1 trial(s) errored" in out


def test_diverging_trials_stop_cleanly_and_optuna_learns_they_failed(local_ray, tmp_path, space, capsys):
    from search.searchers import TPESearch

    name = space("diverge", {"lr": tune.choice([1e-3, 1e3]), "loss": "hdr"})
    rc = main(["--space", name, *SMALL, "--epochs", "3", "--num-samples", "6", "--scheduler", "fifo",
               "--search-seed", "1", "--storage", str(tmp_path), "--name", "diverge"])
    assert rc == 0
    rows = {d.name: (json.loads((d / "params.json").read_text())["lr"], pd.read_csv(d / "progress.csv"))
            for d in (tmp_path / "diverge").glob("trial_*")}
    diverged = {t for t, (lr, h) in rows.items() if lr == 1e3}
    assert diverged and len(diverged) < len(rows), "the seeded search tried both learning rates"
    for trial, (lr, history) in rows.items():
        if trial in diverged:
            assert history["diverged"].tolist() == [True], "a diverged trial stops at once, cleanly"
            assert not (tmp_path / "diverge" / trial / "error.txt").exists(), "diverging is not a crash"
        else:
            assert len(history) == 3 and not history["diverged"].any()
    searcher = TPESearch()
    searcher.restore_from_dir(str(tmp_path / "diverge"))
    states = {t.params["lr"]: set() for t in searcher.study.trials}
    for t in searcher.study.trials:
        states[t.params["lr"]].add(t.state.name)
        assert all(math.isfinite(v) for v in t.intermediate_values.values()), "Optuna never hears NaN"
    assert states[1e3] == {"FAIL"} and states[1e-3] == {"COMPLETE"}, states
    out = capsys.readouterr().out
    assert "diverged" in out
    best_line = next(line for line in out.splitlines() if line.startswith("Best:"))
    assert "nan" not in best_line.lower()
