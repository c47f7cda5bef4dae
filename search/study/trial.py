"""One trial: a sampled shape, projected onto the budget, fine-tuned at increasing fidelity, scored.

:class:`TrialRunner` is the objective every worker hands ``study.optimize``: it claims
the trial from the study's :class:`~.quota.TrialQuota`, samples a shape from the space,
projects it onto the budget (:mod:`.projection`: measured on the target through
:mod:`..latency`, cached in the storage), fine-tunes it while the study's pruner lets it
(:func:`make_pruner`), and stores its figures and weights (:mod:`.weights`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import optuna
import torch

from ...space import Figures, Recipe, apply_recipe, channel_plan, figures
from ..latency import LatencyStats, TargetUnavailable, batched, clear_of, measure, measure_onnx, target_vnni
from ..onnx_io import ort_labels
from ..quantize import calibration_slices, int8_onnx, reduce_range_for
from ..training.train import Scores, evaluate, split_scores, train
from .projection import EDGE, CostModel, LatencyCache, LatencyModel, chosen, project, within_goal
from .quota import COUNTED, REPEAT_ATTR, SurplusTrial, TrialQuota
from .settings import Settings
from .storage import artifact_store, is_storage_failure
from .study import Context, study_reference
from .weights import upload_state_dict

# What a repeat takes from the trial that fine-tuned its network (besides the value).
REPEATED_ATTRS = ("dice", "dice_per_class", "dice_by_epoch", "dice_fp32", "lr", "device", "weights_artifact")


class TrialRunner:
    """The objective: one sampled shape, projected onto the budget, fine-tuned and scored.

    Stores as user attributes: ``recipe``, ``params``, ``macs``, ``param_ratio``,
    ``mac_ratio``, ``channels``, ``latency`` (full stats, with their clock and how many
    measurements they pool), ``latency_ms``, ``latency_p90_ms``, ``threads``, ``runtime``,
    ``predicted_ms`` (the latency model's figure for the chosen width), ``projection``
    (every measured width), ``measurements`` (latency measurements this trial made),
    ``feasible``, ``finetuned``, ``dice``, ``dice_per_class``, ``dice_by_epoch``, ``lr``
    (the fine-tune's peak learning rate), ``time_measure_s``, ``time_finetune_s`` (a pruned
    fine-tune's too), ``time_eval_s`` (scoring without fine-tuning), ``weights_artifact``,
    ``precision`` and, on failure, ``fail_reason``. The constraint ``latency`` is latency
    minus budget (feasible <= 0).

    With several of the study's ``precisions`` the precision is sampled too (parameter
    ``precision``). An INT8 trial is measured as the deployed INT8 model (quantized with
    :mod:`..quantize`, its own latency model and cache entries), fine-tuned in fp32 and
    scored after quantization: its value and ``dice`` are the INT8 model's validation
    Dice, ``dice_fp32`` the network's before quantization; quantizing and scoring count
    in ``time_eval_s``.

    A trial enqueued with the user attribute ``budget_fraction`` is projected onto that
    fraction of the budget instead (the report's trade-off); it reports no intermediate
    Dice, so the pruner compares only trials at the budget. A shape whose narrowest
    network is still over its goal is scored without fine-tuning (``finetuned`` False:
    free in the study's trial count, :mod:`.quota`).

    A shape that projects onto a network an earlier finished trial fine-tuned (same
    channels, method, importance and precision) is a *repeat*: it stores ``repeat_of``
    (that trial's number) and ``finetuned`` False, takes that trial's outcome (its value
    and :data:`REPEATED_ATTRS`, or its pruning) without fine-tuning, and is free in the
    study's trial count (:mod:`.quota`).
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
        self.calibration = calibration_slices(context.data.train.images)
        self.reduce_range = reduce_range_for(target_vnni(context.target))

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
        shape = normalised(ctx.space.sample(trial, ctx.groups, ctx.depth))
        precision = self._precision(trial)
        self.on_phase(trial, "projecting onto the budget")
        start = time.perf_counter()
        net, stats, recipe, within = self._project(trial, shape, ctx.settings.budget_ms * fraction, precision)
        trial.set_user_attr("time_measure_s", time.perf_counter() - start)
        trial.set_user_attr("recipe", recipe.to_dict())
        self._store_figures(trial, figures(net, ctx.example, ctx.groups))
        over_budget = stats.median_ms - ctx.settings.budget_ms
        trial.set_constraint("latency", over_budget)
        trial.set_user_attr("feasible", over_budget <= 0)
        earlier = self._fine_tuned_before(trial) if within else None
        trial.set_user_attr("finetuned", within and earlier is None)
        if earlier is not None:
            self.on_phase(trial, f"repeats the network of trial {earlier.number}: takes its Dice, no fine-tune")
            return repeat(trial, earlier, report=fraction == 1.0)
        scores = self._finetune(trial, net, report=fraction == 1.0) if within else self._evaluate(trial, net)
        if precision == "int8":
            trial.set_user_attr("dice_fp32", scores.mean)
            scores = self._int8_scores(trial, net)
        trial.set_user_attr("dice", scores.mean)
        trial.set_user_attr("dice_per_class", scores.per_class)
        return scores.mean

    def _fine_tuned_before(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        """The earliest finished trial that fine-tuned the network ``trial`` projected onto, or None."""
        key = network_key(trial.user_attrs)
        finished = self.study.get_trials(deepcopy=False, states=COUNTED)
        return next((t for t in finished if t.user_attrs.get("finetuned") is True and network_key(t.user_attrs) == key), None)

    def _precision(self, trial: optuna.Trial) -> str:
        """The trial's deployed precision: sampled when the study allows several."""
        precisions = self.context.settings.precisions
        precision = trial.suggest_categorical("precision", precisions) if len(precisions) > 1 else precisions[0]
        trial.set_user_attr("precision", precision)
        return precision

    def _project(self, trial: optuna.Trial, shape: Recipe, goal_ms: float, precision: str):
        """(network, its stats, its recipe, whether it is within ``goal_ms``): the widest
        network of ``shape`` within the goal at ``precision``, else the narrowest one measured."""
        ctx = self.context
        nets: dict[float, torch.nn.Module] = {}
        made = []

        def plan_of(width: float) -> dict[str, int]:
            return channel_plan(ctx.groups, replace(shape, width=width))

        def measure_width(width: float, plan: dict[str, int]) -> LatencyStats:
            stats = self.cache.get(plan, precision)
            if stats is None:
                nets[width] = apply_recipe(ctx.baseline.model, replace(shape, width=width), ctx.example, ctx.calibration)
                self.on_phase(trial, f"measuring width {width:.3f} ({precision})")
                stats = self._measure(trial, nets[width], goal_ms, precision)
                made.append(stats.measurements)
                self.cache.put(plan, self.cost(plan), stats, precision)
            return stats

        # Until INT8 plans are measured, the fp32 model is the prior: each projection shifts it through its first probe.
        model = LatencyModel.fit(self.cache.points(precision) or self.cache.points())
        probes = project(plan_of, self.cost, measure_width, model, goal_ms)
        best = chosen(probes, goal_ms) or min(probes, key=lambda p: p.width)
        recipe = replace(shape, width=best.width)
        net = nets.get(best.width) or apply_recipe(ctx.baseline.model, recipe, ctx.example, ctx.calibration)
        trial.set_user_attr("projection", [p.to_dict() for p in probes])
        trial.set_user_attr("measurements", sum(made))
        trial.set_user_attr("predicted_ms", best.predicted_ms)
        self._store_latency(trial, best.stats)
        return net, best.stats, recipe, within_goal(best.stats, goal_ms)

    def _measure(self, trial: optuna.Trial, net: torch.nn.Module, goal_ms: float, precision: str) -> LatencyStats:
        """``net``'s latency on the target as deployed at ``precision``, re-measured near the goal's edge."""
        shape, target = tuple(self.context.example.shape), self.context.target
        if precision == "int8":
            deployed = int8_onnx(net, batched(shape, target.batch), self.calibration, self.reduce_range)
            once = partial(measure_onnx, deployed, shape, target, self.reference)
        else:
            once = partial(measure, net, shape, target, self.reference)
        try:
            return clear_of(EDGE * goal_ms, once)
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

    def _int8_scores(self, trial: optuna.Trial, net: torch.nn.Module) -> Scores:
        """Validation scores of ``net`` quantized as deployed (calibrated on its fine-tuned activations)."""
        start = time.perf_counter()
        val = self.context.data.val
        deployed = int8_onnx(net, tuple(self.context.example.shape), self.calibration, self.reduce_range)
        scores = split_scores(ort_labels(deployed, val.images), val, self.context.data.class_names)
        trial.set_user_attr("time_eval_s", trial.user_attrs.get("time_eval_s", 0.0) + time.perf_counter() - start)
        return scores

    def _finetune(self, trial: optuna.Trial, net: torch.nn.Module, report: bool) -> Scores:
        """Fine-tune, reporting each epoch's validation Dice to the study's pruner when
        ``report``; a pruned fine-tune raises :class:`optuna.TrialPruned`.

        Returns the validation scores after the last epoch; their cost (one evaluation per
        epoch) is part of ``time_finetune_s``.
        """
        ctx = self.context
        schedule = ctx.finetune_schedule(net, ctx.settings.epochs, ctx.settings.seed + trial.number, ctx.settings.distill)
        history: list[float] = []
        trial.set_user_attr("device", ctx.device)
        trial.set_user_attr("lr", schedule.lr)
        if schedule.crop:
            trial.set_user_attr("crop", schedule.crop)

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
        try:
            scores = train(net, ctx.data, schedule, teacher_outputs=ctx.teacher_outputs, on_epoch=on_epoch)
        finally:  # a pruned or failed fine-tune's time counts too
            trial.set_user_attr("time_finetune_s", time.perf_counter() - start)
        self._upload_weights(trial, net)
        return scores

    def _upload_weights(self, trial: optuna.Trial, net: torch.nn.Module) -> None:
        """Store the fine-tuned state dict as an Optuna artifact of the trial."""
        trial.set_user_attr("weights_artifact", upload_state_dict(self.store, trial, net, f"trial-{trial.number}.pt"))


def repeat(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial, report: bool) -> float:
    """``earlier``'s outcome for ``trial``, which projected onto the network ``earlier``
    fine-tuned: its value, or :class:`optuna.TrialPruned` (after its last intermediate
    Dice when ``report``) when it was stopped early. Stores ``repeat_of`` and :data:`REPEATED_ATTRS`."""
    trial.set_user_attr(REPEAT_ATTR, earlier.number)
    for key in REPEATED_ATTRS:
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    if earlier.state == optuna.trial.TrialState.PRUNED:
        if report and earlier.intermediate_values:
            step = max(earlier.intermediate_values)
            trial.report(earlier.intermediate_values[step], step)
        raise optuna.TrialPruned(f"repeats the network of trial {earlier.number}, which was stopped early")
    return earlier.value


def network_key(attrs: dict) -> tuple:
    """What identifies a trial's network, from its user attributes: channels per layer
    group, pruning method and importance, deployed precision."""
    recipe = attrs.get("recipe") or {}
    channels = attrs.get("channels") or {}
    return (tuple(sorted(channels.items())), recipe.get("method"), recipe.get("importance"), attrs.get("precision"))


def normalised(recipe: Recipe) -> Recipe:
    """The shape of ``recipe``: its keeps relative to the largest (times its width), width 1.

    Whatever width the space sampled, the projection decides the width.
    """
    largest = max(recipe.keep.values(), default=1.0)
    return replace(recipe, keep={name: keep / largest for name, keep in recipe.keep.items()}, width=1.0)


def make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    """Successive halving over fine-tuning epochs: every shape gets :func:`first_rung` epochs,
    the best third of those at each rung three times as many."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(settings.epochs), reduction_factor=3)


def first_rung(epochs: int) -> int:
    """The epoch at which successive halving first compares shapes: just past the middle of
    the fine-tune (5 of 8).

    Tiny networks learn a structure at a time and jump late. At 30x on ``unet`` (96 px, 8
    epochs, AMD EPYC) every network at the budget that finished read val Dice 0.27-0.51
    after epoch 3 and 0.81-0.90 after epoch 5, ending at 0.92-0.93, while a rung at epoch
    3 stopped 8 of the other 10 trials of one study at 0.21-0.29: by chance, and telling
    the sampler that their shapes were bad.
    """
    return max(1, epochs // 2 + 1)


class CandidateFailed(Exception):
    """One trial's network failed (see :meth:`TrialRunner.__call__`): the trial fails, the worker goes on."""


