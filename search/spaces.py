"""Named search spaces: the report's knobs as Tune search spaces, and its tables as grids."""
from __future__ import annotations

import dataclasses

from ray import tune

LOSSES = ["l2", "l1", "hdr"]


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


def _cells(*rows: dict) -> tuple:
    return tuple(rows)


SPACES = {
    "tnet": Space(
        "tnet", "TNet: lr, batch norm, loss, dropout, embedding width, batch size",
        {"model": "tnet", "lr": tune.loguniform(1e-4, 3e-3), "batchnorm": tune.choice([False, True]),
         "loss": tune.choice(LOSSES), "dropout": tune.uniform(0.0, 0.3),
         "width": tune.choice([16, 32, 64, 128]), "batch_size": tune.choice([16, 32, 64])},
    ),
    "unet": Space(
        "unet", "Noise2Noise UNet: lr, loss, dropout, base width, batch norm",
        {"model": "unet", "lr": tune.loguniform(1e-4, 3e-3), "loss": tune.choice(LOSSES),
         "dropout": tune.uniform(0.0, 0.3), "width": tune.choice([24, 48, 96]),
         "batchnorm": tune.choice([False, True]), "batch_size": 32},
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
}


# -- exact configurations from files (--configs) ----------------------------------------------------
#: What a --configs entry may set; a key it leaves out takes the trainable's default (TRIAL_DEFAULTS;
#: width None: the model's default width).
CONFIG_KEYS = ("label", "model", "lr", "loss", "batchnorm", "dropout", "width", "latent", "batch_size")


class ConfigError(ValueError):
    """A --configs entry that cannot be trained."""


def check_config(entry, where: str) -> dict:
    """One --configs entry -> a complete trial configuration; ConfigError says what is wrong."""
    from n2n_models import MODELS  # here, not at import: torch is only needed when --configs is used
    from trainables.n2n import TRIAL_DEFAULTS

    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a JSON object of hyperparameters, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}")
    c = {**{k: TRIAL_DEFAULTS.get(k) for k in CONFIG_KEYS}, **entry}

    def number(key, kind, ok, text):
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)) or not ok(v):
            raise ConfigError(f"{where}: {key} must be {text}, got {v!r}")
        c[key] = kind(v)

    if c["model"] not in MODELS:
        raise ConfigError(f"{where}: model must be one of {', '.join(MODELS)}, got {c['model']!r}")
    if c["loss"] not in LOSSES:
        raise ConfigError(f"{where}: loss must be one of {', '.join(LOSSES)}, got {c['loss']!r}")
    if not isinstance(c["batchnorm"], bool):
        raise ConfigError(f"{where}: batchnorm must be true or false, got {c['batchnorm']!r}")
    number("lr", float, lambda v: 0 < v < 10, "a number in (0, 10)")
    number("dropout", float, lambda v: 0 <= v < 1, "a number in [0, 1)")
    number("latent", int, lambda v: v >= 1, "a positive integer")
    number("batch_size", int, lambda v: v >= 2, "an integer >= 2")
    if c["width"] is not None:
        number("width", int, lambda v: v >= 1, "a positive integer (or null: the model's default)")
    if c["label"] is not None and not isinstance(c["label"], str):
        raise ConfigError(f"{where}: label must be a string, got {c['label']!r}")
    return c


def configs_space(configs: list[dict]) -> Space:
    """A grid of exactly these (complete, checked) configurations."""
    params = {k: tune.choice(list({repr(c[k]): c[k] for c in configs}.values())) for k in CONFIG_KEYS}
    return Space("configs", "the configurations of --configs files", params,
                 cells=tuple({k: c[k] for k in CONFIG_KEYS} for c in configs))


def space_of(experiment) -> Space:
    """The Space an experiment runs: a named one, or its --configs."""
    if experiment.configs:
        return configs_space(experiment.configs)
    return SPACES[experiment.space]
