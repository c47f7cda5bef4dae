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

from ..search.storage import masked
from ._search_info import SearchInfo, get_search_info

# Trial phases whose seconds the search stores as ``time_<phase>_s`` user attributes.
PHASES = ("measure", "finetune", "eval")
HEATMAP_TRIALS = 10
DEFAULT_CLASSES = ("RV", "myocardium", "LV")
_RUNTIMES = {"ort": "ONNX Runtime", "torch": "PyTorch"}
# Importance targets, lower is better for Optuna's evaluator: Dice is negated.
_OBJECTIVES: dict[str, Callable[[FrozenTrial], float]] = {
    "Dice": lambda t: -t.values[0],
    "latency": lambda t: t.user_attrs["latency_ms"],
}

_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


@dataclass(frozen=True)
class TrialRow:
    """One trial's figures; None where the trial never got that far.

    ``dice`` is the objective for a complete trial and the last epoch's Dice for a pruned
    one. ``feasible`` reads the Optuna constraint (latency minus budget <= 0); None when
    no constraint was stored, which the report counts as within budget.
    ``times`` maps each of :data:`PHASES` plus ``other`` (wall time not in a phase) to seconds.
    """

    number: int
    state: str
    dice: float | None
    dice_per_class: dict[str, float]
    latency_ms: float | None
    latency_p90_ms: float | None
    params: int | None
    macs: int | None
    param_ratio: float | None
    feasible: bool | None
    finetuned: bool | None
    times: dict[str, float]
    keep: dict[str, float]
    channels: dict[str, int]
    note: str


@dataclass(frozen=True)
class ModelSummary:
    """The headline figures of one model (the baseline or a trial)."""

    label: str
    trial: int | None
    dice: float | None
    dice_per_class: dict[str, float]
    latency_ms: float | None
    latency_p90_ms: float | None
    params: int | None
    macs: int | None
    file_size: int | None
    exported: bool = False


@dataclass(frozen=True)
class HeadlineInfo:
    """Baseline against the chosen trial (exported, else best within budget).

    Ratios are None when a side is missing; ``target`` names the CPU, threads and runtime
    the latencies were measured with, as phrases (``"1 thread"``). ``dice_split`` says
    which images both Dice figures come from: ``"test"`` when the export was scored on
    the test split and the baseline has test figures, else ``"validation"``.
    """

    baseline: ModelSummary | None
    candidate: ModelSummary | None
    smaller: float | None
    faster: float | None
    dice_change_pct: float | None
    target: list[str]
    dice_split: str
    reason: str | None


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


def get_report_data(study: optuna.Study, storage_url: str | None = None) -> ReportData:
    """Read ``study`` into :class:`ReportData`; never raises for a study in any state.

    ``storage_url`` (shown masked in the commands) defaults to the ``storage`` setting.
    """
    attrs = study.user_attrs
    settings = _as_dict(attrs.get("settings"))
    baseline = _as_dict(attrs.get("baseline"))
    export = _as_dict(attrs.get("export"))
    budget = _float(settings.get("budget_ms"))
    rows = [_get_trial_row(t) for t in study.get_trials(deepcopy=False)]
    chosen = _chosen_trial(rows, export)
    headline = _get_headline_info(rows, chosen, baseline, export, settings, budget)
    storage = storage_url or settings.get("storage")
    storage = str(storage) if storage else None
    return ReportData(
        study_name=study.study_name,
        counts=_count_states(rows),
        budget_ms=budget,
        headline=headline,
        pareto=_get_pareto_info(rows, budget, chosen.number if chosen else None),
        history=_get_history_info(rows),
        layers=_get_layers_info(rows, baseline, chosen, headline.candidate),
        importance=_get_importance_info(study),
        trials=rows,
        class_names=list(_as_dict(baseline.get("dice_per_class"))) or list(DEFAULT_CLASSES),
        settings=_flatten(settings),
        environment=_flatten(_as_dict(attrs.get("environment"))),
        commands=_get_commands(study.study_name, storage, rows, export),
        search=get_search_info(study),
    )


def _get_trial_row(trial: FrozenTrial) -> TrialRow:
    attrs = trial.user_attrs
    complete = trial.state == TrialState.COMPLETE and trial.values is not None
    dice = trial.values[0] if complete else _last(attrs.get("dice_by_epoch"))
    latency = _float(attrs.get("latency_ms"))
    return TrialRow(
        number=trial.number,
        state=_STATES.get(trial.state, trial.state.name.lower()),
        dice=_float(dice),
        dice_per_class=_float_dict(attrs.get("dice_per_class")),
        latency_ms=_float(latency),
        latency_p90_ms=_float(attrs.get("latency_p90_ms")),
        params=_int(attrs.get("params")),
        macs=_int(attrs.get("macs")),
        param_ratio=_float(attrs.get("param_ratio")),
        feasible=_feasible(trial),
        finetuned=attrs.get("finetuned") if isinstance(attrs.get("finetuned"), bool) else None,
        times=_times(trial),
        keep={_layer_of(k): float(v) for k, v in trial.params.items() if _layer_of(k) and _float(v) is not None},
        channels={str(k): int(v) for k, v in _as_dict(attrs.get("channels")).items() if _int(v) is not None},
        note=str(attrs.get("fail_reason") or ""),
    )


def _feasible(trial: FrozenTrial) -> bool | None:
    """Optuna's reading of the constraints (old list and per-key formats); else the attr."""
    constraints = trial.constraints
    if constraints:
        return all(value <= 0 for value in constraints.values())
    feasible = trial.user_attrs.get("feasible")
    return feasible if isinstance(feasible, bool) else None


def _times(trial: FrozenTrial) -> dict[str, float]:
    """Seconds per phase, plus ``other``: wall time outside the phases (never negative)."""
    times = {phase: _float(trial.user_attrs.get(f"time_{phase}_s")) or 0.0 for phase in PHASES}
    wall = trial.duration.total_seconds() if trial.duration else 0.0
    times["other"] = max(0.0, wall - sum(times.values()))
    return times


def _layer_of(param: str) -> str:
    """``keep.enc2.conv1`` -> ``enc2.conv1``; ``keep`` (uniform) -> ``all layers``; else ''."""
    if param == "keep":
        return "all layers"
    return param[len("keep."):] if param.startswith("keep.") else ""


def _is_best_candidate(row: TrialRow) -> bool:
    """Complete, within budget and fine-tuned (the search's own rule for exporting)."""
    return row.state == "complete" and row.feasible is not False and row.finetuned is not False and row.dice is not None


def _ranked_feasible(rows: list[TrialRow]) -> list[TrialRow]:
    """Feasible candidates by Dice, best first; ties go to the faster."""
    candidates = [r for r in rows if _is_best_candidate(r)]
    return sorted(candidates, key=lambda r: (-r.dice, r.latency_ms if r.latency_ms is not None else math.inf))


def _chosen_trial(rows: list[TrialRow], export: dict) -> TrialRow | None:
    """The exported trial if the study has one, else the best feasible trial."""
    exported = _int(export.get("trial"))
    for row in rows:
        if exported is not None and row.number == exported:
            return row
    ranked = _ranked_feasible(rows)
    return ranked[0] if ranked else None


def _get_headline_info(
    rows: list[TrialRow], chosen: TrialRow | None, baseline: dict, export: dict, settings: dict, budget: float | None
) -> HeadlineInfo:
    candidate = _candidate_summary(chosen, export)
    test = bool(candidate and candidate.exported and _float(baseline.get("test_dice")) is not None)
    base = _baseline_summary(baseline, "test_" if test else "") if baseline else None
    target = _target(export, baseline, settings)
    reason = None if candidate else _no_candidate_reason(rows, budget)
    if not base:
        reason = (reason + " " if reason else "") + "The study has no baseline figures, so nothing is compared."
    return HeadlineInfo(
        baseline=base,
        candidate=candidate,
        smaller=_ratio(base.params, candidate.params) if base and candidate else None,
        faster=_ratio(base.latency_ms, candidate.latency_ms) if base and candidate else None,
        dice_change_pct=_change_pct(base.dice, candidate.dice) if base and candidate else None,
        target=target,
        dice_split="test" if test else "validation",
        reason=reason,
    )


def _baseline_summary(baseline: dict, split_prefix: str) -> ModelSummary:
    """The baseline's figures; Dice from ``{split_prefix}dice`` (``test_`` for the test split)."""
    latency = _as_dict(baseline.get("latency"))
    return ModelSummary(
        label="Baseline",
        trial=None,
        dice=_float(baseline.get(f"{split_prefix}dice")),
        dice_per_class=_float_dict(baseline.get(f"{split_prefix}dice_per_class")),
        latency_ms=_float(latency.get("median_ms")),
        latency_p90_ms=_float(latency.get("p90_ms")),
        params=_int(baseline.get("params")),
        macs=_int(baseline.get("macs")),
        file_size=_int(baseline.get("file_size")),
    )


def _candidate_summary(chosen: TrialRow | None, export: dict) -> ModelSummary | None:
    """Figures of the chosen trial; for the exported one, those measured on the export."""
    exported = bool(export) and (chosen is None or chosen.number == _int(export.get("trial")))
    if chosen is None and not exported:
        return None
    measured = export if exported else {}
    latency = _as_dict(measured.get("latency"))
    number = chosen.number if chosen else _int(measured.get("trial"))
    return ModelSummary(
        label=f"Trial {number} ({'exported' if exported else 'best within budget'})",
        trial=number,
        dice=_first(_float(measured.get("dice")), getattr(chosen, "dice", None)),
        dice_per_class=_float_dict(measured.get("dice_per_class")) or getattr(chosen, "dice_per_class", {}),
        latency_ms=_first(_float(latency.get("median_ms")), getattr(chosen, "latency_ms", None)),
        latency_p90_ms=_first(_float(latency.get("p90_ms")), getattr(chosen, "latency_p90_ms", None)),
        params=getattr(chosen, "params", None),
        macs=getattr(chosen, "macs", None),
        file_size=_int(measured.get("file_size")),
        exported=exported,
    )


def _target(export: dict, baseline: dict, settings: dict) -> list[str]:
    """How the latencies were measured, as phrases: CPU, threads, runtime.

    Read from the export's measurement, else the baseline's, else the target setting.
    """
    latency = _as_dict(export.get("latency")) or _as_dict(baseline.get("latency"))
    fallback = _as_dict(settings.get("target"))
    cpu, threads, runtime = (_first(latency.get(k), fallback.get(k)) for k in ("cpu_model", "threads", "runtime"))
    phrases = [str(cpu)] if cpu is not None else []
    if threads is not None:
        phrases.append(f"{threads} thread" + ("" if threads == 1 else "s"))
    if runtime is not None:
        phrases.append(_RUNTIMES.get(runtime, str(runtime)))
    return phrases


def _no_candidate_reason(rows: list[TrialRow], budget: float | None) -> str:
    """Why no trial can be compared yet, with the fastest trial as a hint."""
    complete = [r for r in rows if r.state == "complete" and r.latency_ms is not None]
    if not complete:
        return "No trial has completed yet, so there is no compressed model to compare."
    fastest = min(complete, key=lambda r: r.latency_ms)
    limit = f"the {budget:g} ms budget" if budget is not None else "the latency budget"
    return (
        f"None of the {len(complete)} complete trials met {limit}; "
        f"the fastest was trial {fastest.number} at {fastest.latency_ms:.1f} ms."
    )


def _get_pareto_info(rows: list[TrialRow], budget: float | None, highlight: int | None) -> ParetoInfo:
    complete = [r for r in rows if r.state == "complete" and r.dice is not None and r.latency_ms is not None]
    feasible = [r for r in complete if r.feasible is not False]
    front = _pareto_front(feasible)
    numbers = {r.number for r in front}
    return ParetoInfo(
        front=front,
        dominated=[r for r in feasible if r.number not in numbers],
        infeasible=[r for r in complete if r.feasible is False],
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
        if _is_best_candidate(row) and (not best or row.dice > best[-1][1]):
            best.append((row.number, row.dice))
    return HistoryInfo(rows=rows, best=best, reason=None if rows else "The study has no trials yet.")


def _get_layers_info(
    rows: list[TrialRow], baseline: dict, chosen: TrialRow | None, candidate: ModelSummary | None
) -> LayersInfo:
    base_channels = {str(k): int(v) for k, v in _as_dict(baseline.get("channels")).items() if _int(v)}
    top = _ranked_feasible(rows)[:HEATMAP_TRIALS]
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


def _get_commands(name: str, storage: str | None, rows: list[TrialRow], export: dict) -> list[tuple[str, str]]:
    """Shell commands (password masked) to resume the study and export another trial."""
    where = f" --storage {shlex.quote(masked(storage))}" if storage else " --storage URL"
    exported = _int(export.get("trial"))
    others = [r.number for r in _ranked_feasible(rows) if r.number != exported]
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
    counts = {state: 0 for state in _STATES.values()}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    counts["feasible"] = sum(1 for r in rows if _is_best_candidate(r))
    return counts


def _ratio(before: float | None, after: float | None) -> float | None:
    return before / after if before and after else None


def _change_pct(before: float | None, after: float | None) -> float | None:
    return (after - before) / before * 100 if before and after is not None else None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _last(values: Any) -> Any:
    return values[-1] if isinstance(values, list) and values else None


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _float(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _float_dict(value: Any) -> dict[str, float]:
    return {str(k): f for k, v in _as_dict(value).items() if (f := _float(v)) is not None}
