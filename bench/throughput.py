"""Training throughput of the project's loop against a plain reference loop, and of fused seed
replicas against sequential ones, measured side by side in one run.

    python bench/throughput.py [--threads 2] [--models tnet,unet,basenet] [--batch-sizes 16,32,64]
                               [--rounds 9] [--seeds 5] [--quick] [--sections loops,layers,...]
                               [--repeat N]

The reference loop (`n2n_models.reference.ReferenceLoop`) trains the way the report's own code
does: the data as one float tensor, shuffled once per epoch, sliced per batch and divided by 255
per batch, a standard module forward in the default memory layout, the default Adam,
`optimizer.step()`. The project's loop is `n2n_models.train.ReplicaTrainer` with one seed. Same
model, seed, data order and batch size.
Every measurement alternates the variants round by round (the machine is shared and noisy);
figures are medians over rounds and ratios of medians. Printed:

  1. the machine's matrix-multiply peak: a large torch.mm on the same threads (GFLOP/s);
  2. per model and batch size: images/s of the reference and the project's loop, the speed-up,
     the model's training FLOPs (torch.utils.flop_counter) and the share of the peak reached;
     with --repeat N, N such comparisons in a row and, per model and batch size, the sorted
     speed-ups and their median (the machine's drift shows between runs, not within one);
  3. TNet at batch 32: what each ingredient brings (layout, Adam kernel, fast layers) and what
     was measured but not adopted (torch.compile, bfloat16 autocast); then each adopted ingredient
     again against the loop just before it, the two alone;
  4. each convolution of an upsample-and-concatenate that fast_layers computes as one layer
     (TNet's and UNet's decoders), alone, against the standard layers it replaces;
  5. K fused seed replicas against K sequential ones, and against the previous fused
     implementation (torch.func vmap over stacked weights);
  6. mixed precision (TrainSpec.amp: bfloat16 autocast on CPU): its effect on validation PSNR
     after a short training on the built-in photos, against float32, same seeds;
  7. evaluation: a trial's 500 validation images through `ReplicaTrainer.evaluate` in one chunk
     against chunks of 128 and of 64 images (`eval_batch_size`, the default on CPU), per model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from n2n_models import build_model, fast_layers  # noqa: E402
from n2n_models.allocator import keep_freed_memory  # noqa: E402
from n2n_models.data import load_pairs  # noqa: E402
from n2n_models.reference import ReferenceLoop  # noqa: E402
from n2n_models.train import ReplicaTrainer, TrainSpec, data_order  # noqa: E402

LR = 5e-4


def previous_loop(trainer: ReplicaTrainer) -> ReplicaTrainer:
    """A sequential trainer turned back into the loop this project had before: default memory
    layout and the default (per-tensor) Adam."""
    trainer.channels_last = False
    trainer.models = [m.to(memory_format=torch.contiguous_format) for m in trainer.models]
    trainer.optimizers = [torch.optim.Adam(m.parameters(), lr=trainer.spec.lr) for m in trainer.models]
    return trainer


class VmapReplicas:
    """The previous fused implementation, for comparison: torch.func.stack_module_state + vmap
    (every convolution becomes a grouped convolution in the default layout), default Adam."""

    def __init__(self, spec: TrainSpec):
        from torch.func import functional_call, stack_module_state, vmap

        self.spec, self.epoch = spec, 0
        models = []
        for s in spec.seeds:
            torch.manual_seed(s)
            models.append(build_model(spec.model, **spec.hparams))
        params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        base = models[0].to("meta")
        self.forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="different")
        self.vmap = vmap
        self.optimizer = torch.optim.Adam(self.params.values(), lr=spec.lr)

    def train_epoch(self, train_a, train_b):
        n, bs = len(train_a), self.spec.batch_size
        orders = torch.stack([data_order(s, self.epoch, n, "cpu") for s in self.spec.seeds])
        for start in range(0, n, bs):
            idx = orders[:, start:start + bs]
            x, y = train_a[idx].float().div_(255), train_b[idx].float().div_(255)
            per_sample = self.vmap(lambda p, t: ((p - t) ** 2).flatten(1).mean(1))(
                self.forward(self.params, self.buffers, x), y)
            self.optimizer.zero_grad(set_to_none=True)
            per_sample.mean(1).sum().backward()
            self.optimizer.step()
        self.epoch += 1


# -- measuring ------------------------------------------------------------------------------------
def matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    """GFLOP/s of an n x n float32 torch.mm on the current threads (median of repeats)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def training_flops(model: str, hparams: dict, batch_size: int) -> int:
    """FLOPs of one training step's forward and backward (torch.utils.flop_counter)."""
    torch.manual_seed(0)
    net = build_model(model, **hparams)
    x, y = torch.rand(batch_size, 3, 32, 32), torch.rand(batch_size, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.mse_loss(net(x), y).backward()
    return counter.get_total_flops()


def side_by_side(variants: dict, rounds: int) -> dict:
    """Run each variant once untimed, then `rounds` times, alternating (in reverse order every other
    round, so that no variant always follows the same one); seconds per run."""
    for run in variants.values():
        run()
    times = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in (list(variants.items()) if r % 2 == 0 else reversed(variants.items())):
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return times


def synced(run, device):
    """`run`, then wait for the device: GPU work is asynchronous and the clock must see it end."""
    if torch.device(device).type != "cuda":
        return run

    def run_and_wait():
        run()
        torch.cuda.synchronize(device)
    return run_and_wait


def reference_and_project(a, b, model: str, batch_size: int, rounds: int, device="cpu"):
    """The reference loop and the project's loop (one seed) on the pairs (a, b), one epoch each
    per round, alternating: (seconds per epoch of each, by name, and the largest relative
    difference of their first epoch's step losses)."""
    ref = ReferenceLoop(model, {}, 0, a, b, batch_size, device=device)
    ours = ReplicaTrainer(TrainSpec(model, lr=LR, batch_size=batch_size, seeds=(0,)), device=device, fused=False)
    ref_losses, our_losses = ref.train_epoch(), []
    ours.train_epoch(a, b, step_losses=our_losses)
    diff = max(abs(float(r) - float(o)) / float(r) for r, o in zip(ref_losses, our_losses))
    times = side_by_side({"reference": synced(ref.train_epoch, device),
                          "project": synced(lambda: ours.train_epoch(a, b), device)}, rounds)
    return times, diff


def med(xs):
    return statistics.median(xs)


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# -- the sections ---------------------------------------------------------------------------------
def loop_vs_reference(pairs, model: str, batch_size: int, steps: int, rounds: int, peak: float) -> tuple[float, float]:
    """Print one row of the loops table; returns (ratio of the median times, median per-round ratio)."""
    n = steps * batch_size
    times, diff = reference_and_project(pairs.train_a[:n], pairs.train_b[:n], model, batch_size, rounds)
    flops = training_flops(model, {}, batch_size)
    ips = {k: n / med(v) for k, v in times.items()}
    share = {k: flops * steps / med(v) / 1e9 / peak for k, v in times.items()}
    per_round = sorted(r / p for r, p in zip(times["reference"], times["project"]))
    print(f"{model:8s} {batch_size:5d} {ips['reference']:11.0f} {ips['project']:11.0f} "
          f"{ips['project'] / ips['reference']:8.2f}x {med(per_round):7.2f}x ({per_round[0]:.2f}-{per_round[-1]:.2f}) "
          f"{flops / batch_size / 1e6:9.1f} {100 * share['reference']:7.1f}% {100 * share['project']:7.1f}%   "
          f"{diff:.1e}", flush=True)
    return ips["project"] / ips["reference"], med(per_round)


def repeat_summary(runs: dict):
    """After --repeat: per model and batch size, every run's speed-ups, sorted, and their median."""
    print(f"\n{'model':8s} {'batch':>5s} {'runs':>4s}  statistic over runs: sorted values, median")
    for (model, bs), results in runs.items():
        for i, name in enumerate(("ratio of the median times", "median of the per-round ratios")):
            values = sorted(r[i] for r in results)
            print(f"{model:8s} {bs:5d} {len(values):4d}  {name:31s} {', '.join(f'{v:.2f}' for v in values)}; "
                  f"median {med(values):.2f}x")


def ingredients(pairs, steps: int, rounds: int):
    """TNet at batch 32: the reference, the previous loop, and each ingredient added."""
    bs, n = 32, steps * 32
    a, b = pairs.train_a[:n], pairs.train_b[:n]
    spec = TrainSpec("tnet", lr=LR, batch_size=bs, seeds=(0,))
    ref = ReferenceLoop("tnet", {}, 0, a, b, bs)
    previous = previous_loop(ReplicaTrainer(spec, fused=False, fast_layers=False))
    layout = previous_loop(ReplicaTrainer(spec, fused=False, fast_layers=False))
    layout.channels_last = True
    layout.models = [m.to(memory_format=torch.channels_last) for m in layout.models]
    adam = ReplicaTrainer(spec, fused=False, fast_layers=False)
    ours = ReplicaTrainer(spec, fused=False)
    bf16 = ReplicaTrainer(TrainSpec("tnet", lr=LR, batch_size=bs, seeds=(0,), amp=True), fused=False)
    variants = {
        "reference loop (float data, /255 per batch, NCHW, Adam)": ref.train_epoch,
        "previous project loop (uint8 data, NCHW, Adam)": lambda: previous.train_epoch(a, b),
        "  + channels-last": lambda: layout.train_epoch(a, b),
        "  + fused Adam": lambda: adam.train_epoch(a, b),
        "  + fast layers (fast_layers.py) = the project's loop": lambda: ours.train_epoch(a, b),
        "  + bfloat16 autocast (TrainSpec.amp; not default)": lambda: bf16.train_epoch(a, b),
    }
    compiled = compiled_variant(a, b, bs)
    if compiled is not None:
        variants["  torch.compile of the model instead (not adopted)"] = compiled[0]
    times = side_by_side(variants, rounds)
    base = med(times["reference loop (float data, /255 per batch, NCHW, Adam)"])
    print(f"\nTNet, batch 32, {steps} steps per run, {rounds} rounds ({load_line()})")
    print(f"{'variant':58s} {'images/s':>9s} {'vs ref':>7s}")
    for name, ts in times.items():
        print(f"{name:58s} {n / med(ts):9.0f} {base / med(ts):6.2f}x")
    if compiled is not None:
        print(f"torch.compile: the first step takes {compiled[1]:.1f} s with an empty compiler cache, "
              f"{compiled[2]:.1f} s in a later process with the cache filled")
    # with seven variants in a round each runs between two others, which moves caches and clocks
    # more than two do: each adopted ingredient again, against the loop just before it, alone
    steps_in_order = [("+ channels-last", previous, layout), ("+ fused Adam", layout, adam),
                      ("+ fast layers", adam, ours)]
    print(f"\neach ingredient against the loop just before it, the two alone, alternating, {rounds} rounds "
          f"({load_line()})")
    print(f"{'ingredient':20s} {'before img/s':>12s} {'after img/s':>12s} {'speed-up':>9s} {'per round: median (range)':>27s}")
    for name, before, after in steps_in_order:
        times = side_by_side({"before": lambda t=before: t.train_epoch(a, b),
                              "after": lambda t=after: t.train_epoch(a, b)}, rounds)
        per_round = sorted(x / y for x, y in zip(times["before"], times["after"]))
        print(f"{name:20s} {n / med(times['before']):12.0f} {n / med(times['after']):12.0f} "
              f"{med(times['before']) / med(times['after']):8.2f}x {med(per_round):8.2f}x "
              f"({per_round[0]:.2f}-{per_round[-1]:.2f})", flush=True)


def upsample_concat_layers(model: str, batch_size: int) -> list[tuple[str, nn.Module, torch.Size, torch.Size]]:
    """The convolutions of an upsample-and-concatenate in `model` that fast_layers fuses (name,
    fused layer, low-resolution input shape, skip input shape at `batch_size`)."""
    net = fast_layers.speed_up(build_model(model).to(memory_format=torch.channels_last))
    found, hooks = [], []
    for name, m in net.named_modules():
        if isinstance(m, fast_layers.UpConcatConv2d):
            hooks.append(m.register_forward_hook(
                lambda m, args, out, name=name: found.append((name, m, args[0].shape, args[1].shape))))
    with torch.no_grad():
        net(torch.rand(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    return found


def fused_layers(models: list[str], batch_sizes: list[int], reps: int, rounds: int):
    """Each fused upsample-and-concatenate convolution alone, forward and backward, against the three
    standard layers it replaces (nearest upsample, concatenation, convolution; channels-last), with
    the training loop's malloc settings (n2n_models.allocator)."""
    keep_freed_memory()
    print(f"\nupsample + concatenation + 3x3 convolution as one layer (fast_layers.py), forward and backward, "
          f"{reps} calls per run, {rounds} rounds ({load_line()})")
    print(f"{'model':8s} {'layer':10s} {'batch':>5s} {'low input':>14s} {'output':>15s} {'path':>10s} "
          f"{'standard ms':>11s} {'fused ms':>9s} {'speed-up':>9s}")
    cl = torch.channels_last
    for model in models:
        for bs in batch_sizes:
            for name, layer, low_shape, skip_shape in upsample_concat_layers(model, bs):
                torch.manual_seed(0)
                low = torch.randn(low_shape).contiguous(memory_format=cl).requires_grad_()
                skip = torch.randn(skip_shape).contiguous(memory_format=cl).requires_grad_()
                out_shape = (bs, layer.out_channels, *skip_shape[2:])
                grad = torch.randn(out_shape).contiguous(memory_format=cl)
                up = fast_layers.NearestUpsample(layer.scale)

                def standard():
                    for _ in range(reps):
                        F.conv2d(torch.cat([up(low), skip], 1), layer.weight, layer.bias, padding=1).backward(grad)

                def fused():
                    for _ in range(reps):
                        layer(low, skip).backward(grad)
                times = side_by_side({"standard": standard, "fused": fused}, rounds)
                if isinstance(layer, fast_layers.UpConcatThinConv2d):
                    path = "thin"
                else:
                    path = "transposed" if fast_layers.up_concat_transposed(low, skip) else "plain"
                ms = {k: 1e3 * med(v) / reps for k, v in times.items()}
                print(f"{model:8s} {name:10s} {bs:5d} {'x'.join(map(str, low_shape[1:])):>14s} "
                      f"{'x'.join(map(str, out_shape[1:])):>15s} {path:>10s} {ms['standard']:11.2f} {ms['fused']:9.2f} "
                      f"{ms['standard'] / ms['fused']:8.2f}x", flush=True)


COMPILE_PROBE = """
import sys, time, torch
sys.path.insert(0, {root!r})
from n2n_models.train import ReplicaTrainer, TrainSpec
torch.set_num_threads({threads})
trainer = ReplicaTrainer(TrainSpec("tnet", batch_size={bs}, seeds=(0,)), fused=False, fast_layers=False)
trainer.models = [torch.compile(trainer.models[0])]
x = torch.randint(0, 256, ({bs}, 3, 32, 32), dtype=torch.uint8)
t = time.perf_counter()
trainer.train_epoch(x, x)
print(time.perf_counter() - t)
"""


def compiled_variant(a, b, bs):
    """torch.compile(model) in the project's loop (channels-last, fused Adam): (run, seconds of the
    first step in a fresh process with an empty compiler cache, the same in this process once
    that cache is filled, as a later trial would see it); None if it fails."""
    import atexit
    import shutil
    import subprocess
    import tempfile

    cache = tempfile.mkdtemp(prefix="n2n-inductor-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    probe = COMPILE_PROBE.format(root=str(Path(__file__).resolve().parents[1]), threads=torch.get_num_threads(), bs=bs)
    try:
        cold = float(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                    env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}).stdout.split()[-1])
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        trainer = ReplicaTrainer(TrainSpec("tnet", lr=LR, batch_size=bs, seeds=(0,)), fused=False, fast_layers=False)
        trainer.models = [torch.compile(trainer.models[0])]
        t = time.perf_counter()
        trainer.train_epoch(a[:bs], b[:bs])
        warm = time.perf_counter() - t
        return (lambda: trainer.train_epoch(a, b)), cold, warm
    except Exception as e:  # noqa: BLE001 - no compiler on this machine, for instance
        print(f"torch.compile unavailable: {type(e).__name__}: {e}")
        return None


def fused_vs_sequential(pairs, k: int, steps: int, rounds: int):
    bs, n = 32, steps * 32
    a, b = pairs.train_a[:n], pairs.train_b[:n]
    spec = TrainSpec("tnet", lr=LR, batch_size=bs, seeds=tuple(range(k)))
    sequential = ReplicaTrainer(spec, fused=False)
    fused = ReplicaTrainer(spec, fused=True)
    previous = previous_loop(ReplicaTrainer(spec, fused=False, fast_layers=False))
    vmapped = VmapReplicas(spec)
    same = (fused.train_epoch(a, b) - sequential.train_epoch(a, b)).abs().max().item()
    times = side_by_side({
        f"{k} sequential replicas, the project's loop": lambda: sequential.train_epoch(a, b),
        f"{k} fused replicas (grouped convolutions, channels-last)": lambda: fused.train_epoch(a, b),
        f"{k} sequential replicas, previous loop": lambda: previous.train_epoch(a, b),
        f"{k} fused replicas, previous vmap implementation": lambda: vmapped.train_epoch(a, b),
    }, rounds)
    base = med(times[f"{k} sequential replicas, the project's loop"])
    print(f"\nTNet x {k} seeds, batch 32, {steps} steps per run, {rounds} rounds ({load_line()})")
    print(f"{'variant':58s} {'ms/step':>8s} {'speed vs sequential':>20s}")
    for name, ts in times.items():
        print(f"{name:58s} {1e3 * med(ts) / steps:8.1f} {base / med(ts):19.2f}x")
    print(f"largest difference of fused and sequential epoch losses: {same:.1e}")


def amp_effect(epochs: int, seeds: int, device="cpu", model: str = "tnet", fused: bool = False,
               train_size: int = 4000):
    """Validation PSNR after `epochs` epochs of `model` on photos + pixelate, float32 vs autocast
    (bfloat16, or float16 on GPUs without it), same seeds, on `device`."""
    photos = load_pairs("photos", "pixelate", train_size=train_size, val_size=500, seed=0)
    a, b = photos.train_a.to(device), photos.train_b.to(device)
    out = {}
    for amp in (False, True):
        trainer = ReplicaTrainer(TrainSpec(model, lr=1e-3, batch_size=32, epochs=epochs, seeds=range(seeds),
                                           amp=amp), device=device, fused=fused)
        t = time.perf_counter()
        for _ in range(epochs):
            trainer.train_epoch(a, b)
        out[amp] = (trainer.evaluate(photos.val_noisy, photos.val_clean), time.perf_counter() - t)
        half_name = str(trainer._autocast_dtype).removeprefix("torch.")
    (full, t_full), (half, t_half) = out[False], out[True]
    print(f"\nMixed precision: {model}, photos + pixelate, {train_size} pairs, {epochs} epochs, lr 1e-3, "
          f"seeds 0-{seeds - 1}, {'fused' if fused else 'sequential'} replicas ({load_line()})")
    print(f"float32:  PSNR {full.mean():.3f} dB (per seed {', '.join(f'{v:.3f}' for v in full)}), "
          f"training {t_full:.1f} s")
    print(f"{half_name + ':':9s} PSNR {half.mean():.3f} dB (per seed {', '.join(f'{v:.3f}' for v in half)}), "
          f"training {t_half:.1f} s")
    print(f"difference ({half_name} - float32): {(half - full).mean():+.3f} dB mean, "
          f"{(half - full).abs().max():.3f} dB largest; time ratio {t_full / t_half:.2f}x")


SECTIONS = ("loops", "ingredients", "layers", "fused", "amp", "evaluation")


def evaluation_chunks(models: list[str], rounds: int, images: int = 500, chunks=(1000, 128, 64)):
    """Print, per model, the time to evaluate `images` validation images in each chunk size
    (alternating rounds) and the speed-up of each over one chunk; the PSNRs must agree."""
    val = load_pairs("synthetic", "pixelate", train_size=64, val_size=images, seed=0)
    print(f"\nevaluation of {images} validation images (ReplicaTrainer.evaluate, one seed), by images per "
          f"forward pass, {rounds} rounds ({load_line()})")
    print(f"{'model':8s} " + " ".join(f"{f'{c} ms':>9s}" for c in chunks) + "   "
          + " ".join(f"{f'{c} vs {chunks[0]}':>11s}" for c in chunks[1:]) + "   largest PSNR difference (dB)")
    for model in models:
        trainer = ReplicaTrainer(TrainSpec(model, lr=LR, batch_size=32, seeds=(0,)), fused=False)
        psnr = {c: trainer.evaluate(val.val_noisy, val.val_clean, batch_size=c) for c in chunks}
        diff = max(float((psnr[c] - psnr[chunks[0]]).abs().max()) for c in chunks)
        times = side_by_side({c: (lambda c=c: trainer.evaluate(val.val_noisy, val.val_clean, batch_size=c))
                              for c in chunks}, rounds)
        ms = {c: 1e3 * med(t) for c, t in times.items()}
        print(f"{model:8s} " + " ".join(f"{ms[c]:9.1f}" for c in chunks) + "   "
              + " ".join(f"{ms[chunks[0]] / ms[c]:10.2f}x" for c in chunks[1:]) + f"   {diff:.1e}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="tnet,basenet,unet")
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seeds", type=int, default=5, help="replicas in the fused comparison")
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"any of {', '.join(SECTIONS)} (the peak is always measured)")
    ap.add_argument("--amp-epochs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the loops comparison this many times (fresh loops each time) and summarise")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    sections = set(args.sections.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(args.threads)
    models, batch_sizes = args.models.split(","), [int(x) for x in args.batch_sizes.split(",")]
    scale = 0.25 if args.quick else 1.0
    pairs = load_pairs("synthetic", "pixelate", train_size=4096, val_size=16, seed=0)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"no GPU used; {load_line()}")
    peak = matmul_peak()
    print(f"matrix-multiply peak (2048 x 2048 torch.mm, {args.threads} threads): {peak:.0f} GFLOP/s")
    if "loops" in sections:
        print(f"\n{'model':8s} {'batch':>5s} {'ref img/s':>11s} {'ours img/s':>11s} {'speed-up':>9s} "
              f"{'per round: median (range)':>26s} {'MFLOP/img':>9s} {'ref peak':>8s} {'our peak':>8s}   "
              f"max rel. loss diff")
        runs = {}
        for _ in range(args.repeat):
            for model in models:
                steps = max(4, int({"unet": 12}.get(model, 48) * scale))
                for bs in batch_sizes:
                    runs.setdefault((model, bs), []).append(
                        loop_vs_reference(pairs, model, bs, max(2, steps * 32 // bs), args.rounds, peak))
        print(f"({load_line()})")
        if args.repeat > 1:
            repeat_summary(runs)
    if "ingredients" in sections:
        ingredients(pairs, max(8, int(48 * scale)), args.rounds)
    if "layers" in sections:
        fused_layers(models, batch_sizes, max(2, int(8 * scale)), args.rounds)  # none in BaseNet: no rows
    if "fused" in sections:
        fused_vs_sequential(pairs, args.seeds, max(4, int(24 * scale)), args.rounds)
    if "amp" in sections:
        amp_effect(max(1, int(args.amp_epochs * scale)), 3)
    if "evaluation" in sections:
        evaluation_chunks(models, max(3, int(args.rounds * scale)))


if __name__ == "__main__":
    main()
