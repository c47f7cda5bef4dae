"""What the search benchmarks share: running a study in parts, reading its front, scoring it.

- :func:`make_settings` and :func:`run_study` create a study on a persistent storage or
  resume it (so a long benchmark can run in parts), through the library API;
- :func:`front` and :func:`hypervolume` read a study's (Dice, latency) or (Dice, parameters) trade-off;
- :func:`remeasure` times the baseline and chosen trials side by side, interleaved, in
  one run, so speedups compare figures taken on the same CPU under the same load;
- :func:`scaling_rows` splits trial time into measurement, fine-tuning and evaluation;
- :func:`card_result` reads an exported model's figures from its ``model.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from autosculpt.errors import UserError
from autosculpt.search.latency import LatencyStats, Target, measure_onnx
from autosculpt.search.onnx_io import to_onnx
from autosculpt.search.study.best import ranked_within
from autosculpt.search.study.quota import is_repeat
from autosculpt.search.study.runner import make_sampler, run_worker
from autosculpt.search.study.settings import AUTO_SPACE, SETTINGS_ATTR, Settings, with_preset
from autosculpt.search.study.storage import load_study, open_storage
from autosculpt.search.study.study import Context, create_study, prepare
from autosculpt.space import SearchSpace

PAPER_RATIO = 1148  # the published hand-tuned compression of the off-the-shelf U-Net
DICE_TOLERANCE = 0.04  # "no more than 4% Dice loss", relative to the baseline's Dice

optuna.logging.set_verbosity(optuna.logging.WARNING)


def add_study_options(parser: argparse.ArgumentParser, image_size: str, epochs: str) -> None:
    """The options every search benchmark shares: where its studies live and what they run;
    ``image_size`` and ``epochs`` describe the calling benchmark's defaults in its help."""
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/bench.db; a temp file with --quick)")
    parser.add_argument("--budget-ms", type=float, help="latency budget, ONNX Runtime 1 thread (bench/paper.py: default from --speedup; 5 with --quick)")
    parser.add_argument("--patients", type=int, help="generated patients (default 60; 8 with --quick)")
    parser.add_argument("--image-size", type=int, help=f"input size, a multiple of 16 (default {image_size})")
    parser.add_argument("--epochs", type=int, help=f"fine-tune epochs per trial (default {epochs})")
    parser.add_argument("--report", action="store_true", help="run no trials: report the stored studies as they are")


def make_settings(*, model: str, budget_ms: float | None, trials: int, space: str | Path, preset: str = "default",
                  **overrides) -> Settings:
    """Settings as ``autosculpt search`` would build them; ``overrides`` None = default."""
    given = {"model": model, "budget_ms": budget_ms, "trials": trials, "space": str(space), **overrides}
    if str(space) != AUTO_SPACE:  # auto: width, with depth added past the width floor when the study is created
        given["space_spec"] = SearchSpace.load(space).to_dict()
    settings, _ = with_preset(preset, given)
    return settings


def run_study(name: str, url: str, settings: Settings, *, sampler: Callable[[int], optuna.samplers.BaseSampler] = make_sampler,
              context: Context | None = None, run: bool = True) -> tuple[optuna.Study, Context, float]:
    """Create study ``name`` on ``url`` or resume it, and run it up to ``settings.trials``.

    Resuming takes the stored settings with the new trial count (a study runs in parts:
    ``--trials 10`` now, ``--trials 30`` later); other differences raise ``UserError``.
    ``run`` False only opens it (to report a study as it is). Returns the
    study, the context and the seconds this call spent running trials.
    """
    storage = open_storage(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in names:
        study = load_study(name, storage)
        stored = Settings.from_dict(study.user_attrs[SETTINGS_ATTR])
        budget = {"speedup"} if settings.speedup else {"budget_ms"}  # a speedup's budget is resolved when created
        space = set() if settings.space == AUTO_SPACE else {"space_spec"}  # auto: the stored study decided its space
        differ = stored.conflicts(settings, {"model", *budget, *space, "epochs", "patients", "image_size",
                                             "distill", "seed", "warm_start"})
        if differ and run:
            raise UserError(f"study {name!r} exists with other {', '.join(differ)}: choose another --study")
        settings = replace(stored, trials=settings.trials)
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
        context = _reuse(context, settings)
    else:
        context = _reuse(context, settings)
        study, context = create_study(name, url, settings, context)
    start = time.perf_counter()
    if run:
        run_worker(study, context, url, quiet=True, sampler=sampler)
    return study, context, time.perf_counter() - start


def _reuse(context: Context | None, settings: Settings) -> Context:
    """``context`` for ``settings`` when only the space or trial count differ (same data and
    baseline: arms of one benchmark share them), else a freshly prepared one."""
    same = ("model", "data", "image_size", "patients", "seed", "baseline_epochs", "weights", "distill")
    space = SearchSpace.from_dict(settings.space_spec)
    if context is None or context.settings.conflicts(settings, set(same)) or space.ignore != context.space.ignore:
        return prepare(settings)
    return replace(context, settings=settings, space=space, target=Target.from_dict(settings.target))


def tuned(study: optuna.Study) -> list[FrozenTrial]:
    """The fine-tuned complete trials at any latency, best first (the library's rule, :mod:`autosculpt.search.study.best`)."""
    return ranked_within(study.get_trials(deepcopy=False), math.inf)


def front(trials: Sequence[FrozenTrial], budget_ms: float = math.inf, cost: str = "latency_ms") -> list[FrozenTrial]:
    """Trials within ``budget_ms`` that no other is at least as good as in both Dice and the
    user attribute ``cost`` (``latency_ms`` or ``params``; better in one); sorted by cost."""
    within = [t for t in trials if t.user_attrs["latency_ms"] <= budget_ms]

    def dominated(t: FrozenTrial) -> bool:
        d, c = t.values[0], t.user_attrs[cost]
        return any(o.values[0] >= d and o.user_attrs[cost] <= c and (o.values[0] > d or o.user_attrs[cost] < c)
                   for o in within)

    return sorted((t for t in within if not dominated(t)), key=lambda t: t.user_attrs[cost])


def hypervolume(points: Sequence[tuple[float, float]], reference_ms: float) -> float:
    """Area dominated by (Dice, latency ms) ``points`` up to the reference (Dice 0, ``reference_ms``),
    divided by ``reference_ms``: 0 for nothing, at most 1 (Dice 1 at 0 ms). Points slower than
    the reference add nothing."""
    # Sweep by latency: from each point to the next, the best Dice so far dominates the strip.
    sweep = sorted((lat, d) for d, lat in points if lat < reference_ms)
    edges = [lat for lat, _ in sweep[1:]] + [reference_ms]
    area, best_dice = 0.0, 0.0
    for (latency, dice), edge in zip(sweep, edges):
        best_dice = max(best_dice, dice)
        area += best_dice * (edge - latency)
    return area / reference_ms


@dataclass(frozen=True)
class Remeasured:
    """Latency of one model over interleaved rounds: the median of the rounds' medians and p90s."""

    median_ms: float
    p90_ms: float
    rounds: int


def remeasure(onnx_models: dict[str, bytes], shape: tuple[int, ...], target: Target, rounds: int = 3) -> dict[str, Remeasured]:
    """Time every model ``rounds`` times, interleaved (round r visits them in a rotated order),
    so that load drift on a busy machine hits all of them alike."""
    names = list(onnx_models)
    runs: dict[str, list[LatencyStats]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(measure_onnx(onnx_models[name], shape, target))
    return {name: Remeasured(statistics.median(s.median_ms for s in stats), statistics.median(s.p90_ms for s in stats),
                             len(stats)) for name, stats in runs.items()}


def onnx_of(net: torch.nn.Module, context: Context) -> bytes:
    return to_onnx(net, tuple(context.example.shape))


def scaling_row(label: str, study: optuna.Study) -> dict:
    """Where a study's trial time went: per-trial medians, shares of the phases, rejections.

    A trial's time is its wall clock (start to finish). ``trials`` leaves out the repeats
    (they projected onto a network an earlier trial fine-tuned and took its Dice; free in
    the study's count), but their time counts. Rejected = over budget, so never fine-tuned;
    the saving is (rejected + repeats) x the median fine-tune of the tuned trials.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.datetime_start and t.datetime_complete]
    counted = [t for t in done if not is_repeat(t)]
    wall = {t.number: (t.datetime_complete - t.datetime_start).total_seconds() for t in done}
    phase = {key: sum(t.user_attrs.get(key, 0.0) for t in done) for key in ("time_measure_s", "time_finetune_s", "time_eval_s")}
    total = sum(wall.values()) or math.nan
    rejected = [t for t in counted if t.user_attrs.get("finetuned") is False]
    repeats = len(done) - len(counted)
    finetunes = [t.user_attrs["time_finetune_s"] for t in done if "time_finetune_s" in t.user_attrs]
    median_finetune = statistics.median(finetunes) if finetunes else math.nan
    return {
        "label": label, "trials": len(counted),
        "median_s": statistics.median(wall[t.number] for t in counted) if counted else math.nan,
        "per_hour": 3600 * len(counted) / total if counted else math.nan,
        "measure": phase["time_measure_s"] / total, "finetune": phase["time_finetune_s"] / total,
        "eval": phase["time_eval_s"] / total, "rejected": len(rejected), "repeats": repeats,
        "median_finetune_s": median_finetune, "saved_s": (len(rejected) + repeats) * median_finetune,
    }


def scaling_table(rows: Sequence[dict], title: str):
    """A rich table of :func:`scaling_row` rows."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("study", "trials", "s / trial (median)", "trials / hour", "measure", "fine-tune", "eval", "other",
                   "rejected before training", "repeats", "median fine-tune s", "saved (est.)"):
        table.add_column(column, justify="left" if column == "study" else "right")
    for r in rows:
        other = 1 - r["measure"] - r["finetune"] - r["eval"]
        table.add_row(r["label"], str(r["trials"]), f"{r['median_s']:.1f}", f"{r['per_hour']:.0f}",
                      f"{r['measure']:.0%}", f"{r['finetune']:.0%}", f"{r['eval']:.0%}", f"{other:.0%}",
                      f"{r['rejected']}/{r['trials']} ({r['rejected'] / max(r['trials'], 1):.0%})", str(r["repeats"]),
                      f"{r['median_finetune_s']:.1f}", f"{r['saved_s'] / 60:.1f} min")
    return table


def card_result(card_file: Path) -> dict | None:
    """The figures of the model exported to ``card_file`` (its ``model.json``), None when
    nothing was exported: trial, re-measured median and budget (ms), test Dice and the
    baseline's, fewer parameters (x), whether it is within budget and its Dice loss (%)."""
    if not card_file.exists():
        return None
    card = json.loads(card_file.read_text())
    verdict = card["verdict"]
    return {"trial": card["trial"], "median_ms": card["latency"]["median_ms"], "budget_ms": card["budget_ms"],
            "test_dice": card["dice"], "baseline_test_dice": card["baseline"]["dice"], "param_ratio": card.get("param_ratio"),
            "within_budget": verdict.get("within_budget"), "dice_loss_pct": verdict.get("dice_loss_pct")}
