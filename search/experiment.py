"""One experiment description: what `search/run.py` was asked to do, as data that is printed,
saved beside the results and read back by `--resume` and the analysis."""
from __future__ import annotations

import dataclasses
import json

import pyarrow.fs

from analysis.experiment_file import EXPERIMENT_FILE


@dataclasses.dataclass
class Experiment:
    space: str
    searcher: str
    scheduler: str
    budget: str
    num_samples: int
    seeds: int
    epochs: int
    train_size: int
    val_size: int
    data: str
    noise: str
    data_seed: int
    search_seed: int
    cpus_per_trial: float
    gpus_per_trial: float | None  # None: 0.25 when the cluster has GPUs, else 0
    max_concurrent: int | None
    storage: str
    name: str
    fused: bool | None = None
    configs: list | None = None  # --configs: the exact configurations, each complete
    refit_seeds: int = 0  # replicas of the best configuration trained after a search (0: no refit)
    time_budget_min: float | None = None  # --time-budget: minutes for the search and its refit
    space_spec: dict | None = None  # --space-file or Python: the checked spec (search.space_file)
    target: str | None = None  # --target: every trial's training target (None: the space's, else noisy)
    amp: bool = False  # --amp: every trial trains and evaluates under bfloat16 autocast
    finish: bool = False  # a Population Based Training search under a time budget ends with its finish (search.finish)

    def trial_constants(self) -> dict:
        """What every trial of it, refit included, takes from the command rather than the space."""
        constants = {"fused": self.fused}
        if self.target:
            constants["target"] = self.target
        if self.amp:
            constants["amp"] = True
        return constants

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def save(self):
        fs, path = pyarrow.fs.FileSystem.from_uri(self.path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{EXPERIMENT_FILE}") as f:
            f.write(json.dumps(dataclasses.asdict(self), indent=2).encode())

    @classmethod
    def load(cls, experiment_path: str) -> "Experiment":
        fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
        with fs.open_input_stream(f"{path}/{EXPERIMENT_FILE}") as f:
            fields = json.loads(f.read().decode())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in names})


def is_uri(path: str) -> bool:
    return "://" in path
