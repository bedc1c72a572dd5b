"""Training speed on a GPU, measured side by side in one run (the GPU half of docs/benchmarks.md).

    python bench/gpu.py [--sections peak,loops,fused,ingredients,fractional,search,amp]
                        [--models tnet,basenet,unet] [--batch-sizes 32,128,512] [--rounds 5]
                        [--seeds 1,5,20] [--trials 1,4,8] [--quick] [--device cuda]

Printed, section by section (each one alone with --sections):

  peak         the GPU, its matrix-multiply rates (float32, TF32, bfloat16; 8192^3 torch.mm) and
               its device-to-device copy rate;
  loops        per model and batch size: images/s of bench/throughput.py's reference loop (float
               data in host memory, each batch moved and divided by 255, default Adam) and of the
               project's loop (ReplicaTrainer, one seed, data on the GPU as uint8), the speed-up,
               the share of the TF32 peak, and the largest relative difference of their losses;
  fused        K = 1, 5, 20 seed replicas at batch 32: sequential against fused (one grouped
               network), and fused without CUDA graphs, replica-images/s, and the largest
               difference of fused and sequential epoch losses;
  ingredients  TNet and UNet at batch 32, one seed, against eager steps: channels-last, autocast,
               CUDA graphs of the whole step (the project's loop on GPUs), and with --compile
               torch.compile of the model (e.g. default,reduce-overhead);
  fractional   1, 4 and 8 trials sharing the GPU (Ray actors holding 1/N of it each, one CPU each,
               as Tune's fractional trials do): replica-images/s of all trials together, per trial,
               and each trial's peak GPU memory;
  search       the real command, `search/run.py --space tnet --budget quick`, with 0.25 GPU per
               trial (--search-gpus 1,0.25,0.125 for several shares): wall time, trials, epochs,
               and the GPU each trial reported;
  amp          validation PSNR after 5 epochs, float32 against autocast (bfloat16 on GPUs that
               have it), TNet and UNet, 3 seeds fused, same seeds: its effect and its speed.

Every GPU timing synchronises the device before reading the clock; variants alternate round by
round and figures are medians. Without a GPU (--device cpu) it runs the same code on the CPU,
which is how it is tested; the figures it prints then say nothing about GPUs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # noqa: E402  (bench/throughput.py: reference loop, alternation, FLOPs)

from analysis.load import read_results  # noqa: E402
from n2n_models.data import load_pairs  # noqa: E402
from n2n_models.train import ReplicaTrainer, TrainSpec  # noqa: E402

SECTIONS = ("peak", "loops", "fused", "ingredients", "fractional", "search", "amp")
LR = tp.LR  # a plain number: Ray's workers get it by value (they cannot import bench/throughput.py)


def timed(run, device, repeats: int = 10) -> float:
    """Median seconds of `run` after one warm-up."""
    return tp.med(tp.side_by_side({"run": tp.synced(run, device)}, repeats)["run"])


# -- peak -----------------------------------------------------------------------------------------
def peak(device) -> dict:
    """Matrix-multiply rates (TFLOP/s) and copy rate (TB/s, bytes read + written) on `device`."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    rates = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, allow in (("float32", torch.float32, False), ("tf32", torch.float32, True),
                                   ("bfloat16", torch.bfloat16, False)):
            if device.type != "cuda" and name == "tf32":
                continue
            torch.backends.cuda.matmul.allow_tf32 = allow
            x, y = a.to(dtype), b.to(dtype)
            rates[name] = 2 * n ** 3 / timed(lambda: x @ y, device) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    big = torch.empty(2 ** 28 if device.type == "cuda" else 2 ** 24, device=device)  # 1 GiB on GPUs
    other = torch.empty_like(big)
    rates["copy_tb_s"] = 2 * big.numel() * 4 / timed(lambda: other.copy_(big), device) / 1e12
    return rates


def describe(device) -> str:
    if device.type != "cuda":
        return f"no GPU: device {device} (figures say nothing about GPUs); torch {torch.__version__}"
    p = torch.cuda.get_device_properties(device)
    driver = "?"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        pass
    return (f"GPU: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2 ** 30:.0f} GiB, driver {driver}; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
            f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch's default), "
            f"{os.cpu_count()} CPU cores")


# -- loops ----------------------------------------------------------------------------------------
def synthetic(n: int, device):
    pairs = load_pairs("synthetic", "pixelate", train_size=n, val_size=16, seed=0)
    return pairs.train_a.to(device), pairs.train_b.to(device)


def loops(device, models, batch_sizes, rounds, images, tf32_peak):
    print(f"\n{'model':8s} {'batch':>5s} {'ref img/s':>10s} {'ours img/s':>11s} {'speed-up':>9s} "
          f"{'ms/step':>8s} {'TF32 peak':>9s}   max rel. loss diff", flush=True)
    all_a, all_b = synthetic(max(images, 4 * max(batch_sizes)), device)
    for model in models:
        for bs in batch_sizes:
            n = max(bs * 4, images // bs * bs)
            times, diff = tp.reference_and_project(all_a[:n], all_b[:n], model, bs, rounds, device)
            ips = {k: n / tp.med(v) for k, v in times.items()}
            flops = tp.training_flops(model, {}, bs)
            share = flops / bs * ips["project"] / 1e12 / tf32_peak
            print(f"{model:8s} {bs:5d} {ips['reference']:10.0f} {ips['project']:11.0f} "
                  f"{ips['project'] / ips['reference']:8.2f}x {1e3 * bs / ips['project']:8.2f} {100 * share:8.2f}%   "
                  f"{diff:.1e}", flush=True)


# -- fused replicas -------------------------------------------------------------------------------
def fused(device, models, seeds, rounds, steps):
    bs, n = 32, steps * 32
    a, b = synthetic(n, device)
    print(f"\n{'model':8s} {'K':>3s} {'sequential':>11s} {'fused':>11s} {'fused/seq':>9s} {'fused ms/step':>13s} "
          f"{'fused, eager':>12s}   (replica-images/s; the default loop, with CUDA graphs where it has them)   "
          f"max diff of epoch losses", flush=True)
    for model in models:
        for k in seeds:
            spec = TrainSpec(model, lr=LR, batch_size=bs, seeds=tuple(range(k)))
            seq = ReplicaTrainer(spec, device=device, fused=False)
            fus = ReplicaTrainer(spec, device=device, fused=True)
            fus_eager = ReplicaTrainer(spec, device=device, fused=True, cuda_graphs=False)
            same = (fus.train_epoch(a, b) - seq.train_epoch(a, b)).abs().max().item()
            times = tp.side_by_side({"seq": tp.synced(lambda: seq.train_epoch(a, b), device),
                                     "fused": tp.synced(lambda: fus.train_epoch(a, b), device),
                                     "eager": tp.synced(lambda: fus_eager.train_epoch(a, b), device)}, rounds)
            ips = {name: k * n / tp.med(v) for name, v in times.items()}
            print(f"{model:8s} {k:3d} {ips['seq']:11.0f} {ips['fused']:11.0f} {ips['fused'] / ips['seq']:8.2f}x "
                  f"{1e3 * tp.med(times['fused']) / steps:13.2f} {ips['eager']:12.0f}   {'':71s} {same:.1e}", flush=True)
            del seq, fus, fus_eager
            if device.type == "cuda":
                torch.cuda.empty_cache()


# -- ingredients ----------------------------------------------------------------------------------
def ingredients(device, models, rounds, steps, compile_modes):
    bs, n = 32, steps * 32
    a, b = synthetic(n, device)
    for model in models:
        spec = TrainSpec(model, lr=LR, batch_size=bs, seeds=(0,))
        amp_spec = TrainSpec(model, lr=LR, batch_size=bs, seeds=(0,), amp=True)
        ref = tp.ReferenceLoop(model, {}, 0, a, b, bs, device=device)
        eager = ReplicaTrainer(spec, device=device, fused=False, cuda_graphs=False)
        layout = ReplicaTrainer(spec, device=device, fused=False, cuda_graphs=False)
        layout.channels_last = True
        layout.models = [m.to(memory_format=torch.channels_last) for m in layout.models]
        amp = ReplicaTrainer(amp_spec, device=device, fused=False, cuda_graphs=False)
        half = str(amp._autocast_dtype).removeprefix("torch.")
        variants = {
            "reference loop": ref.train_epoch,
            "eager steps (default layout, fused Adam)": lambda: eager.train_epoch(a, b),
            "  + channels-last": lambda: layout.train_epoch(a, b),
            f"  + autocast {half}": lambda: amp.train_epoch(a, b),
        }
        if device.type == "cuda":
            graphs = ReplicaTrainer(spec, device=device, fused=False)
            graphs_amp = ReplicaTrainer(amp_spec, device=device, fused=False)
            variants["  + CUDA graphs = the project's loop"] = lambda: graphs.train_epoch(a, b)
            variants[f"  + CUDA graphs + autocast {half}"] = lambda: graphs_amp.train_epoch(a, b)
        notes = []
        for mode in compile_modes:
            trainer = ReplicaTrainer(spec, device=device, fused=False, cuda_graphs=False)
            try:
                trainer.models = [torch.compile(trainer.models[0], mode=None if mode == "default" else mode)]
                t = time.perf_counter()
                tp.synced(lambda: trainer.train_epoch(a[:3 * bs], b[:3 * bs]), device)()
                notes.append(f"torch.compile {mode}: first 3 steps {time.perf_counter() - t:.1f} s (compiling)")
                variants[f"  torch.compile, mode {mode}"] = (lambda tr=trainer: tr.train_epoch(a, b))
            except Exception as e:  # noqa: BLE001 - no compiler for this device, for instance
                notes.append(f"torch.compile {mode} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        times = tp.side_by_side({k: tp.synced(v, device) for k, v in variants.items()}, rounds)
        base = tp.med(times["eager steps (default layout, fused Adam)"])
        print(f"\n{model}, batch 32, one seed, {steps} steps per run, {rounds} rounds")
        print(f"{'variant':42s} {'images/s':>9s} {'ms/step':>8s} {'vs eager':>8s}")
        for name, ts in times.items():
            print(f"{name:42s} {n / tp.med(ts):9.0f} {1e3 * tp.med(ts) / steps:8.2f} {base / tp.med(ts):7.2f}x")
        for line in notes:
            print(line)
        sys.stdout.flush()


# -- fractional trials ----------------------------------------------------------------------------
def fractional(device, trials, seeds, epochs, images, model="tnet"):
    import ray

    # Ray's workers inherit the environment: let them import the project from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=max(trials) + 1, num_gpus=None if device.type == "cuda" else 1,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        @ray.remote
        class Trial:
            """One trial's training, holding its share of the GPU as a Tune trial does."""

            def __init__(self, k: int):
                torch.set_num_threads(1)
                gpu_ids = ray.get_gpu_ids()
                self.device = torch.device("cuda", 0) if gpu_ids and torch.cuda.is_available() else torch.device("cpu")
                self.gpu = ",".join(str(g) for g in gpu_ids)
                self.a, self.b = synthetic(images, self.device)
                self.trainer = ReplicaTrainer(TrainSpec(model, lr=LR, batch_size=32, seeds=tuple(range(k))),
                                              device=self.device)

            def train(self, epochs: int) -> dict:
                t = time.perf_counter()
                for _ in range(epochs):
                    self.trainer.train_epoch(self.a, self.b)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                mem = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else 0
                return {"s": time.perf_counter() - t, "gpu": self.gpu, "mem": mem, "fused": self.trainer.fused}

        print(f"\n{model}, batch 32, {images} images per epoch, {epochs} epochs per trial, all trials started "
              f"together after a warm-up epoch")
        print(f"{'trials':>6s} {'GPU each':>8s} {'seeds':>5s} {'fused':>5s} {'all trials':>11s} {'per trial':>10s} "
              f"{'vs 1 trial':>10s} {'peak MiB':>8s}  GPUs seen   (replica-images/s)", flush=True)
        base = {}
        for k in seeds:
            for n_trials in trials:
                actors = [Trial.options(num_gpus=1 / n_trials, num_cpus=1).remote(k) for _ in range(n_trials)]
                ray.get([t.train.remote(1) for t in actors])  # start-up and warm-up, all at once
                start = time.perf_counter()
                results = ray.get([t.train.remote(epochs) for t in actors])
                wall = time.perf_counter() - start
                total = n_trials * k * epochs * images / wall
                base.setdefault(k, total)
                per_trial = tp.med(k * epochs * images / r["s"] for r in results)
                print(f"{n_trials:6d} {1 / n_trials:8.3f} {k:5d} {str(results[0]['fused']):>5s} {total:11.0f} "
                      f"{per_trial:10.0f} {total / base[k]:9.2f}x {max(r['mem'] for r in results) / 2 ** 20:8.0f}  "
                      f"{sorted({r['gpu'] for r in results})}", flush=True)
                for t in actors:
                    ray.kill(t)
    finally:
        ray.shutdown()


# -- the real search ------------------------------------------------------------------------------
def search(device, gpus_per_trial: float, extra: list[str]):
    with tempfile.TemporaryDirectory(prefix="n2n-gpu-search-") as storage:
        cmd = [sys.executable, str(ROOT / "search" / "run.py"), "--space", "tnet", "--budget", "quick",
               "--storage", storage, "--name", "gpu-quick", "--gpus-per-trial", f"{gpus_per_trial:g}", *extra]
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"exit status {proc.returncode}; last output:\n{(proc.stdout + proc.stderr)[-3000:]}")
            return
        histories = [read_results(d) for d in sorted(Path(storage, "gpu-quick").glob("trial_*"))]
        rows = [h.iloc[-1] for h in histories if not h.empty]
        gpus = sorted({str(r.get("gpu_ids", "?")) for r in rows})
        epochs = sum(int(r["training_iteration"]) for r in rows)
        best = max(r.get("best_val_psnr", float("nan")) for r in rows) if rows else float("nan")
        print(f"wall {wall:.0f} s for {len(rows)} trials, {epochs} epochs in all; trials reported GPU ids {gpus}; "
              f"best validation PSNR {best:.2f} dB")
        print("last lines of its output:\n" + "\n".join(proc.stdout.strip().splitlines()[-6:]), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="tnet,basenet,unet")
    ap.add_argument("--batch-sizes", default="32,128,512")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", default="1,5,20", help="replicas in the fused comparison")
    ap.add_argument("--trials", default="1,4,8", help="trials sharing the GPU")
    ap.add_argument("--search-gpus", default="0.25", help="GPU shares per trial to run the quick search with")
    ap.add_argument("--compile", default="", help="torch.compile modes to compare in 'ingredients', e.g. "
                    "default,reduce-overhead (compiling takes 5-20 s each)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps, small data")
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r} is not a device (cuda, cuda:1 or cpu)")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this machine has no CUDA GPU (run with --device cpu to test the script)")
    q = args.quick
    models = args.models.split(",")
    print(describe(device), flush=True)
    tf32_peak = float("nan")
    failed = []
    for section in sections:
        try:
            if section == "peak":
                rates = peak(device)
                tf32_peak = rates.get("tf32", rates["float32"])
                print("matrix multiply (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()
                                                                  if k != "copy_tb_s")
                      + f"; device copy {rates['copy_tb_s']:.2f} TB/s (read + write)", flush=True)
            elif section == "loops":
                loops(device, models, [int(x) for x in args.batch_sizes.split(",")], args.rounds,
                      256 if q else 4096, tf32_peak)
            elif section == "fused":
                fused(device, [m for m in ("tnet", "unet") if m in models], [int(x) for x in args.seeds.split(",")],
                      args.rounds, 4 if q else 32)
            elif section == "ingredients":
                ingredients(device, [m for m in ("tnet", "unet") if m in models], args.rounds, 4 if q else 64,
                            [m for m in args.compile.split(",") if m])
            elif section == "fractional":
                fractional(device, [int(x) for x in args.trials.split(",")], (1, 5), 1 if q else 3, 128 if q else 4096)
            elif section == "search":
                for share in ([float(x) for x in args.search_gpus.split(",")] if device.type == "cuda" else [0]):
                    search(device, share, ["--num-samples", "2", "--epochs", "1", "--train-size", "64",
                                          "--val-size", "16"] if q else [])
            elif section == "amp":
                for model in [m for m in ("tnet", "unet") if m in models]:
                    tp.amp_effect(1 if q else 5, 3, device=device, model=model, fused=device.type == "cuda",
                                  train_size=256 if q else 4000)
        except Exception:  # noqa: BLE001 - one section's failure must not lose the others' figures
            failed.append(section)
            print(f"\nsection {section} failed:\n{traceback.format_exc()}", flush=True)
    if failed:
        print(f"failed sections: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
