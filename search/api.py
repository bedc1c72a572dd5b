"""`run_search`: a search from Python, exactly the one `search/run.py` runs for the same space and
options, returning its trials as a pandas frame and the model a user takes home."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from .errors import UsageError
from .space_file import SpaceError, check_spec, spec_from_tune


@dataclasses.dataclass
class SearchResult:
    """What a search left: its folder, its exit status (0 done, 130 interrupted: `resume=True`
    continues it), one row per trial (hyperparameters, best validation and test PSNR, epochs,
    status; analysis.load), and the best model exported as `search/run.py`'s report exports it
    (the refit's best replica when there is a refit; None when no trial has a checkpoint)."""

    path: Path
    status: int
    trials: pd.DataFrame
    best_model: Path | None


def run_search(space: dict, **options) -> SearchResult:
    """Run a search of `space` and return its results.

    `space` maps knobs (n2n_models.config: model, lr, loss, batchnorm, dropout, width, batch_size,
    ...) to constants or distributions, written with Tune (`tune.loguniform(1e-4, 3e-3)`,
    `tune.uniform`, `tune.randint`, `tune.choice`, `tune.grid_search`) or as a space file's entries
    (`{"loguniform": [1e-4, 3e-3]}`, see search/space_file.py). `options` are the command's flags
    with underscores (`budget="smoke"`, `num_samples=8`, `storage="runs"`, `name="mine"`,
    `search_seed=1`, `no_refit=True`, ...). The same space and options give the same trials as
    `search/run.py --space-file`. Bad input raises UsageError (one line saying what to fix).
    A local Ray is started when none is running, and left running for the next search."""
    from analysis.experiment_file import BEST_MODEL_FILE, REPORT_FOLDER
    from analysis.export import export_best, exported, load_refit
    from analysis.load import load_experiment

    from .cli import parse
    from .progress import set_quiet
    from .tuning import run_experiment

    try:
        spec = check_spec(spec_from_tune(space), "space")
    except SpaceError as e:
        raise UsageError(str(e)) from None
    for what in ("space", "space_file", "configs"):
        if what in options:
            raise UsageError(f"run_search: {what}= is not an option; the space is run_search's first argument")
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    experiment, args = parse(argv, space_spec=spec)
    set_quiet(args.quiet)
    status = run_experiment(experiment, resume=args.resume, name_given=args.name is not None, address=args.address)
    exp = load_experiment(experiment.path)
    source, best = exported(exp, load_refit(exp))
    model = None
    if best is not None:
        model = exp.path / REPORT_FOLDER / BEST_MODEL_FILE
        model.parent.mkdir(parents=True, exist_ok=True)
        export_best(source, best, model)
    return SearchResult(exp.path, status, exp.trials, model)
