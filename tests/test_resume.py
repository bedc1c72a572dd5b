"""An interrupted search continues with --resume: after Ctrl-C, after the driver is killed with
SIGKILL, and when the newest checkpoint of a trial is damaged on disk."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # long end-to-end searches: python -m pytest -m "not slow" leaves them out

EPOCHS = 5
ARGS = ["--space", "tnet", "--data", "synthetic", "--train-size", "400", "--val-size", "32", "--epochs", str(EPOCHS),
        "--num-samples", "4", "--scheduler", "fifo", "--max-concurrent", "2", "--seeds", "1", "--no-refit"]


def interrupt_midway(storage, name, sig, part_trained=1):
    """Start a search, wait until `part_trained` trials are early in their training, send `sig` to the driver;
    returns its exit status, its output, and per trial the histories logged and the epochs
    checkpointed on disk once the driver has exited."""
    experiment = storage / name
    # The driver's files (progress.csv) reach the experiment folder when Tune saves the experiment,
    # every 10 s by default: trials of a second an epoch were done before one showed up part-way.
    proc = subprocess.Popen([sys.executable, str(REPO / "search" / "run.py"), *ARGS, "--storage", str(storage),
                             "--name", name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    try:
        deadline = time.time() + 240
        while sum(1 <= checkpointed_epochs(trial) <= 3 and logged_epochs(trial) >= 1
                  for trial in experiment.glob("trial_*")) < part_trained:
            assert time.time() < deadline, "no trial checkpointed part-way in time"
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        try:  # a killed driver leaves its local Ray behind: end that process group, which we started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {d.name: pd.read_csv(d / "progress.csv") for d in experiment.glob("trial_*")
              if (d / "progress.csv").exists() and (d / "progress.csv").stat().st_size}
    checkpointed = {d.name: checkpointed_epochs(d) for d in experiment.glob("trial_*")}
    return proc.returncode, output, before, checkpointed


def logged_epochs(trial):
    """Complete result rows in a trial's progress.csv so far (the driver appends one per epoch)."""
    try:
        return max((trial / "progress.csv").read_text().count("\n") - 1, 0)
    except FileNotFoundError:
        return 0


def checkpointed_epochs(trial):
    """Epochs a trial has trained as far as its checkpoints on disk show: the trainable writes one
    per epoch (checkpoint_000000 after epoch 1) before the driver logs that epoch's result, so this
    runs ahead of progress.csv, and what a stopping search still trained shows up here only."""
    indices = [int(d.name.split("_")[-1]) for d in trial.glob("checkpoint_*")]
    return max(indices) + 1 if indices else 0


def part_way(checkpointed):
    return [name for name, epochs in checkpointed.items() if 0 < epochs < EPOCHS]


def resume(storage, name):
    proc = run_cli(*ARGS, "--storage", str(storage), "--name", name, "--resume", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def final_histories(experiment):
    trials = sorted(experiment.glob("trial_*"))
    assert len(trials) == 4, "every configuration of the search is there"
    return {d.name: pd.read_csv(d / "progress.csv") for d in trials}


def assert_every_trial_completed_once_and_part_way_ones_continued(experiment, damaged=None):
    """Every trial's history (but the `damaged` one's) holds each epoch once, in order, with the
    trainer's own epoch counter equal to Tune's iteration (nothing restarted at epoch 1), written
    by at most two processes, one after the other; and some trial continued in the resumed search's
    new process from a checkpoint, that is at an epoch after the first. (Which epoch a trial resumes
    at depends on what the stopped driver had recorded: a checkpoint on disk whose result it never
    logged is trained again.)"""
    continued = []
    for name, history in final_histories(experiment).items():
        if name == damaged:
            continue
        assert history["training_iteration"].tolist() == list(range(1, EPOCHS + 1)), f"{name} completed once"
        assert history["epoch"].tolist() == history["training_iteration"].tolist(), name
        assert history["trial_id"].nunique() == 1, name
        starts = history["process_start"]
        assert starts.is_monotonic_increasing and starts.nunique() <= 2, name
        if starts.nunique() == 2:
            continued.append(int(history.loc[starts == starts.max(), "epoch"].iloc[0]))
    assert any(epoch > 1 for epoch in continued), f"no trial continued from a checkpoint: {continued}"


def test_sigint_then_resume_finishes_every_trial_from_its_checkpoint_or_afresh_when_all_are_damaged(tmp_path):
    """Ctrl-C while two trials are part-way; then every checkpoint of one of them is truncated on
    disk: resuming warns, trains that trial from the start, continues the other from its
    checkpoint, and the search completes (see test_checkpoints.py for the fall back to an earlier
    good checkpoint)."""
    rc, output, before, checkpointed = interrupt_midway(tmp_path, "interrupted", signal.SIGINT, part_trained=2)
    assert rc == 130, "an interrupted search must not claim success"
    assert "--resume" in output
    summary = next(line for line in output.splitlines() if line.startswith("Search ") and " interrupted after " in line)
    assert "unfinished" in summary and "stopped early" not in summary, summary  # fifo stops none early
    assert len(part_way(checkpointed)) >= 2, f"the interrupt came while trials were part-way through: {checkpointed}"
    damaged = next(name for name in part_way(checkpointed) if name in before)
    for checkpoint in (tmp_path / "interrupted" / damaged).glob("checkpoint_*/trainer.pt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    proc = resume(tmp_path, "interrupted")
    assert "is unreadable" in proc.stdout + proc.stderr, "the damaged checkpoint is reported"
    assert_every_trial_completed_once_and_part_way_ones_continued(tmp_path / "interrupted", damaged=damaged)
    history = final_histories(tmp_path / "interrupted")[damaged]
    resumed_rows = history[history["process_start"] > before[damaged]["process_start"].max()]
    assert resumed_rows["epoch"].iloc[0] == 1, "training of the damaged trial started again"
    assert resumed_rows["epoch"].iloc[-1] == EPOCHS, "and went on to the end"


def test_driver_killed_with_sigkill_resumes_with_every_result_once(tmp_path):
    rc, _, _, checkpointed = interrupt_midway(tmp_path, "killed", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert part_way(checkpointed), checkpointed
    resume(tmp_path, "killed")
    assert_every_trial_completed_once_and_part_way_ones_continued(tmp_path / "killed")


def test_tunes_warning_about_trials_without_results_is_dropped_and_others_kept():
    """Resuming a search interrupted before some trials reported made Tune warn with a
    FileNotFoundError per trial; those trials are in the summary as unfinished. Other failures to
    read results still show."""
    import logging

    from search.tune_internals import quiet_trials_without_results

    tune_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    no_results = ("Failed to fetch metrics for 1 trial(s):\n- trial_1: FileNotFoundError('Could not fetch metrics "
                  "for trial_1: both result.json and progress.csv were not found at /x/trial_1')")
    damaged = "Failed to fetch metrics for 1 trial(s):\n- trial_2: ParserError('Error tokenizing data')"
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    tune_logger.addHandler(handler)  # Ray's loggers do not propagate to pytest's
    try:
        with quiet_trials_without_results():  # as while a search runs
            tune_logger.warning(no_results)
            tune_logger.warning(damaged)
    finally:
        tune_logger.removeHandler(handler)
    assert seen == [damaged]
