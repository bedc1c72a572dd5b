"""Per-trial overhead of a search: how much of each trial's wall time is training steps.

    python bench/overhead.py [--num-samples 8] [--budget quick] [--space tnet] [--storage DIR]

Runs a `quick`-like search through the project's real path (`search.cli.main`, in-process: Ray
Tune, Optuna + ASHA, checkpoints, TensorBoard images, actor reuse). The only addition is a
stopwatch: each trial adds to its reports the seconds it spent inside
`ReplicaTrainer.train_epoch` (the trainable is wrapped, nothing else changes). Then every trial
is trained again outside Ray ("the same training in one process": same configuration, seeds,
data and epochs, as many at a time as the search ran, one thread each as Ray gives them).
Printed per trial and in total:

  - trial_s: Ray's `time_total_s`, the trial's wall time from its start to its last report;
  - train_s: seconds in training steps inside the trial; share = train_s / trial_s (the rest is
    start-up, evaluation, checkpoints, reporting);
  - replay_s: the same training steps in one process, outside Ray (machines are shared: the
    replay runs later, so its conditions may differ; train_s is measured in the trial itself);
and for the whole search: its wall time against the training time divided by the trial slots.
The replay's last training loss is compared with the trial's (the same training, up to dropout
masks, or the comparison would be meaningless).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_trials(experiment_path: str) -> pd.DataFrame:
    """One row per trial of a finished experiment folder: config, epochs, wall time, last loss."""
    rows = []
    for trial_dir in sorted(Path(experiment_path).glob("trial_*")):
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line]
        if not results:
            continue
        last = results[-1]
        rows.append({"trial": last["trial_id"], "config": last["config"], "epochs": last["training_iteration"],
                     "trial_s": last["time_total_s"], "train_s": last.get("train_s", float("nan")),
                     "train_loss": last["train_loss"]})
    return pd.DataFrame(rows)


def with_stopwatch(trainable):
    """The trainable, reporting also `train_s`: its seconds so far inside ReplicaTrainer.train_epoch."""
    def timed_trainable(config, data=None):
        import time

        from ray import tune

        from n2n_models.train import ReplicaTrainer

        spent = [0.0]
        train_epoch, report = ReplicaTrainer.train_epoch, tune.report

        def timed_epoch(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return train_epoch(self, *args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        ReplicaTrainer.train_epoch = timed_epoch
        tune.report = lambda metrics, **kw: report({**metrics, "train_s": spent[0]}, **kw)
        try:
            return trainable(config, data)
        finally:
            ReplicaTrainer.train_epoch, tune.report = train_epoch, report
    return timed_trainable


def replay(job: tuple) -> tuple[float, float, float]:
    """Train one trial's configuration for its epochs outside Ray; returns (seconds in training
    steps, seconds in evaluation, last training loss)."""
    config, epochs, data_args, threads = job
    import torch

    from n2n_models.data import load_pairs
    from n2n_models.train import ReplicaTrainer
    from n2n_models.config import spec_from_config

    torch.set_num_threads(threads)
    pairs = load_pairs(**data_args)
    trainer = ReplicaTrainer(spec_from_config(config), fused=config.get("fused"))
    train_s = eval_s = 0.0
    for _ in range(epochs):
        t = time.perf_counter()
        losses = trainer.train_epoch(pairs.train_a, pairs.train_b)
        train_s += time.perf_counter() - t
        t = time.perf_counter()
        trainer.evaluate(pairs.val_noisy, pairs.val_clean)
        eval_s += time.perf_counter() - t
    return train_s, eval_s, float(losses.mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="tnet")
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--train-size", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--data", default="photos")
    ap.add_argument("--storage", help="where the experiment goes (default: a temporary folder)")
    args = ap.parse_args(argv)

    import trainables.n2n
    from n2n_models.data import load_pairs
    from search.budgets import BUDGETS
    from search.cli import main as search_main
    from search.experiment import Experiment

    budget = BUDGETS[args.budget]
    storage = args.storage or tempfile.mkdtemp(prefix="n2n-overhead-")
    os.makedirs(storage, exist_ok=True)
    train_size, epochs = args.train_size or budget.train_size, args.epochs or budget.epochs
    data_args = dict(data=args.data, noise="pixelate", train_size=train_size, val_size=budget.val_size, seed=0)
    load_pairs(**data_args)  # generate and cache the data now: the search then reads it back
    cli = ["--space", args.space, "--budget", args.budget, "--num-samples", str(args.num_samples), "--no-time-budget",
           "--train-size", str(train_size), "--epochs", str(epochs), "--data", args.data,
           "--storage", storage, "--name", "overhead"]
    print(f"search: python search/run.py {' '.join(cli)}", flush=True)
    load = os.getloadavg()[0]
    log = Path(storage) / "overhead-search.log"
    trainables.n2n.train_n2n = with_stopwatch(trainables.n2n.train_n2n)  # what make_trainable wraps
    start = time.perf_counter()
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        status = search_main(cli)
    search_s = time.perf_counter() - start
    import ray

    ray.shutdown()
    if status != 0:
        sys.exit(f"the search failed (exit {status}); see {log}")
    experiment = Experiment.load(f"{storage}/overhead")
    trials = read_trials(f"{storage}/overhead")
    slots = max(1, int(os.cpu_count() // max(experiment.cpus_per_trial, 1)))
    threads = max(1, int(experiment.cpus_per_trial))
    print(f"search done in {search_s:.1f} s ({len(trials)} trials, {slots} at a time, {threads} thread each; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after); replaying the training ...",
          flush=True)
    jobs = [(row.config, int(row.epochs), data_args, threads) for row in trials.itertuples()]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=slots, mp_context=multiprocessing.get_context("spawn")) as pool:
        replayed = list(pool.map(replay, jobs))
    replay_s = time.perf_counter() - start
    trials["replay_s"] = [r[0] for r in replayed]
    trials["replay_eval_s"] = [r[1] for r in replayed]
    trials["replay_loss"] = [r[2] for r in replayed]
    trials["share"] = trials["train_s"] / trials["trial_s"]
    trials["overhead_s"] = trials["trial_s"] - trials["train_s"]
    shown = trials.assign(
        width=[c.get("width") for c in trials.config], batch=[c.get("batch_size") for c in trials.config],
        bn=[c.get("batchnorm") for c in trials.config])
    pd.set_option("display.width", 200)
    print(shown[["trial", "width", "batch", "bn", "epochs", "trial_s", "train_s", "overhead_s", "share",
                 "replay_s", "replay_eval_s"]].round(3).to_string(index=False))
    loss_diff = ((trials["replay_loss"] - trials["train_loss"]).abs() / trials["train_loss"].abs()).max()
    total_train, total_trial = trials["train_s"].sum(), trials["trial_s"].sum()
    print(f"\ntraining steps / trial wall time, all trials: {total_train:.1f} s / {total_trial:.1f} s = "
          f"{100 * total_train / total_trial:.1f}%   (median per trial "
          f"{100 * trials['share'].median():.1f}%, lowest {100 * trials['share'].min():.1f}%)")
    print(f"overhead per trial: median {trials['overhead_s'].median():.2f} s; per epoch "
          f"{(trials['overhead_s'] / trials['epochs']).median():.2f} s, of which evaluation (replay) "
          f"{(trials['replay_eval_s'] / trials['epochs']).median():.2f} s")
    print(f"the same training in one process (replay): {trials['replay_s'].sum():.1f} s against "
          f"{total_train:.1f} s inside the trials (ratio {trials['replay_s'].sum() / total_train:.2f}; "
          f"load average now {os.getloadavg()[0]:.2f})")
    print(f"whole search: {search_s:.1f} s wall for {total_train / slots:.1f} s of training per slot "
          f"= {100 * total_train / slots / search_s:.1f}% (includes Ray start-up, data loading, scheduling)")
    print(f"replay: {replay_s:.1f} s; largest relative difference of the replay's last training loss and "
          f"the trial's: {loss_diff:.1e} (dropout masks come from the global random stream, which a trial "
          f"also draws from elsewhere: with dropout > 0 the replay is the same training up to its masks)")
    print(f"experiment folder: {storage}/overhead")


if __name__ == "__main__":
    main()
