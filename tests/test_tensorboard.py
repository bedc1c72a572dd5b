"""TensorBoard over a finished search, read the way the browser reads it: a real `tensorboard`
server on 127.0.0.1 and its HTTP API (the HParams experiment and session groups, the scalar and
image tags), against what the analysis says of the same trials."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from ray import tune

from analysis.load import load_experiment
from n2n_models.config import trial_slug
from search.board import METRICS, SESSION_STATUS
from trainables.image_grid import IMAGE_TAG
from search.cli import main

SMALL = ["--data", "synthetic", "--train-size", "128", "--val-size", "32", "--seeds", "1", "--no-refit"]
STATUS_NAME = {0: "STATUS_UNKNOWN", 1: "STATUS_SUCCESS", 2: "STATUS_FAILURE", 3: "STATUS_RUNNING"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    """A tensorboard process on 127.0.0.1 over `logdir`, stopped on close."""

    def __init__(self, logdir):
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(self, path: str, body: dict | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_for(self, path: str, body: dict | None, ready, timeout: float = 90):
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            assert self.proc.poll() is None, f"tensorboard exited: {self.proc.stderr.read()[-2000:]}"
            try:
                last = self.get(path, body)
                if ready(last):
                    return last
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"tensorboard never served {path} as expected; last answer: {last}")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def board():
    boards = []

    def start(logdir):
        boards.append(Board(logdir))
        return boards[-1]

    yield start
    for b in boards:
        b.close()


def test_hparams_table_declares_the_searched_knobs_and_the_metrics_and_says_each_trials_status(
        local_ray, tmp_path, space, board):
    """Four trials one at a time under ASHA: one that trains well (finished), one at a uselessly small
    lr that the first rung stops, one that diverges and one that errors at its first epoch."""
    name = space("outcomes", {"lr": tune.choice([1e-3, 1e-7, 1e3]), "loss": tune.choice(["l2", "hdr"]),
                              "fault_epoch": tune.choice([None, 1]), "fault_repeat": tune.choice([False, True])},
                 cells=[{"lr": 1e-3, "loss": "l2", "fault_epoch": None, "fault_repeat": False},
                        {"lr": 1e-7, "loss": "l2", "fault_epoch": None, "fault_repeat": False},
                        {"lr": 1e3, "loss": "hdr", "fault_epoch": None, "fault_repeat": False},
                        {"lr": 1e-3, "loss": "l2", "fault_epoch": 1, "fault_repeat": True}])
    rc = main(["--space", name, *SMALL, "--epochs", "4", "--scheduler", "asha", "--max-concurrent", "1",
               "--storage", str(tmp_path), "--name", "tb"])
    assert rc == 0
    experiment = tmp_path / "tb"
    trials = load_experiment(experiment).trials
    statuses = dict(zip(trials["folder"], trials["status"]))
    assert sorted(statuses.values()) == ["diverged", "errored", "finished", "stopped early"], statuses
    assert sorted(f.split("-")[0] for f in statuses) == [f"trial_{n:02d}" for n in range(1, 5)], statuses
    for folder, config in zip(trials["folder"], trials["config"]):
        assert folder.endswith("-" + trial_slug(config)), "a trial's folder says its configuration"

    tb = board(experiment)
    everything = {"experimentName": "", "allowedStatuses": list(STATUS_NAME.values()), "colParams": [],
                  "startIndex": 0, "sliceSize": 100}
    groups = tb.wait_for("/data/plugin/hparams/session_groups", everything,
                         lambda answer: len(answer.get("sessionGroups", [])) == 4)["sessionGroups"]
    declared = tb.get("/data/plugin/hparams/experiment", {"experimentName": ""})

    hparams = {h["name"]: h for h in declared["hparamInfos"]}
    assert set(hparams) == {"lr", "loss"}, "exactly the knobs the space varies (not its constants, not fault_*)"
    assert hparams["lr"]["domainDiscrete"] == [1e-7, 1e-3, 1e3] and hparams["loss"]["domainDiscrete"] == ["hdr", "l2"]
    assert [m["name"]["tag"] for m in declared["metricInfos"]] == [tag for tag, _, _ in METRICS]
    assert [m["name"]["tag"] for m in declared["metricInfos"]][:2] == ["psnr/best_val_psnr", "psnr/test_psnr"]

    by_run = {g["name"]: g for g in groups}
    assert set(by_run) == set(statuses), "one session per trial, named by its folder"
    for folder, status in statuses.items():
        group = by_run[folder]
        assert [s["status"] for s in group["sessions"]] == [STATUS_NAME[SESSION_STATUS[status]]], (folder, status)
        row = trials[trials["folder"] == folder].iloc[0]
        assert group["hparams"]["lr"] == pytest.approx(row["lr"]) and group["hparams"]["loss"] == row["loss"]
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        if status in ("finished", "stopped early"):
            assert metrics["trial/epochs"] == row["epochs"]
            assert metrics["psnr/best_val_psnr"] >= metrics["psnr/val_psnr"] - 1e-9
        if status == "errored":
            assert metrics == {}, "an errored trial that never reported has no metric"

    scalars = tb.get("/data/plugin/scalars/tags")
    tags = {tag for run in scalars.values() for tag in run}
    assert tags and all(tag.split("/")[0] in ("psnr", "trial") for tag in tags), f"bookkeeping logged: {tags}"
    images = tb.get("/data/plugin/images/tags")
    finished = next(folder for folder, status in statuses.items() if status == "finished")
    assert IMAGE_TAG in images[finished], images


def test_a_trials_name_says_its_configuration():
    config = {"model": "tnet", "lr": 2.1e-3, "loss": "l2", "batchnorm": True, "width": 64, "batch_size": 16,
              "dropout": 0.0, "weight_decay": 0.0}
    assert trial_slug(config) == "tnet-lr2.1e-3-l2-bn-w64-b16"
    assert trial_slug({**config, "dropout": 0.15, "weight_decay": 1e-5}) == "tnet-lr2.1e-3-wd1e-5-l2-bn-do0.15-w64-b16"
    assert trial_slug({**config, "model": "basenet", "latent": 16, "target": "clean", "seed": 3}) == \
        "basenet-lr2.1e-3-l2-z16-b16-n2c-s3", "a BaseNet has no width or batch norm; Noise2Clean and the seed show"
