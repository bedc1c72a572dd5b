"""The trial configuration, in one place: the knobs a trial's config may set (name, default, type,
check, heading), which of them each model's constructor takes, the one-line check of a
configuration from a file, and its conversion to the TrainSpec that the training loop reads.

Search spaces, the trainable, the search summary, the analysis, `--configs` and TensorBoard all
read the knobs from here: a new hyperparameter is one Knob (and, when the loop uses it, one
TrainSpec field). Imports no Ray.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

from .losses import LOSSES, get_loss

#: Training targets: Noise2Noise (the pair's other noisy copy) and Noise2Clean (the clean image).
TARGETS = ("noisy", "clean")

#: Which knobs each model's constructor takes (build_model(name, **hparams)); the models' names.
MODEL_HPARAMS = {"tnet": ("width", "batchnorm", "dropout", "residual_output"),
                 "unet": ("width", "batchnorm", "dropout", "residual_output"),
                 "basenet": ("latent",)}


@dataclasses.dataclass(frozen=True)
class Knob:
    """One hyperparameter a trial config may set. `kind` is its type (values are cast to it),
    `check` (with `requirement`, the words an error uses) the values it accepts, `choices` the
    names it accepts instead, `heading` its column in reports. `default` None for width means
    the model's own default."""

    name: str
    kind: type
    default: object
    heading: str
    requirement: str = ""
    check: Callable[[object], bool] | None = None
    choices: tuple = ()
    nullable: bool = False
    show: Callable[[object], str] = str  # a value as tables write it
    log_scale: bool = False  # a number whose effect goes with its order of magnitude (spaces search it log-uniformly)
    slug: Callable[[object], str] | None = None  # its part of a trial's name ("" or None: not named)

    @property
    def models(self) -> tuple[str, ...]:
        """The models whose constructor takes this knob; () for a training knob (every model)."""
        return tuple(m for m, keys in MODEL_HPARAMS.items() if self.name in keys)


#: Adam's (beta1, beta2), PyTorch's defaults: beta1 is fixed, beta2 is a knob's default (TrainSpec.beta2)
ADAM_BETAS = (0.9, 0.999)


#: Every knob, in the order tables and summaries show them.
def _scientific(value) -> str:
    return f"{float(value):.2e}"


def _yes_no(value) -> str:
    return "yes" if value else "no"


def _short(value) -> str:
    """A number as trial names write it: 2.1e-3, 5e-4, 0.15."""
    number = float(value)
    if number == 0 or 1e-2 <= abs(number) < 1e3:
        return f"{number:.3g}"
    return re.sub(r"(\.0)?e([+-])0*(\d)", r"e\2\3", f"{number:.1e}")


KNOBS = (
    Knob("label", str, None, "Label", "a string", nullable=True),
    Knob("model", str, "tnet", "Model", choices=tuple(MODEL_HPARAMS), slug=str),
    Knob("lr", float, 5e-4, "LR", "a number in (0, 10)", lambda v: 0 < v < 10, show=_scientific, log_scale=True,
         slug=lambda v: f"lr{_short(v)}"),
    Knob("weight_decay", float, 0.0, "Weight decay", "a number in [0, 1)", lambda v: 0 <= v < 1, show=_scientific,
         log_scale=True, slug=lambda v: f"wd{_short(v)}" if v else ""),
    Knob("loss", str, "l2", "Loss", choices=LOSSES, show=lambda v: str(v).upper(), slug=str),
    Knob("batchnorm", bool, False, "BN", "true or false", show=_yes_no, slug=lambda v: "bn" if v else ""),
    Knob("dropout", float, 0.0, "Dropout", "a number in [0, 1)", lambda v: 0 <= v < 1, show=lambda v: f"{float(v):.3f}",
         slug=lambda v: f"do{_short(v)}" if v else ""),
    Knob("width", int, None, "Width", "a positive integer (or null: the model's default)", lambda v: v >= 1,
         nullable=True, slug=lambda v: f"w{int(v)}"),
    # the output is the input plus what the network computes (residual learning: the network learns
    # the correction); the report's TNet and UNet output the image itself (TNet through a leaky ReLU
    # on a convolution of its last features and the input). Not the report's "Res" column, which says
    # whether a model has skip connections
    Knob("residual_output", bool, False, "Res. output", "true or false", show=_yes_no,
         slug=lambda v: "resout" if v else ""),
    Knob("latent", int, 8, "Latent", "a positive integer", lambda v: v >= 1, slug=lambda v: f"z{int(v)}"),
    Knob("batch_size", int, 32, "Batch", "an integer >= 2", lambda v: v >= 2, slug=lambda v: f"b{int(v)}"),
    # each epoch, every pair turned by one of the square's eight symmetries and its copies swapped
    # at random (n2n_models.augment); the report trained on the pairs as they are
    Knob("augment", bool, False, "Aug.", "true or false", show=_yes_no, slug=lambda v: "aug" if v else ""),
    # the decay of an exponential moving average of the weights, which is what is evaluated and
    # exported (0: none, the report's way: the weights as the last step left them)
    Knob("ema", float, 0.0, "EMA", "a number in [0, 1)", lambda v: 0 <= v < 1, show=lambda v: f"{float(v):g}",
         slug=lambda v: f"ema{float(v):g}" if v else ""),
    # the decay of Adam's running mean of squared gradients (PyTorch's default 0.999; the Noise2Noise
    # paper trained with 0.99, which adapts each weight's step to its gradients' scale sooner)
    Knob("beta2", float, ADAM_BETAS[1], "Adam beta2", "a number in (0, 1)", lambda v: 0 < v < 1,
         show=lambda v: f"{float(v):g}", slug=lambda v: f"beta{float(v):g}" if float(v) != ADAM_BETAS[1] else ""),
    # what the loss compares the output with: the pair's second noisy copy (Noise2Noise) or the
    # clean image (Noise2Clean, for data made from clean images); the same batches either way
    Knob("target", str, "noisy", "Target", choices=TARGETS, slug=lambda v: "n2c" if v == "clean" else ""),
)
KNOB = {k.name: k for k in KNOBS}
HPARAM_KEYS = tuple(KNOB)
#: A trial's epochs under a time budget (a PBT member, a refit replica): only a bound, the time decides.
OPEN_EPOCHS = 100_000
#: A trial config's other keys and their defaults: the run's length and replicas, not searched.
#: `start_from`: a checkpoint folder the trial starts from when Tune has none to resume it from (a
#: search's finish continues its best member); `anneal_s`: the lr falls linearly to 0 over this many
#: seconds of the trial's training (None: constant).
RUN_DEFAULTS = {"epochs": 10, "seeds": 1, "seed": 0, "grid_images": 8, "amp": False, "start_from": None,
                "anneal_s": None}
#: What a trial trains when its config leaves a key out.
TRIAL_DEFAULTS = {**{k.name: k.default for k in KNOBS}, **RUN_DEFAULTS}
#: Searched loss names: the annealed l0 needs its schedule tied to the run's length, so spaces leave it out.
SEARCHED_LOSSES = tuple(name for name in LOSSES if name != "l0")


@dataclasses.dataclass
class TrainSpec:
    """What one trial trains: a model configuration, its optimiser settings and its seeds.
    `amp` trains and evaluates under autocast (bfloat16; float16 with loss scaling on GPUs
    without bfloat16); off by default, because its effect on PSNR is measured only per device."""

    model: str = TRIAL_DEFAULTS["model"]
    hparams: dict = dataclasses.field(default_factory=dict)
    lr: float = TRIAL_DEFAULTS["lr"]
    weight_decay: float = TRIAL_DEFAULTS["weight_decay"]  # Adam's (L2 added to the gradient)
    batch_size: int = TRIAL_DEFAULTS["batch_size"]
    epochs: int = TRIAL_DEFAULTS["epochs"]
    loss: str = TRIAL_DEFAULTS["loss"]
    seeds: tuple = (0,)
    amp: bool = TRIAL_DEFAULTS["amp"]
    target: str = TRIAL_DEFAULTS["target"]  # what train_epoch's second argument holds: noisy copies or clean images
    augment: bool = TRIAL_DEFAULTS["augment"]  # flips, rotations and swaps of the pairs (n2n_models.augment)
    ema: float = TRIAL_DEFAULTS["ema"]  # decay of the weights' moving average that is evaluated (0: none)
    beta2: float = TRIAL_DEFAULTS["beta2"]  # Adam's decay of its squared-gradient average (betas[1])

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("a TrainSpec needs at least one seed")
        get_loss(self.loss)  # fail early on an unknown loss
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")


def show_value(name: str, value) -> str:
    """A knob's value as tables and summaries write it ("—" for none)."""
    if _missing(value):
        return "—"
    knob = KNOB.get(name)
    if knob is not None and knob.show is not str:
        return knob.show(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def shown_knobs(config: dict) -> dict:
    """The knobs of `config` that mean something for its model, in table order (a TNet's
    `latent` does not)."""
    model = config.get("model", TRIAL_DEFAULTS["model"])
    return {k.name: config[k.name] for k in KNOBS
            if k.name in config and (not k.models or model in k.models)}


def trial_slug(config: dict) -> str:
    """A trial's configuration in a few characters, for its folder and TensorBoard run:
    `tnet-l2-bn-w64-lr2.1e-3-b16` (model, loss, batch norm, width, dropout, lr, weight decay,
    batch size, Noise2Clean, and the first seed when it is not 0)."""
    parts = []
    for name, value in shown_knobs(config).items():
        knob = KNOB[name]
        if knob.slug is not None and not _missing(value):
            parts.append(knob.slug(value))
    if int(config.get("seed", 0) or 0):
        parts.append(f"s{int(config['seed'])}")
    return "-".join(p for p in parts if p)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def model_hparams(config: dict) -> dict:
    """The constructor arguments of the trial's network, as the trainable builds it."""
    model = config.get("model", TRIAL_DEFAULTS["model"])
    out = {}
    for name in MODEL_HPARAMS.get(model, ()):
        value = config.get(name, KNOB[name].default)
        if not _missing(value):
            out[name] = KNOB[name].kind(value)
    return out


def trial_seeds(config: dict) -> list[int]:
    """The seeds of the trial's replicas, in the order its checkpoints store them."""
    first = int(config.get("seed", 0) or 0)
    return list(range(first, first + int(config.get("seeds", 1) or 1)))


def _is_training_knob(knob: Knob) -> bool:
    """A knob of the optimisation (a TrainSpec field of its name), not of the network or the name."""
    return not knob.models and knob.name not in ("label", "model")


def is_training_knob(name: str) -> bool:
    """Whether `name` is a knob of the optimisation (lr, loss, batch size, ...): one that may change
    between epochs of a trial without changing the network's weights' shapes."""
    return name in KNOB and _is_training_knob(KNOB[name])


def training_knobs(config: dict) -> dict:
    """The training knobs of a trial config and its epochs, as written into an exported model."""
    return {**{k.name: config.get(k.name, k.default) for k in KNOBS if _is_training_knob(k)},
            "epochs": config.get("epochs")}


def spec_from_config(config: dict) -> TrainSpec:
    """The TrainSpec a trial config describes (keys it leaves out from TRIAL_DEFAULTS)."""
    c = {**TRIAL_DEFAULTS, **config}
    training = {k.name: k.kind(c[k.name]) for k in KNOBS if _is_training_knob(k) and not _missing(c[k.name])}
    return TrainSpec(model=c["model"], hparams=model_hparams(c), epochs=int(c["epochs"]),
                     seeds=tuple(trial_seeds(c)), amp=bool(c["amp"]), **training)


class ConfigError(ValueError):
    """A configuration (from a --configs file) that cannot be trained; the message is one line."""


def check_config(entry, where: str) -> dict:
    """One configuration from a file -> a complete trial configuration of every knob (left-out
    ones at their defaults); ConfigError says what is wrong, prefixed by `where`."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a JSON object of hyperparameters, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(KNOB))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KNOB)}")
    config = {**{k.name: k.default for k in KNOBS}, **entry}
    for knob in KNOBS:
        config[knob.name] = _checked(knob, config[knob.name], where)
    return config


def check_value(name: str, value, where: str):
    """One knob's value, checked and cast as check_config does; ConfigError (prefixed by `where`)
    when it is not a value the knob takes."""
    if name not in KNOB:
        raise ConfigError(f"{where}: unknown key {name}; allowed: {', '.join(KNOB)}")
    return _checked(KNOB[name], value, where)


def _checked(knob: Knob, value, where: str):
    if value is None and knob.nullable:
        return None
    if knob.choices:
        if value not in knob.choices:
            raise ConfigError(f"{where}: {knob.name} must be one of {', '.join(knob.choices)}, got {value!r}")
        return value
    if knob.kind is bool or knob.kind is str:
        if not isinstance(value, knob.kind):
            raise ConfigError(f"{where}: {knob.name} must be {knob.requirement}, got {value!r}")
        return value
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (knob.kind is int and value != int(value)) or not knob.check(value)):
        raise ConfigError(f"{where}: {knob.name} must be {knob.requirement}, got {value!r}")
    return knob.kind(value)
