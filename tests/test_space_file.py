"""Search spaces from a YAML file (--space-file) and from Python (search.run_search): every kind of
mistake in a space file exits 2 with one line naming the key, and a space run from the file and
the same space run from Python train the same trials with the same seeds."""
import json

import pytest
from ray import tune

from search.cli import main
from search.space_file import SpaceError, check_spec, spec_from_tune, to_params

# what the file holds -> words the one-line error must contain (the key it names among them)
BAD_SPACE_FILES = {
    "not yaml": ("lr: {loguniform: [1e-4", "not YAML"),
    "not a mapping": ("- lr\n- loss\n", "expected a mapping"),
    "empty file": ("", "expected a mapping"),
    "unknown knob": ("learning_rate: {loguniform: [1.0e-4, 1.0e-3]}\n", "'learning_rate'"),
    "unknown distribution": ("lr: {normal: [1.0e-3, 1.0e-4]}\n", "lr: unknown distribution 'normal'"),
    "two distributions": ("lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}\n", "lr: expected one distribution"),
    "one bound": ("lr: {loguniform: [1.0e-4]}\n", "lr: loguniform needs [low, high]"),
    "bounds reversed": ("lr: {loguniform: [1.0e-3, 1.0e-4]}\n", "lr: loguniform needs low < high"),
    "log of zero": ("weight_decay: {loguniform: [0.0, 1.0e-3]}\n", "weight_decay: loguniform needs low > 0"),
    "bound outside the knob": ("dropout: {uniform: [0.0, 1.5]}\n", "dropout"),
    "bound not a number": ("lr: {uniform: [small, 1.0e-3]}\n", "lr: uniform bounds must be numbers"),
    "range on a choice knob": ("loss: {uniform: [0, 1]}\n", "loss: uniform does not fit loss"),
    "randint on a float": ("lr: {randint: [1, 3]}\n", "lr: randint does not fit lr"),
    "uniform on an integer": ("width: {uniform: [16, 64]}\n", "width: uniform does not fit width"),
    "randint below the knob": ("batch_size: {randint: [1, 64]}\n", "batch_size"),
    "empty choice": ("width: {choice: []}\n", "width: choice needs a non-empty list"),
    "bad choice value": ("loss: {choice: [l2, l3]}\n", "loss"),
    "value twice": ("width: {choice: [16, 16]}\n", "width: choice lists a value twice"),
    "bad constant": ("batchnorm: yes-please\nlr: {loguniform: [1.0e-4, 1.0e-3]}\n", "batchnorm"),
    "bare list": ("width: [16, 32]\n", "width: a list is not a value"),
    "knob of another model": ("model: tnet\nlatent: {choice: [8, 16]}\n", "latent: not a knob of tnet"),
    "grid mixed with sampling": ("loss: {grid: [l1, l2]}\nlr: {loguniform: [1.0e-4, 1.0e-3]}\n",
                                 "loss: a grid does not mix"),
    "nothing to search": ("model: tnet\nlr: 1.0e-3\n", "nothing to search"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACE_FILES))
def test_every_bad_space_file_exits_2_with_one_line_naming_the_key(case, tmp_path, capsys):
    text, expected = BAD_SPACE_FILES[case]
    (tmp_path / "space.yaml").write_text(text)
    assert main(["--space-file", str(tmp_path / "space.yaml"), "--budget", "smoke", "--data", "synthetic",
                 "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0] and "space.yaml" in err[0], err
    assert not (tmp_path / "runs").exists(), "bad usage writes nothing"


def test_a_missing_space_file_and_a_second_space_exit_2(tmp_path, capsys):
    assert main(["--space-file", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    assert main(["--space-file", str(tmp_path / "s.yaml"), "--space", "unet"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_tune_distributions_and_space_file_entries_are_the_same_space():
    from_tune = spec_from_tune({"model": "tnet", "lr": tune.loguniform(1e-4, 3e-3), "dropout": tune.uniform(0.0, 0.2),
                                "batch_size": tune.randint(16, 65), "loss": tune.choice(["l1", "l2"])})
    written = {"model": "tnet", "lr": {"loguniform": [1e-4, 3e-3]}, "dropout": {"uniform": [0.0, 0.2]},
               "batch_size": {"randint": [16, 65]}, "loss": {"choice": ["l1", "l2"]}}
    assert check_spec(from_tune) == check_spec(written)
    with pytest.raises(SpaceError, match="width"):
        spec_from_tune({"width": tune.qrandint(16, 64, 16)})


def test_a_grid_file_trains_every_combination():
    params, cells = to_params(check_spec({"loss": {"grid": ["l1", "l2"]}, "width": {"grid": [16, 32]}, "lr": 1e-3}))
    assert sorted((c["loss"], c["width"]) for c in cells) == [("l1", 16), ("l1", 32), ("l2", 16), ("l2", 32)]
    assert params["lr"] == 1e-3


def _trials(experiment) -> list[tuple]:
    """(configuration, per-epoch validation PSNR) of every trial, in the order they were created."""
    out = []
    for trial in sorted(p for p in experiment.iterdir() if p.name.startswith("trial_")):
        config = json.loads((trial / "params.json").read_text())
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        out.append((config, [round(r["val_psnr"], 6) for r in rows]))
    return sorted(out, key=lambda t: json.dumps(t[0], sort_keys=True))


@pytest.mark.slow
def test_a_space_file_and_the_same_space_from_python_train_the_same_trials(local_ray, tmp_path):
    import search

    text = ("model: tnet\nlr: {loguniform: [2.0e-4, 3.0e-3]}\nloss: {choice: [l2, l1]}\n"
            "batch_size: {randint: [16, 49]}\n")
    (tmp_path / "space.yaml").write_text(text)
    common = ["--budget", "smoke", "--data", "synthetic", "--train-size", "64", "--val-size", "16",
              "--num-samples", "3", "--epochs", "1", "--max-concurrent", "1", "--search-seed", "3", "--storage", str(tmp_path)]
    assert main(["--space-file", str(tmp_path / "space.yaml"), *common, "--name", "file"]) == 0
    result = search.run_search(
        {"model": "tnet", "lr": tune.loguniform(2e-4, 3e-3), "loss": tune.choice(["l2", "l1"]),
         "batch_size": tune.randint(16, 49)},
        budget="smoke", data="synthetic", train_size=64, val_size=16, num_samples=3, epochs=1, max_concurrent=1,
        search_seed=3, storage=str(tmp_path), name="python")
    from_file, from_python = _trials(tmp_path / "file"), _trials(tmp_path / "python")
    assert len(from_file) == 3 and from_file == from_python
    assert len({c["batch_size"] for c, _ in from_file}) > 1  # the space really was searched
    assert result.status == 0 and len(result.trials) == 3
    assert set(result.trials["lr"]) == {c["lr"] for c, _ in from_python}
    assert result.best_model is not None and result.best_model.is_file()
    saved = json.loads((tmp_path / "python" / "n2n_experiment.json").read_text())
    assert saved["space"] == "custom" and saved["space_spec"]["lr"] == {"loguniform": [2e-4, 3e-3]}
