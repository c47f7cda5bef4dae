"""What export hands the report besides the study: example slices with their masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QualitativeSample:
    """One validation slice with its ground truth and the two models' predictions.

    ``image`` is a (H, W) float array of any range; ``truth``, ``baseline`` and ``exported``
    are (H, W) integer label maps (0 background, 1 RV, 2 myocardium, 3 LV) of the same
    shape; a prediction or Dice that is None is shown as not available.
    """

    image: np.ndarray
    truth: np.ndarray
    baseline: np.ndarray | None = None
    exported: np.ndarray | None = None
    dice_baseline: float | None = None
    dice_exported: float | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.image)
        if len(shape) != 2:
            raise ValueError(f"a sample image must be 2-D (H, W), got shape {shape}")
        for name in ("truth", "baseline", "exported"):
            mask = getattr(self, name)
            if mask is not None and np.shape(mask) != shape:
                raise ValueError(f"sample {name} has shape {np.shape(mask)}, the image {shape}")
