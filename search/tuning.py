"""Searcher, scheduler and Tuner set-up for one Experiment; start or join Ray; run or resume."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import warnings

import pandas as pd
import pyarrow.fs

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from trainables import make_trainable

from .cli import SearchInterrupted, UsageError
from .experiment import EXPERIMENT_FILE, Experiment, is_uri
from .spaces import space_of
from . import private_network
from .progress import ProgressLog
from .searchers import make_searcher
from .summary import print_summary

METRIC, MODE = "val_psnr", "max"


def log(message: str):
    """Progress goes to stdout; stderr is kept for what went wrong."""
    print(f"[n2n-search] {message}", flush=True)


def param_space(experiment: Experiment) -> dict:
    space = space_of(experiment)
    constants = {"epochs": experiment.epochs, "seeds": experiment.seeds, "fused": experiment.fused}
    return {**space.params, **constants}


def trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_scheduler(experiment: Experiment):
    if experiment.scheduler == "asha":
        # first rung at an eighth of the epochs, the better half kept at each rung; with repeats
        # not retrained, TPE + ASHA finds bench/search_efficiency.py's grid best on 28-37% of the
        # grid's epochs (docs/benchmarks.md)
        return ASHAScheduler(time_attr="training_iteration", max_t=experiment.epochs,
                             grace_period=max(1, experiment.epochs // 8), reduction_factor=2)
    return FIFOScheduler()


def connect(address: str | None):
    """Join `address`, or start a local Ray on this machine that listens on loopback only."""
    if ray.is_initialized():
        return
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our ProgressLog replaces Tune's console tables
    if address:
        try:
            ray.init(address=address, logging_level="WARNING")
        except ConnectionError as e:
            raise UsageError(f"cannot reach a Ray cluster at --address {address}: {e}") from None
    else:
        with sigint_held_during_start():
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     logging_level="WARNING")
        if private_network.active():
            log("local Ray in a private network namespace: its ports are reachable over loopback only")
        else:
            log("note: this local Ray listens on all network interfaces (Ray 2.60 binds 0.0.0.0), guarded by "
                "its token; run search/run.py on Linux with user namespaces to keep it on loopback")


@contextlib.contextmanager
def sigint_held_during_start():
    """Ctrl-C in the middle of starting a local Ray would leave the raylet's agents running for
    about a minute (they notice the raylet is gone only then), and inside Ray's own callbacks it
    can be swallowed. So it is held until `ray.init` returns; then Ray is shut down whole and the
    interrupt goes on as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        ray.shutdown()
        raise KeyboardInterrupt


def check_reachable(address: str, timeout: float = 10.0):
    """Fail fast on a HOST:PORT nobody answers at (ray.init would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r}: expected auto or HOST:PORT of a Ray head (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"cannot reach a Ray cluster at --address {address} ({e.strerror or e}); "
                         f"is the head running (ray status)?") from None


def trial_resources(experiment: Experiment, joined: bool = False) -> tuple[float, float, int]:
    """(cpus, gpus) per trial and the number of trials the cluster can run at once. A trial that no
    machine of a local Ray can hold is a usage error (it would wait for ever); on a joined cluster
    it is a warning, since an autoscaler may add such a node."""
    total = ray.cluster_resources()
    cpus, gpus_total = experiment.cpus_per_trial, total.get("GPU", 0)
    gpus = experiment.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if gpus_total > 0 else 0.0
        if joined and gpus_total == 0:
            log("note: the cluster has no GPU now, so trials run on CPUs; on an autoscaling GPU cluster "
                "pass --gpus-per-trial 0.25 --max-concurrent N")
    check_trial_fits(cpus, gpus, joined, experiment.max_concurrent)
    slot_counts = []
    if cpus > 0:
        slot_counts.append(math.floor(total.get("CPU", 0) / cpus + 1e-9))
    if gpus > 0:
        slot_counts.append(math.floor(gpus_total / gpus + 1e-9))
    slots = experiment.max_concurrent or max(1, min(slot_counts) if slot_counts else 1)
    return cpus, gpus, slots


def check_trial_fits(cpus: float, gpus: float, joined: bool, max_concurrent: int | None):
    """A trial's CPUs and GPUs must fit on one node (Tune places each trial on a single node)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) + 1e-9 >= cpus and r.get("GPU", 0) + 1e-9 >= gpus for r in nodes):
        return
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    has = f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs"
    asked = f"a trial asks for {cpus:g} CPU and {gpus:g} GPU"
    if not joined:
        flags = [f for f, need, key in (("--cpus-per-trial", cpus, "CPU"), ("--gpus-per-trial", gpus, "GPU"))
                 if need > largest.get(key, 0) + 1e-9]
        raise UsageError(f"{asked}, but this machine has {has}, so no trial could ever start; lower "
                         f"{' and '.join(flags)}, or join a bigger cluster with --address")
    hint = "" if max_concurrent else "; pass --max-concurrent N (trials at a time once workers are up)"
    log(f"warning: {asked}, but no node of the cluster has that now (the largest has {has}); trials wait "
        f"until an autoscaler adds such a node{hint}")


def load_data(experiment: Experiment) -> dict:
    from n2n_models.data import DataError, load_pairs

    start = time.time()
    try:
        pairs = load_pairs(experiment.data, experiment.noise, train_size=experiment.train_size,
                           val_size=experiment.val_size, seed=experiment.data_seed, progress=log)
    except DataError as e:
        raise UsageError(str(e)) from None
    log(f"data: {experiment.data} + {experiment.noise}, {experiment.train_size} pairs, "
        f"{experiment.val_size} validation images ({time.time() - start:.1f} s)")
    names = ("train_a", "train_b", "val_noisy", "val_clean")
    return {k: getattr(pairs, k).numpy() for k in names}


def _listing(path: str) -> list[str]:
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    return [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))]


def has_saved_state(path: str, names: list[str] | None = None) -> bool:
    """Whether Tune can continue the experiment at `path` (whose listing is `names`, when known).
    `Tuner.can_restore` looks for tuner.pkl only, which Tune writes before its first experiment
    state; a search interrupted in between has nothing to continue (restoring it fails in the
    searcher)."""
    names = _listing(path) if names is None else names
    return tune.Tuner.can_restore(path) and any(
        name.startswith("experiment_state-") and name.endswith(".json") for name in names)


def experiment_exists(path: str) -> bool:
    """An experiment of search/run.py that Tune has started at `path` (one interrupted before that
    may be started again under the same name)."""
    names = _listing(path)
    return EXPERIMENT_FILE in names and has_saved_state(path, names)


def newest_experiment(storage: str, space: str) -> str | None:
    if is_uri(storage) or not os.path.isdir(storage):
        return None
    names = [n for n in os.listdir(storage)
             if n.startswith(f"{space}-") and os.path.exists(os.path.join(storage, n, EXPERIMENT_FILE))]
    return max(names, key=lambda n: os.path.getmtime(os.path.join(storage, n)), default=None)


def resolve_resume(experiment: Experiment, name_given: bool) -> Experiment:
    if not name_given and is_uri(experiment.storage):
        raise UsageError(f"--resume on {experiment.storage}: give the experiment's --name")
    name = experiment.name if name_given else newest_experiment(experiment.storage, experiment.space)
    path = f"{experiment.storage.rstrip('/')}/{name}" if name else None
    names = _listing(path) if path else []
    if not (path and has_saved_state(path, names)):
        if EXPERIMENT_FILE in names:
            raise UsageError(f"--resume: {path} was interrupted before its search started, so there is nothing "
                             "to resume; run the command again without --resume")
        where = path or f"{experiment.storage} (no experiment of space {experiment.space!r})"
        raise UsageError(f"--resume: no experiment to resume at {where}; check --storage and --name")
    try:
        saved = Experiment.load(path)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"--resume: {path} was not written by search/run.py ({e})") from None
    # resources may change between runs (a bigger cluster); what is searched may not
    saved.cpus_per_trial, saved.gpus_per_trial = experiment.cpus_per_trial, experiment.gpus_per_trial
    saved.max_concurrent, saved.storage = experiment.max_concurrent, experiment.storage
    return saved


def run_experiment(experiment: Experiment, resume: bool = False, name_given: bool = True,
                   address: str | None = None) -> int:
    if resume:
        experiment = resolve_resume(experiment, name_given)
    elif experiment_exists(experiment.path):
        raise UsageError(f"experiment {experiment.path} exists; add --resume to continue it or pick another --name")
    try:
        return _run(experiment, resume, address)
    except KeyboardInterrupt:
        raise SearchInterrupted(_interrupted_hint(experiment, resume)) from None


# what a search leaves in its folder before Tune's first experiment state
STARTED_FILES = {EXPERIMENT_FILE, "tuner.pkl", ".validate_storage_marker"}


def _interrupted_hint(experiment: Experiment, resume: bool) -> str:
    """What to do after a Ctrl-C that Tune did not handle. Before Tune saved its first experiment
    state there is nothing to resume: the folder is removed when it holds only what the start
    wrote (STARTED_FILES), and the same command can be run again in any case."""
    again = f"python search/run.py --resume --name {experiment.name} --storage {experiment.storage}"
    contents = _listing(experiment.path)
    if resume or has_saved_state(experiment.path, contents):
        return f"interrupted; continue with: {again}"
    if contents and set(contents) <= STARTED_FILES:
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment.path)
        fs.delete_dir(root)
    return "interrupted before the search started; nothing was saved, so there is nothing to resume"


def _run(experiment: Experiment, resume: bool, address: str | None) -> int:
    if address:
        check_reachable(address)
    data = load_data(experiment)
    connect(address)
    cpus, gpus, slots = trial_resources(experiment, joined=address is not None)
    trainable = make_trainable(data, cpus=cpus, gpus=gpus)
    log(f"{'resuming' if resume else 'starting'} {experiment.path}: space {experiment.space}, "
        f"{experiment.searcher} + {experiment.scheduler}, {experiment.num_samples} configurations x "
        f"{experiment.seeds} seeds, {experiment.epochs} epochs; {slots} trials at a time "
        f"({cpus:g} CPU, {gpus:g} GPU each)")
    if resume:
        tuner = tune.Tuner.restore(experiment.path, trainable=trainable, resume_errored=True)
    else:
        experiment.save()
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(experiment),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=make_searcher(experiment, slots, log),
                scheduler=make_scheduler(experiment), num_samples=experiment.num_samples,
                # Searchers take the limit here; Tune's own generators (grid, random) take it themselves
                max_concurrent_trials=slots if experiment.searcher == "optuna" else None, reuse_actors=True,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=experiment.name, storage_path=experiment.storage,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                        checkpoint_score_order=MODE),
                failure_config=tune.FailureConfig(max_failures=2),
                sync_config=tune.SyncConfig(sync_artifacts=True),
                callbacks=[ProgressLog(experiment.num_samples, log)],
                verbose=0,
            ),
        )
    start = time.time()
    interrupted = InterruptWatch()
    with interrupted, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is already reported")  # Optuna, on redone epochs
        results = tuner.fit()
    for result in results:
        drop_superseded_results(result.path)
    print_summary(experiment, results, time.time() - start, interrupted=interrupted.seen)
    if interrupted.seen:
        log(f"interrupted; the state is saved. Continue with: python search/run.py --resume "
            f"--name {experiment.name} --storage {experiment.storage}")
        return 130
    return 0


def drop_superseded_results(trial_dir: str):
    """Keep one result per epoch in a trial's progress.csv and result.json. A trial resumed from
    a checkpoint older than its last result (after a hard kill, or when the last checkpoint was
    not yet in the saved experiment state) redoes epochs, and Tune appends them again; the redone
    result is the one later epochs build on, so it is kept. Local storage only: the analysis
    applies the same rule when it reads remote results."""
    if is_uri(trial_dir):
        return
    csv_path, json_path = os.path.join(trial_dir, "progress.csv"), os.path.join(trial_dir, "result.json")
    if not os.path.exists(json_path) or not os.path.exists(csv_path):
        return
    with open(json_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    latest = {row.get("training_iteration"): row for row in rows}
    if len(latest) == len(rows):
        return
    ordered = [latest[k] for k in sorted(latest)]
    _atomic_write(json_path, "".join(json.dumps(row) + "\n" for row in ordered))
    table = pd.read_csv(csv_path).drop_duplicates("training_iteration", keep="last")
    _atomic_write(csv_path, table.sort_values("training_iteration").to_csv(index=False))


def _atomic_write(path: str, text: str):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class InterruptWatch(logging.Handler):
    """Notices Tune's own "interrupted" message: after Ctrl-C `Tuner.fit()` returns normally,
    and that message is the only public sign (pinned ray 2.60)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = False
        self._logger = logging.getLogger("ray.tune.tune")

    def emit(self, record):
        if "interrupted" in record.getMessage():
            self.seen = True

    def __enter__(self):
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)


class _TrialsWithoutResults(logging.Filter):
    """Drops Tune's "Failed to fetch metrics" warning when every trial it names simply has no
    result yet (a search interrupted early, then resumed): the summary lists those trials as
    unfinished. Any other failure to read results is still shown."""

    def filter(self, record):
        lines = record.getMessage().splitlines()
        return not (lines[0].startswith("Failed to fetch metrics") and len(lines) > 1
                    and all("were not found" in line for line in lines[1:]))


logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_TrialsWithoutResults())

