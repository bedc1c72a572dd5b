"""An interrupted search (Ctrl-C on the command) continues with --resume: every trial completes,
and a trial that had a checkpoint continues from it instead of starting again at epoch 1."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from conftest import REPO, run_cli

ARGS = ["--space", "tnet", "--data", "synthetic", "--train-size", "600", "--val-size", "32", "--epochs", "5",
        "--num-samples", "4", "--scheduler", "fifo", "--max-concurrent", "2", "--seeds", "1"]


def wait_for_checkpoints(experiment, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(experiment.glob("trial_*/checkpoint_*"))) >= 2:
            return
        time.sleep(0.5)
    raise AssertionError("no trial checkpointed in time")


def test_sigint_then_resume_finishes_every_trial_from_its_checkpoint(tmp_path):
    experiment = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, str(REPO / "search" / "run.py"), *ARGS, "--storage", str(tmp_path),
                             "--name", "interrupted"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        wait_for_checkpoints(experiment)
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, "an interrupted search must not claim success"
    assert "--resume" in output
    before = {d.name: pd.read_csv(d / "progress.csv") for d in experiment.glob("trial_*")
              if (d / "progress.csv").exists() and (d / "progress.csv").stat().st_size}
    midway = [name for name, h in before.items() if 0 < len(h) < 5]
    assert midway, "the interrupt came while some trial was part-way through"

    resumed = run_cli(*ARGS, "--storage", str(tmp_path), "--name", "interrupted", "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = sorted(experiment.glob("trial_*"))
    assert len(trials) == 4
    for trial in trials:
        history = pd.read_csv(trial / "progress.csv")
        assert history["training_iteration"].tolist() == [1, 2, 3, 4, 5], f"{trial.name} did not complete once"
        # the trainer's own epoch counter equals Tune's iteration: nothing restarted at epoch 1
        assert history["epoch"].tolist() == history["training_iteration"].tolist(), trial.name
    for name in midway:
        history = pd.read_csv(experiment / name / "progress.csv")
        had = len(before[name])
        # epochs after the interrupt ran in a new process, which took up the checkpoint
        assert history["process_start"].iloc[had] > history["process_start"].iloc[had - 1], name
