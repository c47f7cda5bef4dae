"""The report's headline: the baseline against the chosen trial, and how both were measured."""

from __future__ import annotations

from dataclasses import dataclass

from ..units import ms
from ._trials import ModelFigures, TrialRow
from ._values import as_dict, change_pct, finite, finite_dict, first, integer, ratio

RUNTIMES = {"ort": "ONNX Runtime", "torch": "PyTorch"}


@dataclass(frozen=True)
class ModelSummary(ModelFigures):
    """The headline figures of one model (the baseline or a trial)."""

    label: str
    trial: int | None
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


def get_headline_info(
    rows: list[TrialRow], chosen: TrialRow | None, baseline: dict, export: dict, settings: dict, budget: float | None
) -> HeadlineInfo:
    candidate = _candidate_summary(chosen, export)
    test = bool(candidate and candidate.exported and finite(baseline.get("test_dice")) is not None)
    base = _baseline_summary(baseline, "test_" if test else "") if baseline else None
    target = _target(export, baseline, settings)
    reason = None if candidate else _no_candidate_reason(rows, budget)
    if not base:
        reason = (reason + " " if reason else "") + "The study has no baseline figures, so nothing is compared."
    return HeadlineInfo(
        baseline=base,
        candidate=candidate,
        smaller=ratio(base.params, candidate.params) if base and candidate else None,
        faster=ratio(base.latency_ms, candidate.latency_ms) if base and candidate else None,
        dice_change_pct=change_pct(base.dice, candidate.dice) if base and candidate else None,
        target=target,
        dice_split="test" if test else "validation",
        reason=reason,
    )


def _baseline_summary(baseline: dict, split_prefix: str) -> ModelSummary:
    """The baseline's figures; Dice from ``{split_prefix}dice`` (``test_`` for the test split)."""
    latency = as_dict(baseline.get("latency"))
    return ModelSummary(
        label="Baseline",
        trial=None,
        dice=finite(baseline.get(f"{split_prefix}dice")),
        dice_per_class=finite_dict(baseline.get(f"{split_prefix}dice_per_class")),
        latency_ms=finite(latency.get("median_ms")),
        latency_p90_ms=finite(latency.get("p90_ms")),
        params=integer(baseline.get("params")),
        macs=integer(baseline.get("macs")),
        file_size=integer(baseline.get("file_size")),
    )


def _candidate_summary(chosen: TrialRow | None, export: dict) -> ModelSummary | None:
    """Figures of the chosen trial; for the exported one, those measured on the export."""
    exported = bool(export) and (chosen is None or chosen.number == integer(export.get("trial")))
    if chosen is None and not exported:
        return None
    measured = export if exported else {}
    latency = as_dict(measured.get("latency"))
    number = chosen.number if chosen else integer(measured.get("trial"))
    return ModelSummary(
        label=f"Trial {number} ({'exported' if exported else 'best within budget'})",
        trial=number,
        dice=first(finite(measured.get("dice")), getattr(chosen, "dice", None)),
        dice_per_class=finite_dict(measured.get("dice_per_class")) or getattr(chosen, "dice_per_class", {}),
        latency_ms=first(finite(latency.get("median_ms")), getattr(chosen, "latency_ms", None)),
        latency_p90_ms=first(finite(latency.get("p90_ms")), getattr(chosen, "latency_p90_ms", None)),
        params=getattr(chosen, "params", None),
        macs=getattr(chosen, "macs", None),
        file_size=integer(measured.get("file_size")),
        exported=exported,
    )


def _target(export: dict, baseline: dict, settings: dict) -> list[str]:
    """How the latencies were measured, as phrases: CPU, threads, runtime.

    Read from the export's measurement, else the baseline's, else the target setting.
    """
    latency = as_dict(export.get("latency")) or as_dict(baseline.get("latency"))
    fallback = as_dict(settings.get("target"))
    cpu, threads, runtime = (first(latency.get(k), fallback.get(k)) for k in ("cpu_model", "threads", "runtime"))
    phrases = [str(cpu)] if cpu is not None else []
    if threads is not None:
        phrases.append(f"{threads} thread" + ("" if threads == 1 else "s"))
    if runtime is not None:
        phrases.append(RUNTIMES.get(runtime, str(runtime)))
    return phrases


def _no_candidate_reason(rows: list[TrialRow], budget: float | None) -> str:
    """Why no trial can be compared yet, with the fastest trial as a hint."""
    complete = [r for r in rows if r.state == "complete" and r.latency_ms is not None]
    if not complete:
        return "No trial has completed yet, so there is no compressed model to compare."
    fastest = min(complete, key=lambda r: r.latency_ms)
    limit = f"the {ms(budget)} budget" if budget is not None else "the latency budget"
    return (
        f"None of the {len(complete)} complete trials met {limit}; "
        f"the fastest was trial {fastest.number} at {fastest.latency_ms:.1f} ms."
    )
