"""Hyperparameter importance of a search with Optuna's fANOVA evaluator, seeded (the same report
twice gives the same figures): the finished trials become an Optuna study (`create_trial` with
their distributions, value = best seed-mean validation PSNR)."""
from __future__ import annotations

import math
import warnings

from n2n_models.config import KNOB

from .load import ExperimentData

MIN_TRIALS = 4
SEED = 0  # fANOVA's random forest
USED_STATUSES = ("finished", "stopped early", "out of time")  # stopped trials count, with their best value before the stop
#: fANOVA's cost grows faster than its trials (3 minutes for 1,000 on 2 cores, bench/scale.py): a
#: larger search's importance is computed from this many of its trials, drawn at random (seeded).
MAX_TRIALS = 256


class Skip(Exception):
    """Importance cannot be computed for this experiment; the message says why (for report.md)."""


def _distribution(key: str, values: list):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    knob = KNOB.get(key)
    if knob is not None and knob.kind is float and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in values):
        low, high = float(min(values)), float(max(values))
        return FloatDistribution(low, high, log=knob.log_scale and low > 0)
    return CategoricalDistribution(sorted(set(values), key=str))


def param_importances(exp: ExperimentData) -> tuple[dict, str, int]:
    """({hyperparameter: importance} most important first, evaluator name, trials used); raises Skip.
    Of more than MAX_TRIALS usable trials, a seeded random MAX_TRIALS are used."""
    if exp.is_grid:
        raise Skip("the report's grids are compared cell by cell in their table; importance is for searches")
    trials = exp.trials[exp.trials["status"].isin(USED_STATUSES)].dropna(subset=["best_psnr_mean"])
    if len(trials) < MIN_TRIALS:
        raise Skip(f"{len(trials)} trial(s) with a result; importance needs at least {MIN_TRIALS}")
    keys = [k for k in exp.varying_hparams() if k != "label"]
    keys = [k for k in keys if trials[k].notna().all() and trials[k].astype(str).nunique() > 1]
    if not keys:
        raise Skip("no hyperparameter varies across the trials with a result")
    if len(trials) > MAX_TRIALS:
        import numpy as np

        picked = np.sort(np.random.default_rng(SEED).choice(len(trials), MAX_TRIALS, replace=False))
        trials = trials.iloc[picked]
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plain = {k: [v.item() if hasattr(v, "item") else v for v in trials[k]] for k in keys}
    distributions = {k: _distribution(k, plain[k]) for k in keys}
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(trials["best_psnr_mean"]):
        params = {k: plain[k][i] for k in keys}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(value)))
    evaluator, name = FanovaImportanceEvaluator(seed=SEED), "fANOVA"  # needs scikit-learn (a dependency)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importances = get_param_importances(study, evaluator=evaluator)
        except Exception as e:  # noqa: BLE001 - an evaluator failing on a tiny study is a note, not a crash
            raise Skip(f"Optuna's {name} evaluator failed on these trials ({e})") from None
    importances = {k: float(v) for k, v in importances.items() if math.isfinite(v)}
    if not importances:
        raise Skip(f"Optuna's {name} evaluator returned no finite importance")
    return importances, name, len(trials)
