"""Load: a search of 500 one-epoch trials completes with every trial recorded once, and the report
reads them all (bench/scale.py measures how the cost grows, to 5,000 trials)."""
import re

import pandas as pd
import pytest

from search.cli import main

pytestmark = pytest.mark.slow  # long end-to-end searches: python -m pytest -m "not slow" leaves them out

TRIALS = 500


def test_five_hundred_one_epoch_trials_are_each_recorded_once_and_reported(local_ray, tmp_path, space, capsys):
    """The smallest real trainable: TNet at width 8, one step of one epoch, each trial its own lr."""
    from ray import tune

    from analysis.load import load_experiment

    name = space("load", {"lr": tune.loguniform(1e-4, 1e-2), "width": 8})
    rc = main(["--space", name, "--budget", "smoke", "--data", "synthetic", "--train-size", "32", "--val-size", "8",
               "--epochs", "1", "--num-samples", str(TRIALS), "--searcher", "random", "--scheduler", "fifo",
               "--no-refit", "--storage", str(tmp_path), "--name", "load"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"{TRIALS} trials ({TRIALS} finished)" in out
    assert out.count("[n2n-search] trial ") == 0, "no line per trial in a search of hundreds"
    folders = sorted((tmp_path / "load").glob("trial_*"))
    assert len(folders) == TRIALS
    numbers = sorted(int(re.match(r"trial_(\d+)-", f.name).group(1)) for f in folders)
    assert numbers == list(range(1, TRIALS + 1)), "each trial numbered once"
    results = [pd.read_csv(f / "progress.csv") for f in folders]
    assert all(len(r) == 1 and r["val_psnr"].notna().all() for r in results), "one result row per trial"
    assert len({r["trial_id"].iloc[0] for r in results}) == TRIALS
    trials = load_experiment(tmp_path / "load").trials
    assert len(trials) == TRIALS and (trials["status"] == "finished").all() and (trials["epochs"] == 1).all()
