"""Every private name, log text, file and attribute of Ray and Tune that search/ relies on, in one
place; tests/test_tune_internals.py runs real Tune and fails when an upgrade changes any of them.

What is relied on (ray 2.60), and why no public API does it:
- Tune's warning "Experiment has been interrupted, but the most recent state was saved" on the
  logger `ray.tune.tune` (InterruptWatch). After Ctrl-C `Tuner.fit()` returns a ResultGrid like any
  other; nothing public says the run was cut short. TUNE_DISABLE_SIGINT_HANDLER=1 would raise
  instead, but then Tune does not save the experiment state a last time.
- Tune's warning "Failed to fetch metrics for N trial(s):" with a line per trial, "... were not
  found at ..." for a trial without result files, on the logger `ray.tune.analysis.experiment_analysis`
  (quiet_trials_without_results). Only the logger's level could silence it, which would also
  hide every other failure to read results.
- Files of an experiment folder: `tuner.pkl` (written when the Tuner is built; all that
  `Tuner.can_restore` looks for), `experiment_state-*.json` (Tune's experiment state, written once
  the run starts; what a restore needs) and `.validate_storage_marker` (Ray's check that the
  storage is writable). Nothing public tells "started, nothing saved yet" from "can be resumed".
- `result.json` (one JSON object per line) and `progress.csv` in each trial folder, written by
  Tune's default JSON and CSV loggers: documented outputs, but their names are no public constant,
  and Tune appends a redone epoch instead of replacing it, with no option to change that.
- Elsewhere, with their own tests: Ray's log texts "Token authentication is enabled" (on the logger
  `ray._private.authentication.authentication_token_setup`, filtered in search/ray_session.py) and
  the environment switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (search/private_network.py: inside the
  private network a local Ray takes 127.0.0.1 without probing for a routable address);
  tests/test_private_network.py fails when a normal start prints either notice again.
- `ray.init(_node_ip_address="127.0.0.1")` (LOOPBACK_NODE): asks the local Ray to advertise
  loopback; the public equivalent exists only as `ray start --node-ip-address`. Ray 2.60 replaces a
  loopback address by the machine's routable one, so today it changes nothing (hence connect()'s
  note that Ray binds 0.0.0.0, and search/private_network.py); the test fails when Ray changes that.
- Tune's sampling classes (`ray.tune.search.sample`, DeveloperAPI): `Float` with `.lower`/`.upper`,
  `Categorical` with `.categories`, and `Domain.get_sampler()`, whose class (`Uniform`, `LogUniform`,
  or a wrapper such as `Quantized`) is the only record of how a domain draws (sampling_of).
  search/searchers.py turns a param_space into Optuna distributions from them; Tune's own converter
  is a private part of its OptunaSearch.
- `~/ray_bootstrap_config.yaml` (CLUSTER_LAUNCHER_CONFIG): the cluster config that `ray up`
  leaves on the head for the autoscaler (JSON; its `provider` with `type`, and for Ray's local
  provider `worker_ips` and, when machines are lent by a coordinator, `coordinator_address`). Tune's
  own test for "an autoscaler may add nodes" is whether this file exists on the driver's machine
  (ray.tune.execution.cluster_info._is_ray_cluster); nothing public says whether a cluster can grow.
  search/ray_session.py reads it to tell a trial that waits for a node from one that never starts.
  tests/test_tune_internals.py checks that Tune looks for this path, tests/test_ray_up.py that `ray up` writes it with these keys.
- That `Tuner.restore` does not restore the scheduler's state (it unpickles the scheduler as it was
  when the Tuner was built) while it does restore callbacks' `get_state`, and that a callback and
  the scheduler it holds are pickled together in `tuner.pkl`, so the restored callback holds the
  restored scheduler: search/schedulers.py (KeepScheduler) relies on both, with ASHA's public
  `save`/`restore`. tests/test_search_quality.py's resume test fails when either changes.
"""
from __future__ import annotations

import contextlib
import logging
import os

TUNE_RUN_LOGGER = "ray.tune.tune"
INTERRUPTED_TEXT = "interrupted"
RESULTS_LOGGER = "ray.tune.analysis.experiment_analysis"
FETCH_FAILED_TEXT = "Failed to fetch metrics"
NOT_FOUND_TEXT = "were not found"

TUNER_FILE = "tuner.pkl"
STORAGE_MARKER_FILE = ".validate_storage_marker"
RESULT_FILE, PROGRESS_FILE = "result.json", "progress.csv"

LOOPBACK_NODE = {"_node_ip_address": "127.0.0.1"}  # keyword arguments of ray.init for a local Ray
CLUSTER_LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # written by `ray up` on the head, and only there


def cluster_launcher_config() -> dict | None:
    """The cluster config that `ray up` left on this machine (so it is a cluster's head), or None."""
    import yaml  # the file is JSON, which YAML reads too

    path = os.path.expanduser(CLUSTER_LAUNCHER_CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = yaml.safe_load(f)
    return config if isinstance(config, dict) else None


def is_experiment_state(name: str) -> bool:
    """Whether `name`, in an experiment folder, is one of Tune's saved experiment states."""
    return name.startswith("experiment_state-") and name.endswith(".json")


def sampling_of(domain) -> str:
    """How a Tune domain draws its values: "uniform" (tune.uniform, tune.choice), "log"
    (tune.loguniform) or "other" (quantized, normal, a function)."""
    from ray.tune.search.sample import LogUniform, Uniform

    sampler = domain.get_sampler()
    if isinstance(sampler, LogUniform):
        return "log"
    return "uniform" if isinstance(sampler, Uniform) else "other"


class InterruptWatch(logging.Handler):
    """Notices Tune's own "interrupted" message: after Ctrl-C `Tuner.fit()` returns normally,
    and that message is the only sign."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = False
        self._logger = logging.getLogger(TUNE_RUN_LOGGER)

    def emit(self, record):
        if INTERRUPTED_TEXT in record.getMessage():
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
        return not (lines[0].startswith(FETCH_FAILED_TEXT) and len(lines) > 1
                    and all(NOT_FOUND_TEXT in line for line in lines[1:]))


@contextlib.contextmanager
def quiet_trials_without_results():
    """While a search runs, Tune's warning about trials without results is dropped (see
    _TrialsWithoutResults); the logger is left as it was afterwards."""
    logger, dropped = logging.getLogger(RESULTS_LOGGER), _TrialsWithoutResults()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)
