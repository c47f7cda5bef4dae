"""The study: a multi-objective Optuna study (max Dice, min latency) with the budget as a constraint.

A study is created once with its :class:`Settings` stored in its user attributes; any
number of workers (processes, machines) then open it by name and run trials until the
study's trial count or time limit is reached. What a trial stores is listed in
:class:`TrialRunner`.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import onnxruntime
import optuna
import torch
import torch_pruning
from optuna.trial import FrozenTrial, TrialState

from ..space import Figures, LayerGroup, SearchSpace, apply_recipe, figures, layer_groups, warm_start
from .baseline import Baseline, example_input, get_baseline
from .data import SegmentationData, load_data
from .errors import UserError
from .latency import LatencyStats, Target, TargetUnavailable, cpu_model, measure
from .onnx_io import to_onnx
from .settings import SETTINGS_ATTR, Settings
from .storage import artifact_store, load_study, open_storage
from .train import Schedule, Scores, evaluate, teacher_logits, train

DIRECTIONS = ("maximize", "minimize")  # values = (mean foreground Dice on val, latency median ms)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that count towards the study's total
SURPLUS_REASON = "surplus: the study already had its trials when this one started"


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


def prepare(settings: Settings) -> Context:
    """Load data, the cached baseline and the space; precompute the teacher's logits."""
    data = load_data(settings.data, image_size=settings.image_size, seed=settings.seed, patients=settings.patients)
    baseline = get_baseline(settings.model, data, seed=settings.seed, epochs=settings.baseline_epochs, weights=settings.weights)
    example = example_input(data)
    space = SearchSpace.from_dict(settings.space_spec)
    groups = layer_groups(baseline.model, example, ignore=space.ignore)
    teacher = teacher_logits(baseline.model, data.train.images) if settings.distill > 0 else None
    return Context(settings, data, baseline, groups, space, Target.from_dict(settings.target), example,
                   figures(baseline.model, example, groups), teacher)


def create_study(name: str, url: str, settings: Settings, context: Context) -> optuna.Study:
    """Create study ``name`` with its settings, baseline figures, environment and warm start.

    The warm start (:func:`~autosculpt.space.warm_start`) enqueues ``settings.warm_start``
    uniform candidates bracketing the budget, each with a capped twin of equal MACs, so the
    first trials already bracket the budget with both shapes.
    """
    storage = open_storage(url)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=list(DIRECTIONS))
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(f"a study named {name!r} already exists: continue it with autosculpt resume {name}") from None
    study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    study.set_user_attr("environment", environment())
    study.set_user_attr("started_at", time.time())
    baseline = baseline_record(context)
    study.set_user_attr("baseline", baseline)
    around = budget_fraction(settings.budget_ms, baseline["latency"]["median_ms"])
    points = warm_start(context.space, context.baseline.model, context.example, context.groups, settings.warm_start, around)
    for params in points:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


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


def baseline_record(context: Context) -> dict:
    """The baseline's figures as stored in the study: Dice, latency on the target, size."""
    stats = measure(context.baseline.model, tuple(context.example.shape), context.target)
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
    """The objective: one candidate from sampling to a stored, scored, fine-tuned network.

    Stores as user attributes: ``recipe``, ``params``, ``macs``, ``param_ratio``,
    ``mac_ratio``, ``channels``, ``latency`` (full stats), ``latency_ms``,
    ``latency_p90_ms``, ``threads``, ``runtime``, ``feasible``, ``finetuned``,
    ``dice``, ``dice_per_class``, ``dice_by_epoch``, ``time_measure_s``,
    ``time_finetune_s`` or (not fine-tuned) ``time_eval_s``, ``weights_artifact`` and, on failure,
    ``fail_reason``. The constraint ``latency`` is latency minus budget (feasible <= 0).
    A candidate over budget is scored without fine-tuning and costs seconds, not minutes.
    """

    def __init__(self, context: Context, study: optuna.Study, storage_url: str, on_phase=None):
        self.context = context
        self.study = study
        self.store = artifact_store(storage_url)
        self.on_phase = on_phase or (lambda trial, text: None)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        self._refuse_surplus(trial)
        ctx = self.context
        recipe = ctx.space.sample(trial, ctx.groups)
        trial.set_user_attr("recipe", recipe.to_dict())
        self.on_phase(trial, "pruning")
        net = apply_recipe(ctx.baseline.model, recipe, ctx.example)
        self._store_figures(trial, figures(net, ctx.example, ctx.groups))
        self.on_phase(trial, "measuring latency")
        start = time.perf_counter()
        stats = self._measure(trial, net)
        trial.set_user_attr("time_measure_s", time.perf_counter() - start)
        over_budget = stats.median_ms - ctx.settings.budget_ms
        trial.set_constraint("latency", over_budget)
        trial.set_user_attr("feasible", over_budget <= 0)
        trial.set_user_attr("finetuned", over_budget <= 0)
        scores = self._finetune(trial, net, stats.median_ms) if over_budget <= 0 else self._evaluate(trial, net)
        trial.set_user_attr("dice", scores.mean)
        trial.set_user_attr("dice_per_class", scores.per_class)
        return scores.mean, stats.median_ms

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        """Fail a trial that started after the study already had its ``trials``.

        Workers race between checking the count and asking for a trial; this check,
        made on trial numbers the storage hands out atomically, keeps the total exact.
        """
        limit = self.context.settings.trials
        if limit is None:
            return
        earlier = self.study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING, TrialState.WAITING))
        if sum(t.number < trial.number for t in earlier) >= limit:
            trial.set_user_attr("fail_reason", SURPLUS_REASON)
            raise SurplusTrial(SURPLUS_REASON)

    def _store_figures(self, trial: optuna.Trial, figs: Figures) -> None:
        trial.set_user_attr("params", figs.params)
        trial.set_user_attr("macs", figs.macs)
        trial.set_user_attr("channels", figs.channels)
        for key, value in figs.ratios_against(self.context.baseline_figures).items():
            trial.set_user_attr(key, value)

    def _measure(self, trial: optuna.Trial, net: torch.nn.Module) -> LatencyStats:
        try:
            stats = measure(net, tuple(self.context.example.shape), self.context.target)
        except TargetUnavailable as error:
            trial.set_user_attr("fail_reason", str(error))
            raise
        trial.set_user_attr("latency", stats.to_dict())
        trial.set_user_attr("latency_ms", stats.median_ms)
        trial.set_user_attr("latency_p90_ms", stats.p90_ms)
        trial.set_user_attr("threads", stats.threads)
        trial.set_user_attr("runtime", stats.runtime)
        return stats

    def _evaluate(self, trial: optuna.Trial, net: torch.nn.Module) -> Scores:
        """Validation scores of a network as it is (over budget, so not fine-tuned)."""
        start = time.perf_counter()
        scores = evaluate(net, self.context.data.val, self.context.data.class_names)
        trial.set_user_attr("time_eval_s", time.perf_counter() - start)
        return scores

    def _finetune(self, trial: optuna.Trial, net: torch.nn.Module, latency_ms: float) -> Scores:
        """Fine-tune within budget, stopping early when the epoch rule calls it hopeless.

        Returns the validation scores after the last epoch; their cost (one evaluation per
        epoch) is part of ``time_finetune_s``.
        """
        ctx = self.context
        schedule = Schedule(epochs=ctx.settings.epochs, seed=ctx.settings.seed + trial.number, distill=ctx.settings.distill)
        history: list[float] = []
        rule = EpochRule(self.study, latency_ms, warmup_epochs=max(1, schedule.epochs // 2))

        def on_epoch(epoch: int, loss: float, scores: Scores) -> bool:
            history.append(scores.mean)
            trial.set_user_attr("dice_by_epoch", history)
            self.on_phase(trial, f"fine-tuning epoch {epoch + 1}/{schedule.epochs}  val Dice {scores.mean:.3f}")
            if rule.hopeless(epoch, scores.mean):
                raise optuna.TrialPruned(f"Dice {scores.mean:.3f} at epoch {epoch + 1} is below faster trials'")
            return True

        net.train()
        start = time.perf_counter()
        scores = train(net, ctx.data, schedule, teacher_outputs=ctx.teacher_outputs, on_epoch=on_epoch)
        trial.set_user_attr("time_finetune_s", time.perf_counter() - start)
        self._upload_weights(trial, net)
        return scores

    def _upload_weights(self, trial: optuna.Trial, net: torch.nn.Module) -> None:
        """Store the fine-tuned state dict as an Optuna artifact of the trial."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"trial-{trial.number}.pt"
            torch.save(net.state_dict(), path)
            artifact_id = optuna.artifacts.upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial)
        trial.set_user_attr("weights_artifact", artifact_id)


class SurplusTrial(Exception):
    """Raised inside a trial that the study no longer needs (see TrialRunner._refuse_surplus)."""


class EpochRule:
    """Stops a fine-tune that is already dominated: Optuna's pruners refuse multi-objective
    studies, so this is a median rule restricted to trials at least as fast.

    At epoch ``e`` >= ``warmup_epochs`` a trial is hopeless when at least ``min_trials``
    finished, fine-tuned trials with latency <= its own all reached epoch ``e`` and its
    validation Dice is below their median Dice at that epoch. Trials judge only the second
    half of a fine-tune: before the one-cycle schedule's peak learning rate, tiny networks'
    Dice jumps (an 8-channel network went from 0.27 to 0.90 between epochs 10 and 12 of 20).
    """

    def __init__(self, study: optuna.Study, latency_ms: float, min_trials: int = 3, warmup_epochs: int = 1):
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.curves = [t.user_attrs["dice_by_epoch"] for t in finished
                       if t.user_attrs.get("finetuned") and t.user_attrs.get("latency_ms", math.inf) <= latency_ms]
        self.min_trials = min_trials
        self.warmup_epochs = warmup_epochs

    def hopeless(self, epoch: int, dice: float) -> bool:
        if epoch < self.warmup_epochs:
            return False
        at_epoch = [curve[epoch] for curve in self.curves if len(curve) > epoch]
        return len(at_epoch) >= self.min_trials and dice < median(at_epoch)


def best_feasible(study: optuna.Study, budget_ms: float | None = None) -> FrozenTrial | None:
    """The complete, fine-tuned trial with the highest Dice whose latency is within budget.

    ``budget_ms`` None uses the study's own budget; another budget reads the same study.
    """
    budget = budget_ms if budget_ms is not None else Settings.from_dict(study.user_attrs[SETTINGS_ATTR]).budget_ms
    candidates = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("finetuned") and t.user_attrs.get("latency_ms", math.inf) <= budget]
    return max(candidates, key=lambda t: t.values[0], default=None)
