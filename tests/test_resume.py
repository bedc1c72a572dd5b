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

EPOCHS = 5
ARGS = ["--space", "tnet", "--data", "synthetic", "--train-size", "600", "--val-size", "32", "--epochs", str(EPOCHS),
        "--num-samples", "4", "--scheduler", "fifo", "--max-concurrent", "2", "--seeds", "1"]


def interrupt_midway(storage, name, sig):
    """Start a search, wait until trials have checkpointed, send `sig` to the driver; returns
    its exit status, its output and the per-trial histories on disk at that moment."""
    experiment = storage / name
    proc = subprocess.Popen([sys.executable, str(REPO / "search" / "run.py"), *ARGS, "--storage", str(storage),
                             "--name", name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not part_way(experiment):
            assert time.time() < deadline, "no trial checkpointed part-way in time"
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.3)
        os.kill(proc.pid, sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        try:  # a killed driver leaves its local Ray behind: end that process group, which we started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {d.name: pd.read_csv(d / "progress.csv") for d in experiment.glob("trial_*")
              if (d / "progress.csv").exists() and (d / "progress.csv").stat().st_size}
    return proc.returncode, output, before


def logged_epochs(trial):
    """Complete result rows in a trial's progress.csv so far (the driver appends one per epoch)."""
    try:
        text = (trial / "progress.csv").read_text()
    except FileNotFoundError:
        return 0
    return max(text.count("\n") - 1, 0)


def part_way(experiment):
    """Some trial has a checkpoint and its results logged for at least one epoch and at most
    EPOCHS - 2, so that it is still part-way through when the signal lands a moment later
    (checkpoints appear on disk before the driver logs their results, so wait for both)."""
    return any(list(trial.glob("checkpoint_*")) and 1 <= logged_epochs(trial) <= EPOCHS - 2
               for trial in experiment.glob("trial_*"))


def resume(storage, name):
    proc = run_cli(*ARGS, "--storage", str(storage), "--name", name, "--resume", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def final_histories(experiment):
    trials = sorted(experiment.glob("trial_*"))
    assert len(trials) == 4, "every configuration of the search is there"
    return {d.name: pd.read_csv(d / "progress.csv") for d in trials}


def test_sigint_then_resume_finishes_every_trial_from_its_checkpoint(tmp_path):
    rc, output, before = interrupt_midway(tmp_path, "interrupted", signal.SIGINT)
    assert rc == 130, "an interrupted search must not claim success"
    assert "--resume" in output
    midway = [name for name, h in before.items() if 0 < len(h) < EPOCHS]
    assert midway, "the interrupt came while some trial was part-way through"
    resume(tmp_path, "interrupted")
    for name, history in final_histories(tmp_path / "interrupted").items():
        assert history["training_iteration"].tolist() == list(range(1, EPOCHS + 1)), f"{name} completed once"
        # the trainer's own epoch counter equals Tune's iteration: nothing restarted at epoch 1
        assert history["epoch"].tolist() == history["training_iteration"].tolist(), name
    for name in midway:
        history = pd.read_csv(tmp_path / "interrupted" / name / "progress.csv")
        had = len(before[name])
        # the epochs after the interrupt ran in a new process, which took up the checkpoint (the
        # first of them may still be the old process's: a result checkpointed just before the
        # interrupt reaches progress.csv only when the resumed search logs it)
        assert history["process_start"].iloc[-1] > history["process_start"].iloc[had - 1], name


def test_driver_killed_with_sigkill_resumes_with_every_result_once(tmp_path):
    rc, _, before = interrupt_midway(tmp_path, "killed", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert any(0 < len(h) < EPOCHS for h in before.values())
    resume(tmp_path, "killed")
    histories = final_histories(tmp_path / "killed")
    for name, history in histories.items():
        # a hard kill may make a trial redo the epochs after the last saved experiment state, but
        # each epoch's result is recorded once and the trial continued from a checkpoint
        assert history["training_iteration"].tolist() == list(range(1, EPOCHS + 1)), name
        assert history["epoch"].tolist() == history["training_iteration"].tolist(), name
        assert history["trial_id"].nunique() == 1


def test_damaged_checkpoints_do_not_fail_the_search(tmp_path):
    """Every checkpoint of a part-trained trial is truncated on disk: resuming warns, trains that
    trial from the start, and the search completes (see test_checkpoints.py for the fall back to
    an earlier good checkpoint)."""
    rc, _, before = interrupt_midway(tmp_path, "damaged", signal.SIGINT)
    assert rc == 130
    name = next(name for name, h in before.items() if 0 < len(h) < EPOCHS)
    for checkpoint in (tmp_path / "damaged" / name).glob("checkpoint_*/trainer.pt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    proc = resume(tmp_path, "damaged")
    assert "is unreadable" in proc.stdout + proc.stderr, "the damaged checkpoint is reported"
    history = final_histories(tmp_path / "damaged")[name]
    resumed_rows = history[history["process_start"] > before[name]["process_start"].max()]
    assert resumed_rows["epoch"].iloc[0] == 1, "training of that trial started again"
    assert resumed_rows["epoch"].iloc[-1] == EPOCHS, "and went on to the end"
