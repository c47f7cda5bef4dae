"""The dense model the search compresses: built from a preset or a user's class, trained once, cached.

The cache key is (model, weights file, data fingerprint, seed, epochs, torch version, device, and
the training crop where there is one); the
cache holds a state dict (written atomically, loaded with ``weights_only=True``), never a
pickled module. A study stores its baseline's state dict as an artifact when it is
created (:func:`autosculpt.search.study.study.create_study`): its workers and its export use
that one (:func:`from_state`), whatever their own caches hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from ...errors import UserError
from ...space import (PRESETS, UNet, is_nnunet_folder, load_nnunet_model, load_user_model, load_weights, model_digest,
                      nnunet_fold, preset_config)
from ..cache import cache_dir, write_atomically
from ..data import SegmentationData
from .train import Schedule, Scores, evaluate, train

# Epochs that take each preset's baseline to a mean foreground Dice of 0.9+ on the
# generated data; a user's class without weights gets the ``unet`` figure.
BASELINE_EPOCHS = {"unet": 8, "unet-paper": 8, "unet-small": 12, "unet-tiny": 40}


@dataclass
class Baseline:
    """A trained dense model with its validation and test scores."""

    model: nn.Module
    spec: str
    val: Scores
    test: Scores
    state_path: Path | None  # the local cache file; None for a baseline read from a study


def build_model(spec: str, data: SegmentationData, weights: str | None = None) -> nn.Module:
    """An untrained preset sized for ``data``, a user's ``module:Class`` with its weights, or
    an nnU-Net fold (its folder) with its checkpoint's weights."""
    if is_nnunet_folder(spec):
        model = _nnunet_model(spec, data)
    elif ":" in spec:
        model = load_user_model(spec, weights)
    elif spec in PRESETS:
        model = UNet(preset_config(spec, data.in_channels, data.num_classes))
        if weights:
            load_weights(model, weights, f"the {spec} preset sized for this data")
    else:
        raise UserError(f"unknown model {spec!r}: use a preset ({', '.join(PRESETS)}) or module:Class / file.py:Class")
    return model


def is_trained(spec: str, weights: str | None) -> bool:
    """Whether the model comes with its trained weights (scored, not trained)."""
    return bool(weights) or is_nnunet_folder(spec)


def _nnunet_model(spec: str, data: SegmentationData) -> nn.Module:
    """The fold's network, after checking that ``data`` fits it (channels, classes, input size)."""
    fold = nnunet_fold(spec)
    channels = len(fold.dataset.get("channel_names") or fold.dataset.get("modality") or {})
    if (channels, len(fold.dataset.get("labels") or {})) != (data.in_channels, data.num_classes):
        raise UserError(f"{fold.folder.name} takes {channels} channels and {len(fold.dataset.get('labels') or {})} classes, "
                        f"the data {data.in_channels} and {data.num_classes}: give --data the raw data set it was trained on")
    if any(side % fold.stride for side in data.image_size):
        size = -(-max(data.image_size) // fold.stride) * fold.stride
        raise UserError(f"input size {'x'.join(map(str, data.image_size))} is not a multiple of {fold.stride}, "
                        f"the stride of {fold.folder.name}'s network: give --size {size}")
    return load_nnunet_model(spec)


def example_input(data: SegmentationData, batch: int = 1) -> torch.Tensor:
    """A zero input of the model's fixed shape: what pruning traces and latency measures."""
    return torch.zeros(batch, data.in_channels, *data.image_size)


def baseline_key(spec: str, data: SegmentationData, seed: int, epochs: int, weights: str | None, device: str = "cpu",
                 crop: int | None = None) -> str:
    """Cache key of a baseline: every input that changes its weights."""
    weights_digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest() if weights else None
    if is_nnunet_folder(spec):
        weights_digest = model_digest(spec)  # its plans and checkpoint
    parts = [spec, weights_digest, data.fingerprint, seed, epochs, torch.__version__, device] + ([crop] if crop else [])
    text = json.dumps(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_baseline(
    spec: str, data: SegmentationData, *, seed: int = 0, epochs: int | None = None, weights: str | None = None,
    device: str = "cpu", crop: int | None = None,
) -> Baseline:
    """The cached baseline for these settings, training it first if needed (on ``device``,
    on random ``crop`` x ``crop`` patches when given, see :class:`~.train.Schedule`).

    A user's model given with ``weights``, or an nnU-Net fold, is taken as trained: it is
    scored, not trained, whatever ``epochs`` says.
    """
    if is_trained(spec, weights):
        epochs = 0
    elif epochs is None:
        epochs = BASELINE_EPOCHS.get(spec, BASELINE_EPOCHS["unet"])
    folder = cache_dir("baselines") / baseline_key(spec, data, seed, epochs, weights, device, crop if epochs else None)
    state_path = folder / "state.pt"
    torch.manual_seed(seed)
    model = build_model(spec, data, weights)
    if state_path.exists():
        model.load_state_dict(torch.load(state_path, weights_only=True))
    else:
        _train_with_progress(model, data, Schedule(epochs=epochs, seed=seed, device=device, crop=crop), spec)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(state_path, lambda partial: torch.save(model.state_dict(), partial))
    return _scored(model.eval(), spec, data, state_path)


def from_state(spec: str, data: SegmentationData, state: dict[str, torch.Tensor], weights: str | None = None) -> Baseline:
    """The baseline rebuilt from a stored state dict (a study's), bit for bit, and scored."""
    model = build_model(spec, data, weights)
    model.load_state_dict(state)
    return _scored(model.eval(), spec, data, None)


def _scored(model: nn.Module, spec: str, data: SegmentationData, state_path: Path | None) -> Baseline:
    return Baseline(model, spec, evaluate(model, data.val, data.class_names), evaluate(model, data.test, data.class_names),
                    state_path)


def _train_with_progress(model: nn.Module, data: SegmentationData, schedule: Schedule, spec: str) -> None:
    """Train the baseline with a rich progress bar showing loss and validation Dice."""
    if schedule.epochs == 0:
        return
    columns = (TextColumn("[bold]baseline {task.fields[spec]}"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}  val Dice {task.fields[dice]:.3f}"), TimeElapsedColumn())
    with Progress(*columns, transient=False, console=Console(stderr=True)) as progress:
        task = progress.add_task("baseline", total=schedule.epochs, spec=spec, loss=float("nan"), dice=0.0)

        def on_epoch(epoch: int, loss: float, scores: Scores) -> bool:
            progress.update(task, completed=epoch + 1, loss=loss, dice=scores.mean)
            if not progress.console.is_terminal:  # a log file gets one line per epoch
                progress.console.print(f"baseline {spec} epoch {epoch + 1}/{schedule.epochs}: loss {loss:.3f}, val Dice {scores.mean:.3f}")
            return True

        train(model, data, schedule, on_epoch=on_epoch)
