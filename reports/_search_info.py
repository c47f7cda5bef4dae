"""How the search spent its measurements and fine-tuning, and the verdict on the export.

Pure functions from a study to plain values, as in :mod:`._data`: the report's headline
states the verdict (red when the budget or the allowed Dice loss was missed), the
winner's Dice before and after its polish, and how well the projection put trials at the
budget, with the latency model's error on the study's measured candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

import optuna
from optuna.trial import TrialState

from ..search.study.settings import KEPT_WHOLE_ATTR, SETTINGS_ATTR, WIDTH_FLOOR_ATTR, Settings

BAND = (0.8, 1.0)  # where a projected trial lands: 80-98 % of the budget (80-100 % before the projection kept an edge)


@dataclass(frozen=True)
class SearchInfo:
    """``verdict`` is the export's one-line verdict (None before an export), ``verdict_ok``
    whether it passed; ``polish`` the study's polish record (Dice before/after);
    ``winner_method`` how the polished trial got its weights ("prune": the baseline's,
    pruned; "scale": fresh), None without a polish; ``clock``
    the clock of the latency figures; ``in_band`` how many of ``at_budget`` fine-tuned
    trials at the budget measured within 80-100 % of it; ``model_error_pct`` the median
    absolute error of the latency model's predictions over ``predictions`` measured widths;
    ``balanced`` whether fine-tunes weighed the classes (studies stored before that did not);
    ``kept_whole`` the layer groups the search could not prune safely and left whole, each
    with why (empty for studies stored before groups were kept whole automatically);
    ``width_floor_ms`` the narrowest width-only network's latency where the study measured
    it, ``depth_added`` whether the study searched depth because that was over the budget."""

    verdict: str | None
    verdict_ok: bool | None
    polish: dict | None
    winner_method: str | None
    clock: str | None
    in_band: int
    at_budget: int
    measurements: int
    model_error_pct: float | None
    predictions: int
    balanced: bool
    kept_whole: dict[str, str]
    width_floor_ms: float | None
    depth_added: bool


def get_search_info(study: optuna.Study) -> SearchInfo:
    attrs = study.user_attrs
    budget = (attrs.get("settings") or {}).get("budget_ms")
    verdict = (attrs.get("export") or {}).get("verdict") or {}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    at_budget = [t for t in trials if t.user_attrs.get("finetuned") and t.user_attrs.get("budget_fraction", 1.0) == 1.0]
    in_band = [t for t in at_budget if budget and BAND[0] * budget <= t.user_attrs.get("latency_ms", 0) <= BAND[1] * budget]
    probes = [p for t in trials for p in t.user_attrs.get("projection", [])]
    errors = [abs(p["predicted_ms"] / p["latency_ms"] - 1) * 100 for p in probes if p.get("latency_ms")]
    latency = (attrs.get("baseline") or {}).get("latency") or {}
    polish = attrs.get("polish")
    winner = next((t for t in trials if polish and t.number == polish.get("trial")), None)
    return SearchInfo(
        verdict=verdict.get("line"), verdict_ok=verdict.get("ok"), polish=polish,
        winner_method=None if winner is None else (winner.user_attrs.get("recipe") or {}).get("method"),
        clock=latency.get("clock"), in_band=len(in_band), at_budget=len(at_budget),
        measurements=sum(t.user_attrs.get("measurements", 0) for t in trials),
        model_error_pct=median(errors) if errors else None, predictions=len(errors),
        balanced=SETTINGS_ATTR in attrs and Settings.from_dict(attrs[SETTINGS_ATTR]).balance_classes,
        kept_whole=attrs.get(KEPT_WHOLE_ATTR) or {},
        width_floor_ms=attrs.get(WIDTH_FLOOR_ATTR),
        depth_added=bool(budget and attrs.get(WIDTH_FLOOR_ATTR, 0) > budget),
    )
