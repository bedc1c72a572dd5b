"""The Ray a search runs on: join a cluster or start a local one, and the CPUs and GPUs of a trial
that it can hold."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading

import ray

from . import private_network
from .errors import UsageError
from .experiment import Experiment
from .progress import log
from .tune_internals import LOOPBACK_NODE


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
        with sigint_held_during_start(), quiet_token_notice():
            ray.init(address="local", include_dashboard=False, logging_level="WARNING", **LOOPBACK_NODE)
        if private_network.active():
            log("local Ray in a private network namespace: its ports are reachable over loopback only")
        else:
            log("note: this local Ray listens on all network interfaces (Ray 2.60 binds 0.0.0.0), guarded by "
                "its token; run search/run.py on Linux with user namespaces to keep it on loopback")


class _TokenNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on (the default for a local Ray since 2.5x,
    printed on every start); its warning that authentication is off still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


@contextlib.contextmanager
def quiet_token_notice():
    logger, notice = logging.getLogger("ray._private.authentication.authentication_token_setup"), _TokenNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


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
