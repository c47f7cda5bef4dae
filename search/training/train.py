"""Training and scoring: Dice, an imbalance-aware loss, distillation from the baseline.

Data sets are held in memory on the CPU (a few hundred to a few thousand 2D slices);
training moves each batch to its device (the CPU, or a CUDA GPU when there is one: fine-
tuning is most of a search's time) and returns the model to the CPU, where it is pruned,
measured and exported. On the CPU training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...space import count_parameters
from ..data import SegmentationData, Split

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Schedule:
    """How a network is trained: the baseline's long schedule or a trial's short fine-tune.

    ``distill`` weights a KL term towards the teacher's logits (the baseline's), which
    keeps small structures that a tiny pruned net otherwise drops. ``balance_classes``
    weights the cross-entropy by :func:`class_weights` (fine-tunes do, see
    :func:`finetune_schedule`). ``device`` is where training runs (``cpu`` or ``cuda``,
    see :func:`resolve_device`). ``crop`` trains on random ``crop`` x ``crop`` patches of the
    training slices, a new window per slice and epoch (see :func:`random_patches`); None
    trains on whole slices. Validation always scores whole slices. ``epoch_slices`` makes an
    epoch a random ``epoch_slices`` of the training slices (a new draw each epoch; None: all).
    """

    epochs: int
    batch_size: int = 16
    lr: float = 3e-3
    distill: float = 0.0
    temperature: float = 2.0
    seed: int = 0
    device: str = "cpu"
    balance_classes: bool = False
    crop: int | None = None
    epoch_slices: int | None = None


FINETUNE_LR_CAP = 0.02


def finetune_lr(param_ratio: float, base: float = Schedule.lr) -> float:
    """Peak learning rate for fine-tuning a network ``param_ratio`` times smaller than the
    baseline (which trained at ``base``): ``base`` times the ratio's fourth root (the square
    root of how much narrower it is: Adam's best step grows as a network narrows), at most
    :data:`FINETUNE_LR_CAP`; never below ``base``.

    Measured on ``unet`` at 96 px, 8 epochs, 2 seeds each (2-core AMD EPYC, 2026-11-27):
    4 channels everywhere (2291x fewer parameters) stuck at val Dice 0.30-0.31 at 0.003,
    inherited or fresh, and reached 0.91-0.93 at 0.02 (0.49-0.90 fresh at 0.03); 8 channels
    (573x) fresh 0.93 at 0.003, 0.94 at 0.01, inherited 0.95 either way; uniform keep 0.19
    (28x) 0.954 at 0.003, 0.958-0.960 at 0.01. All pruned from one baseline (seed 0): from
    two others, 4 channels everywhere reached only 0.50-0.56 at 0.02 until fine-tunes
    balanced the classes (:func:`finetune_schedule`).
    """
    return min(FINETUNE_LR_CAP, max(base, base * param_ratio**0.25))


# Networks with over TINY_RATIO times fewer parameters than the baseline fine-tune in batches of
# TINY_BATCH slices instead of Schedule.batch_size: pruned that far they keep almost nothing of the
# baseline (val Dice 0 before fine-tuning) and need optimizer steps more than large batches. At 30x
# on `unet` (96 px, seed 2, nine networks 189-2,220x smaller, 8 epochs, 2-core AMD EPYC, 2026-12-06,
# bench/finetunes.py) batches of 8 lifted val Dice after the last epoch from 0.722 (lowest 0.538: a
# structure lost) to 0.914 (0.891), after the pruner's first rung from 0.582 to 0.870, for 17 % more
# time per fine-tune (27 s instead of 23).
TINY_RATIO = 100
TINY_BATCH = 8


def finetune_batch(param_ratio: float) -> int:
    """Slices per batch for fine-tuning a network ``param_ratio`` times smaller than the
    baseline: :data:`TINY_BATCH` past :data:`TINY_RATIO`, else the default."""
    return TINY_BATCH if param_ratio > TINY_RATIO else Schedule.batch_size


def finetune_schedule(net: nn.Module, baseline_params: int, epochs: int, balance_classes: bool = True,
                      **options) -> Schedule:
    """How ``net``, shrunk from a baseline of ``baseline_params`` parameters, is fine-tuned:
    at the peak learning rate :func:`finetune_lr` and in the batches :func:`finetune_batch`
    give its size, with class-balanced
    cross-entropy unless ``balance_classes`` is False (studies stored before it);
    ``options`` are :class:`Schedule`'s others (seed, distill, device).

    Balanced because tiny networks otherwise lose a structure, depending on the baseline:
    pruned to about 30x from three `unet` baselines (seeds 0-2, 96 px, 8 epochs, AMD EPYC),
    uniform keep 0.09 and 4 channels everywhere reached val Dice 0.92/0.92, 0.56/0.56 (RV
    lost) and 0.53/0.50 (LV lost) unbalanced; 0.92/0.91, 0.54/0.90 and 0.94/0.94 balanced.
    At about 15x (uniform keep 0.19, 8 channels everywhere) it cost 0.002-0.004 on seed 0
    and nothing on seed 1 (0.952-0.958 either way).
    """
    ratio = baseline_params / max(1, count_parameters(net))
    return Schedule(epochs=epochs, lr=finetune_lr(ratio), batch_size=finetune_batch(ratio), balance_classes=balance_classes,
                    **options)


def trial_epoch_slices(setting: int | None, train_slices: int) -> int | None:
    """How many of ``train_slices`` a trial's fine-tune epoch draws for an ``--epoch-slices``
    setting: None or 0 all of them (returned as None), N at most N."""
    return setting if setting and setting < train_slices else None


CROP_FROM = 160  # slices with a side over this many pixels train on crops (:func:`training_crop`)
CROP_MULTIPLE = 64  # a crop's side is a multiple of this, so every U-Net's poolings divide it


def training_crop(image_size: tuple[int, int]) -> int | None:
    """The crop side training uses on slices of ``image_size`` (H, W): None (whole slices)
    up to :data:`CROP_FROM` pixels, else half the longer side rounded up to a multiple of
    :data:`CROP_MULTIPLE` (224 and 256 px train on 128 px patches, 512 px on 256 px)."""
    side = max(image_size)
    if side <= CROP_FROM:
        return None
    half = -(-side // 2)
    return -(-half // CROP_MULTIPLE) * CROP_MULTIPLE


def resolve_crop(crop: int | None, image_size: tuple[int, int]) -> int | None:
    """The crop a ``--crop`` setting means for slices of ``image_size``: None chooses
    (:func:`training_crop`), 0 trains on whole slices (None), N crops N x N."""
    if crop is None:
        return training_crop(image_size)
    return crop or None


def random_patches(generator: torch.Generator, size: int, masks: torch.Tensor,
                   *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random ``size`` x ``size`` window of each slice of ``masks`` (N, H, W) and
    of ``tensors`` (N, ..., H, W): half of the windows centred on a random foreground pixel
    of the slice (where it has one), the rest anywhere, as nnU-Net oversamples foreground.
    A side shorter than ``size`` is kept whole. Returns (masks, *tensors) cropped."""
    count, height, width = masks.shape
    rows, cols = min(size, height), min(size, width)
    tops = torch.randint(0, height - rows + 1, (count,), generator=generator)
    lefts = torch.randint(0, width - cols + 1, (count,), generator=generator)
    centred = torch.rand(count, generator=generator) < 0.5
    for i in torch.nonzero(centred).flatten().tolist():
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        if len(ys):
            pick = int(torch.randint(0, len(ys), (1,), generator=generator))
            tops[i] = int(ys[pick]) - rows // 2
            lefts[i] = int(xs[pick]) - cols // 2
    tops, lefts = tops.clamp(0, height - rows), lefts.clamp(0, width - cols)

    def cut(tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([t[..., y : y + rows, x : x + cols] for t, y, x in zip(tensor, tops.tolist(), lefts.tolist())])

    return tuple(cut(t) for t in (masks, *tensors))


def class_weights(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy weights against class imbalance: 1 / sqrt(each class's share of the
    pixels of ``masks``); a class absent from ``masks`` gets 1 (it is never a target)."""
    counts = torch.bincount(masks.flatten(), minlength=num_classes).float()
    share = counts / counts.sum()
    return torch.where(counts > 0, share.clamp_min(1e-12).rsqrt(), torch.ones_like(share))


@dataclass(frozen=True)
class Scores:
    """Dice on one split: per foreground class (by name) and their mean."""

    per_class: dict[str, float]

    @property
    def mean(self) -> float:
        return sum(self.per_class.values()) / len(self.per_class)


# Called after each epoch with (epoch index from 0, mean training loss, validation scores);
# returning False stops training early (the search's pruning rule uses this).
EpochCallback = Callable[[int, float, Scores], bool]


def dice_counts(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, 3) counts of true positives, predicted and true pixels per class."""
    counts = torch.zeros(num_classes, 3, dtype=torch.float64)
    for c in range(num_classes):
        p, t = pred == c, truth == c
        counts[c] = torch.tensor([(p & t).sum().item(), p.sum().item(), t.sum().item()], dtype=torch.float64)
    return counts


def scores_from_counts(counts: torch.Tensor, class_names: tuple[str, ...]) -> Scores:
    """Dice per foreground class from counts pooled over a whole split (empty-vs-empty scores 1)."""
    per_class = {}
    for c in range(1, len(class_names)):
        tp, npred, ntrue = counts[c].tolist()
        per_class[class_names[c]] = 1.0 if npred + ntrue == 0 else 2 * tp / (npred + ntrue)
    return Scores(per_class)


def resolve_device(name: str) -> str:
    """``auto``: ``cuda`` when PyTorch sees a CUDA GPU, else ``cpu``; ``cuda`` without one is a UserError."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise UserError(f"--device cuda, but this PyTorch ({torch.__version__}) sees no CUDA GPU: use --device cpu")
    return "cuda" if name == "cuda" or (name == "auto" and available) else "cpu"


# Pixels per inference batch: 32 slices at 96 px. Batching by pixels, not slices, keeps the
# dense model's activations at 224 px near 0.4 GB instead of 1.5 GB (5 slices, not 32).
INFERENCE_PIXELS = 32 * 96 * 96


def _inference_batches(images: torch.Tensor) -> tuple[range, int]:
    """Start indices and size of batches of ``images`` (N, C, H, W) of about INFERENCE_PIXELS pixels each."""
    step = max(1, INFERENCE_PIXELS // (images.shape[-2] * images.shape[-1]))
    return range(0, len(images), step), step


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Label maps (N, H, W), on the CPU, predicted by ``model`` in eval mode on the model's device."""
    model.eval()
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    starts, step = _inference_batches(images)
    return torch.cat([model(images[i : i + step].to(device)).argmax(1).cpu() for i in starts])


def split_scores(pred: torch.Tensor, split: Split, class_names: tuple[str, ...]) -> Scores:
    """Dice of the label maps ``pred`` (N, H, W) against ``split``'s masks, pooled over all its slices."""
    return scores_from_counts(dice_counts(pred, split.masks, len(class_names)), class_names)


def evaluate(model: nn.Module, split: Split, class_names: tuple[str, ...]) -> Scores:
    """Dice of ``model`` on ``split``, pooled over all its slices."""
    return split_scores(predict(model, split.images), split, class_names)


@torch.inference_mode()
def teacher_logits(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for every image, computed once so distillation costs no teacher passes."""
    teacher.eval()
    starts, step = _inference_batches(images)
    return torch.cat([teacher(images[i : i + step]) for i in starts])


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (weighted per class by ``weights`` when given) plus soft Dice over the
    foreground classes, each class alike."""
    ce = F.cross_entropy(logits, masks, weight=weights)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
    return ce + (1 - dice.mean())


def distillation_loss(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KL(teacher || student) at ``temperature``, scaled by T^2."""
    log_p = F.log_softmax(logits / temperature, 1)
    q = F.softmax(target_logits / temperature, 1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2 / (logits.shape[2] * logits.shape[3])


def train(
    model: nn.Module,
    data: SegmentationData,
    schedule: Schedule,
    *,
    teacher_outputs: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
) -> Scores:
    """Train ``model`` in place on ``data.train`` and return its final validation scores.

    ``teacher_outputs`` (logits for every training image, see :func:`teacher_logits`)
    is required when ``schedule.distill > 0``. ``on_epoch`` may stop training early by
    returning False; the scores of the last finished epoch are returned either way. The
    model trains on ``schedule.device`` and is back on the CPU when this returns or raises.
    """
    if schedule.distill > 0 and teacher_outputs is None:
        raise ValueError("distillation needs teacher_outputs")
    generator = torch.Generator().manual_seed(schedule.seed)
    model.to(schedule.device)
    try:
        optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=1e-4)
        per_epoch = min(len(data.train.images), schedule.epoch_slices or len(data.train.images))
        steps = schedule.epochs * -(-per_epoch // schedule.batch_size)
        lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=schedule.lr, total_steps=max(steps, 1))
        scores = Scores({name: 0.0 for name in data.class_names[1:]})
        weights = class_weights(data.train.masks, data.num_classes).to(schedule.device) if schedule.balance_classes else None
        for epoch in range(schedule.epochs):
            loss = _train_epoch(model, data.train, schedule, optimizer, lr_schedule, generator, teacher_outputs, weights)
            scores = evaluate(model, data.val, data.class_names)
            if on_epoch is not None and not on_epoch(epoch, loss, scores):
                break
    finally:
        model.to("cpu").eval()
    return scores


def _train_epoch(model, split, schedule, optimizer, lr_schedule, generator, teacher_outputs, weights) -> float:
    """One pass over ``split`` (or ``schedule.epoch_slices`` of it) in a seeded random order; returns the mean loss.

    Raises FloatingPointError as soon as a batch's loss is not finite.
    """
    model.train()
    order = torch.randperm(len(split.images), generator=generator)[: schedule.epoch_slices]
    total = 0.0
    for start in range(0, len(order), schedule.batch_size):
        index = order[start : start + schedule.batch_size]
        masks, images, *target = _batch(split, index, schedule, generator, teacher_outputs)
        logits = model(images)
        loss = segmentation_loss(logits, masks, weights)
        if schedule.distill > 0:
            loss = loss + schedule.distill * distillation_loss(logits, target[0], schedule.temperature)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged: the loss is {value} (check the data for NaN or infinite values)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        total += value * len(index)
    return total / len(order)


def _batch(split: Split, index: torch.Tensor, schedule: Schedule, generator: torch.Generator,
           teacher_outputs: torch.Tensor | None) -> list[torch.Tensor]:
    """[masks, images] of the slices ``index`` (and the teacher's logits when distilling),
    cropped as ``schedule.crop`` says, on ``schedule.device``."""
    tensors = [split.masks[index], split.images[index]]
    if schedule.distill > 0:
        tensors.append(teacher_outputs[index])
    if schedule.crop:
        tensors = random_patches(generator, schedule.crop, *tensors)
    masks, *rest = tensors  # masks are stored compact (uint8); the loss takes int64
    return [t.to(schedule.device) for t in (masks.long(), *rest)]
