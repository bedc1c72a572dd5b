"""Experiment folder -> pandas: the experiment's description, one row per trial with its fate,
and every seed's validation PSNR and training loss at every epoch. Reads the files that
`search/run.py` and Ray Tune leave on disk; starts nothing."""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from n2n_models.config import HPARAM_KEYS, trial_seeds

from .experiment_file import EXPERIMENT_FILE

# A trial's fate: ran all its epochs, stopped by the scheduler (ASHA), training produced a
# non-finite loss, failed with an error, or has not ended (interrupted, still running, never started).
STATUSES = ("finished", "stopped early", "out of time", "diverged", "errored", "unfinished")


class ExperimentError(Exception):
    """The folder is not a readable experiment: one line for the user, exit status 2."""


@dataclass
class ExperimentData:
    """What analysis knows of one experiment.

    spec     the n2n_experiment.json dict (space, epochs, seeds, data, noise, ...)
    trials   one row per trial, index trial_id: config keys, status, epochs reached, best epoch and
             the seed mean/std of PSNR and loss there and at the last epoch
    seeds    long form, one row per (trial_id, epoch, seed): psnr (validation), loss, test_psnr
    history  one row per (trial_id, epoch): the seed-mean stats plus the trial's own reported columns
    """

    path: Path
    spec: dict
    trials: pd.DataFrame
    seeds: pd.DataFrame
    history: pd.DataFrame

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.path.name

    @property
    def is_grid(self) -> bool:
        return self.spec.get("space") in ("lr-grid", "models", "configs")

    def hparam_columns(self) -> list[str]:
        return [k for k in HPARAM_KEYS if k in self.trials.columns]

    def varying_hparams(self) -> list[str]:
        """Hyperparameters that take more than one value across trials."""
        return [k for k in self.hparam_columns()
                if self.trials[k].dropna().astype(str).nunique() > 1]


# -- reading one trial -------------------------------------------------------------------------
def _flatten(row: dict) -> dict:
    flat = {}
    for key, value in row.items():
        if key in ("config",):
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}/{sub}"] = v
        else:
            flat[key] = value
    return flat


def epoch_config(trial_dir: Path, epoch: int) -> dict | None:
    """The configuration a trial trained `epoch` with, as its result.json records it (Population
    Based Training changes a member's configuration between epochs; params.json keeps its first);
    None when no row of that epoch is readable."""
    found = None
    result_json = Path(trial_dir) / "result.json"
    if not result_json.is_file():
        return None
    with open(result_json, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # blank, or cut short by a hard kill
                continue
            if row.get("epoch", row.get("training_iteration")) == epoch and isinstance(row.get("config"), dict):
                found = row["config"]  # the last copy: a row repeated after a restore
    return found


def read_results(trial_dir: Path) -> pd.DataFrame:
    """A trial's reported rows (result.json, else progress.csv), one per epoch, oldest first.
    Seed dicts become `seed_psnr/<seed>` columns; a row repeated after a restore keeps its last copy.
    (Rows are cleaned as Python dicts before one DataFrame is made: per-trial pandas steps dominated
    the report of thousands of trials.)"""
    rows = []
    result_json = trial_dir / "result.json"
    if result_json.is_file():
        with open(result_json, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(_flatten(json.loads(line)))
                except json.JSONDecodeError:  # a line cut short by a hard kill
                    continue
    if not rows and (trial_dir / "progress.csv").is_file():
        try:
            rows = pd.read_csv(trial_dir / "progress.csv", dtype={"trial_id": str}).to_dict("records")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            rows = []
    by_epoch = {}
    for row in rows:
        if "training_iteration" not in row:
            continue
        epoch = row.get("epoch", row["training_iteration"])
        try:
            row["epoch"] = int(float(epoch))
        except (TypeError, ValueError, OverflowError):  # missing (NaN, None) or unreadable
            continue
        by_epoch[row["epoch"]] = row  # the last copy of a repeated epoch
    if not by_epoch:
        return pd.DataFrame()
    return pd.DataFrame([by_epoch[e] for e in sorted(by_epoch)])


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    try:
        return bool(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def _error_line(trial_dir: Path) -> tuple[int, str]:
    """(number of failures, last line of the last failure) from Ray's error.txt."""
    path = trial_dir / "error.txt"
    if not path.is_file():
        return 0, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    failures = max(1, text.count("Failure # "))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure # ")]
    last = lines[-1] if lines else "error"
    return failures, last if len(last) <= 160 else last[:157] + "..."


def trial_status(rows: pd.DataFrame, target_epochs: int, has_error: bool, ray_status: str | None,
                 time_budget: bool = False) -> str:
    """One of STATUSES, from the trial's rows, its error file and Ray's saved trial status; under a
    --time-budget ("out of time": Tune ended the trial when the budget ran out)."""
    last = rows.iloc[-1] if not rows.empty else None
    done = last is not None and _truthy(last.get("done", False))
    if last is not None and _truthy(last.get("diverged", False)):
        return "diverged"
    if ray_status == "ERROR" or (has_error and not done):
        return "errored"  # a trial that failed and then recovered keeps error.txt but ends done
    if last is None:
        return "unfinished"
    if int(last["epoch"]) >= target_epochs:
        return "finished"
    if done:
        return "stopped early"
    return "out of time" if time_budget and ray_status == "TERMINATED" else "unfinished"


def tune_trial_states(exp_dir: Path) -> dict:
    """trial_id -> (status, config, folder name) from Tune's newest experiment_state file; {} if none.
    Tune has no public reader of a stored experiment that does not import Ray and rebuild every
    trial (ExperimentAnalysis); this parse of its private file format is the analysis's one reliance
    on it (tests/test_analysis.py::test_tune_trial_states_reads_what_tune_saved breaks on a change)."""
    files = sorted(glob.glob(str(exp_dir / "experiment_state-*.json")), key=os.path.getmtime)
    if not files:
        return {}
    try:
        with open(files[-1], encoding="utf-8") as f:
            state = json.load(f)
        out = {}
        for entry in state.get("trial_data", []):
            trial = json.loads(entry[0]) if isinstance(entry, list) else json.loads(entry)
            config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
            out[str(trial["trial_id"])] = (trial.get("status"), config, trial.get("relative_logdir"))
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}  # Tune's own bookkeeping is a hint only; the trial folders are the record


# -- the whole experiment ----------------------------------------------------------------------
def _not_an_experiment(path: Path) -> ExperimentError:
    hint = ""
    if path.is_dir():
        inside = sorted(p.parent.name for p in path.glob(f"*/{EXPERIMENT_FILE}"))
        if inside:
            hint = f"; it holds experiments: pass one of {', '.join(str(path / n) for n in inside[:5])}"
    return ExperimentError(f"{path} is not an experiment folder (no {EXPERIMENT_FILE}); pass the "
                           f"<storage>/<name> folder that search/run.py wrote{hint}")


def load_experiment(path: str | os.PathLike) -> ExperimentData:
    """Read an experiment folder; ExperimentError when it is not one or holds no trial."""
    if "://" in str(path):
        raise ExperimentError(f"{path}: reports are written from a local folder; copy the experiment "
                              "first (e.g. aws s3 sync URI DIR) and pass DIR")
    exp_dir = Path(path).expanduser().resolve()
    if not exp_dir.is_dir():
        raise ExperimentError(f"{exp_dir} does not exist or is not a folder; pass <storage>/<name> of a search")
    spec_file = exp_dir / EXPERIMENT_FILE
    if not spec_file.is_file():
        raise _not_an_experiment(exp_dir)
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{spec_file} is unreadable ({e}); it must be the file search/run.py wrote") from None

    ray_trials = tune_trial_states(exp_dir)
    id_of_folder = {folder: trial_id for trial_id, (_, _, folder) in ray_trials.items() if folder}
    folders = {p.name: p for p in exp_dir.iterdir()
               if p.is_dir() and (p.name.startswith("trial_") or (p / "params.json").is_file())}
    trial_rows, seed_rows, history_frames = [], [], []
    seen = set()
    for name in sorted(folders):
        trial_dir = folders[name]
        config = {}
        if (trial_dir / "params.json").is_file():
            try:
                config = json.loads((trial_dir / "params.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                config = {}
        rows = read_results(trial_dir)
        trial_id = str(rows["trial_id"].iloc[-1]) if "trial_id" in rows and not rows.empty \
            else id_of_folder.get(name, name.removeprefix("trial_"))
        status, saved_config, _ = ray_trials.get(trial_id, (None, {}, None))
        config = config or saved_config
        seen.add(trial_id)
        target = int(config.get("epochs") or spec.get("epochs") or 0)
        failures, error = _error_line(trial_dir)
        row = {"trial_id": trial_id, "folder": name, **{k: config[k] for k in HPARAM_KEYS if k in config},
               "seeds": len(trial_seeds(config)), "target_epochs": target,
               "status": trial_status(rows, target, failures > 0, status, bool(spec.get("time_budget_min"))),
               "epochs": int(rows["epoch"].iloc[-1]) if not rows.empty else 0,
               "failures": failures, "error": error, "config": config}
        if not rows.empty:
            for col in ("noisy_psnr", "noisy_test_psnr", "classical_test_psnr", "params"):
                if col in rows:
                    row[col] = rows[col].iloc[-1]
            seed_rows += _seed_long(rows, trial_id)
            keep = [c for c in ("val_psnr", "val_psnr_std", "train_loss", "diverged", "done",
                                "training_iteration", "time_total_s") if c in rows]
            history_frames.append(rows[["epoch", *keep]].assign(trial_id=trial_id))
        trial_rows.append(row)
    for trial_id, (status, config, _) in ray_trials.items():  # trials Tune knows but never started
        if trial_id not in seen:
            trial_rows.append({"trial_id": trial_id, "folder": "", **{k: config[k] for k in HPARAM_KEYS if k in config},
                               "seeds": len(trial_seeds(config)), "target_epochs": int(config.get("epochs") or 0),
                               "status": "errored" if status == "ERROR" else "unfinished", "epochs": 0,
                               "failures": 0, "error": "", "config": config})
    if not trial_rows:
        raise ExperimentError(f"{exp_dir} has no trials yet (no trial_* folders); run or resume the search first")

    seeds = pd.DataFrame(seed_rows, columns=["trial_id", "epoch", *SEED_METRICS]).astype(
        {"epoch": int, "seed": int, **{metric: float for metric in SEED_COLUMNS}})
    stats = epoch_stats(seeds)
    history = pd.concat(history_frames, ignore_index=True) if history_frames else pd.DataFrame(columns=["trial_id", "epoch"])
    history = history.merge(stats, on=["trial_id", "epoch"], how="left")
    trials = pd.DataFrame(trial_rows).set_index("trial_id", drop=False)
    trials = trials.join(_summaries(stats), how="left").rename_axis(None)
    return ExperimentData(path=exp_dir, spec=spec, trials=trials, seeds=seeds, history=history)


#: Per-seed metrics of the trainable's results: long-form column -> the prefix of its result columns.
SEED_COLUMNS = {"psnr": "seed_psnr/", "loss": "seed_loss/", "test_psnr": "seed_test_psnr/"}
SEED_METRICS = ("seed", *SEED_COLUMNS)


def _seed_long(rows: pd.DataFrame, trial_id: str) -> list[tuple]:
    """`seed_psnr/<s>`, `seed_loss/<s>` and `seed_test_psnr/<s>` columns -> tuples (trial_id, epoch,
    seed, psnr, loss, test_psnr), NaN where a seed has no value. Plain Python: a search of thousands
    of trials reads each one's few rows, and per-trial pandas reshaping cost 60 ms a trial."""
    columns = {}  # (metric, seed) -> that column's values
    for metric, prefix in SEED_COLUMNS.items():
        for column in rows.columns:
            if column.startswith(prefix):
                columns[(metric, int(column[len(prefix):]))] = pd.to_numeric(rows[column], errors="coerce").tolist()
    seeds = sorted({seed for _, seed in columns})
    nan = [float("nan")] * len(rows)
    out = []
    for i, epoch in enumerate(rows["epoch"].tolist()):
        for seed in seeds:
            out.append((trial_id, epoch, seed, *(columns.get((metric, seed), nan)[i] for metric in SEED_COLUMNS)))
    return out


def epoch_stats(seeds: pd.DataFrame) -> pd.DataFrame:
    """Seed mean and sample std (ddof=1) of validation PSNR, loss and test PSNR per (trial_id, epoch)."""
    grouped = seeds.groupby(["trial_id", "epoch"])
    stats = grouped.agg(psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"),
                        loss_mean=("loss", "mean"), loss_std=("loss", "std"),
                        test_mean=("test_psnr", "mean"), test_std=("test_psnr", "std"), n_seeds=("seed", "count"))
    # a seed whose value is NaN (diverged) makes the epoch's mean NaN, as the trainable reports it
    nan_any = seeds["psnr"].isna().groupby([seeds["trial_id"], seeds["epoch"]]).any()
    stats.loc[nan_any, ["psnr_mean", "psnr_std"]] = float("nan")
    return stats.reset_index()


def _summaries(stats: pd.DataFrame) -> pd.DataFrame:
    """Per trial: the best epoch (highest finite seed-mean validation PSNR) and the last epoch, with
    stats (test PSNR at those epochs too: it never chooses an epoch)."""
    cols = ["psnr_mean", "psnr_std", "loss_mean", "loss_std", "test_mean", "test_std", "n_seeds"]
    if stats.empty:
        return pd.DataFrame(columns=["best_epoch", *[f"best_{c}" for c in cols], *[f"final_{c}" for c in cols]])
    final = stats.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")
    final = final[["epoch", *cols]].rename(columns={"epoch": "final_epoch", **{c: f"final_{c}" for c in cols}})
    finite = stats.dropna(subset=["psnr_mean"])
    best = finite.loc[finite.groupby("trial_id")["psnr_mean"].idxmax()].set_index("trial_id") \
        if not finite.empty else pd.DataFrame(columns=["epoch", *cols])
    best = best[["epoch", *cols]].rename(columns={"epoch": "best_epoch", **{c: f"best_{c}" for c in cols}})
    return final.join(best, how="left")
