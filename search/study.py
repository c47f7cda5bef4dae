"""The study: maximise validation Dice, with the latency budget as an Optuna constraint.

A study is created once with its :class:`Settings`, its baseline's figures and its
latency reference stored in its user attributes; any number of workers (processes,
machines) then open it by name and run trials until the study's trial count or time
limit is reached. Every trial's network is projected onto the budget
(:mod:`.projection`), so the study compares shapes at equal latency and one objective
suffices; Optuna's pruner stops unpromising fine-tunes (multi-fidelity). What a trial
stores is listed in :class:`TrialRunner`.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime
import optuna
import torch
import torch_pruning

from ..space import (Figures, LayerGroup, Recipe, SearchSpace, apply_recipe, channel_plan, figures, layer_groups,
                     model_digest, warm_start)
from .baseline import Baseline, build_model, example_input, get_baseline
from .data import SegmentationData, load_data
from ..errors import UserError
from .latency import LatencyStats, Reference, Target, TargetUnavailable, clear_of, cpu_model, measure, pooled
from .onnx_io import to_onnx
from .projection import CostModel, LatencyCache, LatencyModel, chosen, project
from .quota import SurplusTrial, TrialQuota
from .settings import SETTINGS_ATTR, Settings
from .storage import artifact_store, is_storage_failure, load_study, open_storage
from .train import Schedule, Scores, evaluate, teacher_logits, train

REFERENCE_ATTR = "latency_reference"
CALIBRATION_MEASUREMENTS = 3  # pooled measurements of the reference's own latency


@dataclass
class Context:
    """What a worker loads once and every trial reuses."""

    settings: Settings
    data: SegmentationData
    baseline: Baseline
    groups: list[LayerGroup]
    space: SearchSpace
    target: Target
    example: torch.Tensor
    baseline_figures: Figures
    teacher_outputs: torch.Tensor | None
    calibration: tuple[torch.Tensor, torch.Tensor]


def prepare(settings: Settings) -> Context:
    """Load data, the cached baseline and the space; precompute the teacher's logits.

    The model's layer groups are found, and a recipe of the space's importance is tried,
    on an untrained copy first, so a model that cannot be pruned as the space asks is
    refused (:class:`UserError`) before its baseline trains.
    """
    _check_model_file(settings)
    data = load_data(settings.data, image_size=settings.image_size, seed=settings.seed, patients=settings.patients,
                     group_by=settings.group_by)
    example = example_input(data)
    space = SearchSpace.from_dict(settings.space_spec)
    untrained = build_model(settings.model, data, settings.weights)
    groups = layer_groups(untrained, example, ignore=space.ignore)
    calibration = calibration_batch(data)
    apply_recipe(untrained, uniform_recipe(space, 0.5, importance=space.importance), example, calibration)
    baseline = get_baseline(settings.model, data, seed=settings.seed, epochs=settings.baseline_epochs, weights=settings.weights)
    teacher = teacher_logits(baseline.model, data.train.images) if settings.distill > 0 else None
    return Context(settings, data, baseline, groups, space, Target.from_dict(settings.target), example,
                   figures(baseline.model, example, groups), teacher, calibration)


def _check_model_file(settings: Settings) -> None:
    """Refuse a model file that differs from the one the study was created with: the
    storage names the code every worker imports, so its digest is checked first."""
    if settings.model_sha256 is None:
        return
    now = model_digest(settings.model)
    if now != settings.model_sha256:
        found = "is missing" if now is None else f"differs (sha256 {now[:12]}, the study's {settings.model_sha256[:12]})"
        raise UserError(f"the model file of {settings.model} {found}: restore the file the study was created with, "
                        "or start a new study")


def uniform_recipe(space: SearchSpace, keep: float, importance: str = "l1") -> Recipe:
    """``keep`` of every searched group, rounded as ``space`` rounds, its ignored groups whole."""
    return Recipe.uniform(keep, round_to=space.round_to, min_channels=space.min_channels, importance=importance,
                          ignore=space.ignore)


def calibration_batch(data: SegmentationData, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training slices and their masks: what Taylor importance back-propagates."""
    return data.train.images[:size], data.train.masks[:size]


def create_study(name: str, url: str, settings: Settings, context: Context) -> tuple[optuna.Study, Settings]:
    """Create study ``name`` with its settings, baseline figures, latency reference and warm start.

    The latency reference and the budget come from :func:`calibrate` (a ``speedup``
    becomes a budget there). The warm start (:func:`~autosculpt.space.warm_start`)
    enqueues a few shapes (uniform, capped) that every study should try, and two at other
    fractions of the budget for the trade-off the verdict reports. Returns the study and
    the settings with the budget resolved.
    """
    storage = open_storage(url)
    if name in {s.study_name for s in storage.get_all_studies()}:
        raise UserError(f"a study named {name!r} already exists: continue it with autosculpt resume {name}")
    settings, reference, baseline_stats = calibrate(context, settings)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    study.set_user_attr("environment", environment())
    study.set_user_attr("started_at", time.time())
    study.set_user_attr("baseline", baseline_record(context, baseline_stats))
    if reference is not None:
        study.set_user_attr(REFERENCE_ATTR, reference)
    _seed_cache(study, context, reference, baseline_stats)
    for params, fraction in warm_start(context.space, context.groups, settings.warm_start):
        study.enqueue_trial(params, user_attrs={"budget_fraction": fraction})
    return study, settings


def _seed_cache(study: optuna.Study, context: Context, reference: dict | None, baseline_stats: LatencyStats) -> None:
    """The baseline's and the reference's figures: the latency model's first points."""
    reference_ms = None if reference is None else reference["stats"]["median_ms"]
    cache = LatencyCache(study, context.settings.target, tuple(context.example.shape), reference_ms)
    cost = CostModel(context.baseline.model, context.example, context.groups)
    full = channel_plan(context.groups, Recipe())
    cache.put(full, cost(full), baseline_stats)
    if reference is not None:
        plan = channel_plan(context.groups, Recipe.from_dict(reference["recipe"]))
        cache.put(plan, cost(plan), LatencyStats.from_dict(reference["stats"]))


def calibrate(context: Context, settings: Settings) -> tuple[Settings, dict | None, LatencyStats]:
    """The budget, the latency reference and the baseline's latency, measured on the target.

    The baseline's figure pools CALIBRATION_MEASUREMENTS measurements; a ``speedup``
    budget is that figure over the speedup. Locally in ONNX Runtime the reference is the
    baseline pruned uniformly to about the budget, its own latency pooled the same way:
    every trial and the export time their network against it (bench/repeatability.py
    measured a 2 ms network's figures repeating within 3-6 % that way, against 15-17 %
    alone). A remote target or the torch runtime times networks alone (reference None).
    """
    shape = tuple(context.example.shape)
    baseline_stats = pooled([measure(context.baseline.model, shape, context.target) for _ in range(CALIBRATION_MEASUREMENTS)])
    settings = replace(settings, budget_ms=settings.budget_ms or baseline_stats.median_ms / settings.speedup)
    if context.target.url or context.target.runtime != "ort":
        return settings, None, baseline_stats
    recipe = uniform_recipe(context.space, budget_fraction(settings.budget_ms, baseline_stats.median_ms))
    net = apply_recipe(context.baseline.model, recipe, context.example)
    calibration = pooled([measure(net, shape, context.target) for _ in range(CALIBRATION_MEASUREMENTS)])
    return settings, {"recipe": recipe.to_dict(), "stats": calibration.to_dict()}, baseline_stats


def study_reference(study: optuna.Study, context: Context) -> Reference | None:
    """The study's latency reference network, rebuilt from its recipe; None when it has none."""
    record = study.user_attrs.get(REFERENCE_ATTR)
    if record is None:
        return None
    net = apply_recipe(context.baseline.model, Recipe.from_dict(record["recipe"]), context.example)
    return Reference(to_onnx(net, tuple(context.example.shape)), record["stats"]["median_ms"])


def budget_fraction(budget_ms: float, baseline_ms: float) -> float:
    """The uniformly kept fraction of channels expected to just meet ``budget_ms``.

    Latency falls with the kept fraction to about the power 1.6 (measured with
    bench/latency.py: MACs fall with its square, but small nets carry fixed costs).
    """
    return min(1.0, (budget_ms / baseline_ms) ** (1 / 1.6))


def open_existing(name: str, url: str) -> tuple[optuna.Study, Settings]:
    """The stored study ``name`` and its settings."""
    study = load_study(name, open_storage(url))
    if SETTINGS_ATTR not in study.user_attrs:
        raise UserError(f"study {name!r} was not made by autosculpt (it has no settings): choose another study")
    return study, Settings.from_dict(study.user_attrs[SETTINGS_ATTR])


def environment() -> dict:
    """Versions and machine facts a bug report or a model card needs."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_pruning": torch_pruning.__version__,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }


def baseline_record(context: Context, stats: LatencyStats) -> dict:
    """The baseline's figures as stored in the study: Dice, latency on the target (``stats``), size."""
    onnx_size = len(to_onnx(context.baseline.model, tuple(context.example.shape)))
    return {
        "dice": context.baseline.val.mean,
        "dice_per_class": context.baseline.val.per_class,
        "test_dice": context.baseline.test.mean,
        "test_dice_per_class": context.baseline.test.per_class,
        "latency": stats.to_dict(),
        "params": context.baseline_figures.params,
        "macs": context.baseline_figures.macs,
        "channels": context.baseline_figures.channels,
        "file_size": onnx_size,
    }


class TrialRunner:
    """The objective: one sampled shape, projected onto the budget, fine-tuned and scored.

    Stores as user attributes: ``recipe``, ``params``, ``macs``, ``param_ratio``,
    ``mac_ratio``, ``channels``, ``latency`` (full stats, with their clock and how many
    measurements they pool), ``latency_ms``, ``latency_p90_ms``, ``threads``, ``runtime``,
    ``predicted_ms`` (the latency model's figure for the chosen width), ``projection``
    (every measured width), ``measurements`` (latency measurements this trial made),
    ``feasible``, ``finetuned``, ``dice``, ``dice_per_class``, ``dice_by_epoch``,
    ``time_measure_s``, ``time_finetune_s`` or (not fine-tuned) ``time_eval_s``,
    ``weights_artifact`` and, on failure, ``fail_reason``. The constraint ``latency`` is
    latency minus budget (feasible <= 0).

    A trial enqueued with the user attribute ``budget_fraction`` is projected onto that
    fraction of the budget instead (the report's trade-off); it reports no intermediate
    Dice, so the pruner compares only trials at the budget. A shape whose narrowest
    network is still over its goal is scored without fine-tuning.
    """

    def __init__(self, context: Context, study: optuna.Study, storage_url: str, quota: TrialQuota, on_phase=None):
        self.context = context
        self.study = study
        self.quota = quota
        self.store = artifact_store(storage_url)
        self.on_phase = on_phase or (lambda trial, text: None)
        self.reference = study_reference(study, context)
        self.cache = LatencyCache(study, context.settings.target, tuple(context.example.shape),
                                  None if self.reference is None else self.reference.median_ms)
        self.cost = CostModel(context.baseline.model, context.example, context.groups)

    def __call__(self, trial: optuna.Trial) -> float:
        """The trial's validation Dice. A failure of this one candidate (it cannot be measured,
        exported or trained) raises :class:`CandidateFailed` with the reason stored as
        ``fail_reason``; storage failures, pruning, surplus and an unreachable target pass."""
        try:
            return self._run(trial)
        except (optuna.TrialPruned, SurplusTrial, TargetUnavailable):
            raise
        except Exception as error:
            if is_storage_failure(error) or isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
                raise
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            trial.set_user_attr("fail_reason", reason)
            raise CandidateFailed(reason) from error

    def _run(self, trial: optuna.Trial) -> float:
        self.quota.claim(trial)
        ctx = self.context
        fraction = trial.user_attrs.get("budget_fraction", 1.0)
        shape = normalised(ctx.space.sample(trial, ctx.groups))
        self.on_phase(trial, "projecting onto the budget")
        start = time.perf_counter()
        net, stats, recipe, within = self._project(trial, shape, ctx.settings.budget_ms * fraction)
        trial.set_user_attr("time_measure_s", time.perf_counter() - start)
        trial.set_user_attr("recipe", recipe.to_dict())
        self._store_figures(trial, figures(net, ctx.example, ctx.groups))
        over_budget = stats.median_ms - ctx.settings.budget_ms
        trial.set_constraint("latency", over_budget)
        trial.set_user_attr("feasible", over_budget <= 0)
        trial.set_user_attr("finetuned", within)
        scores = self._finetune(trial, net, report=fraction == 1.0) if within else self._evaluate(trial, net)
        trial.set_user_attr("dice", scores.mean)
        trial.set_user_attr("dice_per_class", scores.per_class)
        return scores.mean

    def _project(self, trial: optuna.Trial, shape: Recipe, goal_ms: float):
        """(network, its stats, its recipe, whether it is within ``goal_ms``): the widest
        network of ``shape`` within the goal, else the narrowest one measured."""
        ctx = self.context
        nets: dict[float, torch.nn.Module] = {}
        made = []

        def plan_of(width: float) -> dict[str, int]:
            return channel_plan(ctx.groups, replace(shape, width=width))

        def measure_width(width: float, plan: dict[str, int]) -> LatencyStats:
            stats = self.cache.get(plan)
            if stats is None:
                nets[width] = apply_recipe(ctx.baseline.model, replace(shape, width=width), ctx.example, ctx.calibration)
                self.on_phase(trial, f"measuring width {width:.3f}")
                stats = self._measure(trial, nets[width], goal_ms)
                made.append(stats.measurements)
                self.cache.put(plan, self.cost(plan), stats)
            return stats

        probes = project(plan_of, self.cost, measure_width, LatencyModel.fit(self.cache.points()), goal_ms)
        best = chosen(probes, goal_ms) or min(probes, key=lambda p: p.width)
        recipe = replace(shape, width=best.width)
        net = nets.get(best.width) or apply_recipe(ctx.baseline.model, recipe, ctx.example, ctx.calibration)
        trial.set_user_attr("projection", [p.to_dict() for p in probes])
        trial.set_user_attr("measurements", sum(made))
        trial.set_user_attr("predicted_ms", best.predicted_ms)
        self._store_latency(trial, best.stats)
        return net, best.stats, recipe, best.stats.median_ms <= goal_ms

    def _measure(self, trial: optuna.Trial, net: torch.nn.Module, goal_ms: float) -> LatencyStats:
        shape = tuple(self.context.example.shape)
        try:
            return clear_of(goal_ms, lambda: measure(net, shape, self.context.target, self.reference))
        except TargetUnavailable as error:
            trial.set_user_attr("fail_reason", str(error))
            raise

    def _store_figures(self, trial: optuna.Trial, figs: Figures) -> None:
        trial.set_user_attr("params", figs.params)
        trial.set_user_attr("macs", figs.macs)
        trial.set_user_attr("channels", figs.channels)
        for key, value in figs.ratios_against(self.context.baseline_figures).items():
            trial.set_user_attr(key, value)

    def _store_latency(self, trial: optuna.Trial, stats: LatencyStats) -> None:
        trial.set_user_attr("latency", stats.to_dict())
        trial.set_user_attr("latency_ms", stats.median_ms)
        trial.set_user_attr("latency_p90_ms", stats.p90_ms)
        trial.set_user_attr("threads", stats.threads)
        trial.set_user_attr("runtime", stats.runtime)

    def _evaluate(self, trial: optuna.Trial, net: torch.nn.Module) -> Scores:
        """Validation scores of a network as it is (over budget, so not fine-tuned)."""
        start = time.perf_counter()
        scores = evaluate(net, self.context.data.val, self.context.data.class_names)
        trial.set_user_attr("time_eval_s", time.perf_counter() - start)
        return scores

    def _finetune(self, trial: optuna.Trial, net: torch.nn.Module, report: bool) -> Scores:
        """Fine-tune, reporting each epoch's validation Dice to the study's pruner when
        ``report``; a pruned fine-tune raises :class:`optuna.TrialPruned`.

        Returns the validation scores after the last epoch; their cost (one evaluation per
        epoch) is part of ``time_finetune_s``.
        """
        ctx = self.context
        schedule = Schedule(epochs=ctx.settings.epochs, seed=ctx.settings.seed + trial.number, distill=ctx.settings.distill)
        history: list[float] = []

        def on_epoch(epoch: int, loss: float, scores: Scores) -> bool:
            history.append(scores.mean)
            trial.set_user_attr("dice_by_epoch", history)
            self.on_phase(trial, f"fine-tuning epoch {epoch + 1}/{schedule.epochs}  val Dice {scores.mean:.3f}")
            if report:
                trial.report(scores.mean, epoch + 1)
                if trial.should_prune():
                    trial.set_user_attr("dice", scores.mean)
                    raise optuna.TrialPruned(f"Dice {scores.mean:.3f} at epoch {epoch + 1} is below the trials' it is compared with")
            return True

        net.train()
        start = time.perf_counter()
        scores = train(net, ctx.data, schedule, teacher_outputs=ctx.teacher_outputs, on_epoch=on_epoch)
        trial.set_user_attr("time_finetune_s", time.perf_counter() - start)
        self._upload_weights(trial, net)
        return scores

    def _upload_weights(self, trial: optuna.Trial, net: torch.nn.Module) -> None:
        """Store the fine-tuned state dict as an Optuna artifact of the trial."""
        trial.set_user_attr("weights_artifact", upload_state_dict(self.store, trial, net, f"trial-{trial.number}.pt"))


def upload_state_dict(store, study_or_trial, net: torch.nn.Module, file_name: str) -> str:
    """Store ``net``'s state dict as an Optuna artifact of a study or trial; its artifact id."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / file_name
        torch.save(net.state_dict(), path)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study_or_trial)


def normalised(recipe: Recipe) -> Recipe:
    """The shape of ``recipe``: its keeps relative to the largest (times its width), width 1.

    Whatever width the space sampled, the projection decides the width.
    """
    largest = max(recipe.keep.values(), default=1.0)
    return replace(recipe, keep={name: keep / largest for name, keep in recipe.keep.items()}, width=1.0)


def make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    """Successive halving over fine-tuning epochs: every shape gets 3/8 of the epochs (3 of
    8: past the one-cycle schedule's peak learning rate, where Dice starts to rank shapes),
    the best third of those at each rung three times as many."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, settings.epochs * 3 // 8), reduction_factor=3)


class CandidateFailed(Exception):
    """One trial's network failed (see :meth:`TrialRunner.__call__`): the trial fails, the worker goes on."""


