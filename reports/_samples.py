"""Qualitative results: example slices with their masks drawn as inline PNG images."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..search.deploy.samples import QualitativeSample

# Label 1, 2, 3 (RV, myocardium, LV): Okabe-Ito colours, told apart with colour-blindness.
CLASS_COLOURS = ((230, 97, 0), (0, 158, 115), (86, 180, 233))
_ALPHA = 0.5


def sample_pngs(sample: QualitativeSample) -> dict[str, str | None]:
    """``data:`` URIs of the image alone and overlaid with each mask (None where absent)."""
    grey = _grey(sample.image)
    masks = {"truth": sample.truth, "baseline": sample.baseline, "exported": sample.exported}
    pngs = {"image": _data_uri(np.repeat(grey[..., None], 3, axis=2))}
    for name, mask in masks.items():
        pngs[name] = _data_uri(_overlay(grey, np.asarray(mask))) if mask is not None else None
    return pngs


def _grey(image: np.ndarray) -> np.ndarray:
    """The image scaled to 0..255 between its 1st and 99th percentiles."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = np.percentile(values, [1, 99])
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _overlay(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image with each class blended in its colour; other labels left grey."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float64)
    for label, colour in enumerate(CLASS_COLOURS, start=1):
        where = mask == label
        rgb[where] = (1 - _ALPHA) * rgb[where] + _ALPHA * np.array(colour)
    return rgb.round().astype(np.uint8)


def _data_uri(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
