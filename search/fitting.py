"""What every Tuner of search/ shares: trial names, the run configuration (checkpoints kept by
validation PSNR, retries, artifacts synced, progress lines) and the fit itself (Ctrl-C noticed,
Tune's result files kept to one row per epoch). The search and its refit both use them."""
from __future__ import annotations

import re
import warnings

from ray import tune

from n2n_models.config import trial_slug

from .experiment_folder import drop_superseded_results
from .progress import ProgressLog, log
from .tune_internals import InterruptWatch


def trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


#: experiment path -> the last trial number this driver gave there (Tune copies the name creator)
_NUMBERED: dict[str, int] = {}


class TrialDirnames:
    """Tune's trial_dirname_creator: a trial's folder, which is also its TensorBoard run, says its
    number in the experiment and its configuration: `trial_07-tnet-lr2.1e-3-l2-bn-w64-b16`. The
    numbers count on from the folders already in `experiment_path`, so a resumed search continues
    them."""

    def __init__(self, experiment_path: str):
        self.experiment_path = experiment_path

    def _last_used(self) -> int:
        import pyarrow.fs

        try:
            fs, root = pyarrow.fs.FileSystem.from_uri(self.experiment_path)
            names = [i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))]
        except (OSError, ValueError):
            names = []
        return max((int(m.group(1)) for m in map(re.compile(r"trial_(\d+)-?").match, names) if m), default=0)

    def __call__(self, trial) -> str:
        if self.experiment_path not in _NUMBERED:  # the folder is listed once per driver, not per trial
            _NUMBERED[self.experiment_path] = self._last_used()
        number = _NUMBERED[self.experiment_path] + 1
        _NUMBERED[self.experiment_path] = number
        slug = trial_slug(trial.config)
        return f"trial_{number:02d}-{slug}" if slug else f"trial_{number:02d}"


def run_config(name: str, storage_path: str, trials: int, callbacks: list = (),
               stop: dict | None = None, keep_all: bool = False) -> tune.RunConfig:
    """Where a Tuner writes, and how it keeps checkpoints, retries trials and reports progress;
    `callbacks` are added to the progress lines, `stop` is Tune's per-trial stopping condition.
    A trial keeps its two best checkpoints by validation PSNR, or, with `keep_all`, every one
    (Population Based Training starts a member from another's checkpoint, which then counts as
    the first member's too: Tune's pruning would delete files the other member still needs)."""
    return tune.RunConfig(
        name=name, storage_path=storage_path, stop=stop,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if keep_all else 2,
                                                checkpoint_score_attribute="val_psnr", checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=2),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=[ProgressLog(trials, log), *callbacks],
        verbose=0,
    )


def fit(tuner: tune.Tuner):
    """Run the Tuner; returns (its results, whether Ctrl-C cut it short)."""
    interrupted = InterruptWatch()
    with interrupted, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is already reported")  # Optuna, on redone epochs
        results = tuner.fit()
    for result in results:
        drop_superseded_results(result.path)
    return results, interrupted.seen
