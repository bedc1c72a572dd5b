"""The Optuna searcher (TPESearch): Optuna hears every epoch of every trial, a trial ASHA stopped as
PRUNED, a finished one as COMPLETE, a diverged one as FAIL; proposals made while trials run avoid
them (constant liar); a configuration proposed again is answered from its first trial, never trained
twice; and a restored searcher decides what the original would have."""
import json
import math
import os
import pickle
import signal
import threading
import time

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from ray import tune

from search.cli import main
from search.searchers import TPESearch, optuna_space

SMALL = ["--budget", "smoke", "--data", "synthetic", "--train-size", "128", "--val-size", "32", "--seeds", "1", "--no-refit"]
SPACE = {"model": "tnet", "lr": tune.loguniform(1e-4, 1e-2), "dropout": tune.uniform(0.0, 0.3),
         "loss": tune.choice(["l2", "l1"]), "width": tune.choice([8, 16]), "batch_size": 32,
         "epochs": 3, "seeds": 1, "fused": "auto"}
EPOCHS = 3


def psnr(config, epoch) -> float:
    """A made-up validation curve: best near lr 1e-3 with l2, rising with the epochs."""
    return 30.0 - (math.log10(config["lr"]) + 3) ** 2 - (config["loss"] == "l1") - (EPOCHS - epoch)


def tpe(seed=0, **kwargs) -> TPESearch:
    searcher = TPESearch(epochs=EPOCHS, seed=seed, log=lambda line: None, **kwargs)
    searcher.set_search_properties("best_val_psnr", "max", SPACE)
    return searcher


def run_trial(searcher, trial_id, config, epochs=EPOCHS):
    """Report `epochs` epochs as Tune does (the last result only at completion, as when a scheduler
    stops the trial on it) and end the trial."""
    results = [{"training_iteration": e, "best_val_psnr": psnr(config, e), "diverged": False}
               for e in range(1, epochs + 1)]
    for result in results[:-1]:
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, results[-1])


def test_tune_space_becomes_optuna_distributions_and_constants_pass_through():
    distributions, constants = optuna_space(SPACE)
    assert distributions == {"lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.3),
                             "loss": CategoricalDistribution(["l2", "l1"]), "width": CategoricalDistribution([8, 16])}
    assert constants == {"model": "tnet", "batch_size": 32, "epochs": 3, "seeds": 1, "fused": "auto"}
    config = tpe().suggest("t1")
    assert {k: config[k] for k in constants} == constants, "constants reach the trial unchanged"
    assert 1e-4 <= config["lr"] <= 1e-2 and config["loss"] in ("l2", "l1") and config["width"] in (8, 16)
    with pytest.raises(ValueError, match="'lr'.*--searcher random"):
        optuna_space({"lr": tune.quniform(0.1, 1.0, 0.1)})


def test_proposals_made_while_a_trial_runs_count_it_as_a_bad_result():
    """Constant liar: the same history proposes differently whether a trial is still running or
    not there at all (a FAIL, which TPE ignores); without it TPE would not see running trials."""
    searcher = tpe()
    for i in range(12):  # past TPE's 10 random start-up trials
        run_trial(searcher, f"t{i}", searcher.suggest(f"t{i}"))
    searcher.suggest("running")
    assert isinstance(searcher.study.sampler, optuna.samplers.TPESampler)
    with_running, without = pickle.loads(pickle.dumps(searcher.study)), pickle.loads(pickle.dumps(searcher.study))
    [running] = without.get_trials(states=(TrialState.RUNNING,))
    without.tell(running.number, state=TrialState.FAIL)
    assert with_running.ask(running.distributions).params != without.ask(running.distributions).params


def test_a_stopped_trial_reaches_optuna_as_pruned_with_its_intermediate_values():
    searcher = tpe()
    stopped, finished, diverged, errored = (searcher.suggest(t) for t in ("stopped", "finished", "diverged", "errored"))
    run_trial(searcher, "stopped", stopped, epochs=1)
    run_trial(searcher, "finished", finished)
    searcher.on_trial_result("diverged", {"training_iteration": 1, "best_val_psnr": psnr(diverged, 1)})
    searcher.on_trial_result("diverged", {"training_iteration": 2, "best_val_psnr": psnr(diverged, 1),
                                          "val_psnr": math.nan, "diverged": True})
    searcher.on_trial_complete("diverged", {"training_iteration": 2, "best_val_psnr": psnr(diverged, 1),
                                            "val_psnr": math.nan, "diverged": True})
    searcher.on_trial_result("errored", {"training_iteration": 1, "best_val_psnr": math.nan})
    searcher.on_trial_complete("errored", error=True)
    told = {t.params["lr"]: t for t in searcher.study.trials}
    assert told[stopped["lr"]].state == TrialState.PRUNED
    assert told[stopped["lr"]].intermediate_values == {1: psnr(stopped, 1)}
    assert told[finished["lr"]].state == TrialState.COMPLETE and told[finished["lr"]].value == psnr(finished, EPOCHS)
    assert told[finished["lr"]].intermediate_values == {e: psnr(finished, e) for e in (1, 2, 3)}
    assert told[diverged["lr"]].state == told[errored["lr"]].state == TrialState.FAIL
    assert told[diverged["lr"]].intermediate_values == {1: psnr(diverged, 1)}, "nothing from the diverged epoch"
    assert told[errored["lr"]].intermediate_values == {}, "NaN is never reported"


def test_a_restored_searcher_continues_the_history_and_proposes_what_the_original_would(tmp_path):
    original = tpe(seed=5)
    for i in range(11):
        run_trial(original, f"t{i}", original.suggest(f"t{i}"), epochs=1 + i % EPOCHS)
    running = original.suggest("running")
    original.save(str(tmp_path / "searcher.pkl"))
    restored = TPESearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [(t.state, t.params, t.intermediate_values) for t in restored.study.trials] == \
        [(t.state, t.params, t.intermediate_values) for t in original.study.trials]
    for searcher in (original, restored):
        run_trial(searcher, "running", running)
    assert restored.suggest("next") == original.suggest("next")
    assert restored.study.trials[-2].state == TrialState.COMPLETE, "the trial running at the save ends in the study"


@pytest.mark.slow
def test_tpe_repeats_are_not_retrained_and_optuna_hears_every_proposal(local_ray, tmp_path, space, capsys):
    name = space("four-cells", {"lr": tune.choice([1e-3, 3e-3]), "width": tune.choice([8, 16])})
    rc = main(["--space", name, *SMALL, "--epochs", "2", "--num-samples", "10", "--scheduler", "fifo",
               "--search-seed", "3", "--storage", str(tmp_path), "--name", "repeats"])
    assert rc == 0
    trials = {}
    for d in (tmp_path / "repeats").glob("trial_*"):
        params = json.loads((d / "params.json").read_text())
        trials[(params["lr"], params["width"])] = pd.read_csv(d / "progress.csv")["best_val_psnr"].tolist()
    n_trials = len(list((tmp_path / "repeats").glob("trial_*")))
    assert n_trials == len(trials), "no configuration was trained twice"
    assert n_trials <= 4, "10 proposals from 4 configurations: the repeats were not trained"

    searcher = TPESearch()
    searcher.restore_from_dir(str(tmp_path / "repeats"))
    study = searcher.study.trials
    assert len(study) == 10, "every proposal is in Optuna's study"
    assert {t.state.name for t in study} == {"COMPLETE"}
    for t in study:  # a repeat is told what its configuration's trial reached, epoch by epoch
        history = trials[(t.params["lr"], t.params["width"])]
        assert t.value == history[-1] and t.intermediate_values == dict(enumerate(history, start=1))
    out = capsys.readouterr().out
    assert out.count("not retrained") == 10 - n_trials
    assert f"10 proposals: {10 - n_trials} repeated a configuration" in out


@pytest.mark.slow
def test_trials_asha_stops_reach_optuna_as_pruned_with_every_epoch_they_ran(local_ray, tmp_path, space):
    name = space("lr-wide", {"lr": tune.loguniform(1e-5, 1e-2), "width": tune.choice([8, 16])})
    rc = main(["--space", name, *SMALL, "--epochs", "4", "--num-samples", "6", "--scheduler", "asha",
               "--max-concurrent", "2", "--search-seed", "0", "--storage", str(tmp_path), "--name", "asha"])
    assert rc == 0
    histories = {}
    for d in (tmp_path / "asha").glob("trial_*"):
        params = json.loads((d / "params.json").read_text())
        histories[params["lr"]] = pd.read_csv(d / "progress.csv")["best_val_psnr"].tolist()
    stopped = {lr for lr, h in histories.items() if len(h) < 4}
    assert stopped and len(stopped) < len(histories), f"ASHA stopped some trials, not all: {histories}"

    searcher = TPESearch()
    searcher.restore_from_dir(str(tmp_path / "asha"))
    told = {t.params["lr"]: t for t in searcher.study.trials}
    assert told.keys() == histories.keys(), "one Optuna trial per trial (lr is continuous: no repeats)"
    for lr, history in histories.items():
        t = told[lr]
        assert t.intermediate_values == dict(enumerate(history, start=1)), "every epoch, as the trial reported it"
        if lr in stopped:
            assert t.state == TrialState.PRUNED, (lr, history)
        else:
            assert t.state == TrialState.COMPLETE and t.value == history[-1], (lr, history)
    assert not [t for t in told.values() if t.state == TrialState.COMPLETE and len(t.intermediate_values) < 4]

    # the study is kept in the experiment folder as Optuna's journal file: optuna.load_study reads it
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from analysis.experiment_file import OPTUNA_STUDY_FILE

    loaded = optuna.load_study(study_name="asha", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "asha" / OPTUNA_STUDY_FILE)))).trials
    assert [(t.params, t.state, t.intermediate_values, t.value) for t in loaded] == [
        (t.params, t.state, t.intermediate_values, t.value) for t in searcher.study.trials]
    assert {t.state for t in loaded} == {TrialState.PRUNED, TrialState.COMPLETE}


@pytest.mark.slow
def test_after_ctrl_c_and_resume_optuna_holds_every_epoch_of_every_trial_once(local_ray, tmp_path, space):
    """The study survives --resume: trials running at Ctrl-C report their later epochs to the same
    Optuna trials, and the resumed search's proposals join the same study (no fresh one)."""
    name = space("lr-only", {"lr": tune.loguniform(1e-4, 1e-2)})
    args = ["--space", name, *SMALL, "--epochs", "4", "--num-samples", "4", "--scheduler", "fifo",
            "--max-concurrent", "2", "--search-seed", "0", "--storage", str(tmp_path), "--name", "resumed"]
    experiment = tmp_path / "resumed"

    def ctrl_c_part_way():  # once some trial has logged an epoch and has more to go
        while not any(0 < p.read_text().count("\n") - 1 < 4 for p in experiment.glob("trial_*/progress.csv")):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # Tune's handler, in the main thread, saves and stops

    watcher = threading.Thread(target=ctrl_c_part_way, daemon=True)
    watcher.start()
    assert main(args) == 130
    watcher.join(timeout=0)
    assert main([*args, "--resume"]) == 0

    histories = {json.loads((d / "params.json").read_text())["lr"]: pd.read_csv(d / "progress.csv")
                 for d in experiment.glob("trial_*")}
    assert len(histories) == 4
    assert any(h["process_start"].nunique() == 2 for h in histories.values()), "some trial ran across the resume"
    searcher = TPESearch()
    searcher.restore_from_dir(str(experiment))
    told = {t.params["lr"]: t for t in searcher.study.trials}
    assert told.keys() == histories.keys(), "one study: the proposals of both runs, each once"
    for lr, history in histories.items():
        assert told[lr].state == TrialState.COMPLETE and told[lr].value == history["best_val_psnr"].iloc[-1]
        assert told[lr].intermediate_values == dict(zip(history["training_iteration"], history["best_val_psnr"]))


def test_searches_start_from_the_reports_setting():
    """The first proposal of TPE (and of random search) is the report's own setting, in the space's
    terms; TPE then goes on from there, and the start counts as one of the proposals."""
    from search.spaces import SPACES, possible_values, start_point

    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "reproduction", "report-tnet.json")) as f:
        report = json.load(f)
    start = start_point(SPACES["tnet"].params)
    # the report's TNet, with weight decay (0 there) at the least the space allows
    assert {k: v for k, v in start.items() if k != "weight_decay"} == {
        k: report[k] for k in ("lr", "batchnorm", "loss", "dropout", "width", "batch_size")}
    assert start["weight_decay"] == SPACES["tnet"].params["weight_decay"].lower
    # a knob whose default is not among the space's choices is left to the sampler
    assert "width" not in start_point({"model": "tnet", "width": tune.choice([8, 16])})
    # UNet's start is the report's UNet (seed notes: "lr 5e-4 (UNet 1e-3)"), at its own width 48
    unet = start_point(SPACES["unet"].params)
    assert (unet["lr"], unet["loss"], unet["dropout"], unet["width"]) == (1e-3, "l2", 0.0, 48)
    assert possible_values(SPACES["unet"].params, "batchnorm") == {False}  # no UNet trial trains with batch norm
    assert possible_values(SPACES["unet"].params, "residual_output") == {True}  # every UNet trial learns the correction
    for knob, value in (("residual_output", True), ("augment", True), ("ema", 0.999)):  # every TNet trial too
        assert possible_values(SPACES["tnet"].params, knob) == {value}

    searcher = tpe(start=(start_point(SPACE),), proposals=3)
    first = searcher.suggest("t1")
    assert (first["lr"], first["dropout"], first["loss"]) == (5e-4, 0.0, "l2") and first["model"] == "tnet"
    run_trial(searcher, "t1", first)
    assert searcher.suggest("t2")["lr"] != 5e-4  # then TPE's own proposals
    assert searcher.suggest("t3") is not None and searcher.suggest("t4") == TPESearch.FINISHED
