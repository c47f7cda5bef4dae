"""nnU-Net's own preprocessing of its raw data set, for a network nnU-Net trained.

A network trained by nnU-Net saw what nnU-Net's ``DefaultPreprocessor`` made of each case,
so its Dice is only its Dice on slices made the same way. For a 2d configuration, per case
(every channel file and the label file on one grid):

1. read as nnU-Net's reader does, as (C, Z, Y, X) with the spacing reversed to (z, y, x)
   (``NibabelIOWithReorient`` first turns the volume to RAS), then ``transpose_forward``;
2. crop to the bounding box of the pixels that are non-zero in any channel (holes
   filled); labels of background outside that region become -1;
3. normalise each channel by its scheme (``ZScoreNormalization`` on the case, within the
   non-zero region when ``use_mask_for_norm``; ``CTNormalization`` clipped to the data
   set's 0.5-99.5 percentiles and scaled by its foreground mean and std;
   ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``);
4. resample each slice in plane to the configuration's spacing: cubic (order 3, edge
   mode, no anti-aliasing, scikit-image's ``resize``) for the image, each label's
   indicator linearly for the labels (the highest wins); the slice spacing is kept, as
   nnU-Net keeps it in 2d.

The network then sees each slice at the plan's patch size, as its training patches were:
a smaller slice is padded with zeros around its centre, a larger one cropped to its centre
(nnU-Net's planner makes the 2d patch cover the median slice, so most slices fit whole;
nnU-Net itself would slide a window over a larger one). Label -1 counts as background.
``tests/test_nnunet.py`` checks steps 1-4 against nnunetv2's ``DefaultPreprocessor``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
from scipy.ndimage import binary_fill_holes
from skimage.transform import resize

from ...errors import UserError
from ._channels import load_nifti
from ._files import cases_by_name, files_by_name, nnunet_labels, compile_group_by, group_of
from ._types import Slices, label_array

READERS = ("SimpleITKIO", "NibabelIO", "NibabelIOWithReorient")
SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
           "RGBTo01Normalization")
_EPS = 1e-8


@dataclass(frozen=True)
class NnunetPreprocessing:
    """What nnU-Net's plans say about making a 2d configuration's input from a raw case."""

    reader: str
    transpose_forward: tuple[int, int, int]
    spacing: tuple[float, float]  # in plane, (y, x) after transpose_forward
    schemes: tuple[str, ...]  # one per channel
    use_mask_for_norm: tuple[bool, ...]
    intensity: dict[str, dict]  # foreground_intensity_properties_per_channel, by channel index as a string
    patch_size: tuple[int, int]

    def to_dict(self) -> dict:
        """JSON-safe; ``NnunetPreprocessing.from_dict(p.to_dict()) == p`` (the model card stores it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NnunetPreprocessing":
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    @classmethod
    def from_plans(cls, plans: dict, configuration: dict) -> "NnunetPreprocessing":
        """From ``plans.json`` and its (resolved) 2d configuration; unknown readers or schemes raise UserError."""
        reader = plans.get("image_reader_writer", "SimpleITKIO")
        if reader not in READERS:
            raise UserError(f"the plans read images with {reader}: autosculpt reads NIfTI as {', '.join(READERS)} do; "
                            "convert the data set to NIfTI")
        schemes = tuple(configuration["normalization_schemes"])
        if unknown := sorted(set(schemes) - set(SCHEMES)):
            raise UserError(f"normalization scheme {unknown[0]} is not one of nnU-Net's: autosculpt knows {', '.join(SCHEMES)}")
        return cls(reader, tuple(plans.get("transpose_forward", (0, 1, 2))), tuple(configuration["spacing"]), schemes,
                   tuple(configuration.get("use_mask_for_norm") or (False,) * len(schemes)),
                   plans.get("foreground_intensity_properties_per_channel", {}), tuple(configuration["patch_size"]))


def read_case(files: list[Path], label_file: Path | None, reader: str) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """Channels as float32 (C, Z, Y, X), labels (Z, Y, X) or None, spacing (z, y, x): as nnU-Net's ``reader`` reads them."""
    def volume(file: Path) -> tuple[np.ndarray, tuple[float, ...]]:
        data, image = load_nifti(file)
        if reader == "NibabelIOWithReorient":
            image = nibabel.as_closest_canonical(image)
            data = np.asarray(image.get_fdata(dtype=np.float32))
        if data.ndim != 3:
            raise UserError(f"{file}: {data.ndim}D: nnU-Net's 2d configurations read 3D volumes (2D images as one slice)")
        return data.transpose(2, 1, 0), tuple(float(z) for z in image.header.get_zooms()[:3][::-1])

    channels, spacings = zip(*(volume(file) for file in files))
    labels = None if label_file is None else np.rint(volume(label_file)[0]).astype(np.int16)
    return np.stack(channels), labels, spacings[0]


def preprocess_case(data: np.ndarray, labels: np.ndarray | None, spacing: tuple, plan: NnunetPreprocessing
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-4 of the module's list: (C, Z, Y, X) float32 and its labels (Z, Y, X), -1 outside the cropped region."""
    order = plan.transpose_forward
    data = data.astype(np.float32).transpose(0, *(axis + 1 for axis in order))
    spacing = [spacing[axis] for axis in order]
    if labels is not None:
        labels = labels.transpose(order)
    data, labels = _crop_to_nonzero(data, labels)
    for channel in range(len(data)):
        data[channel] = _normalised(data[channel], labels, plan, channel)
    target = [spacing[0], *plan.spacing]
    shape = [int(round(old * size / new)) for old, size, new in zip(spacing, data.shape[1:], target)]
    return _resampled(data, shape[1:], order=3), _resampled_labels(labels, shape[1:])


def read_nnunet_raw(root: Path, plan: NnunetPreprocessing, group_by: str | None = None) -> Slices:
    """Every labelled case of nnU-Net's raw data set ``root``, preprocessed as nnU-Net does, as slices at the patch size."""
    images = files_by_name(root / "imagesTr", (".nii.gz", ".nii"))
    masks = files_by_name(root / "labelsTr", (".nii.gz", ".nii"), masks=True)
    cases, pattern = cases_by_name(images, masks), compile_group_by(group_by)
    class_names = nnunet_labels(root / "dataset.json")
    slices, labels, groups, volumes, spacing = [], [], [], [], []
    for name in sorted(cases):
        data, seg, case_spacing = read_case(cases[name], masks[name], plan.reader)
        if len(data) != len(plan.schemes):
            raise UserError(f"{name}: {len(data)} channel(s), the plans normalise {len(plan.schemes)}: "
                            "give the raw data set the network was trained on")
        data, seg = preprocess_case(data, seg, case_spacing, plan)
        data, seg = _fit_to_patch(data, np.maximum(seg, 0), plan.patch_size)
        slices.append(data.transpose(1, 0, 2, 3))
        labels.append(seg)
        groups += [group_of(name, cases[name][0], pattern)] * seg.shape[0]
        volumes += [name] * seg.shape[0]
        z = case_spacing[plan.transpose_forward[0]]
        spacing += [[*plan.spacing, z]] * seg.shape[0]
    return Slices(np.concatenate(slices), label_array(np.concatenate(labels)), tuple(groups), class_names,
                  tuple(volumes), np.asarray(spacing), "mm")


def _crop_to_nonzero(data: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    nonzero = binary_fill_holes(np.any(data != 0, axis=0))
    if not nonzero.any():
        box = tuple(slice(0, n) for n in nonzero.shape)
    else:
        box = tuple(slice(int(np.min(i)), int(np.max(i)) + 1) for i in np.nonzero(nonzero))
    inside = nonzero[box]
    cropped = np.zeros(inside.shape, np.int16) if labels is None else labels[box].astype(np.int16)
    cropped[(cropped == 0) & ~inside] = -1
    return data[(slice(None), *box)], cropped


def _normalised(image: np.ndarray, labels: np.ndarray, plan: NnunetPreprocessing, channel: int) -> np.ndarray:
    scheme = plan.schemes[channel]
    if scheme == "ZScoreNormalization":
        region = labels >= 0 if plan.use_mask_for_norm[channel] else np.ones(image.shape, bool)
        values = image[region]
        image[region] = (values - values.mean()) / max(values.std(), _EPS)
    elif scheme == "CTNormalization":
        properties = plan.intensity.get(str(channel))
        if properties is None:
            raise UserError(f"CTNormalization of channel {channel} needs foreground_intensity_properties_per_channel "
                            "in plans.json: give the plans nnU-Net wrote")
        image = np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"])
        image = (image - properties["mean"]) / max(properties["std"], _EPS)
    elif scheme == "RescaleTo01Normalization":
        image = image - image.min()
        image = image / max(image.max(), _EPS)
    elif scheme == "RGBTo01Normalization":
        image = image / 255.0
    return image.astype(np.float32)


def _resampled(data: np.ndarray, shape: list[int], order: int) -> np.ndarray:
    """Each (Y, X) plane of (C, Z, Y, X) ``data`` resized to ``shape``, as nnU-Net resizes images."""
    if list(data.shape[2:]) == shape:
        return data
    out = np.empty((*data.shape[:2], *shape), np.float32)
    for c in range(data.shape[0]):
        for z in range(data.shape[1]):
            out[c, z] = resize(data[c, z].astype(float), shape, order=order, mode="edge", anti_aliasing=False)
    return out


def _resampled_labels(labels: np.ndarray, shape: list[int]) -> np.ndarray:
    """Each (Y, X) plane of ``labels`` resized to ``shape`` as nnU-Net resizes segmentations: each
    label's indicator linearly, the label scoring highest wins, an exact tie goes to the nearest
    neighbour's label where it is among the tied (batchgenerators' ``resize_segmentation``)."""
    if list(labels.shape[1:]) == shape:
        return labels
    present = np.unique(labels)
    out = np.empty((labels.shape[0], *shape), labels.dtype)
    for z, plane in enumerate(labels):
        scores = np.stack([resize((plane == label).astype(float), shape, order=1, mode="edge", clip=True,
                                  anti_aliasing=False) for label in present])
        nearest = resize(plane.astype(float), shape, order=0, mode="edge", clip=True, anti_aliasing=False)
        nearest_index = np.searchsorted(present, nearest.astype(labels.dtype))
        top = scores.max(axis=0)
        nearest_score = np.take_along_axis(scores, nearest_index[None], axis=0)[0]
        winner = np.where((nearest_score == top) & (nearest_score > 0), nearest_index, scores.argmax(axis=0))
        out[z] = present[winner]
    return out


def _fit_to_patch(data: np.ndarray, labels: np.ndarray, patch: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, Z, Y, X) and (Z, Y, X) padded with zeros around the centre, or cropped to it, to (Y, X) = ``patch``."""
    for axis, size in enumerate(patch):
        have = data.shape[2 + axis]
        if have < size:
            before = (size - have) // 2
            data = np.pad(data, [(0, 0), (0, 0)] + [(before, size - have - before) if a == axis else (0, 0) for a in (0, 1)])
            labels = np.pad(labels, [(0, 0)] + [(before, size - have - before) if a == axis else (0, 0) for a in (0, 1)])
        elif have > size:
            start = (have - size) // 2
            data = np.take(data, range(start, start + size), axis=2 + axis)
            labels = np.take(labels, range(start, start + size), axis=1 + axis)
    return data, labels


@dataclass(frozen=True)
class CaseGeometry:
    """Where a case's preprocessed slices came from, to map predictions back onto its file's grid."""

    transposed_shape: tuple[int, int, int]  # (Z, Y, X) after transpose_forward, before cropping
    box: tuple[slice, slice, slice]  # the crop to the non-zero region
    resampled: tuple[int, int]  # (Y, X) of each slice after resampling, before fitting to the patch
    canonical_affine: np.ndarray | None  # NibabelIOWithReorient: the RAS affine the case was read in


def prepare_case(files: list[Path], plan: NnunetPreprocessing) -> tuple[np.ndarray, CaseGeometry]:
    """A raw case's network input, (Z, C, patch Y, patch X) float32, as :func:`read_nnunet_raw` makes slices."""
    data, _, spacing = read_case(files, None, plan.reader)
    transposed = tuple(data.shape[1:][axis] for axis in plan.transpose_forward)
    nonzero = binary_fill_holes(np.any(data.transpose(0, *(a + 1 for a in plan.transpose_forward)) != 0, axis=0))
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(nonzero)) if nonzero.any() else \
        tuple(slice(0, n) for n in transposed)
    prepared, _ = preprocess_case(data, None, spacing, plan)
    fitted, _ = _fit_to_patch(prepared, np.zeros(prepared.shape[1:], np.int16), plan.patch_size)
    canonical = nibabel.as_closest_canonical(nibabel.load(files[0])).affine if plan.reader == "NibabelIOWithReorient" else None
    return fitted.transpose(1, 0, 2, 3), CaseGeometry(transposed, box, tuple(prepared.shape[2:]), canonical)


def labels_on_file_grid(logits: np.ndarray, geometry: CaseGeometry, plan: NnunetPreprocessing, image) -> np.ndarray:
    """Labels (X, Y, Z) on the grid of the case's file ``image`` from the network's (Z, L, patch Y, patch X) logits:
    the patch fit undone, class probabilities resampled back linearly (as nnU-Net exports), argmax, the crop
    undone (background outside), the transpose and any reorientation undone."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = _unfit_patch(exp / exp.sum(axis=1, keepdims=True), geometry.resampled)
    cropped = tuple(s.stop - s.start for s in geometry.box)
    if tuple(probabilities.shape[2:]) != cropped[1:]:
        probabilities = np.stack([_resampled(p[:, None], list(cropped[1:]), order=1)[:, 0] for p in probabilities])
    labels = np.zeros(geometry.transposed_shape, np.uint8)
    labels[geometry.box] = probabilities.argmax(axis=1)
    labels = labels.transpose(np.argsort(plan.transpose_forward)).transpose(2, 1, 0)
    if geometry.canonical_affine is None:
        return labels
    back = nibabel.orientations.ornt_transform(nibabel.orientations.io_orientation(geometry.canonical_affine),
                                               nibabel.orientations.io_orientation(image.affine))
    return np.asarray(nibabel.orientations.apply_orientation(labels, back))


def _unfit_patch(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`_fit_to_patch` on (Z, L, patch Y, patch X): padding cropped, a cropped border given to background."""
    for axis, size in enumerate(shape):
        have = probabilities.shape[2 + axis]
        if have > size:
            start = (have - size) // 2
            probabilities = np.take(probabilities, range(start, start + size), axis=2 + axis)
        elif have < size:
            before = (size - have) // 2
            widths = [(0, 0), (0, 0)] + [(before, size - have - before) if a == axis else (0, 0) for a in (0, 1)]
            background = np.zeros(probabilities.shape[1])[None, :, None, None]
            background[0, 0] = 1.0
            padded = np.pad(probabilities - background, widths) + background
            probabilities = padded
    return probabilities
