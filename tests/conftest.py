"""Shared fixtures: one real local Ray for the whole session (2 CPUs, as CI's machine has, and 2
logical GPUs), started on first use and stopped at the end; tests that build their own cluster
shut it down first and the next test that needs it starts it again."""
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
#: Two CPUs, not more: each trial slot is a process that imports torch and Ray as a search starts, and
#: eight of them on CI's two cores cost a search several seconds; tests that need more trials at once
#: ask for fractions of a CPU.
LOCAL_RAY = {"num_cpus": 2, "num_gpus": 2}


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_exit():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def local_ray():
    """A running local Ray with logical GPUs (no real GPU needed)."""
    yield start_local_ray()


def start_local_ray():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 logging_level="WARNING", **LOCAL_RAY)
    return ray


@pytest.fixture(scope="session", autouse=True)
def _private_data_cache(tmp_path_factory):
    """Generated data sets are cached in a folder of this session, never the user's
    (XDG_CACHE_HOME is what n2n_models.data.default_cache_dir reads; subprocesses inherit it)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture
def space():
    """Register a search space for one test (the real CLI path reads SPACES by name)."""
    from search.spaces import SPACES, Space

    added = []

    def register(name, params, cells=()):
        SPACES[name] = Space(name, "test space", {"model": "tnet", "batch_size": 32, **params}, cells=tuple(cells))
        added.append(name)
        return name

    yield register
    for name in added:
        SPACES.pop(name, None)


#: The experiments of `experiments`: an Optuna + ASHA search and the report's two grids (at their 5 seeds).
EXPERIMENT_ARGS = {
    "tnet": ["--space", "tnet", "--seeds", "2", "--num-samples", "5"],
    "lr-grid": ["--space", "lr-grid"],
    "models": ["--space", "models"],
}
SMALL_EXPERIMENT = ["--budget", "smoke", "--data", "synthetic", "--train-size", "64", "--val-size", "16",
                    "--epochs", "2"]


@pytest.fixture(scope="session")
def experiments(tmp_path_factory):
    """Three real experiments made with the real command on the session's local Ray, shared by
    the tests that read them (test_analysis.py, test_search.py): a search and both grids of the report."""
    from search.cli import main

    start_local_ray()
    storage = tmp_path_factory.mktemp("experiments")
    for name, args in EXPERIMENT_ARGS.items():
        assert main([*args, *SMALL_EXPERIMENT, "--storage", str(storage), "--name", name]) == 0
    return {name: storage / name for name in EXPERIMENT_ARGS}


def load_bench(name: str):
    """A script of bench/ as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(name).stem}", REPO / "bench" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args, timeout=300, env=None):
    """Run `python search/run.py ARGS` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / "search" / "run.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def interrupt_when(command, ready, timeout=120, env=None):
    """Run `python COMMAND...` in the repository as a user would and send it SIGINT (Ctrl-C) once
    `ready(pid)` is true; returns (exit status, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, *command], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout
        while not ready(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, f"{command[0]} never got there"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, out, err

