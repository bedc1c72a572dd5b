"""Noise2Clean beside Noise2Noise: `target: clean` trains against the clean image and changes
nothing else (batches, their order, initial weights), and the n2n-vs-n2c grid runs every cell
and reports the paired difference."""
import json

import pandas as pd
import pytest
import torch

from n2n_models.data import load_pairs
from n2n_models.reference import data_order
from n2n_models.train import ReplicaTrainer, TrainSpec, init_replica, to_unit, training_target

numeric = pytest.mark.numeric  # run again on the AVX2 code paths by .ci/run

# float64 training holds a step's rounding far below 1e-9 of a loss of order 1e-2 (tests/test_train.py,
# FLOAT64_TOLERANCE); the clean and the noisy target's losses differ by the noise's variance, 1e-2 here
FLOAT64_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def pairs():
    return load_pairs("synthetic", "pixelate", train_size=96, val_size=16, seed=7)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_the_target_names_the_tensor_the_loss_compares_with(pairs):
    arrays = {**pairs.arrays(), "train_clean": pairs.train_clean}
    assert training_target(TrainSpec("tnet"), arrays) is pairs.train_b
    assert training_target(TrainSpec("tnet", target="clean"), arrays) is pairs.train_clean
    with pytest.raises(ValueError, match="no"):
        training_target(TrainSpec("tnet", target="clean"), pairs.arrays())
    with pytest.raises(ValueError, match="target"):
        TrainSpec("tnet", target="denoised")


@numeric
def test_clean_targets_change_the_loss_and_nothing_else(pairs, float64):
    """Same seed: the same initial weights and the same first batch; the first step's loss is the
    initial network's error against the clean images of that batch (Noise2Clean) or against their
    second noisy copies (Noise2Noise); and the whole epoch equals a noisy-target run handed the
    clean images, so the target swaps one tensor and nothing else."""
    seed, bs = 3, 32
    arrays = {**pairs.arrays(), "train_clean": pairs.train_clean}
    specs = {t: TrainSpec("tnet", lr=1e-3, batch_size=bs, epochs=1, seeds=(seed,), target=t) for t in ("noisy", "clean")}
    trainers = {t: ReplicaTrainer(spec, fused=False) for t, spec in specs.items()}
    start = {t: trainer.replica_state_dicts()[0] for t, trainer in trainers.items()}
    for name, value in start["noisy"].items():
        assert torch.equal(start["clean"][name], value), name

    first = data_order(seed, 0, len(pairs.train_a), "cpu")[:bs]
    model = init_replica(specs["noisy"], seed)
    with torch.no_grad():
        out = model(to_unit(pairs.train_a[first]))
    expected = {"noisy": torch.mean((out - to_unit(pairs.train_b[first])) ** 2),
                "clean": torch.mean((out - to_unit(pairs.train_clean[first])) ** 2)}
    assert abs(expected["noisy"] - expected["clean"]) > 100 * FLOAT64_TOLERANCE  # the test can tell them apart
    steps = {}
    for target, trainer in trainers.items():
        steps[target] = []
        trainer.train_epoch(pairs.train_a, training_target(specs[target], arrays), step_losses=steps[target])
        torch.testing.assert_close(steps[target][0][0], expected[target], atol=FLOAT64_TOLERANCE, rtol=0)

    handed = ReplicaTrainer(specs["noisy"], fused=False)
    handed_steps = []
    handed.train_epoch(pairs.train_a, pairs.train_clean, step_losses=handed_steps)
    torch.testing.assert_close(torch.stack(handed_steps), torch.stack(steps["clean"]), atol=0, rtol=0)


@pytest.mark.slow
def test_the_n2n_vs_n2c_grid_runs_every_cell_and_reports_the_paired_difference(local_ray, tmp_path, capsys):
    from analysis.report import main as report_main
    from search.cli import main

    assert main(["--space", "n2n-vs-n2c", "--budget", "smoke", "--data", "synthetic", "--train-size", "64",
                 "--val-size", "16", "--epochs", "1", "--seeds", "2", "--storage", str(tmp_path),
                 "--name", "g"]) == 0
    experiment = tmp_path / "g"
    trials = [p for p in experiment.iterdir() if p.name.startswith("trial_")]
    cells = {}
    for trial in trials:
        config = json.loads((trial / "params.json").read_text())
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1]
        cells[(config["model"], config["target"])] = rows[-1]["train_loss"]
    assert set(cells) == {(m, t) for m in ("tnet", "unet") for t in ("noisy", "clean")}
    for model in ("tnet", "unet"):  # against a noisy target the loss holds the noise's variance too
        assert cells[(model, "clean")] < cells[(model, "noisy")], cells

    capsys.readouterr()
    assert report_main([str(experiment), "--samples", "2"]) == 0
    table = pd.read_csv(experiment / "report" / "n2n_vs_n2c.csv")
    assert list(table["model"]) == ["tnet", "unet"]
    assert (table["paired_seeds"] == 2).all()
    for split in ("val", "test"):
        diff = table[f"{split}_diff_mean"]
        assert diff.notna().all() and table[f"{split}_diff_std"].notna().all()
        torch.testing.assert_close(torch.tensor(diff.to_numpy()),
                                   torch.tensor((table[f"{split}_n2n_mean"] - table[f"{split}_n2c_mean"]).to_numpy()),
                                   atol=1e-9, rtol=0)  # the mean of paired differences is the difference of means
    report = (experiment / "report" / "report.md").read_text()
    assert "## Noise2Noise against Noise2Clean" in report and "N2N − N2C" in report
    model = torch.load(experiment / "report" / "best_model.pt", weights_only=True)
    assert model["training"]["target"] in ("noisy", "clean")
