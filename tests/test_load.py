"""Load: a search of 200 one-epoch trials completes with every result recorded and reported."""
import pandas as pd
import pytest

from search.cli import main

pytestmark = pytest.mark.slow  # long end-to-end searches: python -m pytest -m "not slow" leaves them out


def test_two_hundred_one_epoch_trials_complete_and_are_reported(local_ray, tmp_path, capsys):
    rc = main(["--space", "tnet", "--budget", "smoke", "--data", "synthetic", "--train-size", "32", "--val-size", "8",
               "--epochs", "1", "--num-samples", "200", "--searcher", "random", "--scheduler", "fifo",
               "--storage", str(tmp_path), "--name", "load"])
    assert rc == 0
    trials = sorted((tmp_path / "load").glob("trial_*"))
    assert len(trials) == 200
    results = [pd.read_csv(t / "progress.csv") for t in trials]
    assert all(len(r) == 1 and r["val_psnr"].notna().all() for r in results)
    out = capsys.readouterr().out
    assert "200 trials (200 finished)" in out
