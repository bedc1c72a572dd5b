"""Named search spaces: the report's knobs as Tune search spaces, and its tables as grids."""
from __future__ import annotations

import dataclasses
import inspect

from ray import tune

from n2n_models.config import HPARAM_KEYS, KNOB, SEARCHED_LOSSES, TARGETS, is_training_knob
from n2n_models.models import MODELS

LOSSES = list(SEARCHED_LOSSES)  # the losses every search space tries


@dataclasses.dataclass(frozen=True)
class Space:
    """A named space. `params` is a Tune param_space; `cells`, when set, are the exact
    configurations of a report table, run every one with `seeds` replicas."""

    name: str
    description: str
    params: dict
    cells: tuple = ()
    seeds: int | None = None  # grid spaces fix the report's 5 seeds; searches take the budget's

    @property
    def is_grid(self) -> bool:
        return bool(self.cells)

    def continuous_keys(self) -> list[str]:
        """Keys with a continuous distribution (which a grid cannot enumerate)."""
        return [k for k, v in self.params.items()
                if isinstance(v, tune.search.sample.Float)]


def start_point(params: dict) -> dict:
    """The report's own setting in a search space's terms: every searched knob as the report's
    Table 2 row of the space's model has it (the `models` grid: UNet at lr 1e-3, the others at
    5e-4), else at its default (n2n_models.config: L2, no batch norm, no dropout, weight decay 0,
    batch 32, the model's own width); a number brought into the domain's range, a choice left out
    when that value is not among its options. Searches train it first, so they start from what the
    report found by hand."""
    model = params.get("model")
    report = reports_row(model) if isinstance(model, str) else {}
    start = {}
    for key, domain in params.items():
        if not isinstance(domain, tune.search.sample.Domain) or key not in KNOB:
            continue
        default = report.get(key, KNOB[key].default)
        if default is None and isinstance(model, str) and model in MODELS:  # the model's own default
            parameter = inspect.signature(MODELS[model].__init__).parameters.get(key)
            default = None if parameter is None else parameter.default
        if isinstance(domain, tune.search.sample.Float) and default is not None:
            start[key] = min(max(float(default), domain.lower), domain.upper)
        elif isinstance(domain, tune.search.sample.Integer) and default is not None:
            start[key] = min(max(int(default), domain.lower), domain.upper - 1)  # randint excludes its upper end
        elif isinstance(domain, tune.search.sample.Categorical) and default in domain.categories:
            start[key] = default
    return start


def reports_row(model: str) -> dict:
    """The knobs of `model`'s own row of the report's Table 2 (its first cell in the `models` grid:
    the model as the report trained it, before variants such as TNet+L1); {} for a model not there."""
    row = next((cell for cell in SPACES["models"].cells if cell["model"] == model), {})
    return {k: v for k, v in row.items() if k in KNOB and k != "label"}


def population_space(params: dict) -> tuple[dict, dict]:
    """A search space as Population Based Training trains it: (param_space, mutations). The
    network's knobs (model, width, batch norm, dropout, ...) are fixed at the report's setting
    (start_point), since members exchange weights; the training knobs the space searches (lr,
    weight decay, loss, batch size) are each member's first draw and what PBT changes later."""
    start = start_point(params)
    fixed = {k: start[k] for k, v in params.items()
             if isinstance(v, tune.search.sample.Domain) and not is_training_knob(k) and k in start}
    mutations = {k: list(v.categories) if isinstance(v, tune.search.sample.Categorical) else v  # PBT shifts along a list
                 for k, v in params.items() if isinstance(v, tune.search.sample.Domain) and is_training_knob(k)}
    return {**params, **fixed}, mutations


def possible_values(params: dict, key: str) -> set:
    """Every value a trial of this param_space may give `key`: a constant's, a choice's or a grid's
    options, or the knob's default when the space leaves the key out."""
    value = params.get(key, KNOB[key].default if key in KNOB else None)
    if isinstance(value, tune.search.sample.Categorical):
        return set(value.categories)
    if isinstance(value, dict) and "grid_search" in value:
        return set(value["grid_search"])
    return {value}


def _cells(*rows: dict) -> tuple:
    return tuple(rows)


SPACES = {
    "tnet": Space(
        "tnet", "TNet: lr, weight decay, batch norm, loss, dropout, embedding width, batch size (residual output, "
        "augmented pairs, weights' moving average)",
        {"model": "tnet", "lr": tune.loguniform(1e-4, 3e-3), "weight_decay": tune.loguniform(1e-6, 1e-3),
         "batchnorm": tune.choice([False, True]),
         "loss": tune.choice(LOSSES), "dropout": tune.uniform(0.0, 0.3),
         "width": tune.choice([16, 32, 64, 128]), "batch_size": tune.choice([16, 32, 64]),
         # on for every TNet trial: on the default data (10,000 pairs of photos) the report's setting
         # peaks after 3 minutes at 27.15 dB test and then overfits; augmented and averaged it reaches
         # 27.42 at 9 minutes, with the residual output 27.48 (docs/search-quality.md, session 16)
         "augment": True, "ema": 0.999, "residual_output": True},
    ),
    "unet": Space(
        "unet", "Noise2Noise UNet: lr, loss, dropout, base width (residual output, no batch norm, batch 16, Adam beta2 "
        "0.99, augmented pairs, weights' moving average)",
        {"model": "unet", "lr": tune.loguniform(1e-4, 3e-3), "loss": tune.choice(LOSSES),
         "dropout": tune.uniform(0.0, 0.3), "width": tune.choice([24, 48, 96]),
         # no batch norm: it cost the UNet 1.7-2.5 dB test after 3 epochs on CBSD432 (and the report's TNet
         # 0.87 dB), so trials with it would only fill ASHA's first rung (docs/search-quality.md, session 14)
         "batchnorm": False,
         # the output is the input plus the network's correction (residual learning; the paper's UNet
         # outputs the image itself):
         # +0.32 dB test after one epoch, +0.05 after ten with the lr falling to 0 (docs/search-quality.md, session 15)
         "residual_output": True,
         # batch 16, not the report's 32: twice the steps for 5% more time an epoch on a CPU; at equal
         # wall time +0.17 dB on held-out photos, +0.07 at 30 minutes of a search (docs/search-quality.md, session 12)
         "batch_size": 16,
         # Adam's beta2 0.99, the Noise2Noise paper's, not PyTorch's 0.999: the 30-minute search's best
         # so far +0.15 dB at 7.5 minutes, +0.06 at 15, level at 30 (docs/search-quality.md, session 13)
         "beta2": 0.99,
         # on for every UNet trial: +0.26 dB on held-out photos over the best epoch without them at 30
         # minutes, invisible in the first minutes a short trial has to show it (docs/search-quality.md, session 7)
         "augment": True, "ema": 0.999},
    ),
    "basenet": Space(
        "basenet", "BaseNet autoencoder: lr, loss, latent size",
        {"model": "basenet", "lr": tune.loguniform(1e-4, 3e-3), "loss": tune.choice(LOSSES),
         "latent": tune.choice([8, 16, 32]), "batch_size": 32},
    ),
    "lr-grid": Space(
        "lr-grid", "the report's Table 1: TNet at lr 1e-4, 5e-4, 9e-4, 5 seeds",
        {"model": "tnet", "lr": tune.choice([1e-4, 5e-4, 9e-4]), "loss": "l2", "batchnorm": False,
         "width": 32, "batch_size": 32, "label": tune.choice(["TNet"])},
        cells=_cells(*({"lr": lr, "label": "TNet"} for lr in (1e-4, 5e-4, 9e-4))),
        seeds=5,
    ),
    "models": Space(
        "models", "the report's Table 2: BaseNet, UNet, TNet, TNet+L1, TNet+BN, 5 seeds",
        {"model": tune.choice(["basenet", "unet", "tnet"]), "lr": tune.choice([5e-4, 1e-3]),
         "loss": tune.choice(["l2", "l1"]), "batchnorm": tune.choice([False, True]),
         "label": tune.choice(["BaseNet", "UNet", "TNet", "TNet+L1", "TNet+BN"]), "batch_size": 32},
        cells=_cells(
            {"label": "BaseNet", "model": "basenet", "lr": 5e-4, "loss": "l2", "batchnorm": False},
            {"label": "UNet", "model": "unet", "lr": 1e-3, "loss": "l2", "batchnorm": False},
            {"label": "TNet", "model": "tnet", "lr": 5e-4, "loss": "l2", "batchnorm": False},
            {"label": "TNet+L1", "model": "tnet", "lr": 5e-4, "loss": "l1", "batchnorm": False},
            {"label": "TNet+BN", "model": "tnet", "lr": 5e-4, "loss": "l2", "batchnorm": True},
        ),
        seeds=5,
    ),
    "n2n-vs-n2c": Space(
        "n2n-vs-n2c", "Noise2Noise against Noise2Clean: TNet and UNet at the report's setting, trained on "
        "noisy and on clean targets, 5 seeds",
        {"model": tune.choice(["tnet", "unet"]), "lr": tune.choice([5e-4, 1e-3]), "loss": "l2", "batchnorm": False,
         "batch_size": 32, "target": tune.choice(list(TARGETS)),
         "label": tune.choice(["TNet N2N", "TNet N2C", "UNet N2N", "UNet N2C"])},
        cells=_cells(*({"label": f"{label} {'N2N' if target == 'noisy' else 'N2C'}", "model": model, "lr": lr,
                        "target": target}
                       for label, model, lr in (("TNet", "tnet", 5e-4), ("UNet", "unet", 1e-3))
                       for target in TARGETS)),
        seeds=5,
    ),
}


# -- exact configurations from files (--configs; each checked by n2n_models.config.check_config) --
def configs_space(configs: list[dict]) -> Space:
    """A grid of exactly these (complete, checked) configurations."""
    params = {k: tune.choice(list({repr(c[k]): c[k] for c in configs}.values())) for k in HPARAM_KEYS}
    return Space("configs", "the configurations of --configs files", params,
                 cells=tuple({k: c[k] for k in HPARAM_KEYS} for c in configs))


def custom_space(spec: dict) -> Space:
    """The Space of a checked spec from --space-file or Python (search.space_file)."""
    from .space_file import CUSTOM, describe, to_params

    params, cells = to_params(spec)
    return Space(CUSTOM, describe(spec), params, cells=cells)


def space_of(experiment) -> Space:
    """The Space an experiment runs: a named one, its --configs, or its --space-file (or Python) spec."""
    if experiment.configs:
        return configs_space(experiment.configs)
    if experiment.space_spec:
        return custom_space(experiment.space_spec)
    return SPACES[experiment.space]
