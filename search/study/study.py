"""The study: maximise validation Dice, with the latency budget as an Optuna constraint.

A study is created once with its :class:`Settings`, its baseline (figures as a user
attribute, state dict as an artifact) and its latency reference; any number of workers
(processes, machines) then open it by name, :func:`prepare` their :class:`Context` with
the study's baseline, and run trials (:mod:`.trial`) until the study's trial count or
time limit is reached (:mod:`.quota`). Every trial's network is projected onto the
budget (:mod:`.projection`), so the study compares shapes at equal latency and one
objective suffices; Optuna's pruner stops unpromising fine-tunes (multi-fidelity).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace

import onnxruntime
import optuna
import torch
import torch_pruning

from ...errors import UserError
from ...space import (Depth, Figures, GroupSurvey, LayerGroup, Recipe, SearchSpace, apply_recipe, channel_plan,
                      depth_of, figures, is_nnunet_folder, model_digest, nnunet_fold, survey_groups, warm_start)
from ..data import NnunetPreprocessing, SegmentationData, load_data
from ..latency import LatencyStats, Reference, Target, cpu_model, measure, measure_onnx, pooled
from ..onnx_io import to_onnx
from ..training.baseline import Baseline, build_model, example_input, from_state, get_baseline
from ..training.train import (Schedule, finetune_schedule, resolve_crop, resolve_device, teacher_logits,
                              trial_epoch_slices)
from .anchors import can_anchor, nearest_anchor
from .projection import CostModel, LatencyCache, within_goal
from .settings import AUTO_SPACE, DEPTH_SPACE, KEPT_WHOLE_ATTR, SETTINGS_ATTR, WIDTH_FLOOR_ATTR, Settings
from .storage import artifact_store, load_study, open_storage
from .weights import download_state_dict, upload_state_dict

REFERENCE_ATTR = "latency_reference"
BASELINE_ATTR = "baseline_artifact"  # the study's baseline state dict, an Optuna artifact
CALIBRATION_MEASUREMENTS = 3  # pooled measurements of the reference's own latency


@dataclass
class Context:
    """What a worker loads once and every trial reuses."""

    settings: Settings
    data: SegmentationData
    baseline: Baseline
    survey: GroupSurvey  # the groups searched, and those kept whole
    space: SearchSpace  # its ignore list includes the groups kept whole
    target: Target
    example: torch.Tensor
    baseline_figures: Figures
    teacher_outputs: torch.Tensor | None
    calibration: tuple[torch.Tensor, torch.Tensor]
    device: str  # where this worker trains: settings.device resolved on this machine
    depth: Depth  # what of its depth the model can lose (levels, second convolutions)

    @property
    def groups(self) -> list[LayerGroup]:
        """The layer groups the search prunes."""
        return self.survey.groups

    def finetune_schedule(self, net: torch.nn.Module, epochs: int, seed: int, distill: float, trial: bool = True) -> Schedule:
        """How ``net``, shrunk from the baseline, is fine-tuned (a ``trial``, or the polish): on
        this worker's device, balanced and cropped as the study's settings say, as
        :func:`finetune_schedule` says; a trial's epochs draw :func:`trial_epoch_slices`, the polish's take every slice."""
        epoch_slices = trial_epoch_slices(self.settings.epoch_slices, len(self.data.train)) if trial else None
        return finetune_schedule(net, self.baseline_figures.params, epochs, self.settings.balance_classes, seed=seed,
                                 distill=distill, device=self.device, crop=self.crop, epoch_slices=epoch_slices)

    @property
    def crop(self) -> int | None:
        """The side of the patches this study trains on (None: whole slices)."""
        return resolve_crop(self.settings.crop, self.data.image_size)


def prepare(settings: Settings, baseline_state: dict[str, torch.Tensor] | None = None,
            kept_whole: dict[str, str] | None = None) -> Context:
    """Load data, the baseline and the space; precompute the teacher's logits.

    The baseline is ``baseline_state`` when given (a study's own, see :func:`study_baseline`:
    what every worker and export of a study must use), else the cached or newly trained one.
    ``kept_whole`` given, the groups to keep whole are those, not surveyed again (see
    :func:`prepare_study`).

    The model's layer groups are found, and a recipe of the space's importance is tried,
    on an untrained copy first, so a model that cannot be pruned as the space asks is
    refused (:class:`UserError`) before its baseline trains. Groups that cannot be pruned
    safely are kept whole (``kept_whole``, added to the space's ``ignore``); only a model
    with nothing left to prune is refused. The space's depth is limited to what the model
    can lose (nothing, for most models of users: width only).
    """
    _check_model_file(settings)
    device = resolve_device(settings.device)
    data = study_data(settings)
    example = example_input(data)
    space = SearchSpace.from_dict(settings.space_spec)
    untrained = build_model(settings.model, data, settings.weights)
    survey = survey_groups(untrained, example, ignore=space.ignore, kept_whole=kept_whole)
    depth = depth_of(untrained)
    space = replace(space, ignore=survey.ignore(space.ignore)).for_depth(depth)
    calibration = calibration_batch(data)
    apply_recipe(untrained, uniform_recipe(space, 0.5, importance=space.importance), example, calibration)
    baseline = (from_state(settings.model, data, baseline_state, settings.weights) if baseline_state is not None else
                get_baseline(settings.model, data, seed=settings.seed, epochs=settings.baseline_epochs, weights=settings.weights,
                             device=device, crop=resolve_crop(settings.crop, data.image_size)))
    teacher = teacher_logits(baseline.model, data.train.images) if settings.distill > 0 else None
    return Context(settings, data, baseline, survey, space, Target.from_dict(settings.target),
                   example, figures(baseline.model, example, survey.groups), teacher, calibration, device, depth)


def prepare_study(study: optuna.Study, url: str, settings: Settings) -> Context:
    """:func:`prepare` for the stored ``study`` on ``url`` with ``settings`` (its own, or
    those with another distillation weight): its own baseline, and the groups its creator
    found it must keep whole, not surveyed again (a second for most models, about 40 s for
    a small SwinUNETR on a 2-core Intel Xeon; every worker, resume and export prepares)."""
    return prepare(settings, study_baseline(study, url), study.user_attrs.get(KEPT_WHOLE_ATTR))


def study_data(settings: Settings) -> SegmentationData:
    """The data the study trains and scores on; for a network nnU-Net trained, preprocessed by its plans."""
    return load_data(settings.data, image_size=settings.image_size, seed=settings.seed, patients=settings.patients,
                     group_by=settings.group_by, nnunet=nnunet_preprocessing(settings.model))


def nnunet_preprocessing(model: str) -> NnunetPreprocessing | None:
    """How nnU-Net preprocesses the input of ``model`` when nnU-Net trained it; None otherwise."""
    if not is_nnunet_folder(model):
        return None
    fold = nnunet_fold(model)
    return NnunetPreprocessing.from_plans(fold.plans, fold.config)


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
    return data.train.images[:size], data.train.masks[:size].long()


def create_study(name: str, url: str, settings: Settings, context: Context) -> tuple[optuna.Study, Context]:
    """Create study ``name`` with its settings, baseline figures, latency reference and warm start.

    The latency reference and the budget come from :func:`calibrate` (a ``speedup``
    becomes a budget there); :func:`past_the_width_floor` may then add depth to the default
    space. The warm start (:func:`~autosculpt.space.warm_start`) enqueues a few shapes
    (uniform, capped) that every study should try, and two at other fractions of the
    budget for the trade-off the verdict reports. Returns the study and the context with
    the settings as stored (budget resolved, space as searched).
    """
    storage = open_storage(url)
    if name in {s.study_name for s in storage.get_all_studies()}:
        raise UserError(f"a study named {name!r} already exists: continue it with autosculpt resume {name}")
    settings, reference, baseline_stats = calibrate(context, settings)
    context, floor_ms = past_the_width_floor(replace(context, settings=settings))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, context.settings.to_dict())
    study.set_user_attr("environment", environment())
    study.set_user_attr("started_at", time.time())
    study.set_user_attr("baseline", baseline_record(context, baseline_stats))
    study.set_user_attr(KEPT_WHOLE_ATTR, context.survey.kept_whole)
    study.set_user_attr(BASELINE_ATTR, upload_state_dict(artifact_store(url), study, context.baseline.model, "baseline.pt"))
    if floor_ms is not None:
        study.set_user_attr(WIDTH_FLOOR_ATTR, floor_ms)
    if reference is not None:
        study.set_user_attr(REFERENCE_ATTR, reference)
    _seed_cache(study, context, reference, baseline_stats)
    for params, fraction in warm_start(context.space, context.groups, settings.warm_start, context.depth):
        study.enqueue_trial(params, user_attrs={"budget_fraction": fraction})
    return study, context


def past_the_width_floor(context: Context) -> tuple[Context, float | None]:
    """``context`` searching depth beside width when width alone cannot meet the budget.

    Only for space ``auto`` (the default: no ``--space`` given) and a model that offers depth: the
    narrowest network width pruning builds (every searched group at the space's smallest
    channel step) is measured as the budget was; when it is not within the budget (up to its
    98 % edge, :func:`~.projection.within_goal`), the study searches :data:`~.settings.DEPTH_SPACE`
    instead (stored in its settings, so every worker and resume does). Returns the context and
    that network's median (ms), or None when not measured.
    """
    settings = context.settings
    if settings.space != AUTO_SPACE or not context.depth.levels:
        return context, None
    narrowest = apply_recipe(context.baseline.model, uniform_recipe(context.space, 1e-6), context.example)
    floor = _calibrated(narrowest, context)
    if within_goal(floor, settings.budget_ms):
        return context, floor.median_ms
    spec = SearchSpace.load(DEPTH_SPACE).to_dict()
    space = replace(SearchSpace.from_dict(spec), ignore=context.space.ignore).for_depth(context.depth)
    return replace(context, settings=replace(settings, space=DEPTH_SPACE, space_spec=spec), space=space), floor.median_ms


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
    alone). Both figures are timed against this machine's nearest anchor
    (:mod:`.anchors`), so every study on the machine shares one scale. A remote target or
    the torch runtime times networks alone (reference None).
    """
    baseline_stats = _calibrated(context.baseline.model, context)
    settings = replace(settings, budget_ms=settings.budget_ms or baseline_stats.median_ms / settings.speedup)
    if context.target.url or context.target.runtime != "ort":
        return settings, None, baseline_stats
    recipe = uniform_recipe(context.space, budget_fraction(settings.budget_ms, baseline_stats.median_ms))
    calibration = _calibrated(apply_recipe(context.baseline.model, recipe, context.example), context)
    return settings, {"recipe": recipe.to_dict(), "stats": calibration.to_dict()}, baseline_stats


def _calibrated(net: torch.nn.Module, context: Context) -> LatencyStats:
    """``net``'s figure pooled over CALIBRATION_MEASUREMENTS, against the nearest anchor where
    :func:`~.anchors.can_anchor`, else alone."""
    shape, target = tuple(context.example.shape), context.target
    if not can_anchor(shape, target):
        return pooled([measure(net, shape, target) for _ in range(CALIBRATION_MEASUREMENTS)])
    onnx = to_onnx(net, shape)
    anchor, _ = nearest_anchor(onnx, shape, target)
    return pooled([measure_onnx(onnx, shape, target, anchor) for _ in range(CALIBRATION_MEASUREMENTS)])


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


def study_baseline(study: optuna.Study, url: str) -> dict[str, torch.Tensor] | None:
    """The state dict of the baseline ``study`` was created with (None for a study stored
    before baselines were), for :func:`prepare`."""
    artifact_id = study.user_attrs.get(BASELINE_ATTR)
    return None if artifact_id is None else download_state_dict(artifact_store(url), artifact_id)


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
