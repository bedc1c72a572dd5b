"""The provenance record: which code, libraries and machine produced a search's results, with the
command and the data behind them. This module owns its fields, how it is made, how two are
compared, and its files: `provenance.json` beside the experiment (the search's records, one more
each time a start or resume finds something changed) and `provenance-<digest>.json` in each trial
folder (one file per distinct record of that trial).

A record is a flat dict of JSON values, so it goes into best_model.pt and still loads with
`torch.load(..., weights_only=True)`. Of the environment only the variables in ENV_VARS are kept.
N2N_PROVENANCE_VERSION, when set, replaces the recorded project version (to mark a patched build).
Torch is imported only when a record is made.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

SEARCH_FILE = "provenance.json"  # beside the experiment: a JSON list of the search's records
TRIAL_PREFIX = "provenance-"     # in a trial folder: TRIAL_PREFIX + digest + ".json", one record each
VERSION_OVERRIDE = "N2N_PROVENANCE_VERSION"
MODEL_KEY = "provenance"         # in best_model.pt: {"search": [records], "trial": [records]}
PACKAGE = "n2n-search"
PROJECT_DIR = Path(__file__).resolve().parents[1]  # the folder holding the n2n_models package

# the environment variables that change which kernels run or how many threads they use
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "ATEN_CPU_CAPABILITY",
            "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

# every field of a record, in the order shown, with its label
FIELDS = {
    "project_version": "n2n-search version",
    "git_commit": "git commit",
    "git_dirty": "uncommitted changes",
    "python": "Python",
    "torch": "torch",
    "ray": "Ray",
    "optuna": "Optuna",
    "numpy": "NumPy",
    "cpu_capability": "CPU instruction set",
    "threads": "torch threads",
    "machine": "machine",
    "system": "OS",
    "cuda": "CUDA (torch build)",
    "gpu_name": "GPU",
    "gpu_capability": "GPU compute capability",
    "gpu_driver": "GPU driver",
    "env": "environment",
    "command": "command line",
    "data_cache": "data cache key",
    "role": "made by",
    "made_at": "made at (UTC)",
}
# what says where and when a record was made, not what made the results: left out of comparisons
NOT_COMPARED = ("command", "role", "made_at")
COMPARED = tuple(k for k in FIELDS if k not in NOT_COMPARED)
# what trials of one experiment must share for their results to be comparable: versions and
# instruction sets (not threads or environment, which differ by the trial's share of a node)
VERSIONS = ("project_version", "git_commit", "python", "torch", "ray", "optuna", "numpy", "cuda")
INSTRUCTION_SETS = ("machine", "cpu_capability", "gpu_name", "gpu_capability", "gpu_driver")


# -- making a record ---------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_line() -> str:
    """What `--version` prints: this project's version and the libraries its results depend on
    (from the installed packages' metadata: nothing heavy is imported)."""
    libraries = ", ".join(f"{label} {_version(name) or 'not installed'}"
                          for label, name in (("torch", "torch"), ("Ray", "ray"), ("Optuna", "optuna")))
    return f"{PACKAGE} {_version(PACKAGE) or '(not installed: run from a checkout)'} ({libraries}; Python {platform.python_version()})"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the project's own repository; (None, None) without git or outside one
    (an installed copy inside some other repository is not that repository's commit)."""
    out = _git("rev-parse", "--show-toplevel", "HEAD")
    lines = out.split() if out else []
    if len(lines) != 2 or Path(lines[0]).resolve() != PROJECT_DIR:
        return None, None
    status = _git("status", "--porcelain")
    return lines[1], (bool(status.strip()) if status is not None else None)


def _redact(arg: str) -> str:
    """A command-line word with the user:password of any URI in it hidden."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", arg)


def _gpu_driver() -> str | None:
    """The NVIDIA driver's version: from NVML where pynvml is installed, else the kernel module's."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - not installed or no NVML
        return _kernel_module_version()
    return version.decode() if isinstance(version, bytes) else str(version)


def _kernel_module_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(\S+)", text)
    return found.group(1) if found else None


def _gpu_fields(torch) -> dict:
    """The first visible CUDA device (a trial sees only its own); Nones without one."""
    if not torch.cuda.is_available():
        return {"gpu_name": None, "gpu_capability": None, "gpu_driver": None}
    props = torch.cuda.get_device_properties(0)
    return {"gpu_name": torch.cuda.get_device_name(0), "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_driver": _gpu_driver()}


def make_record(role: str, gpu: bool = False, command: list[str] | None = None,
                data_cache: str | None = None) -> dict:
    """This process's record. `role` is "search" (the driver) or "trial"; `gpu` looks at the CUDA
    device (a driver that trains nothing leaves it alone: asking creates a CUDA context)."""
    import torch

    commit, dirty = git_state()
    record = {
        "project_version": os.environ.get(VERSION_OVERRIDE) or _version(PACKAGE),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "numpy": _version("numpy"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cuda": torch.version.cuda,
        **(_gpu_fields(torch) if gpu else {"gpu_name": None, "gpu_capability": None, "gpu_driver": None}),
        "env": {name: os.environ.get(name) for name in ENV_VARS},
        "command": [_redact(str(a)) for a in (sys.argv if command is None else command)],
        "data_cache": data_cache,
        "role": role,
        "made_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # through JSON: only plain types remain (torch.__version__ is a str subclass that weights_only refuses)
    return json.loads(json.dumps({k: record[k] for k in FIELDS}))


def data_cache_key(data: str, noise: str, **sizes_and_seed) -> str | None:
    """The name of the file `load_pairs` caches these data in (it holds the hash of everything they
    depend on), given `load_pairs`' own arguments; None for sources that are not cached (epfl) or
    specs it cannot read."""
    from .data import DataError, cache_path

    try:
        path = cache_path(data, noise, **sizes_and_seed)
    except (DataError, OSError, TypeError, ValueError):
        return None
    return path.name if path is not None else None


# -- comparing records -------------------------------------------------------------------------
def changes(old: dict, new: dict) -> list[str]:
    """The compared fields in which `new` differs from `old`."""
    return [k for k in COMPARED if old.get(k) != new.get(k)]


def mixed(records: list[dict], fields: tuple = VERSIONS + INSTRUCTION_SETS) -> dict[str, list]:
    """The `fields` that take more than one value across `records`: field -> values, in order of
    first appearance."""
    out = {}
    for k in fields:
        values = []
        for record in records:
            if record.get(k) not in values:
                values.append(record.get(k))
        if len(values) > 1:
            out[k] = values
    return out


def _digest(record: dict) -> str:
    blob = json.dumps({k: record.get(k) for k in COMPARED}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- the search's records (beside the experiment, local path or pyarrow URI) --------------------
def read_search_records(experiment_path: str) -> list[dict]:
    """The search's records, oldest first; [] when there is no readable file."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(str(experiment_path))
    try:
        with fs.open_input_stream(f"{path}/{SEARCH_FILE}") as f:
            records = json.loads(f.read().decode())
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def record_search(experiment_path: str, data_cache: str | None, progress=None) -> list[dict]:
    """Add this driver's record to the search's records when it differs from the last one; returns
    them all. On a resume that changed something, `progress` (a callable taking one line) says what."""
    import pyarrow.fs

    records = read_search_records(experiment_path)
    record = make_record("search", data_cache=data_cache)
    changed = changes(records[-1], record) if records else list(COMPARED)
    if not changed:
        return records
    records.append(record)
    fs, path = pyarrow.fs.FileSystem.from_uri(str(experiment_path))
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SEARCH_FILE}") as f:
        f.write(json.dumps(records, indent=1).encode())
    if len(records) > 1 and progress is not None:
        progress(f"provenance changed since the last run ({', '.join(changed)}); record {len(records)} added "
                 f"to {SEARCH_FILE}")
    return records


# -- a trial's records (in its local trial folder) ----------------------------------------------
def record_trial(trial_dir: str | os.PathLike) -> None:
    """Write this trial process's record into its folder, one file per distinct record, so a trial
    resumed on another machine or version keeps both. Never fails the trial: a problem is a warning."""
    import warnings

    try:
        record = make_record("trial", gpu=True, command=[])
        folder = Path(trial_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{TRIAL_PREFIX}{_digest(record)}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - provenance is a record, never a reason to stop training
        warnings.warn(f"provenance of this trial not written ({type(e).__name__}: {e})")


def read_trial_records(trial_dir: str | os.PathLike) -> list[dict]:
    """A trial's records, oldest first; [] when it has none."""
    records = []
    for path in Path(trial_dir).glob(f"{TRIAL_PREFIX}*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return sorted(records, key=lambda r: str(r.get("made_at")))


def for_model_file(experiment_path: str | os.PathLike, trial_dir: str | os.PathLike) -> dict:
    """What an exported model carries under MODEL_KEY: the search's records and the exported trial's."""
    return {"search": read_search_records(str(experiment_path)), "trial": read_trial_records(trial_dir)}
