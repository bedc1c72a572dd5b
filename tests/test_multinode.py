"""Searches on a real three-node Ray cluster on this machine, joined through the same code path as
`search/run.py --address` (head with no CPU, two workers with logical GPUs): trials spread over
both workers four to a GPU, survive the loss of a worker from their last checkpoint, and get their
data from Ray's object store, not from a file system the workers share.

All simulated nodes share this machine's disk; what each trial reports (node id, GPU ids, epoch,
start and report times) is the evidence of where and when it ran."""
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from PIL import Image
from ray import tune
from ray.cluster_utils import Cluster

from search import tuning
from search.cli import main

pytestmark = pytest.mark.slow  # clusters of several nodes on one machine: python -m pytest -m "not slow" leaves them out

SMALL = ["--space", "tnet", "--data", "synthetic", "--train-size", "128", "--val-size", "32",
         "--budget", "smoke", "--scheduler", "fifo", "--cpus-per-trial", "1"]
# A killed node is declared dead after 3 missed 1 s health checks instead of Ray's default ~15 s.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def start_cluster() -> tuple[Cluster, list]:
    """Head with no CPU (it runs no trial, like cluster.yaml's) and two workers of 4 CPUs and one
    logical GPU each. The driver is not connected: `main([... "--address", ...])` does that."""
    if ray.is_initialized():  # the session's local Ray from other tests
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
    try:
        workers = [cluster.add_node(num_cpus=4, num_gpus=1) for _ in range(2)]
    except BaseException:
        cluster.shutdown()
        raise
    return cluster, workers


def stop_cluster(cluster: Cluster):
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def _three_nodes_for_the_module():
    cluster, workers = start_cluster()
    yield cluster, workers
    stop_cluster(cluster)


@pytest.fixture
def three_nodes(_three_nodes_for_the_module):
    """The module's cluster, with this process disconnected so that each test joins it through
    `--address` as a user's driver would."""
    ray.shutdown()
    return _three_nodes_for_the_module


def histories(experiment: Path) -> dict[str, pd.DataFrame]:
    """Per-trial history as Tune's CSV logger wrote it; unreadable (half-written) files skipped."""
    out = {}
    for csv in sorted(experiment.glob("trial_*/progress.csv")):
        try:
            history = pd.read_csv(csv)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
            continue
        if "node_id" in history:
            out[csv.parent.name] = history
    return out


def test_trials_spread_over_both_workers_four_per_gpu(three_nodes, tmp_path):
    """8 trials at 0.25 GPU on two one-GPU workers: each trial records its node and GPU id, the
    time its function started and the time of its last report; per (node, GPU) there are four
    trials whose [start, last report] intervals all overlap."""
    cluster, workers = three_nodes
    rc = main([*SMALL, "--epochs", "3", "--num-samples", "8", "--gpus-per-trial", "0.25",
               "--address", cluster.address, "--storage", str(tmp_path), "--name", "spread"])
    assert rc == 0
    trials = histories(tmp_path / "spread")
    assert len(trials) == 8
    for name, h in trials.items():
        assert h["node_id"].nunique() == 1 and h["gpu_ids"].astype(str).nunique() == 1, \
            f"{name} moved although no node failed"
        assert "," not in str(h["gpu_ids"].iloc[0]), f"{name} sees more than one GPU"
    runs = pd.DataFrame([{"trial": name, "node": h["node_id"].iloc[0], "gpu": str(h["gpu_ids"].iloc[0]),
                          "start": h["process_start"].min(), "end": h["reported_at"].max()}
                         for name, h in trials.items()])
    assert set(runs["node"]) == {w.node_id for w in workers}, "trials ran on both workers, never the head"
    per_gpu = runs.groupby(["node", "gpu"])
    assert sorted(per_gpu.size()) == [4, 4], runs
    for (node, gpu), group in per_gpu:
        # the four trials of one GPU were all running at one moment: the last to start started
        # before the first to finish reported its last epoch
        assert group["start"].max() < group["end"].min(), f"GPU {gpu} of node {node[:8]} ran its trials " \
            f"one after another, not four at once:\n{group}"


def write_photos(folder: Path, count: int = 12, size: int = 96):
    """Smooth random colour images (low-resolution noise, upsampled) as PNG files."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"photo_{i:02d}.png")


def test_trials_get_their_data_from_the_object_store_not_a_shared_disk(three_nodes, tmp_path, monkeypatch):
    """The data set is a folder of PNGs that exists only until the driver has loaded it: right
    after `load_data` returns (and before the driver even connects to the cluster) the folder and
    the data cache are deleted, so no trial can read the data from disk, on any node. The trials
    still train, on both workers, and each reports the noisy-input PSNR of exactly the validation
    arrays the driver loaded, which reached them through `tune.with_parameters`, i.e. the object
    store. Their configs carry no data path either."""
    from n2n_models.data import default_cache_dir
    from n2n_models.metrics import psnr_uint8

    cluster, workers = three_nodes
    photos = tmp_path / "photos"
    write_photos(photos)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this test's own data cache
    loaded = {}
    real_load_data = tuning.load_data

    def load_then_delete_from_disk(experiment):
        arrays = real_load_data(experiment)
        shutil.rmtree(photos)
        shutil.rmtree(default_cache_dir())
        loaded.update(arrays=arrays, deleted_at=time.time())
        return arrays

    monkeypatch.setattr(tuning, "load_data", load_then_delete_from_disk)
    rc = main([*SMALL, "--data", f"folder:{photos}", "--epochs", "2", "--num-samples", "2",
               "--gpus-per-trial", "1", "--address", cluster.address, "--storage", str(tmp_path / "runs"),
               "--name", "object-store"])
    assert rc == 0
    assert not photos.exists() and not default_cache_dir().exists(), "nothing put the data back on disk"
    arrays = loaded["arrays"]
    assert arrays["train_a"].shape == (128, 3, 32, 32) and arrays["val_noisy"].shape == (32, 3, 32, 32)
    expected_noisy_psnr = psnr_uint8(torch.as_tensor(arrays["val_noisy"]), torch.as_tensor(arrays["val_clean"]))

    experiment = tmp_path / "runs" / "object-store"
    trials = histories(experiment)
    assert len(trials) == 2
    assert {h["node_id"].iloc[0] for h in trials.values()} == {w.node_id for w in workers}
    for name, h in trials.items():
        assert h["process_start"].min() > loaded["deleted_at"], f"{name} started before the data was deleted"
        assert len(h) == 2 and np.isfinite(h["val_psnr"]).all()
        assert h["noisy_psnr"].tolist() == pytest.approx([expected_noisy_psnr] * 2, abs=1e-4), \
            f"{name} validated on other data than the driver loaded"
        assert str(photos) not in (experiment / name / "params.json").read_text()


def test_trials_of_a_lost_worker_finish_on_the_other_from_their_checkpoint(three_nodes, tmp_path):
    """As soon as every trial has reported (and checkpointed) at least one epoch, the worker that
    runs the most trials is killed (SIGKILL, like a reclaimed spot instance). The survivor has a
    slot for every trial (4 CPUs, 4 x 0.25 GPU), so Tune's retry (FailureConfig) restarts the lost
    trials there from their latest checkpoint. (The last test of this module: it breaks the module's
    cluster.)"""
    cluster, workers = three_nodes
    epochs, experiment = 8, tmp_path / "lose-a-worker"
    removal = {}

    def remove_busiest_worker_once_all_checkpointed():
        try:
            deadline = time.time() + 240
            while time.time() < deadline:
                time.sleep(0.3)
                trials = histories(experiment)
                if len(trials) < 4 or any(h.empty for h in trials.values()):
                    continue
                where = {name: h["node_id"].iloc[-1] for name, h in trials.items()}
                victim_id = pd.Series(where).value_counts().index[0]
                on_victim = [name for name, node in where.items() if node == victim_id]
                if not all(any((experiment / name).glob("checkpoint_*")) for name in on_victim):
                    continue
                victim = next(w for w in workers if w.node_id == victim_id)
                removal.update(node_id=victim_id, trials=on_victim,
                               epochs={name: int(trials[name]["training_iteration"].max()) for name in on_victim})
                removal["killing"] = time.time()
                cluster.remove_node(victim, allow_graceful=False)
                return
        except Exception as e:  # noqa: BLE001 - reported by the test below
            removal["error"] = e

    watcher = threading.Thread(target=remove_busiest_worker_once_all_checkpointed, daemon=True)
    watcher.start()
    rc = main([*SMALL, "--epochs", str(epochs), "--num-samples", "4", "--gpus-per-trial", "0.25",
               "--address", cluster.address, "--storage", str(tmp_path), "--name", experiment.name])
    watcher.join(timeout=5)
    assert "error" not in removal, removal.get("error")
    assert "node_id" in removal, "no worker was removed: the trials were never all running"
    assert rc == 0
    survivor = next(w.node_id for w in workers if w.node_id != removal["node_id"])

    # the experiment, read back from its folder, lists every trial as finished with all its epochs
    analysis = tune.ExperimentAnalysis(str(experiment))
    assert len(analysis.trials) == 4
    assert all(t.status == "TERMINATED" for t in analysis.trials), [(t, t.status) for t in analysis.trials]
    assert all(df["training_iteration"].max() == epochs for df in analysis.trial_dataframes.values())

    trials = histories(experiment)
    moved = []
    for name, h in trials.items():
        # no trial started over: each epoch was reported exactly once, in order
        assert h["training_iteration"].tolist() == list(range(1, epochs + 1)), (name, h["training_iteration"])
        assert h["epoch"].tolist() == list(range(1, epochs + 1)), (name, h["epoch"])
        nodes = h["node_id"].tolist()
        if name not in removal["trials"] or removal["epochs"][name] == epochs:
            continue  # ran on the survivor, or had already finished when its node went
        if survivor not in nodes:
            # a fast trial can deliver its last epochs between the snapshot above and the kill
            # taking effect (a simulated node's processes outlive its raylet by a moment): then it
            # finished where it was, every epoch from the lost node
            assert set(nodes) == {removal["node_id"]}, (name, nodes)
            continue
        # epochs 1..k on the lost node, k+1..end on the survivor, k at least the epoch it had
        # reported when the node was killed
        k = nodes.index(survivor)
        assert k >= removal["epochs"][name] >= 1
        assert set(nodes[:k]) == {removal["node_id"]} and set(nodes[k:]) == {survivor}, (name, nodes)
        # (a simulated node's worker processes outlive its raylet by a moment, so the lost node may
        # still deliver an epoch just after remove_node returns; the restart comes after the kill)
        assert h["process_start"].iloc[k] > removal["killing"], \
            f"{name}: epoch {k + 1} came from a trial restarted on the survivor after the loss"
        moved.append(name)
    assert moved, f"no trial was running on the lost worker: {removal}"
