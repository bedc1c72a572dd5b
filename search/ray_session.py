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
from .tune_internals import LOOPBACK_NODE, cluster_launcher_config


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
    node can hold is a usage error (it would wait for ever), unless the cluster is one that an
    autoscaler may add such a node to: then it is a warning."""
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
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = [n.get("Resources", {}) for n in nodes]
    if any(r.get("CPU", 0) + 1e-9 >= cpus and r.get("GPU", 0) + 1e-9 >= gpus for r in resources):
        return
    largest = max(resources, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    has = f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs"
    asked = f"a trial asks for {cpus:g} CPU and {gpus:g} GPU"
    # a flag is worth lowering where a node has some of that resource (a trial needs at least some CPU)
    flags = [f for f, need, key in (("--cpus-per-trial", cpus, "CPU"), ("--gpus-per-trial", gpus, "GPU"))
             if need > largest.get(key, 0) + 1e-9 and (largest.get(key, 0) > 0 or key == "GPU")]
    lower = f"lower {' and '.join(flags)}, or " if flags else ""
    if not joined:
        raise UsageError(f"{asked}, but this machine has {has}, so no trial could ever start; {lower}join a "
                         f"bigger cluster with --address")
    why = nothing_can_add_a_node(nodes)
    if why:
        raise UsageError(f"{asked}, but no node of this cluster has that (the largest has {has}) and nothing can "
                         f"add one ({why}), so no trial could ever start; {lower}start Ray on a machine that can "
                         f"hold one (a head started with --num-cpus=0 runs no trial: docs/cluster.md)")
    hint = "" if max_concurrent else "; pass --max-concurrent N (trials at a time once workers are up)"
    log(f"warning: {asked}, but no node of the cluster has that now (the largest has {has}); trials wait "
        f"until an autoscaler adds such a node{hint}")


def nothing_can_add_a_node(nodes: list[dict]) -> str | None:
    """Why no node can join the cluster this driver runs in, or None where one may (or where that
    cannot be told). Only the head knows: `ray up` leaves the cluster's config there."""
    head = ray.get_runtime_context().gcs_address.rpartition(":")[0]
    if head != ray.util.get_node_ip_address():
        return None  # a driver on a worker node: the head's config is out of sight
    return no_node_to_add(cluster_launcher_config(), {n.get("NodeManagerAddress") for n in nodes})


def no_node_to_add(config: dict | None, joined: set[str]) -> str | None:
    """The same, from the config `ray up` left on the head (tune_internals.cluster_launcher_config)
    and the addresses of the nodes there are. A head without one was started by hand with `ray
    start`, so no autoscaler runs; Ray's local provider adds only the machines in `worker_ips`, so
    once all of them are nodes nothing more can come."""
    if config is None:
        return "no autoscaler: the cluster was not started with `ray up`"
    provider = config.get("provider") or {}
    if provider.get("type") != "local" or "coordinator_address" in provider:
        return None  # a cloud provider, or a coordinator that lends machines: an autoscaler may add nodes
    if any(_address_of(ip) not in joined for ip in provider.get("worker_ips") or []):
        return None  # `ray up` returns before the head's autoscaler has started the workers
    return "Ray's local provider, and every machine in worker_ips is a node already"


def _address_of(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host
