"""Progress lines on stdout while a search runs: what it is doing, and trials done, running, the
best so far (stderr is kept for what went wrong)."""
from __future__ import annotations

import time

from ray import tune


#: --quiet: no progress lines (the summary, warnings and errors are still shown)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def log(message: str):
    """One line of what the search is doing, marked as the search's among Ray's own output."""
    if not _quiet:
        print(f"[n2n-search] {message}", flush=True)


#: Searches of more trials than this get no line per ended trial, only the throttled status line.
PER_TRIAL_LINES = 64


class ProgressLog(tune.Callback):
    """One line when a trial ends (searches of up to PER_TRIAL_LINES trials), at most every `every`
    seconds on results, and at least every `quiet` seconds while trials run (long epochs report
    nothing for minutes)."""

    def __init__(self, total: int, log, every: float = 15.0, quiet: float = 60.0):
        self.total, self.log, self.every, self.quiet = total, log, every, quiet
        self.start = self.last = time.time()
        self.best = None  # (val_psnr, trial_id, epoch)
        self.done = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get("val_psnr")
        if value is not None and value == value and (self.best is None or value > self.best[0]):
            self.best = (value, trial.trial_id, result.get("training_iteration"))
        if time.time() - self.last >= self.every:
            self._line(trials)

    def on_step_begin(self, iteration, trials, **info):
        if time.time() - self.last >= self.quiet and any(t.status == "RUNNING" for t in trials):
            self._line(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.total > PER_TRIAL_LINES:  # thousands of lines help nobody (and each counts every trial)
            if time.time() - self.last >= self.every or self.done == self.total:
                self._line(trials, ended=trial)
            return
        last = trial.last_result or {}
        self.log(f"trial {trial.trial_id} ended after {last.get('training_iteration', 0)} epochs: "
                 f"val_psnr {last.get('val_psnr', float('nan')):.2f} dB (best {last.get('best_val_psnr', float('nan')):.2f})")
        self._line(trials, ended=trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self.log(f"trial {trial.trial_id} errored (see {trial.path}/error.txt)")
        self._line(trials, ended=trial)

    def _line(self, trials, ended=None):
        self.last = time.time()
        running = sum(t.status == "RUNNING" and t is not ended for t in trials)
        best = f"best {self.best[0]:.2f} dB (trial {self.best[1]}, epoch {self.best[2]})" if self.best else "no result yet"
        elapsed = time.time() - self.start
        self.log(f"{self.done}/{self.total} trials ended, {running} running | {best} | {elapsed / 60:.1f} min")
