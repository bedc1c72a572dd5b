"""Population Based Training (`--scheduler pbt`): members exchange weights, so the network's knobs
stay at the report's setting and only training knobs are perturbed; a member restarted from
another's checkpoint trains with its own new lr and weight decay, and with Adam afresh when its
loss differs; a search runs, exploits, and is
reported and exported like any other."""
import json

import pytest
import torch
from ray import tune

from n2n_models.data import load_pairs
from n2n_models.train import ReplicaTrainer, TrainSpec
from search.spaces import SPACES, population_space, start_point


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
    rng = torch.get_rng_state()
    member.train_epoch(pairs.train_a, pairs.train_b)
    torch.set_rng_state(rng)
    fresh.train_epoch(pairs.train_a, pairs.train_b)
    for a, b in zip(member.replica_state_dicts(), fresh.replica_state_dicts()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    same_loss = ReplicaTrainer(TrainSpec("tnet", lr=1e-3, loss="l2", batch_size=32, seeds=(0, 1)), fused=fused)
    same_loss.load_state_dict(state)  # the donor's own loss: the moments come with the weights
    assert {float(s["step"]) for opt in same_loss.optimizers for s in opt.state.values()} == {2.0}


@pytest.mark.slow
def test_a_pbt_search_exploits_and_is_reported_like_any_search(local_ray, tmp_path, capsys):
    from analysis.report import main as report_main
    from search.cli import main

    assert main(["--space", "tnet", "--scheduler", "pbt", "--budget", "smoke", "--data", "synthetic",
                 "--train-size", "64", "--val-size", "16", "--time-budget", "0.75", "--num-samples", "2",
                 "--storage", str(tmp_path),
                 "--name", "p"]) == 0
    out = capsys.readouterr().out
    assert "errored" not in out and "a population of 2" in out, out
    experiment = tmp_path / "p"
    exploits = (experiment / "pbt_global.txt").read_text().splitlines()
    assert exploits, "no member took another's weights"
    changed = []
    for trial in experiment.glob("trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        changed.append(len({(r["config"]["lr"], r["config"]["batch_size"], r["config"]["loss"]) for r in rows}) > 1)
    assert any(changed), "PBT changed no member's training knobs during training"
    saved = json.loads((experiment / "n2n_experiment.json").read_text())
    assert saved["num_samples"] == 2 and saved["refit_seeds"] == 0
    assert report_main([str(experiment), "--samples", "2"]) == 0
    assert (experiment / "report" / "best_model.pt").is_file()
    report = (experiment / "report" / "report.md").read_text()
    assert "Population Based Training" in report and "2 trials: 2 out of time." in report, report[:600]


def test_a_population_larger_than_the_trial_slots_exits_2_instead_of_waiting(local_ray, tmp_path, capsys):
    """Members train until the budget ends, so one without a slot would never start."""
    from search.cli import main

    assert main(["--space", "tnet", "--scheduler", "pbt", "--budget", "smoke", "--data", "synthetic",
                 "--time-budget", "1", "--num-samples", "64", "--storage", str(tmp_path), "--name", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than the" in err[0] and "--num-samples" in err[0], err
    assert not (tmp_path / "p").exists()
