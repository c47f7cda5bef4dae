"""Segmentation data sets, split by patient into train, val and test.

``load_data()`` gives the generated cardiac MRI set (nothing is ever downloaded);
``load_data(path)`` reads a folder in the ACDC layout (``patientNNN/`` NIfTI volumes)
or with ``images/`` and ``masks/`` holding same-named 2D files or NIfTI volumes (several
channels: colour files, or nnU-Net's one NIfTI file per channel, see ``_channels``).
``save_preview`` draws a few slices beside their masks, to check by eye what a search
will train on.
"""

from ._channels import VOLUME_SUFFIXES, channel_of, group_channels, is_volume, load_nifti, volume_name
from ._files import IMAGE_SUFFIXES, fit, image_channels, read_image, scaled_size, suggested_image_size
from ._load import load_data, normalise
from ._nnunet import NnunetPreprocessing, labels_on_file_grid, prepare_case
from ._preview import image_tile, overlay_tile, save_preview
from ._types import SegmentationData, Split

__all__ = [
    "IMAGE_SUFFIXES",
    "NnunetPreprocessing",
    "SegmentationData",
    "Split",
    "VOLUME_SUFFIXES",
    "channel_of",
    "fit",
    "group_channels",
    "image_channels",
    "image_tile",
    "is_volume",
    "labels_on_file_grid",
    "load_data",
    "load_nifti",
    "normalise",
    "overlay_tile",
    "prepare_case",
    "read_image",
    "save_preview",
    "scaled_size",
    "suggested_image_size",
    "volume_name",
]
