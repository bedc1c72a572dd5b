"""The state of an experiment folder: whether Tune started or saved it, which one --resume
continues, what a Ctrl-C leaves there, and Tune's result files kept to one row per epoch."""
from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.fs

from ray import tune

from n2n_models.provenance import SEARCH_FILE

from . import tune_internals
from .errors import UsageError
from analysis.experiment_file import YARDSTICKS_FILE

from .experiment import EXPERIMENT_FILE, Experiment, is_uri

# what a search leaves in its folder before Tune's first experiment state
STARTED_FILES = {EXPERIMENT_FILE, SEARCH_FILE, YARDSTICKS_FILE, tune_internals.TUNER_FILE,
                 tune_internals.STORAGE_MARKER_FILE}


def _listing(path: str) -> list[str]:
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    return [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))]


def has_saved_state(path: str, names: list[str] | None = None) -> bool:
    """Whether Tune can continue the experiment at `path` (whose listing is `names`, when known).
    `Tuner.can_restore` looks for tuner.pkl only, which Tune writes before its first experiment
    state; a search interrupted in between has nothing to continue (restoring it fails in the
    searcher)."""
    names = _listing(path) if names is None else names
    return tune.Tuner.can_restore(path) and any(tune_internals.is_experiment_state(name) for name in names)


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


def interrupted_hint(experiment: Experiment, resume: bool) -> str:
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


def drop_superseded_results(trial_dir: str):
    """Keep one result per epoch in a trial's progress.csv and result.json. A trial resumed from
    a checkpoint older than its last result (after a hard kill, or when the last checkpoint was
    not yet in the saved experiment state) redoes epochs, and Tune appends them again; the redone
    result is the one later epochs build on, so it is kept. Local storage only: the analysis
    applies the same rule when it reads remote results."""
    if is_uri(trial_dir):
        return
    csv_path = os.path.join(trial_dir, tune_internals.PROGRESS_FILE)
    json_path = os.path.join(trial_dir, tune_internals.RESULT_FILE)
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
    os.replace(tmp, path)  # a reader, or a Ctrl-C here, sees the old file or the new one, never half
