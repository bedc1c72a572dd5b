"""Population Based Training (`--scheduler pbt`): members exchange weights, so the network's knobs
stay at the report's setting and only training knobs are perturbed; a member restarted from
another's checkpoint trains with its own new lr and weight decay, and with Adam afresh when its
loss differs; a search runs, exploits, and is
reported and exported like any other; under a time budget it ends with its finish (the best
member trained on alone, its lr falling to 0), whose model the report exports."""
import json

import pytest
import torch
from ray import tune

from n2n_models.data import load_pairs
from n2n_models.train import ReplicaTrainer, TrainSpec
from search.spaces import SPACES, population_space, start_point


def same_epoch_same_weights(one: ReplicaTrainer, other: ReplicaTrainer, pairs) -> bool:
    """Whether an epoch of each, from the same random state, leaves both with equal weights."""
    rng = torch.get_rng_state()
    one.train_epoch(pairs.train_a, pairs.train_b)
    torch.set_rng_state(rng)
    other.train_epoch(pairs.train_a, pairs.train_b)
    return all(torch.equal(a[k], b[k]) for a, b in zip(one.replica_state_dicts(), other.replica_state_dicts()) for k in a)


def test_the_population_fixes_the_network_at_the_reports_setting_and_perturbs_training_knobs():
    params, mutations = population_space(SPACES["tnet"].params)
    start = start_point(SPACES["tnet"].params)
    for knob in ("width", "batchnorm", "dropout"):  # a member takes another's weights: same shapes, same network
        assert params[knob] == start[knob] and knob not in mutations
    assert set(mutations) == {"lr", "weight_decay", "loss", "batch_size"}
    assert mutations["batch_size"] == [16, 32, 64]  # PBT shifts along a list to a neighbour
    assert isinstance(mutations["lr"], tune.search.sample.Float)


@pytest.mark.parametrize("fused", [False, True])
def test_a_member_restarted_from_anothers_checkpoint_trains_with_its_own_lr(fused):
    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=8, seed=2)
    donor = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, seeds=(0, 1)), fused=fused)
    donor.train_epoch(pairs.train_a, pairs.train_b)
    member = ReplicaTrainer(TrainSpec("tnet", lr=2e-4, weight_decay=1e-5, batch_size=32, seeds=(0, 1)), fused=fused)
    member.load_state_dict(donor.state_dict())
    for opt in member.optimizers:
        assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(2e-4, 1e-5)}
    for mine, theirs in zip(member.optimizers, donor.optimizers):  # Adam's moments and step come with the weights
        steps = {float(s["step"]) for s in mine.state.values()}
        assert steps == {float(s["step"]) for s in theirs.state.values()} == {2.0}
    for a, b in zip(member.replica_state_dicts(), donor.replica_state_dicts()):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fused", [False, True])
def test_a_member_restarted_with_another_loss_starts_adam_afresh(fused):
    """Adam's moments measure the donor's loss; under another loss (HDR's gradients are up to 10^4
    times L2's) they would make the first steps far too long, so the member starts Adam afresh: it
    trains exactly as a trainer given the donor's weights and no optimiser state."""
    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=8, seed=2)
    donor = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, loss="l2", batch_size=32, seeds=(0, 1)), fused=fused)
    donor.train_epoch(pairs.train_a, pairs.train_b)
    state = donor.state_dict()
    member, fresh = (ReplicaTrainer(TrainSpec("tnet", lr=1e-3, loss="hdr", batch_size=32, seeds=(0, 1)), fused=fused)
                     for _ in range(2))
    member.load_state_dict(state)
    fresh.load_state_dict({**state, "optimizers": [{**o, "state": {}} for o in state["optimizers"]]})
    assert all(not opt.state for opt in member.optimizers)  # no moments, no step count
    assert same_epoch_same_weights(member, fresh, pairs)
    same_loss = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, loss="l2", batch_size=32, seeds=(0, 1)), fused=fused)
    same_loss.load_state_dict(state)  # the donor's own loss: the moments come with the weights
    assert {float(s["step"]) for opt in same_loss.optimizers for s in opt.state.values()} == {2.0}


@pytest.mark.parametrize("fused", [False, True])
def test_a_scaled_lr_trains_exactly_as_that_lr_would(fused):
    """The finish anneals the lr by scaling it between epochs: the steps after scale_lr(f) are the
    steps of a trainer built with f times the lr (same state, same batches)."""
    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=8, seed=2)
    scaled = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, seeds=(0, 1)), fused=fused)
    scaled.train_epoch(pairs.train_a, pairs.train_b)
    state = scaled.state_dict()
    built = ReplicaTrainer(TrainSpec("tnet", lr=1e-3 * 0.25, batch_size=32, seeds=(0, 1)), fused=fused)
    built.load_state_dict(state)
    scaled.scale_lr(0.25)
    unscaled = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, batch_size=32, seeds=(0, 1)), fused=fused)
    unscaled.load_state_dict(state)
    results = []
    for trainer in (scaled, built, unscaled):
        torch.set_rng_state(state["rng"]["cpu"])
        trainer.train_epoch(pairs.train_a, pairs.train_b)
        results.append(trainer.replica_state_dicts())
    for a, b, c in zip(*results):
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)  # the scale did change the steps


def test_a_trial_started_from_a_checkpoint_goes_on_from_it(tmp_path):
    """`start_from` (the finish) loads another trial's checkpoint: weights, Adam's state and epoch,
    so training on from it is training on the trainer that wrote it; a folder without one is a
    one-line error."""
    from n2n_models.checkpoint import write_checkpoint
    from trainables.n2n import start_from

    pairs = load_pairs("synthetic", "pixelate", train_size=64, val_size=8, seed=2)
    spec = TrainSpec("tnet", lr=1e-3, batch_size=32, seeds=(3,), ema=0.9)
    member = ReplicaTrainer(spec)
    member.train_epoch(pairs.train_a, pairs.train_b)
    write_checkpoint(tmp_path, member.state_dict(), {"best_val_psnr": 20.0})
    finish = ReplicaTrainer(spec)
    start_from(finish, str(tmp_path))
    assert finish.epoch == member.epoch == 1
    assert same_epoch_same_weights(member, finish, pairs)
    with pytest.raises(RuntimeError, match="cannot start from the checkpoint in") as info:
        start_from(ReplicaTrainer(spec), str(tmp_path / "none"))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_pbt_search_exploits_and_is_reported_like_any_search(local_ray, tmp_path, capsys):
    from analysis.report import main as report_main
    from search.cli import main

    assert main(["--space", "tnet", "--scheduler", "pbt", "--budget", "smoke", "--data", "synthetic",
                 "--train-size", "64", "--val-size", "16", "--time-budget", "1.25", "--num-samples", "2",
                 "--storage", str(tmp_path),
                 "--name", "p"]) == 0
    out = capsys.readouterr().out
    assert "errored" not in out and "a population of 2" in out and "Finish done in" in out, out
    experiment = tmp_path / "p"
    exploits = (experiment / "pbt_global.txt").read_text().splitlines()
    assert exploits, "no member took another's weights"
    changed = []
    for trial in experiment.glob("trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        changed.append(len({(r["config"]["lr"], r["config"]["batch_size"], r["config"]["loss"]) for r in rows}) > 1)
    assert any(changed), "PBT changed no member's training knobs during training"
    # bench/search_quality.py's "the search's start alone" trains what the first member started with
    from conftest import load_bench
    from n2n_models.config import check_config

    alone = load_bench("search_quality.py").alone_config("the search's start alone", "tnet")
    (first,) = experiment.glob("trial_01-*")
    first = json.loads((first / "result.json").read_text().splitlines()[0])["config"]
    first = check_config({k: v for k, v in first.items() if k in alone and k != "label"}, "the first member")
    assert {**first, "label": alone["label"]} == alone, (first, alone)
    saved = json.loads((experiment / "n2n_experiment.json").read_text())
    assert saved["num_samples"] == 2 and saved["refit_seeds"] == 0
    assert saved["finish"] and saved["time_budget_min"] == 1.25

    # the finish: the best member by validation, from its best epoch's checkpoint, alone, lr falling
    from analysis.export import best_checkpoint
    from analysis.load import epoch_config, load_experiment
    from n2n_models.checkpoint import read_checkpoint

    leader = best_checkpoint(load_experiment(experiment))
    finish = json.loads((experiment / "refit" / "n2n_experiment.json").read_text())
    assert finish["space"] == "finish" and finish["num_samples"] == 1
    (trial,) = (experiment / "refit").glob("trial_*")
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    config = rows[0]["config"]
    member = load_experiment(experiment).trials.loc[leader.trial_id]["folder"]
    knobs = epoch_config(experiment / member, leader.epoch)  # what the member trained its best epoch with
    assert config["start_from"] == str(leader.path.parent)
    assert all(config[k] == knobs[k] for k in ("lr", "loss", "batch_size", "weight_decay")), (config, knobs)
    started = read_checkpoint(config["start_from"]).trainer["epoch"]
    assert started == leader.epoch and rows[0]["epoch"] == leader.epoch + 1
    lrs = [r["lr_now"] for r in rows]
    assert lrs[0] == config["lr"] and all(0 <= b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < lrs[0] / 2, lrs

    assert report_main([str(experiment), "--samples", "2"]) == 0
    model = torch.load(experiment / "report" / "best_model.pt", weights_only=True)
    # the finish's best epoch, unless the member it started from had the higher validation PSNR
    finished = best_checkpoint(load_experiment(experiment / "refit"))
    assert finished.trial_id == rows[0]["trial_id"]
    expected = finished if finished.config_psnr_mean >= leader.config_psnr_mean else leader
    assert (model["trial_id"], model["epoch"]) == (expected.trial_id, expected.epoch)
    report = (experiment / "report" / "report.md").read_text()
    assert "Population Based Training" in report and "2 trials: 2 out of time." in report, report[:600]
    assert "the finish" in report


def test_the_summary_shows_each_member_under_its_own_id_with_its_best_epochs_knobs():
    """After an exchange Ray's PBT hands a member the last result of the member it copied (its
    `Result.metrics` and `Result.config`): a member paused there when the time ran out was listed
    under the other's id with knobs it never trained."""
    import pandas as pd
    from ray.tune import Result

    from search.cli import parse
    from search.summary import trial_rows

    def history(trial_id, lrs, vals):
        return pd.DataFrame({"trial_id": trial_id, "training_iteration": range(1, len(lrs) + 1),
                             "epoch": range(1, len(lrs) + 1), "val_psnr": vals, "val_psnr_std": 0.0,
                             "test_psnr": [v - 0.3 for v in vals], "config/model": "tnet", "config/lr": lrs,
                             "config/loss": "l2", "config/batch_size": 32})

    def last(frame, **changes):
        return {"trial_id": frame["trial_id"].iloc[-1], "training_iteration": len(frame),
                "config": {"model": "tnet", "lr": frame["config/lr"].iloc[-1], "loss": "l2", "batch_size": 32,
                           **changes}}

    leader = history("b", [8e-4] * 5, [25.0, 26.0, 26.5, 26.8, 27.0])
    # member a: lr 5e-4, took b's weights and lr 1e-3 at epoch 3, best at epoch 4, then paused at an
    # exchange to lr 1.2e-3 when the time ran out: Tune's result for it is b's last, with the new lr
    member = history("a", [5e-4, 5e-4, 1e-3, 1e-3], [24.0, 25.0, 26.6, 26.9])
    results = [Result(metrics=last(leader), checkpoint=None, error=None, path="/b", metrics_dataframe=leader),
               Result(metrics=last(leader, lr=1.2e-3), checkpoint=None, error=None, path="/a",
                      metrics_dataframe=member)]
    experiment = parse(["--space", "tnet", "--scheduler", "pbt", "--time-budget", "2"])[0]
    rows = trial_rows(experiment, results).set_index("trial")
    assert sorted(rows.index) == ["a", "b"]
    assert rows.loc["a", "lr"] == 1e-3 and rows.loc["a", "best_epoch"] == 4 and rows.loc["a", "val_psnr"] == 26.9
    assert rows.loc["b", "lr"] == 8e-4 and rows.loc["b", "best_epoch"] == 5


def test_an_interrupted_finish_or_refit_says_so(capsys):
    import pandas as pd

    from search.finish import print_finish
    from search.refit import print_refit

    rows = pd.DataFrame([{"epochs": 9, "best_epoch": 7, "val_psnr": 27.5, "test_psnr": 27.1}])
    for printer, name in ((print_finish, "Finish"), (print_refit, "Refit")):
        printer(rows, 90.0, interrupted=True)
        printer(rows, 90.0)
        out = capsys.readouterr().out
        assert f"{name} interrupted after 1.5 min:" in out and f"{name} done in 1.5 min:" in out, out


def test_a_population_larger_than_the_trial_slots_exits_2_instead_of_waiting(local_ray, tmp_path, capsys):
    """Members train until the budget ends, so one without a slot would never start."""
    from search.cli import main

    assert main(["--space", "tnet", "--scheduler", "pbt", "--budget", "smoke", "--data", "synthetic",
                 "--time-budget", "1", "--num-samples", "64", "--storage", str(tmp_path), "--name", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than the" in err[0] and "--num-samples" in err[0], err
    assert not (tmp_path / "p").exists()
