"""Search efficiency on one fixed small problem: the full grid, random search and TPE + ASHA at
the same number of configurations; total epochs trained, wall time, best validation PSNR.

    python bench/search_efficiency.py [--epochs 16] [--train-size 1000] [--val-size 200]
                                      [--data photos] [--storage DIR]

Runs the project's real path (`search.cli.main`, in-process, one local Ray for all runs) on a
discrete version of the `tnet` space registered here at run time: `bench-grid` lists every cell
(run with `--searcher grid`), `bench-choice` has the same values as `tune.choice` (random and
Optuna's TPE draw from it). Each search gets as many configurations as the grid has cells, one
seed each, and its results are read back from its experiment folder. Printed per search: trials,
epochs trained (and their share of the grid's), wall time, the best validation PSNR over all
trials and epochs, its configuration, and what the grid measured for that configuration.

TPE + ASHA runs as search/ sets it up: a configuration proposed again is not retrained (its earlier
result is reused, search/searchers.py), ASHA's first rung at epochs/8 with reduction factor 2
(search/schedulers.py). The last lines run it with other settings, by replacing
`search.tuning.make_scheduler` / `make_searcher` for that run only: the settings before this
benchmark (repeats retrained, first rung at epochs/4), and a more aggressive ASHA.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The discrete space: 3 x 2 x 2 x 2 = 24 configurations of TNet at batch 32.
VALUES = {"lr": [3e-4, 1e-3, 3e-3], "width": [16, 32], "loss": ["l2", "l1"], "batchnorm": [False, True]}
KEYS = list(VALUES)


def register_spaces():
    from ray import tune

    from search.spaces import SPACES, Space

    cells = tuple(dict(zip(KEYS, combo)) for combo in itertools.product(*VALUES.values()))
    params = {"model": "tnet", "batch_size": 32, "dropout": 0.0, **{k: tune.choice(v) for k, v in VALUES.items()}}
    SPACES["bench-grid"] = Space("bench-grid", "benchmark: discrete TNet space, every cell", params, cells=cells)
    SPACES["bench-choice"] = Space("bench-choice", "benchmark: discrete TNet space, sampled", params)
    return len(cells)


def read_trials(experiment_path: str) -> pd.DataFrame:
    """One row per trial: its searched values, epochs trained and best validation PSNR."""
    rows = []
    for trial_dir in sorted(Path(experiment_path).glob("trial_*")):
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line]
        if results:
            config = results[-1]["config"]
            rows.append({**{k: config[k] for k in KEYS}, "epochs": results[-1]["training_iteration"],
                         "best_psnr": max(r["val_psnr"] for r in results)})
    return pd.DataFrame(rows)


def asha(first_rung_divisor: int, reduction_factor: int):
    """A make_scheduler for search.tuning: ASHA with its first rung at epochs / first_rung_divisor."""
    from ray.tune.schedulers import ASHAScheduler

    def make_scheduler(kind, epochs, seconds=None):  # the bench's searches have no time budget
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                             grace_period=max(1, epochs // first_rung_divisor),
                             reduction_factor=reduction_factor)
    return make_scheduler


def plain_tpe(experiment, slots, log=print):
    """Optuna TPE that trains every proposal, repeats included: Ray's own OptunaSearch (before
    search.searchers.TPESearch, which answers a repeat from its first trial)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(seed=experiment.search_seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--train-size", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=200)
    ap.add_argument("--data", default="photos")
    ap.add_argument("--search-seed", type=int, default=0)
    ap.add_argument("--storage", help="where the experiments go (default: a temporary folder)")
    ap.add_argument("--summarize", metavar="DIR", help="only print the table of a finished run's folder")
    args = ap.parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)

    import search.ray_session
    import search.tuning
    from n2n_models.data import load_pairs
    from search.cli import main as search_main

    n = register_spaces()
    storage = args.storage or tempfile.mkdtemp(prefix="n2n-search-efficiency-")
    os.makedirs(storage, exist_ok=True)
    load_pairs(args.data, "pixelate", train_size=args.train_size, val_size=args.val_size, seed=0)  # cache it
    search.ray_session.connect(None)  # one Ray for all runs: its start-up is in no run's wall time
    common = ["--no-time-budget", "--epochs", str(args.epochs), "--train-size", str(args.train_size), "--val-size", str(args.val_size),
              "--data", args.data, "--seeds", "1", "--search-seed", str(args.search_seed), "--storage", storage]
    tpe = ["--space", "bench-choice", "--searcher", "optuna", "--scheduler", "asha"]
    runs = [  # label, flags, replacements of search.tuning's functions for that run
        ("full grid", ["--space", "bench-grid", "--searcher", "grid", "--scheduler", "fifo"], {}),
        ("random search", ["--space", "bench-choice", "--searcher", "random", "--scheduler", "fifo"], {}),
        ("TPE + ASHA (the project's)", tpe, {}),
        ("  before: repeats retrained, rungs epochs/4", tpe,
         {"make_scheduler": asha(4, 2), "make_searcher": plain_tpe}),
        ("  rungs from epochs/16, rf 4", tpe, {"make_scheduler": asha(16, 4)}),
    ]
    print(f"problem: TNet, {len(VALUES)} knobs {VALUES}, {n} configurations, {args.epochs} epochs, "
          f"{args.data} + pixelate, {args.train_size} training pairs, {args.val_size} validation images, "
          f"1 seed; experiments in {storage}", flush=True)
    meta, original = [], {k: getattr(search.tuning, k) for k in ("make_scheduler", "make_searcher")}
    for i, (label, flags, replacements) in enumerate(runs):
        name = f"run{i}"
        cli = flags + ["--num-samples", str(n), "--name", name] + common
        for k, f in replacements.items():
            setattr(search.tuning, k, f)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        with open(Path(storage) / f"{name}.log", "w") as f, contextlib.redirect_stdout(f), \
                contextlib.redirect_stderr(f):
            status = search_main(cli)
        wall = time.perf_counter() - start
        for k, f in original.items():
            setattr(search.tuning, k, f)
        if status != 0:
            sys.exit(f"{label} failed (exit {status}); see {storage}/{name}.log")
        meta.append({"search": label, "name": name, "wall_s": wall, "load": load})
        (Path(storage) / "runs.json").write_text(json.dumps(meta, indent=1))
        print(f"  {label}: done in {wall:.0f} s (load average {load:.2f} at its start)", flush=True)

    import ray

    ray.shutdown()
    summarize(storage)


def summarize(storage: str):
    """The comparison table, from the experiment folders and runs.json under `storage`."""
    meta = json.loads((Path(storage) / "runs.json").read_text())
    trials = {m["name"]: read_trials(f"{storage}/{m['name']}") for m in meta}
    grid_trials = trials[meta[0]["name"]]
    grid = grid_trials.set_index(KEYS)["best_psnr"]
    grid_epochs, grid_best = int(grid_trials["epochs"].sum()), grid.max()
    print(f"\n{'search':44s} {'trials':>6s} {'distinct':>8s} {'epochs':>7s} {'of grid':>8s} {'no repeats':>10s} "
          f"{'wall s':>7s} {'best dB':>8s} {'vs grid':>8s}  best configuration (grid's value for it)")
    for m in meta:
        t = trials[m["name"]]
        best = t.loc[t["best_psnr"].idxmax()]
        on_grid = grid.get(tuple(best[k] for k in KEYS), float("nan"))
        # a configuration sampled again trains the same numbers again (same seed): the epochs a
        # search would spend if it trained each distinct configuration once, as far as it got
        distinct = t.groupby(KEYS)["epochs"].max()
        described = ", ".join(f"{k}={best[k]}" for k in KEYS)
        print(f"{m['search']:44s} {len(t):6d} {len(distinct):8d} {int(t['epochs'].sum()):7d} "
              f"{100 * t['epochs'].sum() / grid_epochs:7.0f}% {100 * distinct.sum() / grid_epochs:9.0f}% "
              f"{m['wall_s']:7.0f} {best['best_psnr']:8.2f} {best['best_psnr'] - grid_best:+8.2f}  {described} "
              f"({on_grid:.2f})")
    ranked = grid.sort_values(ascending=False)
    print(f"\ngrid: best {ranked.iloc[0]:.2f} dB, 2nd {ranked.iloc[1]:.2f}, 5th {ranked.iloc[4]:.2f}, "
          f"median {ranked.median():.2f}; configurations within 0.1 dB of the best: "
          f"{int((ranked >= ranked.iloc[0] - 0.1).sum())}")
    print("'no repeats': epochs if each distinct configuration were trained once, as far as the search "
          "took it (derived from the same runs: repeated configurations retrain identical numbers)")


if __name__ == "__main__":
    main()
