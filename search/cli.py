"""Command-line parsing for `search/run.py`: flags -> Experiment, and bad usage -> exit 2."""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

from n2n_models.config import TARGETS, ConfigError, check_config
from n2n_models.provenance import version_line

from .budgets import BUDGETS
from .errors import SearchInterrupted, UsageError
from .experiment import Experiment, is_uri
from .spaces import SPACES, configs_space, custom_space, possible_values

SEARCHERS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "fifo", "pbt")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="search/run.py", description="Hyperparameter search for Noise2Noise denoisers "
                "(TNet, UNet, BaseNet) with Ray Tune, Optuna (TPE) and ASHA.")
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument("--space", help="search space (default tnet): " + ", ".join(
        f"{k} ({v.description})" for k, v in SPACES.items()))
    p.add_argument("--configs", action="append", metavar="FILE",
                   help="train exactly the configurations in this JSON file (an object or a list of objects "
                        "with keys label, model, lr, loss, batchnorm, dropout, width, latent, batch_size), each "
                        "with --seeds replicas; repeat the flag for more files. Replaces --space")
    p.add_argument("--space-file", metavar="SPACE.yaml",
                   help="search the space in this YAML file: one entry per knob, a constant or a distribution "
                        "(loguniform, uniform, randint, choice, grid), e.g. lr: {loguniform: [1e-4, 3e-3]}; "
                        "see docs/space-example.yaml. Replaces --space")
    p.add_argument("--searcher", help="optuna (TPE, default for searches), random, grid (default for grid spaces)")
    p.add_argument("--scheduler", help="asha (default for searches), fifo (default for grid spaces) or pbt "
                   "(Population Based Training: a population, one member per trial slot, trains for the first "
                   "half of the time budget; the worse half regularly takes the better half's weights and perturbs "
                   "lr, weight decay, loss and batch size; then the best member trains on alone with every slot's "
                   "resources, its lr falling to 0: the finish)")
    p.add_argument("--budget", default="quick", help="; ".join(f"{k}: {v.description}" for k, v in BUDGETS.items()))
    p.add_argument("--num-samples", type=_positive_int, help="configurations to try (searches)")
    p.add_argument("--seeds", type=_positive_int, help="replicas per configuration (mean ± std reported)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--train-size", type=_positive_int, help="training pairs")
    p.add_argument("--val-size", type=_positive_int, help="validation images")
    p.add_argument("--refit-seeds", type=_positive_int,
                   help="after a search, train its best configuration again with this many fresh seeds; the "
                        "report exports the best of them and gives their test PSNR (default: the budget's, "
                        "2 for quick, 5 for paper, none for smoke; grids and --configs have no refit)")
    p.add_argument("--no-refit", action="store_true",
                   help="end a search without the refit (with --scheduler pbt under a time budget: without the "
                        "finish, where the best member trains on alone with every slot's resources, its lr "
                        "falling to 0, for the budget's second half)")
    p.add_argument("--time-budget", type=_positive_float, metavar="MINUTES",
                   help="stop the search after this many minutes, the refit included (trials still running "
                        "are stopped; their checkpoints count); the search takes 40%%, the refit trains the best "
                        "configuration for the rest; Population Based Training takes half, its finish the rest "
                        "(default for searches: the budget's, 9 for quick)")
    p.add_argument("--no-time-budget", action="store_true",
                   help="run every --num-samples configuration to its end, however long that takes")
    p.add_argument("--target", choices=TARGETS,
                   help="what the loss compares with: noisy (the pair's other noisy copy, Noise2Noise; the "
                        "default) or clean (the clean image, Noise2Clean; not for epfl: data)")
    p.add_argument("--data", default="photos", help="photos (built in), synthetic, folder:DIR or epfl:DIR")
    p.add_argument("--noise", default="pixelate",
                   help="pixelate, gaussian:SIGMA, poisson:LAMBDA, impulse:P, bernoulli:P or text")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated data set")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the searcher")
    p.add_argument("--cpus-per-trial", type=_positive_float, default=1.0)
    p.add_argument("--gpus-per-trial", type=_non_negative_float,
                   help="GPU share per trial, e.g. 0.25 (default 0.25 when the cluster has GPUs, else 0)")
    p.add_argument("--max-concurrent", type=_positive_int, help="default: the trial slots the cluster has")
    p.add_argument("--storage", default="runs", help="results folder or URI (s3://...); default ./runs")
    p.add_argument("--name", help="experiment name (default: SPACE-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue STORAGE/NAME (default: the newest of the space)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: start a local Ray")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines while the search runs: only the summary at the end, warnings and errors")
    p.add_argument("--fused", choices=["auto", "on", "off"], default="auto",
                   help="train a trial's seeds as one batched computation (auto: on GPUs)")
    p.add_argument("--amp", action="store_true",
                   help="train and evaluate under bfloat16 autocast: on CPUs with AMX (Intel Xeon of the 4th "
                        "generation and later) UNet trains about twice as fast (docs/search-quality.md)")
    return p


def parse(argv: list[str] | None = None, space_spec: dict | None = None) -> tuple[Experiment, argparse.Namespace]:
    """Flags -> Experiment; raises UsageError for anything a user must fix. `space_spec` (a checked
    search.space_file spec, from Python) takes the place of --space-file."""
    args = build_parser().parse_args(argv)
    if args.space_file:
        if space_spec is not None:
            raise UsageError("--space-file: the space is given already")
        space_spec = _read_space_file(args.space_file)
    if sum(map(bool, (args.configs, args.space, space_spec))) > 1:
        raise UsageError("--configs, --space-file and --space each say what to train; give one of them")
    args.space = args.space or "tnet"
    if args.space not in SPACES:
        raise UsageError(f"unknown space {args.space!r}; choose one of {', '.join(SPACES)}")
    if args.budget not in BUDGETS:
        raise UsageError(f"unknown budget {args.budget!r}; choose one of {', '.join(BUDGETS)}")
    budget = BUDGETS[args.budget]
    configs = _read_configs(args.configs) if args.configs else None
    space = configs_space(configs) if configs else custom_space(space_spec) if space_spec else SPACES[args.space]
    if args.time_budget and args.no_time_budget:
        raise UsageError("--time-budget and --no-time-budget: give one or the other")
    time_budget = None if args.no_time_budget else args.time_budget or (None if space.is_grid else budget.minutes)
    scheduler = args.scheduler or _default_scheduler(space, args, time_budget)
    searcher = args.searcher or ("grid" if space.is_grid else "random" if scheduler == "pbt" else "optuna")
    if searcher not in SEARCHERS:
        raise UsageError(f"unknown searcher {searcher!r}; choose one of {', '.join(SEARCHERS)}")
    if scheduler not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if space.is_grid and searcher != "grid":
        raise UsageError(f"space {space.name!r} is a fixed grid; run it with --searcher grid")
    if searcher == "grid" and not space.is_grid:
        raise UsageError(f"--searcher grid needs a discrete space, but {space.name!r} has continuous "
                         f"parameters ({', '.join(space.continuous_keys())}); use optuna or random")
    if space.is_grid and args.refit_seeds:
        raise UsageError("--refit-seeds applies to searches; grids and --configs have no refit")
    if scheduler == "pbt":
        _check_pbt(space, searcher, args)
    refit_seeds = 0 if space.is_grid or args.no_refit or scheduler == "pbt" else (args.refit_seeds or budget.refit_seeds)
    gpus = args.gpus_per_trial
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise UsageError(f"--gpus-per-trial {gpus:g}: a share above 1 must be a whole number of GPUs")
    if args.target and "target" in space.params:
        raise UsageError(f"--target: {'the --configs files set' if configs else f'space {space.name!r} sets'} "
                         "each configuration's target; leave --target out")
    _check_data(args.data, args.noise)
    if args.data.strip().lower().startswith("epfl:") and "clean" in possible_values(
            {**space.params, **({"target": args.target} if args.target else {})}, "target"):
        raise UsageError("target clean needs clean training images, and epfl: data has none (its training file "
                         "holds noisy pairs only); use --target noisy or data made from clean images")
    storage = args.storage if is_uri(args.storage) else os.path.abspath(os.path.expanduser(args.storage))
    if not is_uri(storage) and os.path.exists(storage) and not os.path.isdir(storage):
        raise UsageError(f"--storage {storage} is a file; give a folder (or an s3:// URI)")
    stem = os.path.splitext(os.path.basename(args.space_file))[0] if args.space_file else space.name
    name = args.name or f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if "/" in name or name in (".", ".."):
        raise UsageError(f"--name {name!r} must be a plain folder name")
    data = args.data
    if data.startswith(("folder:", "epfl:")):  # resolve here: trials run in other directories
        kind, _, folder = data.partition(":")
        data = f"{kind}:{os.path.abspath(os.path.expanduser(folder))}"
    experiment = Experiment(
        space=space.name, searcher=searcher, scheduler=scheduler, budget=_budget_text(args),
        num_samples=len(space.cells) if space.is_grid else (args.num_samples or (0 if scheduler == "pbt" else budget.num_samples)),
        seeds=args.seeds or space.seeds or budget.seeds,
        epochs=args.epochs or (space.is_grid and budget.grid_epochs) or budget.epochs,
        train_size=args.train_size or (space.is_grid and budget.grid_train_size) or budget.train_size,
        val_size=args.val_size or budget.val_size,
        data=data, noise=args.noise, data_seed=args.data_seed, search_seed=args.search_seed,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus, max_concurrent=args.max_concurrent,
        storage=storage, name=name, fused={"auto": None, "on": True, "off": False}[args.fused], configs=configs,
        refit_seeds=refit_seeds,
        time_budget_min=time_budget,
        target=args.target, space_spec=space_spec, amp=args.amp,
        finish=scheduler == "pbt" and time_budget is not None and not args.no_refit,
    )
    return experiment, args


def _default_scheduler(space, args, time_budget: float | None) -> str:
    """FIFO for grids; for a search under a time budget, Population Based Training (its members
    train for the whole budget, none restarts from scratch: measured to export a better model than
    TPE + ASHA + refit in the same minutes, docs/search-quality.md), unless the command asks for
    what PBT does not do (a searcher, a number of configurations, a refit); else ASHA."""
    from .spaces import population_space

    if space.is_grid:
        return "fifo"
    asked_otherwise = args.searcher is not None or args.num_samples is not None or args.refit_seeds is not None
    if time_budget is not None and not asked_otherwise and population_space(space.params)[1]:
        return "pbt"
    return "asha"


def _check_pbt(space, searcher: str, args) -> None:
    """Population Based Training needs a search space with training knobs to perturb, members drawn
    at random (TPE proposes configurations to train from scratch) and no refit (the population is
    trained to the end)."""
    from .spaces import population_space

    if space.is_grid:
        raise UsageError(f"--scheduler pbt trains a population over a search space; {space.name!r} is a fixed grid")
    if searcher != "random":
        raise UsageError("--scheduler pbt draws its population at random: use --searcher random (its default)")
    if args.refit_seeds:
        raise UsageError("--scheduler pbt trains its population to the end: it has no refit (leave --refit-seeds out)")
    if not population_space(space.params)[1]:
        raise UsageError(f"--scheduler pbt perturbs training knobs (lr, weight_decay, loss, batch_size), and space "
                         f"{space.name!r} searches none of them")


def _budget_text(args) -> str:
    """The budget's name, and which of its numbers the command line replaced (shown in reports)."""
    flags = {"num_samples": "--num-samples", "seeds": "--seeds", "epochs": "--epochs",
             "train_size": "--train-size", "val_size": "--val-size"}
    given = [flag for key, flag in flags.items() if getattr(args, key) is not None]
    return f"{args.budget} (with {', '.join(given)})" if given else args.budget


def _read_space_file(path: str) -> dict:
    from .space_file import SpaceError, read_space_file

    try:
        return read_space_file(path)
    except SpaceError as e:
        raise UsageError(str(e)) from None


def _read_configs(paths: list[str]) -> list[dict]:
    """Every entry of the --configs files, checked and completed; a missing label becomes the
    file's name (with the entry's number when the file has several)."""
    configs = []
    for path in paths:
        try:
            with open(path) as f:
                content = json.load(f)
        except OSError as e:
            raise UsageError(f"--configs {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"--configs {path}: not JSON ({e})") from None
        entries = content if isinstance(content, list) else [content]
        if not entries:
            raise UsageError(f"--configs {path}: no configuration in the file")
        stem = os.path.splitext(os.path.basename(path))[0]
        for i, entry in enumerate(entries):
            where = f"--configs {path}" + (f" entry {i + 1}" if len(entries) > 1 else "")
            try:
                config = check_config(entry, where)
            except ConfigError as e:
                raise UsageError(str(e)) from None
            config["label"] = config["label"] or (stem if len(entries) == 1 else f"{stem}-{i + 1}")
            configs.append(config)
    labels = [c["label"] for c in configs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise UsageError(f"--configs: label(s) {', '.join(duplicates)} used twice; give each entry its own label")
    return configs


def _check_data(data: str, noise: str):
    from n2n_models.data import DataError, parse_data_spec, parse_noise_spec

    try:
        parse_data_spec(data)
        parse_noise_spec(noise)
    except DataError as e:
        raise UsageError(str(e)) from None


# oneDNN's instruction sets without bfloat16 arithmetic (ONEDNN_MAX_CPU_ISA's names, lower case)
ISAS_WITHOUT_BFLOAT16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni"}


def bfloat16_in_hardware(cpuinfo: str = "/proc/cpuinfo", capability: str | None = None,
                         isa: str | None = None) -> bool:
    """Whether this machine computes bfloat16 in hardware: a CUDA GPU, or a CPU whose flags list
    amx_bf16 or avx512_bf16 (Linux's `cpuinfo`) and whose use is not limited to older instructions,
    by ATEN_CPU_CAPABILITY (`capability`: torch.backends.cpu.get_cpu_capability(), which reads it) or
    ONEDNN_MAX_CPU_ISA (`isa`: by default the variable, or DNNL_MAX_CPU_ISA). Where the flags cannot
    be read, True: no warning without evidence. Measured on AVX2: bfloat16 autocast 11-16 times
    slower than float32 (docs/search-quality.md)."""
    import torch

    if torch.cuda.is_available():
        return True
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if isa is None:
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if not capability.upper().startswith("AVX512") or isa.lower() in ISAS_WITHOUT_BFLOAT16:
        return False
    try:
        with open(cpuinfo) as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except (OSError, IndexError):
        return True
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def main(argv: list[str] | None = None) -> int:
    try:
        experiment, args = parse(argv)
        from .progress import set_quiet  # here to keep --help and usage errors fast (they import Ray)
        from .tuning import run_experiment  # tuning never imports cli

        set_quiet(args.quiet)
        if args.amp and not args.address and not bfloat16_in_hardware():
            print("search/run.py: warning: --amp: this CPU lists neither amx_bf16 nor avx512_bf16, or "
                  "ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA keeps torch from them; bfloat16 "
                  "autocast trains several times slower than float32 on such CPUs (docs/search-quality.md)",
                  file=sys.stderr)
        return run_experiment(experiment, resume=args.resume, name_given=args.name is not None,
                              address=args.address)
    except UsageError as e:
        print(f"search/run.py: error: {e}", file=sys.stderr)
        return 2
    except SearchInterrupted as e:
        print(f"search/run.py: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the experiment was read: nothing was started
        print("search/run.py: interrupted", file=sys.stderr)
        return 130
