"""Which trial is the answer: the one rule read by the live view, export, report and benchmarks.

A trial is *within* a budget when it is complete, was fine-tuned, and its measured
latency (the user attribute ``latency_ms``) is at most the budget. Of the trials within
a budget the best has the highest Dice (the objective, validation Dice); of equal Dice
the faster, then the earlier. The best few are the *finalists* the polish takes; the
study's *answer* is the finalist that scored best after its polish (:func:`answer`). The rule reads the latency against the budget it is given,
not the ``feasible`` flag or Optuna constraint a trial stored: those record the budget
of the day the trial ran, and ``resume --force --budget-ms`` can change it since.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from .settings import POLISH_ATTR, SETTINGS_ATTR, Settings

__all__ = ["answer", "best_feasible", "best_within", "finalist_count", "finalists", "meets_budget", "ranked_within", "study_budget",
           "within_budget"]


def meets_budget(trial: FrozenTrial, budget_ms: float) -> bool:
    """Whether the trial's measured latency is at most ``budget_ms`` (False when unmeasured)."""
    latency = trial.user_attrs.get("latency_ms")
    return isinstance(latency, (int, float)) and latency <= budget_ms


def within_budget(trial: FrozenTrial, budget_ms: float) -> bool:
    """Complete, fine-tuned and :func:`meets_budget`: a trial that may be the answer."""
    return (trial.state == TrialState.COMPLETE and trial.values is not None
            and trial.user_attrs.get("finetuned") is True and meets_budget(trial, budget_ms))


def ranked_within(trials: Iterable[FrozenTrial], budget_ms: float) -> list[FrozenTrial]:
    """The trials within ``budget_ms``, best first: highest Dice, then faster, then earlier."""
    candidates = [t for t in trials if within_budget(t, budget_ms)]
    return sorted(candidates, key=lambda t: (-t.values[0], t.user_attrs["latency_ms"], t.number))


def best_within(trials: Iterable[FrozenTrial], budget_ms: float) -> FrozenTrial | None:
    """The best of ``trials`` within ``budget_ms`` (see the module), or None."""
    ranked = ranked_within(trials, budget_ms)
    return ranked[0] if ranked else None


def study_budget(study: optuna.Study) -> float:
    """The study's current budget in ms (infinite for a study stored without one)."""
    budget = Settings.from_dict(study.user_attrs[SETTINGS_ATTR]).budget_ms if SETTINGS_ATTR in study.user_attrs else None
    return budget if budget is not None else math.inf


def best_feasible(study: optuna.Study, budget_ms: float | None = None) -> FrozenTrial | None:
    """The best trial of ``study`` within ``budget_ms``; None uses the study's own budget."""
    budget = study_budget(study) if budget_ms is None else budget_ms
    return best_within(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), budget)


def finalists(study: optuna.Study, count: int, budget_ms: float | None = None) -> list[FrozenTrial]:
    """The ``count`` best trials of ``study`` within ``budget_ms`` (None: the study's own), best first."""
    budget = study_budget(study) if budget_ms is None else budget_ms
    return ranked_within(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), budget)[:count]


# A trial whose score is more than UNSETTLED_LOSS below the baseline's validation Dice has not
# settled in its short fine-tune, and such scores barely rank where the networks end up: at 30x
# on `unet` (96 px, seed 2, 24 trials, 2-core AMD EPYC, 2026-12-06) nine trials within budget
# scored 0.54-0.88 against the baseline's 0.964, polished to 0.930-0.953 with Spearman -0.30,
# and the best after the polish was eighth by trial score. Where the best trial is that far
# below, UNSETTLED_FINALISTS are polished instead of one; where trials settle (the README's 15x
# and seed 0's 30x: within 1-2 % of the baseline) one is, as before.
UNSETTLED_LOSS = 0.05
UNSETTLED_FINALISTS = 5


def finalist_count(study: optuna.Study, settings: Settings) -> int:
    """How many finalists ``study`` polishes: ``settings.finalists`` where the user gave it,
    else :data:`UNSETTLED_FINALISTS` when its best trial within budget scores more than
    :data:`UNSETTLED_LOSS` below the baseline's validation Dice, else one."""
    if settings.finalists is not None:
        return settings.finalists
    best = best_feasible(study)
    baseline = (study.user_attrs.get("baseline") or {}).get("dice")
    unsettled = best is not None and baseline is not None and best.values[0] < baseline * (1 - UNSETTLED_LOSS)
    return UNSETTLED_FINALISTS if unsettled else 1


def answer(study: optuna.Study, budget_ms: float | None = None) -> FrozenTrial | None:
    """The trial ``study`` answers with: the winner of its polish where that trial is within
    ``budget_ms`` (None: the study's own), else :func:`best_feasible`."""
    budget = study_budget(study) if budget_ms is None else budget_ms
    winner = (study.user_attrs.get(POLISH_ATTR) or {}).get("trial")
    polished = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number == winner), None)
    return polished if polished is not None and within_budget(polished, budget) else best_feasible(study, budget)
