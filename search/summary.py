"""The end of a search: the best configurations (mean ± std over seeds; validation, which chose
them, and test, which did not), the yardsticks on the same test images, the best checkpoint and
the commands to look further."""
from __future__ import annotations

import shlex
import sys

import pandas as pd

from analysis.load import trial_status
from n2n_models.classical import yardstick_line
from n2n_models.config import shown_knobs

from .tune_internals import cluster_launcher_config

#: How Tune names a configuration key in a trial's metrics table (Result.metrics_dataframe)
CONFIG_COLUMN = "config/"


def ended(seconds: float, interrupted: bool) -> str:
    """How a search's, a refit's or a finish's summary says it ended."""
    return f"{'interrupted after' if interrupted else 'done in'} {seconds / 60:.1f} min"


def best_epoch_config(result, best: pd.Series) -> dict:
    """The configuration the trial trained its best epoch with: its row's `config/` columns (Population
    Based Training changes a member's configuration between epochs, and Tune's `Result.config` is
    the one set last, at an exchange that may never have trained), else `Result.config`."""
    columns = {name[len(CONFIG_COLUMN):]: value for name, value in best.items()
               if name.startswith(CONFIG_COLUMN) and not pd.isna(value)}
    return {**(result.config or {}), **columns}


def own_trial_id(result, history: pd.DataFrame) -> str:
    """The trial's own id, from its own rows: after an exchange Tune's `Result.metrics` can be the
    last result of the member it copied (Ray's PBT `_exploit` hands the trial that member's)."""
    if "trial_id" in history:
        ids = history["trial_id"].dropna()
        if len(ids):
            return str(ids.iloc[-1])
    return (result.metrics or {}).get("trial_id", "")


def trial_rows(experiment, results) -> pd.DataFrame:
    """One row per trial: its configuration, its best epoch's seed mean ± std, and its fate."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty or "val_psnr" not in history:
            row = shown_knobs(result.config or {})
            row["trial"] = (result.metrics or {}).get("trial_id", "")
            row.update(epochs=0, val_psnr=float("nan"), val_psnr_std=float("nan"), test_psnr=float("nan"))
        else:
            best = history.loc[history["val_psnr"].fillna(-1e9).idxmax()]
            row = shown_knobs(best_epoch_config(result, best))
            row["trial"] = own_trial_id(result, history)
            row.update(epochs=int(history["training_iteration"].max()), best_epoch=int(best["training_iteration"]),
                       val_psnr=best["val_psnr"], val_psnr_std=best.get("val_psnr_std", 0.0),
                       test_psnr=best.get("test_psnr", float("nan")))
        # the report's rule (analysis/load.py): "stopped early" needs the last result's done flag,
        # which a trial that a Ctrl-C left running, or that never started, does not have
        failed = result.error is not None
        row["status"] = trial_status(history if row["epochs"] else pd.DataFrame(), experiment.epochs,
                                     has_error=failed, ray_status="ERROR" if failed else None)
        row["_result"] = result
        rows.append(row)
    return pd.DataFrame(rows)


def print_summary(experiment, results, seconds: float, top: int = 10, interrupted: bool = False,
                  yardsticks: dict | None = None) -> dict | None:
    """Print the summary; returns the configuration of the best trial by validation PSNR at its best
    epoch (errored and diverged trials never count), or None when no trial has a result."""
    df = trial_rows(experiment, results)
    out = sys.stdout
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    print(f"\nSearch {experiment.name} {ended(seconds, interrupted)}: {len(df)} trials "
          f"({', '.join(f'{v} {k}' for k, v in counts.items())})", file=out)
    repeats = experiment.num_samples - len(df)
    # under --time-budget, fewer trials than samples means the time ran out, not that TPE repeated itself
    if experiment.searcher == "optuna" and repeats > 0 and not interrupted and experiment.time_budget_min is None:
        print(f"{experiment.num_samples} proposals: {repeats} repeated a configuration already tried and "
              f"reused its result instead of training it again", file=out)
    # errored and diverged trials are listed by the report, never taken as a best result
    ok = df[~df["status"].isin(["errored", "diverged"])].dropna(subset=["val_psnr"]) if not df.empty else df
    for status in ("errored", "diverged"):
        names = df.loc[df["status"] == status, "trial"].tolist() if not df.empty else []
        if names:
            print(f"{len(names)} trial(s) {status}: {', '.join(names)}", file=out)
    if ok.empty:
        print("No trial produced a result.", file=out)
        return None
    ok = ok.sort_values("val_psnr", ascending=False)
    noisy = results[0].metrics.get("noisy_psnr") if results[0].metrics else None
    table = ok.drop(columns=["_result"]).head(top).copy()
    psnr = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table.pop("val_psnr"), table.pop("val_psnr_std"))]
    table.insert(len(table.columns) - 1, "val PSNR (dB)", psnr)
    test = [f"{t:.2f}" for t in table.pop("test_psnr")]
    table.insert(len(table.columns) - 1, "test PSNR", test)
    if noisy is not None:
        print(f"Noisy validation input: {noisy:.2f} dB. Best configurations (seed mean ± std at each trial's "
              f"best validation epoch, {experiment.seeds} seed{'s' if experiment.seeds > 1 else ''}; "
              f"test PSNR is reported only, never used to choose):", file=out)
    print(table.to_string(index=False), file=out)
    best = ok.iloc[0]["_result"]
    try:
        checkpoint = best.get_best_checkpoint("val_psnr", "max")
    except RuntimeError:  # Ray's "No checkpoint exists": interrupted before the trial's first was saved
        checkpoint = None
    print(f"\nBest: {ok.iloc[0]['val_psnr']:.2f} dB validation, {ok.iloc[0]['test_psnr']:.2f} dB test; "
          f"checkpoint: {checkpoint.path if checkpoint else '(none)'}", file=out)
    line = yardstick_line(yardsticks, ok.iloc[0]["test_psnr"], "this search's best")
    if line:
        print(line, file=out)
    if not (experiment.refit_seeds or experiment.finish) or interrupted:
        print_next_steps(experiment)
    return dict(best.config)


def print_next_steps(experiment) -> None:
    """The commands that compare the trials and write the report (which exports the best model)."""
    out = sys.stdout
    path = shlex.quote(experiment.path)
    print(f"Compare trials:  tensorboard --logdir {path}", file=out)
    if "://" in experiment.path:  # the report reads a local folder
        local = shlex.quote(f"runs/{experiment.name}")
        print(f"Write the report: aws s3 sync {path} {local} && python analysis/report.py {local}", file=out)
    elif cluster_launcher_config() is not None:  # this is a head that `ray up` started: the user is elsewhere
        local = shlex.quote(f"runs/{experiment.name}")
        print(f"Write the report: python analysis/report.py {path} here on the head, or on your machine: "
              f"mkdir -p runs && ray rsync-down CLUSTER.yaml {shlex.quote(experiment.path + '/')} {local}/ && "
              f"python analysis/report.py {local}", file=out)
    else:
        print(f"Write the report: python analysis/report.py {path}", file=out)
