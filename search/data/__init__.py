"""Segmentation data sets, split by patient into train, val and test.

``load_data()`` gives the generated cardiac MRI set (nothing is ever downloaded);
``load_data(path)`` reads a folder in the ACDC layout (``patientNNN/`` NIfTI volumes)
or with ``images/`` and ``masks/`` holding same-named 2D files.  ``save_preview`` draws
a few slices beside their masks, to check by eye what a search will train on.
"""

from ._files import IMAGE_SUFFIXES, fit, read_image, scaled_size, suggested_image_size
from ._load import load_data, normalise
from ._preview import grey_tile, overlay_tile, save_preview
from ._types import SegmentationData, Split

__all__ = [
    "IMAGE_SUFFIXES",
    "SegmentationData",
    "Split",
    "fit",
    "grey_tile",
    "load_data",
    "normalise",
    "overlay_tile",
    "read_image",
    "save_preview",
    "scaled_size",
    "suggested_image_size",
]
