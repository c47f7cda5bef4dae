"""``load_data``: read or generate slices, normalise them, split by patient, fingerprint."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_dir, write_atomically
from ...errors import UserError
from . import _cardiac
from ._files import read_folder
from ._nnunet import NnunetPreprocessing, read_nnunet_raw
from ._types import SegmentationData, Slices, Split, label_array

DEFAULT_PATIENTS = 60
FRACTIONS = {"val": 0.15, "test": 0.15}  # the rest is train
# Changing the generator's source changes the cache key, so a stale set is never served.
_GENERATOR_ID = hashlib.sha256(Path(_cardiac.__file__).read_bytes()).hexdigest()[:10]


def load_data(
    path: str | os.PathLike | None = None,
    *,
    image_size: int = 96,
    seed: int = 0,
    patients: int | None = None,
    group_by: str | None = None,
    nnunet: NnunetPreprocessing | None = None,
) -> SegmentationData:
    """The data set a search trains and scores on, split by patient into train/val/test.

    ``path`` None gives the generated cardiac set (``patients`` patients, default 60,
    cached on disk); a folder gives its ACDC or images/+masks/ data, and ``patients``
    is then ignored (so a preset may set it).  An images/+masks/ folder is grouped into
    patients by subfolder (images/PATIENT/NAME.png) or by file name up to the first
    ``_`` (images/PATIENT_NAME.png), or by ``group_by``, a regex whose first group is the
    patient (see ``_files.group_of``); ``group_by`` with ACDC or generated data is
    refused.  Every slice is fitted to ``image_size`` square (a multiple of 16) and
    normalised per image and channel.  The same arguments always give the same tensors, and the
    fingerprint covers the groups.  Bad settings or data raise :class:`UserError`.

    With ``nnunet`` (a network nnU-Net trained) ``path`` is nnU-Net's raw data set, read
    and preprocessed as nnU-Net does (:mod:`._nnunet`): its slices come at the plan's
    patch size, normalised by the plan, and ``image_size`` is not used.
    """
    if nnunet is not None:
        if path is None:
            raise UserError("a network nnU-Net trained needs its raw data set: give --data (or set $nnUNet_raw)")
        return _assemble(read_nnunet_raw(Path(path), nnunet, group_by), seed, str(path), normalised=True)
    _check_settings(image_size, seed, patients)
    if path is None:
        if group_by is not None:
            raise UserError("--group-by without --data: the generated set is grouped by patient; drop --group-by")
        slices = _generated(image_size, seed, patients or DEFAULT_PATIENTS)
    else:
        slices = read_folder(Path(path), image_size, group_by)
    return _assemble(slices, seed, "generated" if path is None else str(path))


def _check_settings(image_size: int, seed: int, patients: int | None) -> None:
    if image_size < 16 or image_size % 16:
        lower, upper = max(16, image_size // 16 * 16), max(16, -(-image_size // 16) * 16)
        choices = f"{lower} or {upper}" if lower != upper else str(lower)
        raise UserError(f"image size {image_size} is not a multiple of 16 (the U-Net pools 4 times): use {choices}")
    if seed < 0:
        raise UserError(f"seed {seed} is negative: use a seed >= 0")
    if patients is not None and patients < 3:
        raise UserError(f"{patients} patients cannot fill train, val and test: ask for at least 3")


def _generated(image_size: int, seed: int, patients: int) -> Slices:
    """The generated set, from the cache when there (written atomically, so workers may share it)."""
    file = cache_dir("data") / f"cardiac-{_GENERATOR_ID}-{image_size}px-seed{seed}-{patients}p.npz"
    try:
        with np.load(file) as stored:
            return _generated_slices(stored["images"], stored["masks"], tuple(map(str, stored["groups"])))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # missing, or torn by a crash: generate it again
    images, masks, groups, _ = _cardiac.generate(image_size, seed, patients)

    def save(partial: Path) -> None:
        with partial.open("wb") as handle:
            np.savez(handle, images=images, masks=masks, groups=np.array(groups))

    write_atomically(file, save)
    return _generated_slices(images, masks, groups)


def _generated_slices(images: np.ndarray, masks: np.ndarray, groups: tuple[str, ...]) -> Slices:
    """Generated slices: one volume per patient, at the spacing the generator assumes."""
    spacing = _cardiac.spacing(images.shape[-1], len(images))
    return Slices(images[:, None], masks, groups, _cardiac.CLASS_NAMES, groups, spacing, "mm")


def split_groups(groups: tuple[str, ...], seed: int) -> dict[str, set[str]]:
    """Shuffle the distinct groups with ``seed`` and deal them 70/15/15 into train, val
    and test, at least one each; a group (patient) is in exactly one split."""
    distinct = sorted(set(groups))
    if len(distinct) < 3:
        raise UserError(
            f"only {len(distinct)} patients: train, val and test need at least 3: add data, "
            "or check how images/ files are grouped into patients (--group-by)"
        )
    order = [distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))]
    sizes = {name: max(1, round(fraction * len(distinct))) for name, fraction in FRACTIONS.items()}
    val_end = sizes["val"]
    test_end = val_end + sizes["test"]
    return {"val": set(order[:val_end]), "test": set(order[val_end:test_end]), "train": set(order[test_end:])}


def normalise(images: np.ndarray) -> np.ndarray:
    """Each (H, W) plane of ``images`` (..., H, W), i.e. each channel of each image, shifted
    and scaled on its own to zero mean and unit std (a flat plane becomes 0)."""
    images = images.astype(np.float32, copy=False)
    mean = images.mean(axis=(-2, -1), keepdims=True)
    std = images.std(axis=(-2, -1), keepdims=True)
    return (images - mean) / np.maximum(std, 1e-6)


def _assemble(slices: Slices, seed: int, source: str, normalised: bool = False) -> SegmentationData:
    images = slices.images if normalised else normalise(slices.images)
    groups = np.array(slices.groups)
    splits = {}
    for name, members in split_groups(slices.groups, seed).items():
        chosen = np.isin(groups, list(members))
        splits[name] = Split(
            images=torch.from_numpy(np.ascontiguousarray(images[chosen])),
            masks=torch.from_numpy(label_array(slices.masks[chosen])),
            groups=tuple(groups[chosen].tolist()),
            volumes=tuple(np.array(slices.volumes)[chosen].tolist()),
            spacing=np.asarray(slices.spacing, dtype=np.float64)[chosen],
        )
    fingerprint = _fingerprint(splits, slices.class_names)
    return SegmentationData(**splits, class_names=slices.class_names, source=source, fingerprint=fingerprint,
                            spacing_unit=slices.unit)


def _fingerprint(splits: dict[str, Split], class_names: tuple[str, ...]) -> str:
    """12 hex digits over every split's tensors and groups and the class names."""
    digest = hashlib.blake2b(digest_size=6)
    digest.update(repr(class_names).encode())
    for name in sorted(splits):
        split = splits[name]
        digest.update(name.encode())
        digest.update(split.images.numpy().tobytes())
        digest.update(split.masks.numpy().tobytes())
        digest.update("\n".join(split.groups).encode())
    return digest.hexdigest()
