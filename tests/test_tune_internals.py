"""What search/tune_internals.py relies on in Ray and Tune, checked on a real local Ray: an upgrade
that changes one of its log texts, logger names, file names or private attributes fails here."""
import json
import logging
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
from conftest import LOCAL_RAY
from ray import tune
from ray.tune.search import sample

from search import tune_internals
from search.experiment_folder import STARTED_FILES, has_saved_state
from search.tune_internals import (
    InterruptWatch,
    quiet_trials_without_results,
    sampling_of,
)


@pytest.mark.slow
def test_ray_init_takes_loopback_node_and_still_advertises_the_routable_address():
    """search/ray_session.py starts a local Ray with ray.init's private `_node_ip_address` set to
    loopback, which Ray 2.60 accepts and replaces by the address it would pick anyway (so its note
    says Ray binds 0.0.0.0). When an upgrade drops the argument or honours it, this fails: then
    revisit that note. The session's Ray is (re)started here that way and left for the next tests."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", **LOCAL_RAY,
             **tune_internals.LOOPBACK_NODE)
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {ray.util.get_node_ip_address()}


def test_tune_writes_the_files_an_experiment_folder_is_judged_by(local_ray, tmp_path):
    """Building the Tuner writes tuner.pkl and Ray's storage marker only (STARTED_FILES), and
    `Tuner.can_restore` already says yes; the run adds experiment_state-*.json, and each trial's
    folder gets result.json (a JSON object per line) and progress.csv, one row per report."""
    def two_epochs(config):  # defined here: Ray's workers cannot import the tests folder
        for epoch in range(2):
            tune.report({"val_psnr": 20.0 + epoch})

    tuner = tune.Tuner(two_epochs, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x", verbose=0))
    path = str(tmp_path / "x")
    built = set(os.listdir(path))
    assert built == {tune_internals.TUNER_FILE, tune_internals.STORAGE_MARKER_FILE} and built <= STARTED_FILES
    assert tune.Tuner.can_restore(path) and not has_saved_state(path), "can_restore looks at tuner.pkl only"

    with InterruptWatch() as watch:
        result = tuner.fit()[0]
    assert result.error is None
    assert not watch.seen, "a run that was not interrupted does not look interrupted"
    assert any(tune_internals.is_experiment_state(name) for name in os.listdir(path)) and has_saved_state(path)
    with open(os.path.join(result.path, tune_internals.RESULT_FILE)) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert [row["training_iteration"] for row in rows] == [1, 2]
    table = pd.read_csv(os.path.join(result.path, tune_internals.PROGRESS_FILE))
    assert table["training_iteration"].tolist() == [1, 2]


def test_after_ctrl_c_fit_returns_and_tune_says_interrupted_on_its_logger(local_ray, tmp_path):
    """Ctrl-C during `Tuner.fit()`: fit returns a ResultGrid as usual, and the only sign is Tune's
    warning on the logger InterruptWatch listens to."""
    def many_epochs(config):
        for epoch in range(300):
            time.sleep(0.05)
            tune.report({"val_psnr": 20.0 + epoch})

    class CtrlC(tune.Callback):  # runs in the driver, where Tune's own SIGINT handler is installed
        sent = False

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)

    tuner = tune.Tuner(many_epochs, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x", verbose=0,
                                                              callbacks=[CtrlC()]))
    with InterruptWatch() as watch:
        results = tuner.fit()
    assert watch.seen, f"no message with {tune_internals.INTERRUPTED_TEXT!r} on {tune_internals.TUNE_RUN_LOGGER}"
    assert results[0].metrics["training_iteration"] < 300, "the run stopped early"
    assert has_saved_state(str(tmp_path / "x")), "and saved its state"


def test_reading_a_trial_without_result_files_gives_the_warning_that_is_dropped(local_ray, tmp_path):
    """Tune's warning about a trial with no result file, on the logger and in the words that
    quiet_trials_without_results drops; a damaged result file is still reported."""
    def one_epoch(config):
        tune.report({"val_psnr": 20.0})

    result = tune.Tuner(one_epoch, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x",
                                                             verbose=0)).fit()[0]
    for name in (tune_internals.RESULT_FILE, tune_internals.PROGRESS_FILE):
        os.remove(os.path.join(result.path, name))

    def warnings_reading_results():
        seen = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: seen.append(record.getMessage())
        logger = logging.getLogger(tune_internals.RESULTS_LOGGER)
        logger.addHandler(handler)  # Ray's loggers do not propagate to pytest's
        try:
            tune.ExperimentAnalysis(str(tmp_path / "x"))
        finally:
            logger.removeHandler(handler)
        return seen

    seen = warnings_reading_results()
    assert len(seen) == 1, seen
    first, *trials = seen[0].splitlines()
    assert first.startswith(tune_internals.FETCH_FAILED_TEXT) and len(trials) == 1
    assert tune_internals.NOT_FOUND_TEXT in trials[0], trials
    with quiet_trials_without_results():
        assert warnings_reading_results() == []

    with open(os.path.join(result.path, tune_internals.RESULT_FILE), "w") as f:
        f.write("{damaged\n")
    with quiet_trials_without_results():
        seen = warnings_reading_results()
    assert len(seen) == 1 and seen[0].startswith(tune_internals.FETCH_FAILED_TEXT), seen


def test_tune_domains_say_their_bounds_categories_and_sampling():
    """search/searchers.py reads a param_space through Float's bounds, Categorical's categories and
    sampling_of (the class of Domain.get_sampler()); Optuna's TPE needs to know which floats are
    drawn on a log scale, and anything else Tune can draw must be refused, not mistaken for uniform."""
    lr = tune.loguniform(1e-4, 3e-3)
    assert isinstance(lr, sample.Float) and (lr.lower, lr.upper) == (1e-4, 3e-3) and sampling_of(lr) == "log"
    dropout = tune.uniform(0.0, 0.3)
    assert isinstance(dropout, sample.Float) and (dropout.lower, dropout.upper) == (0.0, 0.3)
    assert sampling_of(dropout) == "uniform"
    loss = tune.choice(["l2", "l1"])
    assert isinstance(loss, sample.Categorical) and loss.categories == ["l2", "l1"] and sampling_of(loss) == "uniform"
    for other in (tune.quniform(0.0, 1.0, 0.1), tune.qloguniform(1e-4, 1e-2, 1e-4), tune.randn(0.0, 1.0),
                  tune.sample_from(lambda spec: 1)):
        assert sampling_of(other) == "other", other
    assert isinstance(tune.randint(1, 4), sample.Domain) and not isinstance(tune.randint(1, 4), sample.Float)


def test_tune_looks_for_the_config_that_search_reads(tmp_path, monkeypatch):
    """Tune's own "is there an autoscaler" test and search/ray_session.py look at the same file."""
    from ray.tune.execution.cluster_info import _is_ray_cluster

    monkeypatch.setenv("HOME", str(tmp_path))
    assert not _is_ray_cluster.__wrapped__() and tune_internals.cluster_launcher_config() is None
    Path(os.path.expanduser(tune_internals.CLUSTER_LAUNCHER_CONFIG)).write_text(
        '{"provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": []}}')
    assert _is_ray_cluster.__wrapped__()
    assert tune_internals.cluster_launcher_config()["provider"]["worker_ips"] == []
