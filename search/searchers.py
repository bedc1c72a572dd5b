"""Searchers: Optuna's TPE driven through its public ask/tell (every epoch told, stopped trials told
as pruned, never retraining a configuration it already tried), random sampling, the report's grids."""
from __future__ import annotations

import math
import os
import pickle

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from analysis.experiment_file import OPTUNA_STUDY_FILE

from .experiment import is_uri
from .spaces import space_of, start_point
from .tune_internals import sampling_of

STEP = "training_iteration"  # one tune.report = one epoch, the unit ASHA counts in


def optuna_space(param_space: dict) -> tuple[dict[str, BaseDistribution], dict]:
    """A Tune param_space as Optuna distributions (tune.uniform / tune.loguniform -> FloatDistribution,
    tune.randint -> IntDistribution, tune.choice -> CategoricalDistribution) and the constants every trial gets unchanged."""
    distributions, constants = {}, {}
    for key, value in param_space.items():
        if not isinstance(value, Domain):
            constants[key] = value
        elif isinstance(value, Float) and sampling_of(value) in ("uniform", "log"):
            distributions[key] = FloatDistribution(value.lower, value.upper, log=sampling_of(value) == "log")
        elif isinstance(value, Integer) and sampling_of(value) == "uniform":
            distributions[key] = IntDistribution(value.lower, value.upper - 1)  # tune.randint excludes its upper end
        elif isinstance(value, Categorical) and sampling_of(value) == "uniform":
            distributions[key] = CategoricalDistribution(value.categories)
        else:
            raise ValueError(f"the optuna searcher takes tune.uniform, tune.loguniform, tune.randint and tune.choice; "
                             f"{key!r} is {value!r}: change it in search/spaces.py or use --searcher random")
    return distributions, constants


def tpe_sampler(seed: int | None) -> optuna.samplers.TPESampler:
    """Seeded TPE. Constant liar: trials still running count as bad results, so proposals made while
    they run go elsewhere. Multivariate: the knobs act together (lr with loss, width, batch size), and
    it is Optuna 5's default for one objective; pinned, as Optuna 4 (pyproject allows it) samples each alone.
    STARTUP random proposals first."""
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, n_startup_trials=STARTUP)


#: Random proposals before TPE models the results (Optuna's default is 10): a search of a few minutes
#: tries 15-25 configurations, and the first of them is the report's setting (spaces.start_point).
STARTUP = 5


class TPESearch(Searcher):
    """Optuna TPE through the public ask/tell, one Optuna trial per proposal.

    Every epoch's `metric` is reported to Optuna as an intermediate value at its step. A trial that
    ends without error before `epochs` (ASHA stopped it) is told PRUNED: TPE ranks pruned trials by
    the last step reached, then by the value there. One that reached `epochs` is told COMPLETE with
    its value; a diverged or errored one FAIL, and no NaN is ever reported.

    TPE on a discrete space proposes its favourite configuration again and again; with the same seeds
    a repeat would retrain identical numbers. Here a repeat is not trained: Optuna is told the earlier
    trial's outcome (state, intermediate values, value; at once, or when that trial ends) and asked for
    another configuration. Every proposal counts towards `proposals` (the search's --num-samples);
    when they are spent the searcher reports FINISHED, so a search may end with fewer trials than samples.

    `save`/`restore` pickle the whole state, the study included, so --resume continues TPE's history
    and random stream. `study` is the Optuna study, to read."""

    def __init__(self, metric: str | None = None, mode: str | None = None, *, epochs: int | None = None,
                 proposals: int | None = None, seed: int | None = None, start: tuple[dict, ...] = (), log=print):
        super().__init__(metric=metric, mode=mode)
        self._start = tuple(start)      # configurations (knob values) proposed first, in this order
        self._epochs = epochs           # a trial that reports fewer was stopped early; None: none is
        self._proposals_left = proposals  # None: as many as Tune asks for
        self._seed = seed
        self._log = log
        self._study: optuna.Study | None = None
        self._distributions: dict[str, BaseDistribution] = {}
        self._constants: dict = {}
        self._trials: dict[str, optuna.Trial] = {}      # Tune trial id -> the Optuna trial it trains
        self._reported: dict[str, tuple[int, float]] = {}  # Tune trial id -> last (step, value) reported
        self._told: dict[str, FrozenTrial] = {}         # Tune trial id -> what Optuna was told at its end
        self._first: dict[tuple, str] = {}              # configuration -> the Tune trial that trains it
        self._waiting: dict[str, list[optuna.Trial]] = {}  # Tune trial id -> repeats to answer when it ends
        self._repeats = 0

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study: one trial per proposal, repeats included (None until the space is set)."""
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        if self._study is None:
            if self._mode not in ("min", "max"):
                raise ValueError(f"TPESearch needs mode 'min' or 'max', got {self._mode!r}: "
                                 f"pass TuneConfig(metric=..., mode=...)")
            self._distributions, self._constants = optuna_space(config)
            self._study = optuna.create_study(direction="maximize" if self._mode == "max" else "minimize",
                                              sampler=tpe_sampler(self._seed))
            for point in self._start:  # Optuna's own queue: asked first, then TPE learns from them
                self._study.enqueue_trial({k: v for k, v in point.items() if k in self._distributions})
        return True

    def suggest(self, trial_id: str):
        if self._study is None or not self._metric:
            raise RuntimeError("TPESearch has no search space or metric yet: give the Tuner a param_space "
                               "and TuneConfig(metric=..., mode=...)")
        while self._proposals_left is None or self._proposals_left > 0:
            if self._proposals_left is not None:
                self._proposals_left -= 1
            trial = self._study.ask(self._distributions)
            first = self._first.setdefault(tuple(sorted(trial.params.items())), trial_id)
            if first == trial_id:
                self._trials[trial_id] = trial
                return {**self._constants, **trial.params}
            self._repeats += 1
            self._log(f"proposal repeats trial {first} ({_describe(trial.params)}): not retrained, "
                      f"its result is reused ({self._repeats} repeat{'s' if self._repeats > 1 else ''} so far)")
            if first in self._told:
                self._tell_as(trial, self._told[first])
            else:
                self._waiting.setdefault(first, []).append(trial)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # a trial told already is final: a trial --resume restarts after it errored stays FAIL
        if trial_id in self._trials and trial_id not in self._told and not result.get("diverged"):
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._trials or trial_id in self._told:
            return
        failed = error or bool(result and result.get("diverged"))
        if result and not failed:
            self._report(trial_id, result)  # the result a scheduler stops on reaches only here
        last = self._reported.get(trial_id)
        trial = self._trials[trial_id]
        if failed or last is None:
            told = self._study.tell(trial, state=TrialState.FAIL)
        elif self._epochs is None or last[0] >= self._epochs:
            told = self._study.tell(trial, last[1])
        else:
            told = self._study.tell(trial, state=TrialState.PRUNED)
        self._told[trial_id] = told
        for repeat in self._waiting.pop(trial_id, []):
            self._tell_as(repeat, told)

    def _report(self, trial_id: str, result: dict) -> None:
        step, value = result.get(STEP), result.get(self._metric)
        if step is None or value is None or not math.isfinite(value):
            return
        last = self._reported.get(trial_id)
        if last is not None and step <= last[0]:
            return  # an epoch redone after a retry from an older checkpoint: Optuna keeps a step's first value
        self._trials[trial_id].report(float(value), int(step))
        self._reported[trial_id] = (int(step), float(value))

    def _tell_as(self, repeat: optuna.Trial, told: FrozenTrial) -> None:
        """Tell a repeated proposal what its configuration's trial was told."""
        for step, value in sorted(told.intermediate_values.items()):
            repeat.report(value, step)
        self._study.tell(repeat, told.value if told.state == TrialState.COMPLETE else None, state=told.state)

    def save(self, checkpoint_path: str):
        state = {k: v for k, v in vars(self).items() if k != "_log"}  # the log function is the caller's
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def write_study(experiment_path: str, name: str) -> str | None:
    """Write the Optuna study that Tune saved with the experiment (its searcher state) to Optuna's
    journal file in the experiment folder, so that `optuna.load_study` and optuna-dashboard read it;
    rewritten whole each time (a resumed search adds to the same study). Returns its path, or None
    for remote storage (the journal is a local file) or a search without a saved TPE state."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if is_uri(experiment_path):
        return None
    searcher = TPESearch()
    try:
        searcher.restore_from_dir(experiment_path)
    except (RuntimeError, FileNotFoundError, OSError):
        return None
    if searcher.study is None:
        return None
    path = os.path.join(experiment_path, OPTUNA_STUDY_FILE)
    temporary = path + ".tmp"
    if os.path.exists(temporary):
        os.remove(temporary)
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(temporary)), study_name=name,
                                directions=searcher.study.directions)
    study.add_trials(searcher.study.trials)
    os.replace(temporary, path)  # a reader never sees half a study
    return path


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def make_searcher(experiment, slots: int, log=print):
    space = space_of(experiment)
    if experiment.searcher == "optuna":
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # metric, mode and the space come from the Tuner (set_search_properties);
        # TuneConfig.max_concurrent_trials limits how many it proposes at once
        return TPESearch(epochs=experiment.epochs, proposals=experiment.num_samples, seed=experiment.search_seed,
                         start=(start_point(space.params),), log=log)
    if experiment.searcher == "grid":
        return BasicVariantGenerator(points_to_evaluate=[dict(c) for c in space.cells],
                                     max_concurrent=slots, random_state=experiment.search_seed)
    return BasicVariantGenerator(points_to_evaluate=[start_point(space.params)], max_concurrent=slots,
                                 random_state=experiment.search_seed)
