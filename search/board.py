"""What TensorBoard shows of a search (`tensorboard --logdir <experiment>`): one HParams experiment
at the experiment's root (the searched knobs with their domains, and the metrics that compare
trials, best validation PSNR first), one run per trial, named by its folder (`trial_07-tnet-lr2e-3-
l2-bn-w64-b16`, search.fitting), holding its HParams session (written when the trial starts, so rows
appear while it runs; its status when it ends), its PSNR curves and the labelled image grid that
the trainable writes beside them (trainables/image_grid.py).

`TrialBoard` replaces Tune's own TensorBoard logger, which logs every result key under `ray/tune/`
(timestamps, `done`, `iterations_since_restore` and the like) and writes HParams only when a trial
ends, with no domains and every trial a success. TensorBoard's HParams status has four values
(success, failure, running, unknown) and keeps the first status a run writes, so a trial's status is
written once, when it ends: SESSION_STATUS says which of the analysis's statuses each one shows.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
from ray import tune
from ray.tune.logger import TBXLoggerCallback
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from n2n_models.config import KNOB


def _gain(result: dict):
    return result.get("best_epoch_test_psnr", math.nan) - result.get("noisy_test_psnr", math.nan)


#: The HParams table's metrics, in its column order: (tag, title, value from a trial's result).
#: Their tags are also the run's scalars; `psnr/` first, so PSNR leads the Time Series too.
METRICS = (
    ("psnr/best_val_psnr", "best val PSNR", lambda r: r.get("best_val_psnr")),
    ("psnr/test_psnr", "test PSNR (best val epoch)", lambda r: r.get("best_epoch_test_psnr")),
    ("psnr/test_gain", "test gain over noisy (dB)", _gain),
    ("psnr/val_psnr", "val PSNR (last epoch)", lambda r: r.get("val_psnr")),
    ("trial/params", "parameters", lambda r: r.get("params")),
    ("trial/epochs", "epochs run", lambda r: r.get("epoch")),
)
#: Curves beside the metrics, not columns of the table.
CURVES = (("trial/train_loss", lambda r: r.get("train_loss")),)
#: The analysis's trial statuses (analysis.load.STATUSES) as TensorBoard's HParams shows them.
SESSION_STATUS = {"finished": api_pb2.STATUS_SUCCESS, "out of time": api_pb2.STATUS_SUCCESS,
                  "stopped early": api_pb2.STATUS_UNKNOWN, "diverged": api_pb2.STATUS_FAILURE,
                  "errored": api_pb2.STATUS_FAILURE}
#: An integer knob with at most this many values is a list in the HParams filter, else a range.
MAX_DISCRETE = 64


def _number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def hparam_domains(params: dict) -> dict[str, hp.HParam]:
    """The HParams of a Tune param_space: every knob it varies, with its domain (a choice, a grid
    or an integer range as a list; a float range as an interval). Integer knobs' lists are of
    strings, since TensorBoard writes every number with five digits (16.000). Constants are not
    hyperparameters here; a space that varies nothing (one --configs entry) declares its knobs'
    single values."""
    sample = tune.search.sample
    out, single = {}, {}
    for key, value in params.items():
        if key not in KNOB:
            continue
        if isinstance(value, dict) and set(value) == {"grid_search"}:
            value = sample.Categorical(list(value["grid_search"]))
        if isinstance(value, sample.Categorical):
            values = [v for v in value.categories if v is not None]
            if not values:
                continue
            if all(isinstance(v, (bool, np.bool_)) for v in values):
                values = [bool(v) for v in values]
            elif KNOB[key].kind is int and all(_number(v) for v in values):
                values = [str(int(v)) for v in values]  # TensorBoard shows every number as 16.000
            elif all(_number(v) for v in values):
                values = [float(v) for v in values]
            else:
                values = [str(v) for v in values]
            domain = hp.Discrete(sorted(set(values)))
            (out if len(set(values)) > 1 else single)[key] = hp.HParam(key, domain)
        elif isinstance(value, sample.Integer):
            upper = value.upper - 1  # tune.randint excludes its upper end
            domain = (hp.Discrete([str(v) for v in range(value.lower, upper + 1)])
                      if upper - value.lower < MAX_DISCRETE else hp.IntInterval(value.lower, upper))
            out[key] = hp.HParam(key, domain)
        elif isinstance(value, sample.Float):
            out[key] = hp.HParam(key, hp.RealInterval(float(value.lower), float(value.upper)))
    return out or single


def _session_value(param: hp.HParam, value):
    """A trial's value of `param` in its domain's type (None: not shown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    domain = param.domain
    if isinstance(domain, hp.Discrete) and domain.dtype is str:
        return str(int(value)) if KNOB[param.name].kind is int and _number(value) else str(value)
    if isinstance(domain, hp.Discrete) and domain.dtype is bool:
        return bool(value)
    return float(value)


def _summary(tag: str, plugin_data: plugin_data_pb2.HParamsPluginData) -> Summary:
    summary = Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR)
    return summary


def experiment_summary(hparams: dict[str, hp.HParam]) -> Summary:
    """The experiment-level HParams configuration: the hyperparameters and METRICS, in order."""
    return hp.hparams_config_pb(hparams=list(hparams.values()),
                                metrics=[hp.Metric(tag, display_name=title) for tag, title, _ in METRICS])


class TrialBoard(TBXLoggerCallback):
    """Tune's TensorBoard logger for a search (see the module docstring). `params` is the
    searched param_space; `root` writes the experiment's HParams configuration beside the trial
    folders (a refit, inside the experiment, adds its sessions to the search's table instead);
    `time_budget` tells the status of trials a --time-budget ended; `mutated` are the knobs
    Population Based Training changes, drawn as curves (the session shows each member's first)."""

    def __init__(self, params: dict, root: bool = True, time_budget: bool = False, mutated: tuple = ()):
        # Tune's logger writes with tensorboardX; this one writes TensorBoard's own event files
        self.hparams = hparam_domains(params)
        self.root, self.time_budget = root, time_budget
        self.mutated = tuple(k for k in mutated if k in KNOB and KNOB[k].kind in (int, float))
        self._writers: dict = {}
        self._root_written = False

    def __getstate__(self):  # pickled with the Tuner: no open files
        return {**self.__dict__, "_writers": {}, "_root_written": False}

    def _write(self, writer: EventFileWriter, summary: Summary, step: int = 0):
        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def log_trial_start(self, trial):
        trial.init_local_path()
        if self.root and not self._root_written:
            root = EventFileWriter(os.path.dirname(trial.local_path), filename_suffix=".hparams")
            self._write(root, experiment_summary(self.hparams))
            root.close()
            self._root_written = True
        if trial in self._writers:  # a Population Based Training member continuing
            return
        writer = self._writers[trial] = EventFileWriter(trial.local_path, filename_suffix=".board")
        values = {param: _session_value(param, trial.config.get(name)) for name, param in self.hparams.items()}
        start = hp.hparams_pb({p: v for p, v in values.items() if v is not None},
                              trial_id=os.path.basename(trial.local_path))
        self._write(writer, start)  # TensorBoard keeps the first: a resumed trial's repeat is ignored
        writer.flush()

    def log_trial_result(self, iteration: int, trial, result: dict):
        if trial not in self._writers:
            self.log_trial_start(trial)
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        scalars = [(tag, value(result)) for tag, _, value in METRICS] + [(tag, value(result)) for tag, value in CURVES]
        config = result.get("config") or trial.config
        scalars += [(f"trial/{key}", config.get(key)) for key in self.mutated]
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars
                                 if _number(v) and math.isfinite(float(v))])
        writer = self._writers[trial]
        self._write(writer, summary, step)
        writer.flush()

    def log_trial_end(self, trial, failed: bool = False):
        import pandas as pd

        from analysis.load import trial_status

        writer = self._writers.pop(trial, None)
        if writer is None:
            return
        last = dict(trial.last_result or {})
        rows = pd.DataFrame([last]) if "epoch" in last else pd.DataFrame()
        target = int(trial.config.get("epochs") or 0)
        status = trial_status(rows, target, failed, "ERROR" if failed else "TERMINATED", self.time_budget)
        if status in SESSION_STATUS:
            end = plugin_data_pb2.HParamsPluginData(
                session_end_info=plugin_data_pb2.SessionEndInfo(status=SESSION_STATUS[status], end_time_secs=time.time()))
            self._write(writer, _summary(metadata.SESSION_END_INFO_TAG, end), int(last.get("epoch") or 0))
        writer.close()

    def on_experiment_end(self, trials, **info):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
