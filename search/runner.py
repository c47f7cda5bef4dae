"""Running trials of a stored study: one worker's loop, with its sampler, limits and live view."""

from __future__ import annotations

import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from .latency import TargetUnavailable
from .progress import LiveView
from .settings import Settings
from .study import COUNTED, Context, SurplusTrial, TrialRunner

# A worker whose trials fail this many times in a row stops: something is broken
# (target agent down, disk full) and looping would only fill the study with failures.
MAX_FAILURES_IN_A_ROW = 3


def sampler_seed(settings: Settings, study: optuna.Study, worker_index: int) -> int:
    """A seed distinct for every worker and every resume of the study.

    Workers with the same seed would repeat each other's startup trials; the stored
    trial count separates resumes, the worker index separates concurrent workers.
    """
    return settings.seed * 1_000_003 + len(study.get_trials(deepcopy=False)) * 101 + worker_index


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE: models how layer ratios interact; the budget is a constraint it learns."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=8)


def remaining_seconds(study: optuna.Study, settings: Settings) -> float | None:
    """Time left of the study's time limit (counted from its start), or None for no limit."""
    if settings.timeout_s is None:
        return None
    return settings.timeout_s - (time.time() - study.user_attrs.get("started_at", time.time()))


def counted_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def run_worker(study: optuna.Study, context: Context, storage_url: str, worker_index: int = 0, quiet: bool = False) -> int:
    """Run trials of ``study`` until its trial count or time limit is reached.

    Returns the number of trials this worker finished. Raises KeyboardInterrupt after
    Optuna has marked the interrupted trial failed (it is retried on resume).
    """
    settings = context.settings
    study.sampler = make_sampler(sampler_seed(settings, study, worker_index))
    left = remaining_seconds(study, settings)
    if _done(study, settings) or (left is not None and left <= 0):
        return 0
    streak = FailureStreak()
    with LiveView(study, settings.budget_ms, settings.trials, quiet=quiet) as view:
        runner = TrialRunner(context, study, storage_url, on_phase=view.phase)
        study.optimize(
            runner,
            timeout=left,
            catch=(TargetUnavailable, SurplusTrial),
            callbacks=[view.trial_finished, streak, _stop_when_done(settings)],
            gc_after_trial=True,
        )
    return view.finished_here


def _done(study: optuna.Study, settings: Settings) -> bool:
    return settings.trials is not None and counted_trials(study) >= settings.trials


def _stop_when_done(settings: Settings):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if _done(study, settings) or trial.user_attrs.get("fail_reason", "").startswith("surplus"):
            study.stop()

    return callback


class FailureStreak:
    """Optuna callback that stops the worker after MAX_FAILURES_IN_A_ROW failed trials."""

    def __init__(self) -> None:
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        surplus = trial.user_attrs.get("fail_reason", "").startswith("surplus")
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL and not surplus else 0
        if trial.state == TrialState.FAIL and not surplus:
            reason = trial.user_attrs.get("fail_reason", "see the log")
            print(f"trial {trial.number} failed: {reason}", file=sys.stderr)
        if self.failures >= MAX_FAILURES_IN_A_ROW:
            print(f"stopping this worker: {self.failures} trials failed in a row", file=sys.stderr)
            study.stop()
