"""What keeping freed memory in the heap (n2n_models.allocator) does to a training step.

    python bench/allocator.py [--models tnet,unet] [--threads 1,2] [--rounds 4]

Each measurement is a fresh process that trains the project's loop (ReplicaTrainer, one seed,
batch 32, synthetic pairs) for one warm-up epoch and then times epochs: once with the setting (the
default) and once with malloc left to glibc's defaults (a harmless GLIBC_TUNABLES entry makes
`keep_freed_memory` leave it alone). The two alternate round by round (the machine is noisy).
Prints per model and thread count: ms per step and minor page faults per step of each, the median
of the per-round ratios and its range.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n2n_models.allocator import is_user_malloc_setting  # noqa: E402

CHILD = """
import resource, statistics, sys, time, torch
sys.path.insert(0, {root!r})
from n2n_models.allocator import keep_freed_memory
from n2n_models.data import load_pairs
from n2n_models.train import ReplicaTrainer, TrainSpec
torch.set_num_threads({threads})
pairs = load_pairs("synthetic", "pixelate", train_size={n}, val_size=8, seed=3)
trainer = ReplicaTrainer(TrainSpec(model={model!r}, batch_size=32, seeds=(0,)))
trainer.train_epoch(pairs.train_a, pairs.train_b)
times, before = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({epochs}):
    t0 = time.perf_counter(); trainer.train_epoch(pairs.train_a, pairs.train_b)
    times.append(time.perf_counter() - t0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(statistics.median(times) / {steps} * 1e3, faults / ({epochs} * {steps}), keep_freed_memory())
"""


def measure(model: str, threads: int, keep: bool, train_size: int | None = None,
            epochs: int = 3) -> tuple[float, float, bool]:
    """In a fresh process: ms per step and page faults per step of `epochs` epochs after a warm-up
    epoch (batch 32), and whether the setting was in force. keep=False sets a harmless
    GLIBC_TUNABLES entry, so malloc keeps glibc's defaults."""
    n = train_size or (1024 if model == "tnet" else 256)
    env = {k: v for k, v in os.environ.items() if not is_user_malloc_setting(k)}
    if not keep:
        env["GLIBC_TUNABLES"] = "glibc.malloc.check=0"
    code = CHILD.format(root=str(ROOT), threads=threads, n=n, model=model, steps=n // 32, epochs=epochs)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    ms, faults, applied = done.stdout.split()
    return float(ms), float(faults), applied == "True"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tnet,unet")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    print(f"{'model':8} {'threads':>7} {'glibc ms/step':>13} {'faults':>7} {'kept ms/step':>12} {'faults':>7}"
          f" {'speed-up: median (range) of rounds':>35}", flush=True)
    for model in args.models.split(","):
        for threads in map(int, args.threads.split(",")):
            plain, kept = [], []
            for r in range(args.rounds):
                order = (False, True) if r % 2 == 0 else (True, False)
                got = {keep: measure(model, threads, keep) for keep in order}
                plain.append(got[False])
                kept.append(got[True])
            ratios = [p[0] / k[0] for p, k in zip(plain, kept)]
            print(f"{model:8} {threads:>7} {statistics.median(p[0] for p in plain):>13.1f}"
                  f" {statistics.median(p[1] for p in plain):>7.0f} {statistics.median(k[0] for k in kept):>12.1f}"
                  f" {statistics.median(k[1] for k in kept):>7.0f}"
                  f" {statistics.median(ratios):>17.2f}x ({min(ratios):.2f}-{max(ratios):.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
