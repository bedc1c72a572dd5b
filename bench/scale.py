"""How the cost of a search grows with its number of trials.

    python bench/scale.py [--sizes 100 1000 5000] [--storage DIR] [--keep]

For each size N: a real search of N one-epoch trials of the smallest real trainable (TNet on the
smoke data: 32 synthetic training pairs, one seed; Tune's random searcher, FIFO, every trial slot
of this machine), run as a user runs it (`python search/run.py`, its own local Ray), then
`--resume` on the finished search and `python analysis/report.py` on it. Printed per size:

  - wall: the search's wall time; per trial beyond training: (wall - the trials' own time
    (`time_total_s`) / trial slots) / N, what Tune, the driver and the trial start-up cost a trial;
  - driver CPU and peak memory: the `search/run.py` process alone (sampled every 0.2 s with psutil;
    Ray's own processes not counted);
  - folder: the experiment folder's size, and of it Tune's state files (experiment_state-*.json,
    searcher and generator state, tuner.pkl, callback states);
  - resume: wall time of `--resume` on the finished search (nothing left to train);
  - report: wall time, peak memory and CPU time of `analysis/report.py` on it.
`--storage DIR --reuse` measures --resume and the report again on the searches an earlier run kept.
Then the growth exponent of each figure between consecutive sizes: the slope of log(figure)
against log(N) (1 = linear; a per-trial figure that stays flat has slope 0).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["--space", "tnet", "--budget", "smoke", "--data", "synthetic", "--train-size", "32", "--val-size", "8",
          "--epochs", "1", "--seeds", "1", "--searcher", "random", "--scheduler", "fifo", "--no-refit", "-q"]
TUNE_STATE = ("experiment_state-", "searcher-state-", "search_gen_state-", "tuner.pkl", "callback-states-")


def watch(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; its wall time, exit status, and the process's own CPU time and peak RSS."""
    start = time.time()
    proc = psutil.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env={**os.environ, **(env or {})})
    peak, cpu = 0, 0.0
    while proc.poll() is None:
        try:
            with proc.oneshot():
                peak = max(peak, proc.memory_info().rss)
                times = proc.cpu_times()
                cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... exited {proc.returncode}:\n{output[-3000:]}")
    return {"wall_s": time.time() - start, "cpu_s": cpu, "peak_mb": peak / 2**20, "output": output}


def folder_size(path: Path) -> tuple[float, float]:
    """(the folder's size, its Tune state files' size) in MB."""
    total = state = 0
    for p in path.rglob("*"):
        if p.is_file():
            size = p.stat().st_size
            total += size
            if p.parent == path and p.name.startswith(TUNE_STATE):
                state += size
    return total / 2**20, state / 2**20


def trials_time(path: Path) -> tuple[int, float]:
    """(trials with a result, the sum of their time_total_s)."""
    count, seconds = 0, 0.0
    for trial in path.glob("trial_*"):
        try:
            rows = pd.read_csv(trial / "progress.csv")
        except (OSError, pd.errors.EmptyDataError):
            continue
        count += len(rows) > 0
        seconds += float(rows["time_total_s"].iloc[-1]) if len(rows) else 0.0
    return count, seconds


def slots_of(output: str) -> int:
    marker = " trials at a time"
    line = next((line for line in output.splitlines() if marker in line), "")
    return int(line.split(marker)[0].rsplit(" ", 1)[-1]) if line else os.cpu_count()


def measure(size: int, storage: Path, reuse: bool = False) -> dict:
    """The figures of a search of `size` trials; with `reuse`, the search's own figures are read back
    from the file an earlier run left beside it, and only --resume and the report are measured again."""
    name = f"scale-{size}"
    run = [sys.executable, "search/run.py", *SEARCH, "--num-samples", str(size), "--storage", str(storage),
           "--name", name]
    path, saved = storage / name, storage / f"{name}.json"
    if reuse and saved.is_file():
        print(f"[scale] {size} trials: the search's figures from {saved}", flush=True)
        row = {k: v for k, v in json.loads(saved.read_text()).items() if not k.startswith(("resume", "report"))}
    else:
        print(f"[scale] {size} trials ...", flush=True)
        search = watch(run)
        recorded, trained = trials_time(path)
        slots = slots_of(search["output"])
        folder_mb, state_mb = folder_size(path)
        row = {"trials": size, "recorded": recorded, "slots": slots, "wall_s": search["wall_s"],
               "beyond_training_s": (search["wall_s"] - trained / slots) / size,
               "driver_cpu_s": search["cpu_s"], "driver_peak_mb": search["peak_mb"],
               "folder_mb": folder_mb, "tune_state_mb": state_mb}
    resume = watch(run + ["--resume"])
    shutil.rmtree(path / "report", ignore_errors=True)
    report = watch([sys.executable, "analysis/report.py", str(path)])
    row.update(resume_s=resume["wall_s"], report_s=report["wall_s"], report_peak_mb=report["peak_mb"],
               report_cpu_s=report["cpu_s"])
    saved.write_text(json.dumps(row))
    print("[scale] " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


#: The figures whose growth is printed, and what their slope should be at most for linear cost.
GROWTH = {"wall_s": "search wall time", "driver_cpu_s": "driver CPU time", "driver_peak_mb": "driver peak memory",
          "folder_mb": "experiment folder", "tune_state_mb": "Tune's state files", "resume_s": "--resume",
          "report_s": "report time", "report_peak_mb": "report peak memory"}


def slopes(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (_, a), (_, b) in zip(table.iterrows(), table.iloc[1:].iterrows()):
        ratio = math.log(b["trials"] / a["trials"])
        rows.append({"from": int(a["trials"]), "to": int(b["trials"]),
                     **{label: math.log(b[key] / a[key]) / ratio if a[key] > 0 and b[key] > 0 else float("nan")
                        for key, label in GROWTH.items()}})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--storage", help="where the experiments go (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the experiments")
    parser.add_argument("--reuse", action="store_true",
                        help="with --storage of an earlier run: measure only --resume and the report again")
    args = parser.parse_args(argv)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="n2n-scale-"))
    load = os.getloadavg()
    try:
        table = pd.DataFrame([measure(n, storage, args.reuse) for n in sorted(args.sizes)])
    finally:
        if not args.keep and not args.storage:
            shutil.rmtree(storage, ignore_errors=True)
    print(f"\nSearch cost against trials ({os.cpu_count()} cores; load average {load[0]:.2f} before):")
    shown = table.copy()
    for key in shown.columns:
        if shown[key].dtype.kind == "f":
            shown[key] = shown[key].map(lambda v: f"{v:.3g}")
    print(shown.to_string(index=False))
    if len(table) > 1:
        print("\nGrowth exponents (slope of log figure against log trials; 1 = linear):")
        print(slopes(table).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    missing = table[table["recorded"] != table["trials"]]
    if not missing.empty:
        print(f"\nWARNING: trials without a recorded result: {missing[['trials', 'recorded']].to_dict('records')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
