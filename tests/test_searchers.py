"""The Optuna searcher on a small discrete space: a configuration proposed again is answered from
its first trial's result, never trained twice, and Optuna still hears of every proposal."""
import json

import pandas as pd
import pytest
from ray import tune

from search.cli import main
from search.searchers import RepeatAwareOptunaSearch

SMALL = ["--data", "synthetic", "--train-size", "128", "--val-size", "32", "--seeds", "1", "--epochs", "2"]


@pytest.mark.slow
def test_tpe_repeats_are_not_retrained_and_optuna_hears_every_proposal(local_ray, tmp_path, space, capsys):
    name = space("four-cells", {"lr": tune.choice([1e-3, 3e-3]), "width": tune.choice([8, 16])})
    rc = main(["--space", name, *SMALL, "--num-samples", "10", "--scheduler", "fifo", "--search-seed", "3",
               "--storage", str(tmp_path), "--name", "repeats"])
    assert rc == 0
    trials = {}
    for d in (tmp_path / "repeats").glob("trial_*"):
        params = json.loads((d / "params.json").read_text())
        trials[(params["lr"], params["width"])] = pd.read_csv(d / "progress.csv")["val_psnr"].iloc[-1]
    n_trials = len(list((tmp_path / "repeats").glob("trial_*")))
    assert n_trials == len(trials), "no configuration was trained twice"
    assert n_trials <= 4 < 10, "10 proposals from 4 configurations: the repeats were not trained"

    searcher = RepeatAwareOptunaSearch(proposals=0)
    searcher.restore_from_dir(str(tmp_path / "repeats"))
    study = searcher._ot_study.trials
    assert len(study) == 10, "every proposal is in Optuna's study"
    assert {t.state.name for t in study} == {"COMPLETE"}
    for t in study:  # a repeat is told the value its configuration's trial reached
        assert t.value == trials[(t.params["lr"], t.params["width"])]
    out = capsys.readouterr().out
    assert out.count("not retrained") == 10 - n_trials
    assert f"10 proposals: {10 - n_trials} repeated a configuration" in out
