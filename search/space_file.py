"""Search spaces as data: a YAML file (`--space-file SPACE.yaml`) or a dict from Python, one entry
per knob of n2n_models.config, each a constant or one of Tune's distributions:

    model: tnet
    lr: {loguniform: [1.0e-4, 3.0e-3]}
    dropout: {uniform: [0.0, 0.3]}
    width: {choice: [16, 32, 64]}
    batch_size: {randint: [16, 65]}       # 16 .. 64, the upper end excluded as in tune.randint
    loss: {grid: [l1, l2]}                 # a grid: every value is trained

Checked with one-line errors that name the key (SpaceError), and turned into a search.spaces.Space.
A space of constants and grids only is a grid (every combination, searcher grid); grids do not mix
with sampled distributions. The checked spec is what the experiment file keeps, so --resume and
the analysis rebuild the same space."""
from __future__ import annotations

import itertools
import math
import os

from ray import tune

from n2n_models.config import KNOB, TRIAL_DEFAULTS, ConfigError, check_value

from .tune_internals import sampling_of

#: A distribution's name -> how many arguments it takes (None: a non-empty list of values).
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None, "grid": None}
#: The name a space from a file or from Python has in experiment files and reports.
CUSTOM = "custom"


class SpaceError(ValueError):
    """A space that cannot be searched; the message is one line naming the key."""


def read_space_file(path: str) -> dict:
    """The checked spec of a YAML space file (SpaceError for anything wrong with it)."""
    import yaml

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except OSError as e:
        raise SpaceError(f"--space-file {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpaceError(f"--space-file {path}: not YAML ({first})") from None
    return check_spec(content, f"--space-file {path}")


def check_spec(spec, where: str = "space") -> dict:
    """A space spec (see the module docstring), checked: every key a knob, every value one it takes,
    every distribution well formed; returns it with values cast to the knobs' types."""
    if not isinstance(spec, dict) or not spec:
        raise SpaceError(f"{where}: expected a mapping of knob names to values or distributions, got "
                         f"{'nothing' if not spec else type(spec).__name__}")
    out = {}
    for key, entry in spec.items():
        if key not in KNOB:
            raise SpaceError(f"{where}: unknown key {key!r}; the knobs are {', '.join(KNOB)}")
        out[key] = _check_entry(key, entry, f"{where}: {key}")
    models = _values(out.get("model", TRIAL_DEFAULTS["model"]))
    for key in out:
        missing = [m for m in models if KNOB[key].models and m not in KNOB[key].models]
        if missing:
            raise SpaceError(f"{where}: {key}: not a knob of {', '.join(missing)} (it is one of "
                             f"{', '.join(KNOB[key].models)}); leave it out or fix the model")
    sampled = [k for k, v in out.items() if _distribution(v) in ("loguniform", "uniform", "randint", "choice")]
    grids = [k for k, v in out.items() if _distribution(v) == "grid"]
    if grids and sampled:
        raise SpaceError(f"{where}: {grids[0]}: a grid does not mix with sampled distributions ({sampled[0]}); "
                         "make it a choice, or make every searched key a grid")
    if not grids and not sampled:
        raise SpaceError(f"{where}: nothing to search: every key is a constant; give at least one distribution "
                         "(or use --configs for exact configurations)")
    return out


def _distribution(entry) -> str | None:
    return next(iter(entry)) if isinstance(entry, dict) else None


def _values(entry) -> list:
    """The values a constant, a choice or a grid can take (a range's are not listed)."""
    name = _distribution(entry)
    return [entry] if name is None else list(entry[name]) if DISTRIBUTIONS[name] is None else []


def _check_entry(key: str, entry, where: str):
    knob = KNOB[key]
    if not isinstance(entry, dict):
        if isinstance(entry, list):
            raise SpaceError(f"{where}: a list is not a value; write {{choice: [...]}} or {{grid: [...]}}")
        return _checked(key, entry, where)
    if len(entry) != 1:
        raise SpaceError(f"{where}: expected one distribution ({', '.join(DISTRIBUTIONS)}), got "
                         f"{', '.join(map(str, entry)) or 'none'}")
    name, args = next(iter(entry.items()))
    if name not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {name!r}; use one of {', '.join(DISTRIBUTIONS)}")
    arity = DISTRIBUTIONS[name]
    if arity is None:
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {name} needs a non-empty list of values, got {args!r}")
        values = [_checked(key, v, f"{where} ({name})") for v in args]
        if len({repr(v) for v in values}) != len(values):
            raise SpaceError(f"{where}: {name} lists a value twice")
        return {name: values}
    if not isinstance(args, list) or len(args) != arity:
        raise SpaceError(f"{where}: {name} needs [low, high], got {args!r}")
    wanted = int if name == "randint" else float
    if knob.kind is not wanted or knob.choices:
        kind = "an integer" if knob.kind is int else "a number" if knob.kind is float else f"a {knob.kind.__name__}"
        raise SpaceError(f"{where}: {name} does not fit {key}, which is {kind}; use "
                         + ("randint" if knob.kind is int else "loguniform or uniform" if knob.kind is float
                            else "choice or grid"))
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) for a in args):
        raise SpaceError(f"{where}: {name} bounds must be numbers, got {args!r}")
    if wanted is int and any(a != int(a) for a in args):
        raise SpaceError(f"{where}: randint bounds must be integers, got {args!r}")
    low, high = (wanted(a) for a in args)
    if not low < high:
        raise SpaceError(f"{where}: {name} needs low < high, got [{low:g}, {high:g}]")
    if name == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs low > 0, got {low:g}")
    last = high - 1 if name == "randint" else high  # randint's upper end is excluded
    for bound in (low, last):
        _checked(key, bound, f"{where} ({name} bound)")
    return {name: [low, high]}


def _checked(key: str, value, where: str):
    try:
        return check_value(key, value, where.rsplit(": ", 1)[0])
    except ConfigError as e:
        raise SpaceError(str(e)) from None


def to_params(spec: dict) -> tuple[dict, tuple]:
    """A checked spec -> (Tune param_space, grid cells): a grid's cells are every combination of
    its grid values, and its param_space lists them as choices, as the report's grids do."""
    params, grids = {}, {}
    for key, entry in spec.items():
        name = _distribution(entry)
        if name is None:
            params[key] = entry
        elif name == "loguniform":
            params[key] = tune.loguniform(*entry[name])
        elif name == "uniform":
            params[key] = tune.uniform(*entry[name])
        elif name == "randint":
            params[key] = tune.randint(*entry[name])
        else:
            params[key] = tune.choice(list(entry[name]))
            if name == "grid":
                grids[key] = list(entry[name])
    cells = tuple(dict(zip(grids, combo)) for combo in itertools.product(*grids.values())) if grids else ()
    return params, cells


def spec_from_tune(param_space: dict) -> dict:
    """A param_space written with Tune's own functions (tune.loguniform, tune.uniform, tune.randint,
    tune.choice, tune.grid_search, constants) as a spec; plain spec entries pass through. SpaceError
    for what a spec cannot say (quantised or custom samplers)."""
    sample = tune.search.sample
    spec = {}
    for key, value in param_space.items():
        if isinstance(value, dict) and set(value) == {"grid_search"}:
            spec[key] = {"grid": list(value["grid_search"])}
        elif isinstance(value, sample.Categorical):
            spec[key] = {"choice": list(value.categories)}
        elif isinstance(value, (sample.Float, sample.Integer)):
            how = sampling_of(value)
            if how == "log" and isinstance(value, sample.Float):
                spec[key] = {"loguniform": [value.lower, value.upper]}
            elif how == "uniform":
                spec[key] = {"randint" if isinstance(value, sample.Integer) else "uniform": [value.lower, value.upper]}
            else:
                raise SpaceError(f"space: {key}: only tune.loguniform, tune.uniform and tune.randint are supported "
                                 "for numbers (not quantised or other samplers); use choice for a list")
        elif isinstance(value, sample.Domain):
            raise SpaceError(f"space: {key}: {type(value).__name__} is not supported; use loguniform, uniform, "
                             "randint, choice or grid_search")
        else:
            spec[key] = value
    return spec


def describe(spec: dict) -> str:
    """One line: what the space searches."""
    parts = []
    for key, entry in spec.items():
        name = _distribution(entry)
        if name is not None:
            args = entry[name]
            parts.append(f"{key} {name}({', '.join(f'{a:g}' if isinstance(a, float) else str(a) for a in args)})")
    return "a space from a file or Python: " + "; ".join(parts)
