"""A knob added to the trial configuration (Adam's weight decay, searched in the tnet space)
reaches every output without edits elsewhere: the search summary, the report's table and
best_config.json, --configs, TensorBoard's HParams and the exported model."""
import json

import pytest
import torch

from n2n_models.config import TrainSpec
from n2n_models.train import ReplicaTrainer

SMALL = ["--budget", "smoke", "--data", "synthetic", "--train-size", "64", "--val-size", "16", "--epochs", "1",
         "--seeds", "1"]


@pytest.mark.parametrize("fused", [False, True])
def test_weight_decay_is_adams(fused):
    trainer = ReplicaTrainer(TrainSpec("tnet", weight_decay=3e-4, seeds=(0, 1)), fused=fused)
    assert {g["weight_decay"] for opt in trainer.optimizers for g in opt.param_groups} == {3e-4}


def _tensorboard_hparams(trial_dir) -> set:
    """The hyperparameter names a trial's TensorBoard events declare for the HParams dashboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(trial_dir))
    acc.Reload()
    names = set()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        names |= set(data.session_start_info.hparams)
    return names


@pytest.mark.slow
def test_a_searched_weight_decay_shows_in_summary_report_configs_tensorboard_and_exported_model(local_ray, tmp_path,
                                                                                              capsys):
    from analysis.report import main as report_main
    from search.cli import main

    assert main(["--space", "tnet", *SMALL, "--num-samples", "2", "--storage", str(tmp_path), "--name", "wd"]) == 0
    summary = capsys.readouterr().out
    assert "weight_decay" in summary.split("Best configurations")[1].splitlines()[1], summary
    experiment = tmp_path / "wd"
    trials = sorted(p for p in experiment.iterdir() if p.name.startswith("trial_"))
    decays = [json.loads((t / "params.json").read_text())["weight_decay"] for t in trials]
    assert len(decays) == 2 and all(d > 0 for d in decays)
    assert all("weight_decay" in _tensorboard_hparams(t) for t in trials)

    assert report_main([str(experiment), "--samples", "2"]) == 0
    report = (experiment / "report" / "report.md").read_text()
    assert "Weight decay" in report
    best = json.loads((experiment / "report" / "best_config.json").read_text())
    assert best["weight_decay"] in decays
    model = torch.load(experiment / "report" / "best_model.pt", weights_only=True)
    assert model["config"]["weight_decay"] == model["training"]["weight_decay"] == best["weight_decay"]

    assert main(["--configs", str(experiment / "report" / "best_config.json"), *SMALL,
                 "--storage", str(tmp_path), "--name", "again"]) == 0
    (again,) = [p for p in (tmp_path / "again").iterdir() if p.name.startswith("trial_")]
    assert json.loads((again / "params.json").read_text())["weight_decay"] == best["weight_decay"]
