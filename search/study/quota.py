"""The study's trial count and time limit, kept exactly by any number of workers.

Workers race between checking the count and asking Optuna for a trial, so two may start
the study's last trial. :meth:`TrialQuota.claim`, called first thing in every trial,
refuses a trial that started after the study already had its trials by raising
:class:`SurplusTrial` (counted on trial numbers, which the storage hands out atomically);
the refused trial is stored FAIL with the user attribute ``surplus`` True and never
counts. As an Optuna callback the quota stops ``study.optimize`` once the study has its
trials, or when this worker's trial was refused; :meth:`still_short` then tells whether
trials running elsewhere failed meanwhile, so the worker is needed after all.

A trial that fine-tuned nothing is free: a *repeat* (user attribute ``repeat_of``: its
shape projected onto a network an earlier trial fine-tuned, whose outcome it took) or a
shape whose narrowest network was still over the budget (``finetuned`` False: measured and
scored, seconds of work). Free trials do not count, up to as many as the study has
trials, so a study gets its fine-tunes where many shapes cannot reach the budget (depth
past the width floor: a third of its shapes keep every level), and a space that keeps
returning one network still ends.
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from .settings import Settings
from .storage import HEARTBEAT_SECONDS

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that count towards the study's total
SURPLUS_ATTR = "surplus"
REPEAT_ATTR = "repeat_of"


class SurplusTrial(Exception):
    """Raised by :meth:`TrialQuota.claim` inside a trial that the study no longer needs."""


def is_surplus(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was refused as surplus (it failed without counting, nothing broke)."""
    return trial.user_attrs.get(SURPLUS_ATTR) is True


def is_repeat(trial: FrozenTrial) -> bool:
    """Whether ``trial`` took an earlier trial's outcome instead of fine-tuning the same network."""
    return isinstance(trial.user_attrs.get(REPEAT_ATTR), int)


def is_free(trial: FrozenTrial) -> bool:
    """Whether ``trial`` fine-tuned nothing: a repeat, or a shape that could not reach the budget."""
    return is_repeat(trial) or trial.user_attrs.get("finetuned") is False


def counting(trials: list[FrozenTrial], limit: int | None) -> int:
    """How many of ``trials`` count towards a study of ``limit`` trials: all but the free
    ones (:func:`is_free`), of which only those beyond ``limit`` count."""
    free = sum(is_free(t) for t in trials)
    return len(trials) - min(free, limit or 0)


class TrialQuota:
    """The trial count (``settings.trials``) and time limit (``settings.timeout_s``, from the
    study's ``started_at``) of one study, as one worker sees them."""

    def __init__(self, study: optuna.Study, settings: Settings) -> None:
        self.study = study
        self.settings = settings
        self.refused = False  # this worker's last trial was refused since the last optimize call

    def counted(self) -> int:
        """Trials that count towards the total (complete or pruned; see :func:`counting`)."""
        return counting(self.study.get_trials(deepcopy=False, states=COUNTED), self.settings.trials)

    def done(self) -> bool:
        """The study has its trials, or its time is up."""
        left = self.seconds_left()
        return (self.settings.trials is not None and self.counted() >= self.settings.trials) or (
            left is not None and left <= 0)

    def seconds_left(self) -> float | None:
        """Time left of the study's time limit, or None for no limit."""
        if self.settings.timeout_s is None:
            return None
        return self.settings.timeout_s - (time.time() - self.study.user_attrs.get("started_at", time.time()))

    def claim(self, trial: optuna.Trial) -> None:
        """Let ``trial`` run, or mark it surplus and raise :class:`SurplusTrial` when the
        trials numbered before it (counted, running or waiting) already fill the study."""
        limit = self.settings.trials
        if limit is None:
            return
        earlier = self.study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING, TrialState.WAITING))
        if counting([t for t in earlier if t.number < trial.number], limit) >= limit:
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.set_user_attr("fail_reason", "surplus: the study already had its trials when this one started")
            raise SurplusTrial(f"trial {trial.number} is surplus")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: stop when the study is done or this worker's trial was refused."""
        if is_surplus(trial):
            self.refused = True
            study.stop()
        elif self.done():
            study.stop()

    def still_short(self) -> bool:
        """After a refusal: whether the study still needs trials once none is running any more.

        Trials running elsewhere may yet fail (their worker killed, their storage cut off):
        wait for them, failing the stale ones as Optuna does before each trial (their
        retries are then waiting, and this worker is needed to run them).
        """
        self.refused = False
        while not self.done():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            pending = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if not pending or any(t.state == TrialState.WAITING for t in pending):
                return True
            time.sleep(HEARTBEAT_SECONDS)
        return False
