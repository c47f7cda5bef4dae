"""Figures per patient: Dice and the 95th-percentile Hausdorff distance of each structure in
each volume (ACDC's convention: per volume, then mean and std over volumes).

The Hausdorff distance is MONAI's (``monai.metrics.compute_hausdorff_distance``, surface
distances by a Euclidean distance transform) on the volume's slices stacked at their
spacing, in the data set's unit (mm, or pixels of the original images when the files
carry no spacing). It is undefined, and left out of the means, for a structure missing
from the truth or from the prediction of a volume; Dice is then 0 (or 1 when both lack it).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data import Split
from .train import dice_counts, scores_from_counts


@dataclass(frozen=True)
class VolumeScores:
    """One volume's figures per foreground structure; ``hd95`` None where undefined."""

    volume: str
    dice: dict[str, float]
    hd95: dict[str, float | None]

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.dice.values())))

    def to_dict(self) -> dict:
        return asdict(self) | {"mean_dice": self.mean_dice}


def per_volume(pred: torch.Tensor, split: Split, class_names: tuple[str, ...]) -> list[VolumeScores]:
    """Scores of the label maps ``pred`` (N, H, W) against ``split``, one per volume in split order."""
    volumes = np.asarray(split.volumes)
    scores = []
    for volume in dict.fromkeys(split.volumes):
        rows = np.flatnonzero(volumes == volume)
        spacing = np.median(split.spacing[rows], axis=0)
        scores.append(_score(volume, pred[rows], split.masks[rows], spacing, class_names))
    return scores


def summary(scores: list[VolumeScores]) -> dict[str, dict[str, float | int | None]]:
    """Per structure: mean and std over volumes of Dice and of the defined HD95 figures."""
    out = {}
    for name in scores[0].dice if scores else ():
        dice = [s.dice[name] for s in scores]
        hd95 = [s.hd95[name] for s in scores if s.hd95[name] is not None]
        out[name] = {"dice_mean": float(np.mean(dice)), "dice_std": float(np.std(dice)),
                     "hd95_mean": float(np.mean(hd95)) if hd95 else None, "hd95_std": float(np.std(hd95)) if hd95 else None,
                     "volumes": len(scores), "hd95_volumes": len(hd95)}
    return out


def _score(volume: str, pred: torch.Tensor, truth: torch.Tensor, spacing: np.ndarray, class_names) -> VolumeScores:
    dice = scores_from_counts(dice_counts(pred, truth, len(class_names)), class_names).per_class
    hd95 = {}
    for label, name in enumerate(class_names[1:], start=1):
        p, t = (pred == label).numpy(), (truth == label).numpy()
        hd95[name] = _hd95(p, t, spacing) if p.any() and t.any() else None
    return VolumeScores(volume, dice, hd95)


def _hd95(pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> float | None:
    """HD95 of two (Z, H, W) masks; ``spacing`` is (rows, columns, through-plane). A single
    slice is measured in 2D (its contour), a stack in 3D (its surface)."""
    from monai.metrics import compute_hausdorff_distance

    rows, columns, through = (float(s) for s in spacing)
    if len(pred) == 1:
        pred, truth, grid = pred[0], truth[0], [rows, columns]
    else:
        grid = [through, rows, columns]

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notices on its own internals
        value = compute_hausdorff_distance(one_hot(pred), one_hot(truth), percentile=95, spacing=[grid])
    value = float(value.item())
    return value if math.isfinite(value) else None
