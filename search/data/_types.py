"""The data set types: what every loader returns and what training code reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

SPLITS = ("train", "val", "test")


def label_dtype(masks: np.ndarray) -> type:
    """The type labels are stored in: uint8 where every label of ``masks`` is below 256 (an
    eighth of int64's memory: 0.7 GB less at ACDC's size), else int64."""
    return np.uint8 if masks.max(initial=0) < 256 else np.int64


def label_array(masks: np.ndarray) -> np.ndarray:
    """``masks`` in :func:`label_dtype` (no copy when it already is)."""
    return masks.astype(label_dtype(masks), copy=False)


class Slices(NamedTuple):
    """What a reader hands to the loader: every slice at the final size, before splitting.

    ``images`` float32 (N, C, H, W) in raw intensities, ``masks`` integer (N, H, W) in
    ``[0, len(class_names))``, ``groups`` the patient (group) of each slice, ``volumes``
    the volume (a patient's frame) each slice belongs to, its slices in order, and
    ``spacing`` float (N, 3): each slice's pixel size along rows and columns on the
    fitted grid and the distance to the next slice, in ``unit`` (``mm``, or ``px`` of
    the original image when the files carry no spacing).
    """

    images: np.ndarray
    masks: np.ndarray
    groups: tuple[str, ...]
    class_names: tuple[str, ...]
    volumes: tuple[str, ...]
    spacing: np.ndarray
    unit: str


# eq=False: tensors do not compare with ``==``; compare fields with torch.equal instead.
@dataclass(frozen=True, eq=False)
class Split:
    """One split: ``images`` float32 (N, C, H, W), each channel of each image normalised to
    zero mean and unit std; ``masks`` uint8 (int64 past label 255; :func:`label_array`) (N, H, W) holding labels in ``[0, num_classes)``;
    ``groups`` the patient (group) of each slice, so no patient is in two splits;
    ``volumes`` and ``spacing`` as in :class:`Slices` (per-patient figures read them)."""

    images: torch.Tensor
    masks: torch.Tensor
    groups: tuple[str, ...]
    volumes: tuple[str, ...] = ()
    spacing: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.groups)


@dataclass(frozen=True, eq=False)
class SegmentationData:
    """A data set split by patient into train, val and test.

    ``class_names[i]`` names label ``i``; ``source`` is ``"generated"`` or the path given;
    ``fingerprint`` is a short hex digest of the splits' content and the class names, so
    it changes whenever anything a model is trained or scored on changes.
    """

    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]
    source: str
    fingerprint: str
    spacing_unit: str = "mm"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image and mask."""
        height, width = self.train.images.shape[-2:]
        return height, width

    def describe(self) -> dict:
        """A JSON-safe summary: source, slices and groups per split, sizes, classes, fingerprint."""
        return {
            "source": self.source,
            "splits": {
                name: {"slices": len(split), "groups": len(set(split.groups))}
                for name, split in zip(SPLITS, (self.train, self.val, self.test))
            },
            "image_size": list(self.image_size),
            "in_channels": self.in_channels,
            "class_names": list(self.class_names),
            "spacing": _spacing_text(self.test.spacing, self.spacing_unit),
            "fingerprint": self.fingerprint,
        }


def _spacing_text(spacing: np.ndarray | None, unit: str) -> str:
    """The median voxel size, e.g. ``2.50 x 2.50 x 10.0 mm``."""
    if spacing is None or not len(spacing):
        return "unknown"
    rows, cols, through = np.median(spacing, axis=0)
    return f"{rows:.2f} x {cols:.2f} x {through:.1f} {unit}"
