"""What a search decides on and what it reports: validation PSNR makes every choice and the test
split none (replacing the test photos changes nothing the search does), the summary and the report
show test PSNR beside the noisy and classical yardsticks on the same test images, and the refit
trains the best configuration again with fresh seeds, from which the report exports the model."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow  # end-to-end searches: python -m pytest -m "not slow" leaves them out

SMALL = ["--budget", "smoke", "--train-size", "128", "--val-size", "32", "--epochs", "2", "--seeds", "1",
         "--num-samples", "4", "--max-concurrent", "1", "--noise", "gaussian:25"]


def _photo(rng: np.random.Generator, size: int = 180) -> Image.Image:
    """A smooth random colour image (coarse noise upscaled), so that denoising it can be learnt."""
    coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


def _folder(root, rng, test_rng=None):
    """20 images; with test_rng, the test files (the 6th of every ten) are other images."""
    root.mkdir()
    for i in range(20):
        source = test_rng if (test_rng is not None and i % 10 == 5) else rng
        _photo(source).save(root / f"img{i:02d}.png")
        if test_rng is not None and i % 10 == 5:
            _photo(rng)  # keep the other files identical to the first folder's
    return root


def _trials(experiment) -> pd.DataFrame:
    rows = []
    for d in sorted(experiment.glob("trial_*")):
        params = json.loads((d / "params.json").read_text())
        progress = pd.read_csv(d / "progress.csv")
        rows.append({"lr": params["lr"], "width": params["width"], "loss": params["loss"],
                     "epochs": len(progress), "val": tuple(progress["val_psnr"].round(6)),
                     "test": tuple(progress["test_psnr"].round(6))})
    return pd.DataFrame(rows).sort_values(["lr", "width"]).reset_index(drop=True)


def test_no_choice_reads_the_test_split_and_the_refit_gives_the_exported_model(local_ray, tmp_path, capsys):
    from analysis.report import main as report_main
    from search.cli import main

    first = _folder(tmp_path / "photos", np.random.default_rng(0))
    other = _folder(tmp_path / "other-test", np.random.default_rng(0), test_rng=np.random.default_rng(99))
    assert main(["--data", f"folder:{first}", *SMALL, "--refit-seeds", "2",
                 "--storage", str(tmp_path / "runs"), "--name", "a"]) == 0
    out_a = capsys.readouterr().out
    assert main(["--data", f"folder:{other}", *SMALL, "--no-refit",
                 "--storage", str(tmp_path / "runs"), "--name", "b"]) == 0
    out_b = capsys.readouterr().out

    a, b = _trials(tmp_path / "runs" / "a"), _trials(tmp_path / "runs" / "b")
    assert len(a) == 4
    # the same configurations, trained to the same epochs, with the same validation PSNR every epoch
    pd.testing.assert_frame_equal(a.drop(columns="test"), b.drop(columns="test"))
    assert (a["test"] != b["test"]).all(), "the test images did change"
    assert out_a.split("Best:")[1].split("validation")[0] == out_b.split("Best:")[1].split("validation")[0]

    # the summary: validation and test PSNR, and the yardsticks on the same test images
    assert "test PSNR" in out_a and "Test images: noisy input" in out_a
    yardsticks = json.loads((tmp_path / "runs" / "a" / "yardsticks.json").read_text())
    assert f"noisy input {yardsticks['noisy_test_psnr']:.2f} dB" in out_a
    best_classical = yardsticks["methods"][yardsticks["best"]]["test_psnr"]
    assert best_classical > yardsticks["noisy_test_psnr"]  # gaussian:25 on smooth images

    # the refit: the best configuration again, with fresh seeds, for the search's full epochs
    refit = tmp_path / "runs" / "a" / "refit"
    replicas = sorted(refit.glob("trial_*"))
    assert len(replicas) == 2
    best_row = a.loc[a["val"].map(max).idxmax()]
    for d in replicas:
        params = json.loads((d / "params.json").read_text())
        assert (params["lr"], params["width"], params["loss"]) == (best_row["lr"], best_row["width"], best_row["loss"])
        assert params["seeds"] == 1 and len(pd.read_csv(d / "progress.csv")) == 2
    assert sorted(json.loads((d / "params.json").read_text())["seed"] for d in replicas) == [1, 2]
    assert "Refit done" in out_a and "the refit" in out_a.split("Refit done")[1]

    # the report exports the refit's best replica, with its test PSNR, and says how the data was split
    assert report_main([str(tmp_path / "runs" / "a"), "--samples", "2"]) == 0
    report = (tmp_path / "runs" / "a" / "report" / "report.md").read_text()
    assert "Splits: by file" in report and "Test images: noisy input" in report and "the refit" in report
    model = torch.load(tmp_path / "runs" / "a" / "report" / "best_model.pt", weights_only=True)
    assert model["seed"] in (1, 2) and model["checkpoint"].startswith("trial_")
    assert model["test_psnr"] == model["test_psnr"]  # recorded, not NaN


def test_under_a_time_budget_the_refit_trains_the_winner_for_the_time_the_search_left(local_ray, tmp_path):
    """--time-budget: the search takes 40% (two short trials end long before), the refit's replicas
    train the winner until the time is spent, each its share (one slot: one after the other)."""
    from analysis.report import main as report_main
    from search.cli import main

    assert main(["--data", "synthetic", *SMALL[:-6], "--num-samples", "2", "--max-concurrent", "1",
                 "--refit-seeds", "2", "--time-budget", "1.0", "--storage", str(tmp_path), "--name", "t"]) == 0
    replicas = sorted((tmp_path / "t" / "refit").glob("trial_*"))
    assert len(replicas) == 2
    for d in replicas:  # beyond the search's 2 epochs, both of them
        assert len(pd.read_csv(d / "progress.csv")) > 2
    assert report_main([str(tmp_path / "t"), "--samples", "2"]) == 0
    assert "(until the time budget ended)" in (tmp_path / "t" / "report" / "report.md").read_text()


def _decisions(experiment) -> list[tuple]:
    """Per trial, in the order the searcher proposed them: its configuration, the epochs it was
    trained to and its validation PSNR at each."""
    out = []
    for d in experiment.glob("trial_*"):
        params = json.loads((d / "params.json").read_text())
        history = pd.read_csv(d / "progress.csv").drop_duplicates("training_iteration", keep="last")
        out.append((history["process_start"].min(), params["lr"], params["loss"], params["width"],
                    history["training_iteration"].tolist(), history["val_psnr"].round(4).tolist()))
    return [row[1:] for row in sorted(out)]  # one trial at a time: in the order they started


def test_an_interrupted_and_resumed_search_trains_the_same_trials_to_the_same_epochs(local_ray, tmp_path,
                                                                                     monkeypatch):
    """TPE + ASHA, one trial at a time: Ctrl-C as the first trial ends, then --resume, proposes the
    same configurations, stops the same ones at the same rungs and trains them to the same PSNR as
    the uninterrupted search. ASHA's records of the first trial survive the interrupt: without them
    the second trial, which the first one's record stops at the first rung, would pass it unopposed
    (with these seeds; checked by leaving search.schedulers.KeepScheduler out)."""
    import os
    import signal

    from ray import tune

    import search.tuning
    from search.cli import main

    args = ["--space", "tnet", "--data", "synthetic", "--train-size", "96", "--val-size", "16", "--epochs", "4",
            "--seeds", "1", "--num-samples", "5", "--max-concurrent", "1", "--scheduler", "asha", "--no-time-budget",
            "--searcher", "optuna", "--search-seed", "1", "--no-refit", "--storage", str(tmp_path)]
    assert main([*args, "--name", "whole"]) == 0
    whole = _decisions(tmp_path / "whole")
    assert any(len(epochs) < 4 for *_, epochs, _ in whole), f"ASHA stopped some trial: {whole}"

    once = tmp_path / "interrupted-once"

    class CtrlCAsTheFirstTrialEnds(tune.Callback):  # pickled with the Tuner: the resumed search has it too
        def on_trial_complete(self, iteration, trials, trial, **info):
            if not once.exists():
                once.touch()
                os.kill(os.getpid(), signal.SIGINT)  # Tune's handler, in this (the main) thread, saves and stops

    run_config = search.tuning.run_config
    monkeypatch.setattr(search.tuning, "run_config", lambda *a, callbacks=(), **k: run_config(
        *a, callbacks=[*callbacks, CtrlCAsTheFirstTrialEnds()], **k))
    assert main([*args, "--name", "resumed"]) == 130
    monkeypatch.undo()
    experiment = tmp_path / "resumed"
    rows = [len(pd.read_csv(p)) for p in experiment.glob("trial_*/progress.csv") if p.stat().st_size]
    assert rows == [4], f"the interrupt came before the second trial's first result: {rows}"
    assert main([*args, "--name", "resumed", "--resume"]) == 0
    assert _decisions(experiment) == whole
