"""Running trials of a stored study: one worker's loop, with its sampler, limits, live view and storage outages."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from ...errors import UserError
from ..latency import TargetUnavailable
from .progress import LiveView
from .quota import SurplusTrial, TrialQuota, is_surplus
from .settings import Settings
from .storage import STORAGE_PATIENCE_SECONDS, exception_chain, failure_reason, is_storage_failure, masked
from .study import Context
from .trial import CandidateFailed, TrialRunner, make_pruner

# A worker whose trials fail this many times in a row stops: something is broken
# (target agent down, disk full) and looping would only fill the study with failures.
MAX_FAILURES_IN_A_ROW = 3
# Storage failures with no trial finished in between after which a worker stops (see Outage).
MAX_STORAGE_FAILURES_IN_A_ROW = 5


def sampler_seed(settings: Settings, study: optuna.Study, worker_index: int) -> int:
    """A seed distinct for every worker and every resume of the study.

    Workers with the same seed would repeat each other's startup trials; the stored
    trial count separates resumes, the worker index separates concurrent workers.
    """
    return settings.seed * 1_000_003 + len(study.get_trials(deepcopy=False)) * 101 + worker_index


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE: models how layer ratios interact; the budget is a constraint it learns."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=8)


def run_worker(study: optuna.Study, context: Context, storage_url: str, worker_index: int = 0, quiet: bool = False,
               sampler: Callable[[int], optuna.samplers.BaseSampler] = make_sampler) -> int:
    """Run trials of ``study`` until its trial count or time limit is reached.

    ``sampler`` builds the worker's sampler from its seed (:func:`sampler_seed`); the
    default is :func:`make_sampler`. Benchmarks pass another (e.g. Optuna's RandomSampler)
    to compare samplers on the same objective. Returns the number of trials this worker
    finished. Raises KeyboardInterrupt after Optuna has marked the interrupted trial
    failed (it is retried on resume).

    Several workers may share the study. A worker whose trial was refused as surplus
    waits until the trials before it have finished (failing, by their heartbeat, those
    of dead workers, whose retries are then waiting) and goes on if the study is still
    short, so the total comes out exact. A failing storage is waited out by
    :class:`Outage`: a trial it cut off is FAIL (not counted), or RUNNING when even that
    could not be stored, until the heartbeat fails it and retries its parameters.
    """
    settings = context.settings
    tally, streak = Tally(), FailureStreak()
    outage = Outage(study, storage_url, tally)
    with _one_line_per_failure():
        while True:
            try:
                if not _optimize(study, context, storage_url, sampler(sampler_seed(settings, study, worker_index)),
                                 quiet, [tally, streak]) or streak.stopped:
                    return tally.finished
            except Exception as error:
                if not outage.covers(error):
                    raise
                outage.wait(error)


def _optimize(study: optuna.Study, context: Context, storage_url: str, sampler: optuna.samplers.BaseSampler,
              quiet: bool, callbacks: list) -> bool:
    """One ``study.optimize`` call; True when the study is still short after a surplus refusal."""
    settings = context.settings
    quota = TrialQuota(study, settings)
    if quota.done():
        return False
    study.sampler = sampler
    study.pruner = make_pruner(settings)
    with LiveView(study, settings.budget_ms, settings.trials, quiet=quiet) as view:
        runner = TrialRunner(context, study, storage_url, quota, on_phase=view.phase)
        study.optimize(
            runner,
            timeout=quota.seconds_left(),
            catch=(TargetUnavailable, CandidateFailed, SurplusTrial),
            callbacks=[view.trial_finished, *callbacks, quota],
            gc_after_trial=True,
        )
    return quota.refused and quota.still_short()


class Tally:
    """Optuna callback counting the trials this worker finished, over all its ``optimize`` calls."""

    def __init__(self) -> None:
        self.finished = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.finished += 1


class FailureStreak:
    """Optuna callback that stops the worker after MAX_FAILURES_IN_A_ROW failed trials."""

    def __init__(self) -> None:
        self.failures = 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        surplus = is_surplus(trial)
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL and not surplus else 0
        if trial.state == TrialState.FAIL and not surplus:
            reason = trial.user_attrs.get("fail_reason", "see the log")
            print(f"trial {trial.number} failed: {reason}", file=sys.stderr)
        if self.failures >= MAX_FAILURES_IN_A_ROW:
            print(f"stopping this worker: {self.failures} trials failed in a row; once the cause is fixed, "
                  f"continue with: autosculpt resume {study.study_name}", file=sys.stderr)
            self.stopped = True
            study.stop()


class Outage:
    """Waits out a failing storage: retries with exponential backoff (1, 2, 4, 8, 16, 16 ... s)
    for up to ``STORAGE_PATIENCE_SECONDS``, then stops the worker with a one-line
    :class:`UserError` naming the storage (password masked).

    A storage that answers the probe yet fails MAX_STORAGE_FAILURES_IN_A_ROW times with no
    trial finished in between (a full disk) stops the worker too, as failing trials do.
    """

    def __init__(self, study: optuna.Study, url: str, tally: Tally) -> None:
        self.study = study
        self.url = url
        self.tally = tally
        self.in_a_row = 0
        self.finished_then = -1

    def covers(self, error: BaseException) -> bool:
        """True for a storage failure, or a trial lost to one (failed elsewhere meanwhile)."""
        return is_storage_failure(error) or _lost_trial(error)

    def wait(self, error: BaseException) -> None:
        """Return once the storage answers again; UserError when it does not in time."""
        where = masked(self.url)
        self.in_a_row = 1 if self.tally.finished != self.finished_then else self.in_a_row + 1
        self.finished_then = self.tally.finished
        if _lost_trial(error) and not is_storage_failure(error):
            print("this worker's trial was failed by another worker while the storage was cut off; "
                  "its parameters are retried", file=sys.stderr)
            reason = "trial lost"
        else:
            reason = failure_reason(error, self.url)
            print(f"storage {where} failed ({reason}); retrying for up to {STORAGE_PATIENCE_SECONDS:g} s", file=sys.stderr)
        if self.in_a_row >= MAX_STORAGE_FAILURES_IN_A_ROW:
            raise UserError(f"storage {where} failed {self.in_a_row} times with no trial finished ({reason}); "
                            f"stored trials are kept: continue with autosculpt resume {self.study.study_name}")
        wait_for_storage(lambda: self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)),
                         self.url, self.study.study_name)
        print(f"storage {where} answers again: going on", file=sys.stderr)


T = TypeVar("T")


def wait_for_storage(probe: Callable[[], T], url: str, study_name: str) -> T:
    """What ``probe()`` returns once the storage at ``url`` answers.

    ``probe`` is retried with exponential backoff (1, 2, 4, 8, 16, 16 ... s) while it fails
    for a storage failure, for up to ``STORAGE_PATIENCE_SECONDS``; then a one-line
    :class:`UserError` names the storage (password masked). Other errors go through.
    """
    deadline = time.monotonic() + STORAGE_PATIENCE_SECONDS
    delay = 1.0
    while True:
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        try:
            return probe()
        except Exception as error:
            if not is_storage_failure(error):
                raise
            reason = failure_reason(error, url)
        if time.monotonic() >= deadline:
            raise UserError(f"storage {masked(url)} unreachable for {STORAGE_PATIENCE_SECONDS:g} s ({reason}); "
                            f"stored trials are kept: continue with autosculpt resume {study_name}")
        delay = min(2 * delay, 16.0)


def _lost_trial(error: BaseException) -> bool:
    """True when this worker's trial was finished by another one: the heartbeat check of a
    worker that saw it stale while this worker could not reach the storage."""
    return any(isinstance(e, optuna.exceptions.UpdateFinishedTrialError) for e in exception_chain(error))


class _DropFailureLogs(logging.Filter):
    """Optuna logs each failed trial with its parameters and a traceback, and each storage
    error it works around with the SQL; FailureStreak and Outage say what matters in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return " failed with " not in message and not message.startswith("Caught an error from sqlalchemy")


@contextmanager
def _one_line_per_failure():
    loggers = [logging.getLogger(name) for name in ("optuna.study._optimize", "optuna.storages._rdb.storage")]
    drop = _DropFailureLogs()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
