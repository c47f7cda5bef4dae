"""Images with several channels: colour files, and NIfTI cases kept as one file per channel.

A PNG, TIFF or JPEG in colour has 3 channels (red, green, blue; alpha is dropped), a grey
one 1.  Several MRI sequences of one case follow nnU-Net's convention: one NIfTI file per
channel, ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... on one grid, in the order of
their 4-digit index, and one label volume ``CASE.nii.gz``.  A NIfTI volume's own last
axis is never read as channels: a 4D volume is a cine (X, Y, Z, T) to autosculpt, and
(X, Y, Z, C) cannot be told apart from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel
import numpy as np

from ...errors import UserError

VOLUME_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")


def is_volume(file: Path) -> bool:
    """Whether ``file`` is a NIfTI volume, by its name."""
    return file.name.lower().endswith(VOLUME_SUFFIXES)


def volume_name(file: Path) -> str:
    """``file``'s name without its NIfTI suffix (``case_0001.nii.gz`` -> ``case_0001``)."""
    return next(file.name[: -len(s)] for s in VOLUME_SUFFIXES if file.name.lower().endswith(s))


def channel_of(name: str) -> tuple[str, int] | None:
    """(case, channel) of a channel file's name without suffix (``brain_0001`` -> ``("brain", 1)``);
    None for a name that does not end in ``_`` and 4 digits."""
    match = _CHANNEL_FILE.match(name)
    return (match[1], int(match[2])) if match else None


def group_channels(files: dict[str, Path]) -> dict[str, list[Path]]:
    """Channel files (by name without suffix, each ``CASE_NNNN``) grouped by case, each
    case's files in channel order; channels not numbered 0000, 0001, ... without gaps are
    a :class:`UserError`."""
    cases: dict[str, dict[int, Path]] = {}
    for name, file in files.items():
        case, channel = channel_of(name)
        cases.setdefault(case, {})[channel] = file
    for case, channels in cases.items():
        if sorted(channels) != list(range(len(channels))):
            missing = min(set(range(len(channels) + 1)) - channels.keys())
            raise UserError(f"{channels[max(channels)]}: no {case}_{missing:04d} beside it: number a case's channel "
                            "files _0000, _0001, ... without gaps")
    return {case: [channels[i] for i in sorted(channels)] for case, channels in cases.items()}


def load_nifti(file: Path) -> tuple[np.ndarray, nibabel.Nifti1Image]:
    """The voxels of ``file`` as float32 (scaling applied) and the loaded image (grid, affine, header)."""
    try:
        image = nibabel.load(file)
        return np.asarray(image.get_fdata(dtype=np.float32)), image
    except Exception as error:  # nibabel, gzip and zlib raise many types for a bad file
        raise UserError(f"{file}: unreadable NIfTI ({error}): re-export or remove the file") from None


def check_same_channels(file: Path, channels: int, first: Path, expected: int) -> None:
    """Every image of a data set has the channels of the first (``first``): a
    :class:`UserError` naming both otherwise."""
    if channels != expected:
        raise UserError(f"{file}: {channels} channel(s), but {first.name} has {expected}: give every image the same "
                        "channels (all grey, all RGB, or the same _0000, _0001, ... NIfTI files per case)")
