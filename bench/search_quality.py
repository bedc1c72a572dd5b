"""What a search buys, at equal wall time: the test PSNR of the model a user takes home from

  - the report's setting trained alone (docs/reproduction/report-tnet.json, one trial on all the
    machine's CPUs: what the same minutes give without a search),
  - the search's start trained alone: the space's constants (for `tnet`: augmented pairs, the
    weights' moving average, the residual output) with every searched knob at the report's setting
    (search.spaces.start_point), one trial on all the CPUs: what the search adds to its own start,
  - random search + ASHA,
  - TPE + ASHA,
  - TPE + ASHA + refit (the default),
  - Population Based Training (a population of one member per trial slot, the whole time),

each given the same `--time-budget` minutes, each search run with `--search-seeds` seeds; printed as
mean ± std over the seeds, beside the noisy input and the best classical denoiser on the same test
images, and the curve of the best test PSNR against wall time (from the trials' own timestamps: the
best trial by validation so far, at its best validation epoch; at the end, the exported model, which
for the refit comes from its replicas).

    python bench/search_quality.py [--minutes 10] [--search-seeds 3] [--data folder:../shared/data/CBSD432]
                                   [--train-size 20000] [--val-size 500] [--space tnet] [--amp] [--storage DIR]
                                   [--methods "report's setting alone" "TPE + ASHA + refit"] [--first-seed 0]
                                   [--alone-cpus N]

Every run is the real command, `python search/run.py ... --time-budget MINUTES`, one after the other
(each with the machine to itself). The exported model is the one `analysis/report.py` exports
(analysis.export.exported: the refit's best replica when there is a refit, else the best trial),
and its test PSNR is the one recorded at that checkpoint. Results are kept in --storage (a
temporary folder by default); a run whose folder there already holds a finished run with the same
settings is read, not run again, so that `--search-seeds 3` over a storage with seeds 0 and 1 runs
seed 2 only. docs/search-quality.md has the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.export import exported, load_refit  # noqa: E402
from analysis.load import load_experiment, read_results  # noqa: E402
from analysis.tables import mean_pm_std  # noqa: E402
from analysis.experiment_file import YARDSTICKS_FILE  # noqa: E402
from n2n_models.config import KNOB, check_config  # noqa: E402
from search.spaces import SPACES, start_point  # noqa: E402
from ray.tune.search.sample import Domain  # noqa: E402

BENCH_FILE = "bench.json"  # this bench's record of a run it made: its wall seconds
REPORT_SETTING = REPO / "docs" / "reproduction" / "report-tnet.json"
ALONE = None  # a method's flags: one configuration trained alone (alone_config)
METHODS = {  # name: (flags, whether it depends on the search seed)
    "report's setting alone": (ALONE, False),
    "the search's start alone": (ALONE, False),
    "random + ASHA": (["--searcher", "random", "--scheduler", "asha", "--no-refit"], True),
    "TPE + ASHA": (["--searcher", "optuna", "--scheduler", "asha", "--no-refit"], True),
    "TPE + ASHA + refit": (["--searcher", "optuna", "--scheduler", "asha"], True),
    "PBT": (["--searcher", "random", "--scheduler", "pbt"], True),
}


def alone_config(name: str, space: str) -> dict:
    """The configuration an alone method trains, checked and complete: the report's setting, or
    the search's start in `space` (its constants, every searched knob at the report's setting)."""
    if name == "report's setting alone":
        return check_config(json.loads(REPORT_SETTING.read_text()), str(REPORT_SETTING))
    params = SPACES[space].params
    constants = {k: v for k, v in params.items() if k in KNOB and not isinstance(v, Domain)}
    return check_config({**constants, **start_point(params), "label": f"{space} start"}, f"space {space}")


def run(name: str, flags: list[str] | None, args, seed: int) -> dict:
    folder = f"{name.replace(' ', '-').replace('+', '').replace(chr(39), '')}-seed{seed}"
    config = None
    if flags is ALONE:
        config = alone_config(name, args.space)
        config_file = args.storage / f"{folder}.json"
        config_file.write_text(json.dumps(config) + "\n")
        flags = ["--configs", str(config_file), "--seeds", "1", "--epochs", "100000",
                 "--cpus-per-trial", str(args.alone_cpus)]
    command = [sys.executable, str(REPO / "search" / "run.py"), *flags, "--data", args.data, "--noise", args.noise,
               "--train-size", str(args.train_size), "--val-size", str(args.val_size),
               "--time-budget", str(args.minutes), "--search-seed", str(seed),
               "--storage", str(args.storage), "--name", folder]
    if "--configs" not in flags:
        command[2:2] = ["--space", args.space]
    if args.amp:
        command.append("--amp")
    seconds = earlier_seconds(args.storage / folder)
    reused = seconds is not None
    if not reused:
        print(f"[bench] {name}, seed {seed}: {' '.join(command[1:])}", flush=True)
        start = time.time()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        (args.storage / folder / BENCH_FILE).write_text(json.dumps({"seconds": seconds}) + "\n")
    exp = load_experiment(args.storage / folder)
    check_settings(exp, args, seed, config)
    if reused:
        print(f"[bench] {name}, seed {seed}: read from {exp.path} (run before)", flush=True)
    _, best = exported(exp, load_refit(exp))
    yardsticks = json.loads((exp.path / YARDSTICKS_FILE).read_text())
    return {"method": name, "seed": seed, "seconds": seconds, "test_psnr": best.test_psnr if best else float("nan"),
            "val_psnr": best.val_psnr if best else float("nan"), "trials": len(exp.trials),
            "noisy": yardsticks["noisy_test_psnr"], "classical": yardsticks["methods"][yardsticks["best"]]["test_psnr"],
            "curve": pd.concat([best_so_far(exp), pd.Series({seconds: best.test_psnr if best else float("nan")})])}


class StorageTaken(Exception):
    """--storage holds a run this bench cannot read as its own (the message says which and why)."""


def earlier_seconds(folder: Path) -> float | None:
    """The wall seconds of an earlier run in `folder` that this bench made and that ended well; None
    when the folder is not there. A folder that holds something else stops the bench."""
    if not folder.exists():
        return None
    done = folder / BENCH_FILE  # written when the run's command ended well
    if not done.is_file():
        raise StorageTaken(f"{folder} holds an unfinished or foreign run; remove it or pass another --storage")
    return float(json.loads(done.read_text())["seconds"])


def check_settings(exp, args, seed: int, config: dict | None):
    """Stop the bench when the run in `exp` was made with other settings than this bench's
    (`config`: an alone method's configuration)."""
    data = args.data
    if data.startswith("folder:"):  # the experiment file records the folder resolved
        data = f"folder:{Path(data[len('folder:'):]).resolve()}"
    wanted = {"noise": args.noise, "train_size": args.train_size, "val_size": args.val_size,
              "time_budget_min": args.minutes, "amp": args.amp, "search_seed": seed, "data": data}
    if config is None:
        wanted["space"] = args.space
    else:
        wanted.update(configs=[config], cpus_per_trial=args.alone_cpus)
    differ = [f"{k} {exp.spec.get(k)!r} (here {v!r})" for k, v in wanted.items() if exp.spec.get(k) != v]
    if differ:
        raise StorageTaken(f"{exp.path} was run with other settings: {', '.join(differ)}; pass another --storage")


def best_so_far(exp) -> pd.Series:
    """Test PSNR of the best trial by validation so far (at its best validation epoch so far),
    against seconds since the first trial started (the trials' own timestamps); the refit's replicas
    and the finish (analysis.export.load_refit) count as trials."""
    folders = [exp.path / folder for folder in exp.trials["folder"] if folder]
    refit = load_refit(exp)
    if refit is not None:
        folders += [refit.path / folder for folder in refit.trials["folder"] if folder]
    frames = [read_results(folder) for folder in folders]
    rows = pd.concat([f for f in frames if not f.empty], ignore_index=True) if frames else pd.DataFrame()
    if rows.empty:
        return pd.Series(dtype=float)
    rows = rows.dropna(subset=["val_psnr"]).sort_values("reported_at")
    start, best_val, out = rows["process_start"].min(), -float("inf"), {}
    for row in rows.itertuples(index=False):
        if row.val_psnr > best_val:
            best_val = row.val_psnr
            out[row.reported_at - start] = row.test_psnr
    return pd.Series(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--search-seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first search seed (seeds FIRST .. FIRST+N-1): add seeds to an earlier bench's storage")
    p.add_argument("--data", default=f"folder:{REPO.parent / 'shared' / 'data' / 'CBSD432'}")
    p.add_argument("--noise", default="pixelate")
    p.add_argument("--train-size", type=int, default=20_000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--space", default="tnet")
    p.add_argument("--amp", action="store_true", help="every run with --amp (bfloat16 autocast)")
    p.add_argument("--storage", type=Path, default=None)
    p.add_argument("--alone-cpus", type=float, default=float(os.cpu_count() or 1),
                   help="CPUs of the trial an alone method trains (default: all this machine's)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="METHOD",
                   help="which of: " + "; ".join(METHODS) + " (default: all)")
    args = p.parse_args(argv)
    if not args.alone_cpus > 0:
        p.error(f"--alone-cpus must be above 0, got {args.alone_cpus:g}")
    if args.data.startswith("folder:") and not Path(args.data[len("folder:"):]).is_dir():
        print(f"skipped: {args.data[len('folder:'):]} is not here (the shared photos); pass --data photos "
              f"for the built-in data", file=sys.stderr)
        return 2
    args.storage = args.storage or Path(tempfile.mkdtemp(prefix="search-quality-"))
    args.storage.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (flags, seeded) in METHODS.items():
        if name not in args.methods:
            continue
        for seed in range(args.first_seed, args.first_seed + args.search_seeds) if seeded else [0]:
            try:
                rows.append(run(name, flags, args, seed))
            except StorageTaken as e:
                print(f"search_quality.py: error: {e}", file=sys.stderr)
                return 2
            print(f"[bench]   test {rows[-1]['test_psnr']:.2f} dB in {rows[-1]['seconds'] / 60:.1f} min", flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{args.data} + {args.noise}, {args.train_size} pairs, {args.val_size} validation and test images, "
          f"{args.minutes:g} minutes each ({args.storage})")
    print(f"noisy input {table['noisy'].iloc[0]:.2f} dB, best classical {table['classical'].iloc[0]:.2f} dB (test)")
    for name, group in table.groupby("method", sort=False):
        test = group["test_psnr"]
        print(f"{name:<24} test {mean_pm_std(test.mean(), test.std() if len(test) > 1 else float('nan'), 2):>14} dB"
              f"  ({len(group)} run{'s' if len(group) > 1 else ''}, {group['trials'].mean():.0f} trials, "
              f"{group['seconds'].mean() / 60:.1f} min)")
    print("\nbest test PSNR so far against wall time (mean over seeds):")
    marks = [args.minutes * 60 * f for f in (0.25, 0.5, 0.75, 1.0)]
    print(f"{'':<24}" + "".join(f"{m / 60:>9.1f}m" for m in marks))
    for name, group in table.groupby("method", sort=False):
        values = []
        for mark in marks:
            at = [c[c.index <= mark].iloc[-1] for c in group["curve"] if len(c[c.index <= mark])]
            values.append(sum(at) / len(at) if at else float("nan"))
        print(f"{name:<24}" + "".join(f"{v:>10.2f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
