"""Pure functions from a study to report data: plain values, no HTML, no plotting.

As in ``optuna/visualization``, each section has a ``_get_..._info`` function whose
result the renderer draws; a section that cannot be drawn carries a ``reason`` sentence
instead, so every study state (no complete trial, none within budget, trials still
running, no baseline) gives a page, never an exception.
"""

from __future__ import annotations

import math
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..search.study.best import ranked_within
from ..search.study.storage import masked
from ._headline import HeadlineInfo, ModelSummary, get_headline_info
from ._patients import PatientsInfo, get_patients_info
from ._search_info import SearchInfo, get_search_info
from ._trials import STATES, TrialRow, get_trial_row
from ._values import as_dict, finite, integer

HEATMAP_TRIALS = 10
DEFAULT_CLASSES = ("RV", "myocardium", "LV")
# Importance targets, lower is better for Optuna's evaluator: Dice is negated.
_OBJECTIVES: dict[str, Callable[[FrozenTrial], float]] = {
    "Dice": lambda t: -t.values[0],
    "latency": lambda t: t.user_attrs["latency_ms"],
}


@dataclass(frozen=True)
class ParetoInfo:
    """Complete trials split into the feasible Pareto front, other feasible, and over budget."""

    front: list[TrialRow]
    dominated: list[TrialRow]
    infeasible: list[TrialRow]
    budget_ms: float | None
    highlight: int | None
    reason: str | None


@dataclass(frozen=True)
class HistoryInfo:
    """Every trial by number, and the best feasible Dice after each complete feasible trial."""

    rows: list[TrialRow]
    best: list[tuple[int, float]]
    reason: str | None


@dataclass(frozen=True)
class LayersInfo:
    """Keep ratio per layer of the best feasible trials, and the chosen model's channels.

    ``keep[i][j]`` is trial ``trials[i]``'s ratio for ``layers[j]`` (None if unknown).
    """

    layers: list[str]
    trials: list[TrialRow]
    keep: list[list[float | None]]
    baseline_channels: dict[str, int]
    candidate_channels: dict[str, int]
    candidate_label: str
    heatmap_reason: str | None
    channels_reason: str | None


@dataclass(frozen=True)
class ImportanceInfo:
    """Importance of each parameter for one objective, largest first, or why there is none."""

    objective: str
    importances: dict[str, float]
    reason: str | None


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, as plain values."""

    study_name: str
    counts: dict[str, int]
    budget_ms: float | None
    headline: HeadlineInfo
    pareto: ParetoInfo
    history: HistoryInfo
    layers: LayersInfo
    importance: list[ImportanceInfo]
    trials: list[TrialRow]
    class_names: list[str]
    settings: list[tuple[str, str]]
    environment: list[tuple[str, str]]
    commands: list[tuple[str, str]]
    search: SearchInfo
    patients: PatientsInfo


def get_report_data(study: optuna.Study, storage_url: str | None = None) -> ReportData:
    """Read ``study`` into :class:`ReportData`; never raises for a study in any state.

    ``storage_url`` (shown masked in the commands) defaults to the ``storage`` setting.
    """
    attrs = study.user_attrs
    settings = as_dict(attrs.get("settings"))
    baseline = as_dict(attrs.get("baseline"))
    export = as_dict(attrs.get("export"))
    budget = finite(settings.get("budget_ms"))
    trials = study.get_trials(deepcopy=False)
    limit = budget if budget is not None else math.inf  # a study stored without a budget: every trial is within
    rows = [get_trial_row(t, limit) for t in trials]
    by_number = {row.number: row for row in rows}
    ranked = [by_number[t.number] for t in ranked_within(trials, limit)]
    chosen = _chosen_trial(rows, ranked, export)
    headline = get_headline_info(rows, chosen, baseline, export, settings, budget)
    storage = storage_url or settings.get("storage")
    storage = str(storage) if storage else None
    return ReportData(
        study_name=study.study_name,
        counts=_count_states(rows),
        budget_ms=budget,
        headline=headline,
        pareto=_get_pareto_info(rows, budget, chosen.number if chosen else None),
        history=_get_history_info(rows),
        layers=_get_layers_info(ranked, baseline, chosen, headline.candidate),
        importance=_get_importance_info(study),
        trials=rows,
        class_names=list(as_dict(baseline.get("dice_per_class"))) or list(DEFAULT_CLASSES),
        settings=_flatten(settings),
        environment=_flatten(as_dict(attrs.get("environment"))),
        commands=_get_commands(study.study_name, storage, ranked, export),
        search=get_search_info(study),
        patients=get_patients_info(export),
    )


def _chosen_trial(rows: list[TrialRow], ranked: list[TrialRow], export: dict) -> TrialRow | None:
    """The exported trial if the study has one, else the best within budget (``ranked[0]``)."""
    exported = integer(export.get("trial"))
    for row in rows:
        if exported is not None and row.number == exported:
            return row
    return ranked[0] if ranked else None


def _get_pareto_info(rows: list[TrialRow], budget: float | None, highlight: int | None) -> ParetoInfo:
    complete = [r for r in rows if r.state == "complete" and r.dice is not None and r.latency_ms is not None
                and r.repeat_of is None]
    feasible = [r for r in complete if r.candidate]
    front = _pareto_front(feasible)
    numbers = {r.number for r in front}
    return ParetoInfo(
        front=front,
        dominated=[r for r in feasible if r.number not in numbers],
        infeasible=[r for r in complete if not r.candidate],
        budget_ms=budget,
        highlight=highlight,
        reason=None if complete else "No trial has completed yet: the Pareto front appears once one has.",
    )


def _pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Rows no other row beats on both Dice (higher) and latency (lower), fastest first."""
    front: list[TrialRow] = []
    for row in sorted(rows, key=lambda r: (r.latency_ms, -r.dice)):
        if not front or row.dice > front[-1].dice:
            front.append(row)
    return front


def _get_history_info(rows: list[TrialRow]) -> HistoryInfo:
    best: list[tuple[int, float]] = []
    for row in sorted(rows, key=lambda r: r.number):
        if row.candidate and (not best or row.dice > best[-1][1]):
            best.append((row.number, row.dice))
    return HistoryInfo(rows=rows, best=best, reason=None if rows else "The study has no trials yet.")


def _get_layers_info(
    ranked: list[TrialRow], baseline: dict, chosen: TrialRow | None, candidate: ModelSummary | None
) -> LayersInfo:
    base_channels = {str(k): int(v) for k, v in as_dict(baseline.get("channels")).items() if integer(v)}
    top = ranked[:HEATMAP_TRIALS]
    ratios = [_keep_ratios(row, base_channels) for row in top]
    layers = list(base_channels) or list(dict.fromkeys(layer for r in ratios for layer in r))
    chosen_channels = chosen.channels if chosen else {}
    return LayersInfo(
        layers=layers,
        trials=top,
        keep=[[r.get(layer) for layer in layers] for r in ratios],
        baseline_channels=base_channels,
        candidate_channels=chosen_channels,
        candidate_label=candidate.label if candidate else "",
        heatmap_reason=None if top and layers else "No complete trial within the budget yet, so no layer pattern to show.",
        channels_reason=_channels_reason(base_channels, chosen_channels),
    )


def _keep_ratios(row: TrialRow, base_channels: dict[str, int]) -> dict[str, float]:
    """Kept fraction per layer: channels against the baseline's, else the sampled ratios."""
    if base_channels and row.channels:
        return {k: row.channels[k] / n for k, n in base_channels.items() if k in row.channels}
    return row.keep


def _channels_reason(base_channels: dict[str, int], chosen_channels: dict[str, int]) -> str | None:
    if not base_channels:
        return "The study has no baseline channel counts to compare with."
    if not chosen_channels:
        return "No compressed model with recorded channel counts yet."
    return None


def _get_importance_info(study: optuna.Study) -> list[ImportanceInfo]:
    """Parameter importance for a high Dice and for a low latency, over complete trials.

    Optuna's default evaluator (PED-ANOVA) ranks parameters by how much they matter for
    a *low* target, so Dice is negated.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reason = _importance_guard(complete)
    if reason:
        return [ImportanceInfo(name, {}, reason) for name in _OBJECTIVES]
    return [_importance(study, name, target) for name, target in _OBJECTIVES.items()]


def _importance_guard(complete: list[FrozenTrial]) -> str | None:
    """Why importance cannot be computed (too few trials, nothing varies), else None."""
    if len(complete) < 2:
        return f"Parameter importance needs at least 2 complete trials; the study has {len(complete)}."
    names = {name for trial in complete for name in trial.params}
    if not any(len({repr(t.params.get(name)) for t in complete}) > 1 for name in names):
        return "Every complete trial used the same parameter values, so no parameter can explain a difference."
    return None


def _importance(study: optuna.Study, objective: str, target: Callable[[FrozenTrial], float]) -> ImportanceInfo:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "low target values" notice, handled above
            values = optuna.importance.get_param_importances(study, target=target)
    except Exception as error:  # the evaluators reject degenerate studies in many ways
        return ImportanceInfo(objective, {}, f"Optuna could not compute importance for {objective}: {error}")
    if not values:
        return ImportanceInfo(objective, {}, f"Optuna found no parameter to rank for {objective}.")
    return ImportanceInfo(objective, {k: float(v) for k, v in values.items()}, None)


def _get_commands(name: str, storage: str | None, ranked: list[TrialRow], export: dict) -> list[tuple[str, str]]:
    """Shell commands (password masked) to resume the study and export another trial."""
    where = f" --storage {shlex.quote(masked(storage))}" if storage else " --storage URL"
    exported = integer(export.get("trial"))
    others = [r.number for r in ranked if r.number != exported]
    trial = str(others[0]) if others else "N"
    quoted = shlex.quote(name)
    return [
        ("Resume the study", f"autosculpt resume {quoted}{where}"),
        ("Export another trial", f"autosculpt export {quoted}{where} --trial {trial} --out export-trial-{trial}"),
    ]


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ``(dotted.key, text)`` rows; URLs with a password masked."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, _text(value)))
    return out


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, str) and "://" in value:
        return masked(value)
    return str(value)


def _count_states(rows: list[TrialRow]) -> dict[str, int]:
    counts = {state: 0 for state in STATES.values()}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    counts["feasible"] = sum(1 for r in rows if r.candidate)
    return counts


