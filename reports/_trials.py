"""One row of plain values per trial: what every section of the report is drawn from."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from ..search.study.best import meets_budget, within_budget
from ..search.study.quota import REPEAT_ATTR
from ._values import as_dict, finite, finite_dict, integer, last

# Trial phases whose seconds the search stores as ``time_<phase>_s`` user attributes.
PHASES = ("measure", "finetune", "eval")
STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


@dataclass(frozen=True)
class ModelFigures:
    """What the report shows of any model (a trial, the baseline, the export); None where unknown."""

    dice: float | None
    dice_per_class: dict[str, float]
    latency_ms: float | None
    latency_p90_ms: float | None
    params: int | None
    macs: int | None


@dataclass(frozen=True)
class TrialRow(ModelFigures):
    """One trial's figures; None where the trial never got that far.

    ``dice`` is the objective for a complete trial and the last epoch's Dice for a pruned
    one. ``feasible`` says whether its measured latency is within the study's budget (None
    when unmeasured); ``candidate`` whether it may be the answer (complete, fine-tuned
    and within budget): both by the one rule of :mod:`autosculpt.search.study.best`.
    ``precision`` is the deployed precision it was measured and scored at (fp32 before
    ``search --precision`` existed). ``repeat_of`` is the trial whose network (and
    outcome) it repeated without fine-tuning, if any. ``times`` maps each of
    :data:`PHASES` plus ``other`` (wall time not in a phase) to seconds.
    """

    number: int
    state: str
    param_ratio: float | None
    feasible: bool | None
    candidate: bool
    finetuned: bool | None
    times: dict[str, float]
    keep: dict[str, float]
    channels: dict[str, int]
    note: str
    precision: str
    repeat_of: int | None


def get_trial_row(trial: FrozenTrial, budget_ms: float) -> TrialRow:
    """The row of ``trial``, judged against ``budget_ms`` by :mod:`autosculpt.search.study.best`."""
    attrs = trial.user_attrs
    complete = trial.state == TrialState.COMPLETE and trial.values is not None
    dice = trial.values[0] if complete else last(attrs.get("dice_by_epoch"))
    latency = finite(attrs.get("latency_ms"))
    repeat_of = integer(attrs.get(REPEAT_ATTR))
    repeated = f"repeats the network of trial {repeat_of}: took its Dice without fine-tuning"
    return TrialRow(
        number=trial.number,
        state=STATES.get(trial.state, trial.state.name.lower()),
        dice=finite(dice),
        dice_per_class=finite_dict(attrs.get("dice_per_class")),
        latency_ms=finite(latency),
        latency_p90_ms=finite(attrs.get("latency_p90_ms")),
        params=integer(attrs.get("params")),
        macs=integer(attrs.get("macs")),
        param_ratio=finite(attrs.get("param_ratio")),
        feasible=meets_budget(trial, budget_ms) if latency is not None else None,
        candidate=within_budget(trial, budget_ms),
        finetuned=attrs.get("finetuned") if isinstance(attrs.get("finetuned"), bool) else None,
        times=_times(trial),
        keep={_layer_of(k): float(v) for k, v in trial.params.items() if _layer_of(k) and finite(v) is not None},
        channels={str(k): int(v) for k, v in as_dict(attrs.get("channels")).items() if integer(v) is not None},
        note=str(attrs.get("fail_reason") or (repeated if repeat_of is not None else "")),
        precision=str(attrs.get("precision") or "fp32"),
        repeat_of=repeat_of,
    )


def _times(trial: FrozenTrial) -> dict[str, float]:
    """Seconds per phase, plus ``other``: wall time outside the phases (never negative)."""
    times = {phase: finite(trial.user_attrs.get(f"time_{phase}_s")) or 0.0 for phase in PHASES}
    wall = trial.duration.total_seconds() if trial.duration else 0.0
    times["other"] = max(0.0, wall - sum(times.values()))
    return times


def _layer_of(param: str) -> str:
    """``keep.enc2.conv1`` -> ``enc2.conv1``; ``keep`` (uniform) -> ``all layers``; else ''."""
    if param == "keep":
        return "all layers"
    return param[len("keep."):] if param.startswith("keep.") else ""
