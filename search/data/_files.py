"""Real data from a folder: the ACDC layout of NIfTI volumes, or images/ and masks/ files
(or nnU-Net's raw data set: imagesTr/ and labelsTr/, with label names from dataset.json).

Every problem with the data is a :class:`UserError` whose one line names the file, the
problem and the fix.  Slices come back fitted to the requested size (see :func:`fit`)
but not normalised: the loader does that for every source alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import UserError
from ._cardiac import CLASS_NAMES as CARDIAC_CLASS_NAMES
from ._channels import VOLUME_SUFFIXES, channel_of, check_same_channels, group_channels, is_volume, load_nifti
from ._types import Slices, label_dtype

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
LAYOUTS = ("patientNNN/ folders of NIfTI volumes (ACDC), images/ and masks/ folders of 2D files or NIfTI volumes, "
           "or nnU-Net's imagesTr/ and labelsTr/")
PAIR_FOLDERS = (("images", "masks"), ("imagesTr", "labelsTr"))  # ours, and nnU-Net's raw data set
MAX_DEFAULT_SIZE = 256  # the largest input size chosen for the user: latency and training grow with its square
_GREY_MODES = ("1", "L", "LA", "La")  # Pillow's 8-bit grey modes (alpha dropped)
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # grey with more than 8 bits, kept as they are
_ACDC_FILE = re.compile(r"^(patient\d+_frame\d+)(_gt)?\.nii(\.gz)?$")


def read_folder(root: Path, image_size: int, group_by: str | None = None) -> Slices:
    """Read ``root`` in whichever layout it has: ACDC first, then images/ and masks/.

    ``group_by`` (a regex, see :func:`group_of`) regroups images/+masks/ slices; ACDC is
    grouped by patient folder, so a ``group_by`` there is refused.
    """
    _check_root(root)
    patients = sorted(p for p in [*root.glob("patient*"), *root.glob("*/patient*")] if p.is_dir())
    if patients:
        if group_by is not None:
            raise UserError(f"{root}: --group-by with ACDC data, which is grouped by patient folder: drop --group-by")
        return _read_acdc(patients, image_size)
    if _pair_folders(root):
        return _read_pairs(root, image_size, compile_group_by(group_by))
    raise UserError(f"{root}: matches no layout: expected {LAYOUTS}")


def _pair_folders(root: Path) -> tuple[Path, Path] | None:
    """The (images, masks) folders of ``root`` (see :data:`PAIR_FOLDERS`): the first pair of
    which one exists; None when none does."""
    return next(((root / i, root / m) for i, m in PAIR_FOLDERS if (root / i).is_dir() or (root / m).is_dir()), None)


def _check_root(root: Path) -> None:
    if not root.exists():
        raise UserError(f"{root}: no such folder: check the path, or leave out --data to use the generated set")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder: pass a folder holding {LAYOUTS}")
    if not any(root.iterdir()):
        raise UserError(f"{root}: empty folder: put {LAYOUTS} in it")


def suggested_image_size(root: Path) -> tuple[int, int]:
    """(size, median): the median longer side in pixels of the slices in ``root`` (either
    layout; headers only, no pixels read) and the input size it suggests, rounded to a
    multiple of 16 between 32 and MAX_DEFAULT_SIZE. UserError for a folder of neither layout."""
    _check_root(root)
    patients = sorted(p for p in [*root.glob("patient*"), *root.glob("*/patient*")] if p.is_dir())
    if patients:
        sides = [max(nibabel.load(image).shape[:2]) for folder in patients for image, _ in _acdc_pairs(folder)]
    elif (folders := _pair_folders(root)) and folders[0].is_dir():
        files = files_by_name(folders[0], IMAGE_SUFFIXES + VOLUME_SUFFIXES).values()
        sides = [max(nibabel.load(file).shape[:2] if is_volume(file) else _open_lazily(file).size) for file in files]
    else:
        raise UserError(f"{root}: matches no layout: expected {LAYOUTS}")
    median = int(np.median(sides))
    return min(MAX_DEFAULT_SIZE, max(32, int(median / 16 + 0.5) * 16)), median


def _open_lazily(file: Path) -> Image.Image:
    """The image's header (size, mode) without its pixels."""
    try:
        return Image.open(file)
    except Exception as error:  # Pillow raises OSError, ValueError, DecompressionBombError...
        raise UserError(f"{file}: unreadable image ({error}): re-export or remove the file") from None


def compile_group_by(pattern: str | None) -> re.Pattern | None:
    """``--group-by``'s regex compiled (None stays None); an invalid one is a :class:`UserError`."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UserError(f"--group-by '{pattern}': invalid regex ({error}): fix it, e.g. '^(p\\d+)_'") from None


def group_of(name: str, file: Path, group_by: re.Pattern | None) -> str:
    """The patient (group) of the slice whose path under images/, without suffix, is ``name``.

    With ``group_by`` it is the regex's first capture group (the whole match when it has
    none) searched in ``name``; a file it does not match is a :class:`UserError`.
    Otherwise it is the first folder of ``name`` (``p012/s7`` -> ``p012``) or, for a file
    directly in images/, its stem before the first ``_`` (``p012_s7`` -> ``p012``; a
    stem without ``_`` is its own group).  Slices of one group never share two splits.
    """
    if group_by is not None:
        match = group_by.search(name)
        group = match and (match.group(1) if group_by.groups else match.group(0))
        if not group:
            raise UserError(
                f"{file}: --group-by '{group_by.pattern}' finds no patient in {name!r}: "
                "use a regex that matches every file's path under images/ (its first group is the patient)"
            )
        return group
    if "/" in name:
        return name.split("/")[0]
    return name.split("_")[0] or name


def fit(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit (n, c, h, w) images and their (n, h, w) masks into size x size: scale so the
    longer side is ``size`` (images bilinear with anti-aliasing, masks nearest), then pad
    the shorter side evenly (each channel of an image with its minimum, masks with
    background).  Returns float32 (n, c, size, size) images and (n, size, size) labels (in :func:`label_dtype`)."""
    height, width = images.shape[2:]
    scaled = scaled_size(height, width, size)
    image_tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    mask_tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    if scaled != (height, width):
        image_tensor = F.interpolate(image_tensor, size=scaled, mode="bilinear", align_corners=False, antialias=True)
        mask_tensor = F.interpolate(mask_tensor, size=scaled, mode="nearest-exact")
    top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
    out_images = np.empty((*images.shape[:2], size, size), dtype=np.float32)
    out_images[:] = image_tensor.amin(dim=(2, 3)).numpy()[:, :, None, None]
    out_images[:, :, top : top + scaled[0], left : left + scaled[1]] = image_tensor.numpy()
    out_masks = np.zeros((len(images), size, size), dtype=label_dtype(masks))
    out_masks[:, top : top + scaled[0], left : left + scaled[1]] = mask_tensor[:, 0].numpy()
    return out_images, out_masks


def scaled_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of a height x width slice scaled so that its longer side is ``size`` (before padding)."""
    ratio = size / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def fitted_spacing(height: int, width: int, size: int, pixel: tuple[float, float], through: float) -> list[float]:
    """(rows, columns, through-plane) spacing on the fitted grid of a slice whose pixels were ``pixel``."""
    rows, columns = scaled_size(height, width, size)
    return [pixel[0] * height / rows, pixel[1] * width / columns, through]


def check_labels(file: Path, mask: np.ndarray, num_classes: int | None, fix: str) -> None:
    """Labels must be integers in ``[0, num_classes)`` (any integer >= 0 when None)."""
    fractional = mask[mask != np.round(mask)]
    if fractional.size:
        raise UserError(f"{file}: non-integer label {fractional[0]}: save masks with integer labels 0, 1, 2, ...")
    if mask.size and mask.min() < 0:
        raise UserError(f"{file}: negative label {mask.min():g}: labels run from 0 (background) upward")
    if num_classes is not None and mask.size and mask.max() >= num_classes:
        raise UserError(
            f"{file}: label {mask.max():g} outside the {num_classes} classes (0-{num_classes - 1}): {fix}"
        )


def _read_acdc(patients: list[Path], image_size: int) -> Slices:
    """Every slice (third axis) of every frame with a ``_gt`` mask; group = patient folder,
    volume = frame, spacing from the NIfTI header."""
    images, masks, groups, volumes, spacing = [], [], [], [], []
    for folder in patients:
        for image_file, mask_file in _acdc_pairs(folder):
            volume, labels, zooms = _volume_pair([image_file], mask_file)
            check_labels(mask_file, labels, len(CARDIAC_CLASS_NAMES), "fix the mask (ACDC labels are 0-3)")
            fitted_images, fitted_masks = fit(volume, labels, image_size)
            images.append(fitted_images)
            masks.append(fitted_masks)
            groups += [folder.name] * len(fitted_images)
            volumes += [image_file.name.split(".")[0]] * len(fitted_images)
            spacing += [fitted_spacing(*volume.shape[2:], image_size, zooms[:2], zooms[2])] * len(fitted_images)
    return Slices(np.concatenate(images), np.concatenate(masks), tuple(groups), CARDIAC_CLASS_NAMES, tuple(volumes),
                  np.asarray(spacing), "mm")


def _acdc_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) files of one patient folder, matched by frame name."""
    images, masks = {}, {}
    for file in folder.iterdir():
        match = _ACDC_FILE.match(file.name)
        if match:
            (masks if match[2] else images)[match[1]] = file
    if not images and not masks:
        raise UserError(f"{folder}: no patientNNN_frameFF.nii.gz volumes: add them or remove the folder")
    if unmatched := sorted(images.keys() - masks.keys()):
        name = unmatched[0]
        raise UserError(f"{images[name]}: image without mask: add {name}_gt.nii.gz beside it or remove it")
    if unmatched := sorted(masks.keys() - images.keys()):
        name = unmatched[0]
        raise UserError(f"{masks[name]}: mask without image: add {name}.nii.gz beside it or remove it")
    return [(images[name], masks[name]) for name in sorted(images)]


def _nifti(file: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume as float32 (X, Y, Z) and its voxel size in mm; a 2D image becomes one slice."""
    volume, image = load_nifti(file)
    zooms = tuple(float(z) for z in (*image.header.get_zooms()[:3], 1.0, 1.0)[:3])
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim == 2:
        volume = volume[:, :, None]
    if volume.ndim != 3:
        raise UserError(f"{file}: {volume.ndim}D volume: give one 3D volume per frame (no time axis), and "
                        "channels as CASE_0000.nii.gz, CASE_0001.nii.gz, ...")
    return volume, zooms


def _volume_pair(files: list[Path], mask_file: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The channel files of one volume as float32 (Z, C, X, Y) slices, its mask as (Z, X, Y),
    and the voxel size of the first file; every file must be on the mask's grid."""
    labels, _ = _nifti(mask_file)
    channels, zooms = zip(*(_nifti(file) for file in files))
    for file, volume in zip(files, channels):
        if volume.shape != labels.shape:
            raise UserError(
                f"{mask_file}: shape {labels.shape} differs from {file.name} {volume.shape}: "
                "export the mask and every channel on one grid"
            )
    return np.stack(channels).transpose(3, 0, 1, 2), labels.transpose(2, 0, 1), zooms[0]


def _read_pairs(root: Path, image_size: int, group_by: re.Pattern | None) -> Slices:
    """images/NAME.* with masks/NAME.png|tif, NAME a path that may hold folders
    (images/PATIENT/SLICE.png); or NIfTI volumes images/NAME.nii.gz (or channel files, see
    :func:`cases_by_name`) with masks/NAME.nii.gz, sliced along their third axis.  Each slice's
    group (patient) is :func:`group_of` of NAME; every image has the first one's channels.
    nnU-Net's imagesTr/ and labelsTr/ are read the same way."""
    image_folder, mask_folder = _pair_folders(root)
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            raise UserError(f"{root}: has no {folder.name}/ folder: add {folder.name}/ with one file per slice, same names")
    cases = cases_by_name(files_by_name(image_folder, IMAGE_SUFFIXES + VOLUME_SUFFIXES),
                          masks := files_by_name(mask_folder, MASK_SUFFIXES + VOLUME_SUFFIXES, masks=True))
    names = sorted(cases)
    case_groups = [group_of(name, cases[name][0], group_by) for name in names]
    first = cases[names[0]][0]
    nifti = is_volume(first)
    channels = {name: len(files) if nifti else image_channels(files[0]) for name, files in cases.items()}
    for name in names:  # from the headers, before any pixel is read
        check_same_channels(cases[name][0], channels[name], first, channels[names[0]])
    class_names = _class_names(root)
    fix = "fix the mask or add the class's name to classes.txt"
    pairs, groups, volume_names, spacing = [], [], [], []
    for name, group in zip(names, case_groups):
        if nifti:
            image, mask, zooms = _volume_pair(cases[name], masks[name])
        else:
            image, mask, zooms = read_image(cases[name][0])[None], _mask(masks[name])[None], (1.0, 1.0, 1.0)
            if image.shape[2:] != mask.shape[1:]:
                raise UserError(
                    f"{masks[name]}: size {mask.shape[2]}x{mask.shape[1]} differs from its image "
                    f"{cases[name][0].name} {image.shape[3]}x{image.shape[2]}: resize the mask (nearest) to the image"
                )
        check_labels(masks[name], mask, len(class_names) if class_names else None, fix)
        pairs.append(fit(image, mask, image_size))
        groups += [group] * len(image)
        volume_names += [name if nifti else group] * len(image)
        spacing += [fitted_spacing(*image.shape[2:], image_size, zooms[:2], zooms[2])] * len(image)
    if class_names is None:
        top = max(int(fitted_mask.max()) for _, fitted_mask in pairs)
        class_names = ("background", *(f"class{i}" for i in range(1, max(2, top + 1))))
    return Slices(np.concatenate([image for image, _ in pairs]), np.concatenate([mask for _, mask in pairs]),
                  tuple(groups), class_names, tuple(volume_names), np.asarray(spacing), "mm" if nifti else "px")


def cases_by_name(images: dict[str, Path], masks: dict[str, Path]) -> dict[str, list[Path]]:
    """The image files of each mask, by name: images/NAME with masks/NAME, or nnU-Net's channel
    files images/NAME_0000.nii.gz, NAME_0001.nii.gz, ... with masks/NAME.nii.gz (a name with a
    mask of its own is never a channel file).  Unmatched files, and 2D files mixed with
    volumes, are a :class:`UserError`."""
    volumes = [file for file in images.values() if is_volume(file)]
    if volumes and len(volumes) < len(images):
        flat = next(file for file in images.values() if not is_volume(file))
        raise UserError(f"{volumes[0]}: NIfTI volume beside 2D images such as {flat.name}: keep one kind in images/")
    cases = {name: [file] for name, file in images.items() if name in masks}
    channel_files = {name: file for name, file in images.items()
                     if name not in masks and is_volume(file) and (channel := channel_of(name)) and channel[0] in masks}
    for case, files in group_channels(channel_files).items():
        if case in cases:
            raise UserError(f"{files[0]}: channel file beside {cases[case][0].name}: keep either the one file or "
                            f"{case}_0000, {case}_0001, ...")
        cases[case] = files
    if unmatched := sorted(images.keys() - cases.keys() - channel_files.keys()):
        file = images[unmatched[0]]
        mask = f"{unmatched[0]}.nii.gz" if is_volume(file) else f"{unmatched[0]}.png"
        raise UserError(f"{file}: image without mask: add masks/{mask} or remove the image")
    if unmatched := sorted(masks.keys() - cases.keys()):
        name = unmatched[0]
        image = f"{name}.nii.gz (or {name}_0000.nii.gz, ... one per channel)" if is_volume(masks[name]) else f"{name}.png"
        raise UserError(f"{masks[name]}: mask without image: add images/{image} or remove the mask")
    return cases


def files_by_name(folder: Path, suffixes: tuple[str, ...], masks: bool = False) -> dict[str, Path]:
    """Files under ``folder`` (subfolders too) with one of ``suffixes``, by their path
    relative to ``folder`` without suffix, with ``/`` separators (``p012/s7``); hidden
    files and folders are skipped. ``masks``: the folder holds masks (JPEG refused)."""
    files: dict[str, Path] = {}
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        suffix = next((s for s in suffixes if file.name.lower().endswith(s)), None)
        if any(part.startswith(".") for part in relative.parts) or not file.is_file():
            continue
        if masks and file.suffix.lower() in (".jpg", ".jpeg"):
            raise UserError(f"{file}: JPEG mask: JPEG blurs labels, save the mask as PNG")
        if suffix is None:
            continue
        name = relative.as_posix()[: -len(suffix)]
        if name in files:
            raise UserError(f"{file}: same name as {files[name].name}: keep one file per slice name")
        files[name] = file
    if not files:
        kinds = "PNG, TIFF or NIfTI masks" if masks else "PNG, TIFF, JPEG or NIfTI images"
        raise UserError(f"{folder}: no {kinds}: add one file per slice")
    return files


def _open(file: Path) -> Image.Image:
    """The first frame of an image file, fully decoded (so a truncated file fails here)."""
    try:
        image = Image.open(file)
        image.load()
    except Exception as error:  # Pillow raises OSError, ValueError, DecompressionBombError...
        raise UserError(f"{file}: unreadable image ({error}): re-export or remove the file") from None
    if getattr(image, "n_frames", 1) > 1:
        raise UserError(f"{file}: {image.n_frames} frames: save one 2D slice per file")
    return image


def image_channels(file: Path) -> int:
    """The channels :func:`read_image` gives ``file``, from its header alone: 3 or 1."""
    return 1 if _open_lazily(file).mode in (*_GREY_MODES, *_WIDE_MODES) else 3


def read_image(file: Path, grey: bool = False) -> np.ndarray:
    """A float32 (C, H, W) image: 3 channels (RGB) for a colour file, alpha dropped, else 1
    (grey, 16-bit and float values kept); ``grey`` reads a colour file as its luminance."""
    image = _open(file)
    if image.mode not in (*_GREY_MODES, *_WIDE_MODES):
        image = image.convert("L" if grey else "RGB")
    elif image.mode in _GREY_MODES:
        image = image.convert("L")
    pixels = np.asarray(image, dtype=np.float32)
    return pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]


def _mask(file: Path) -> np.ndarray:
    """A label image as float64 (H, W), checked to be single-channel (palette indices kept)."""
    image = _open(file)
    if image.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
        raise UserError(f"{file}: {image.mode} mask: save labels as a single-channel (greyscale) PNG")
    return np.asarray(image, dtype=np.float64)


def _class_names(root: Path) -> tuple[str, ...] | None:
    """Names from ``classes.txt`` (one per line, label 0 first), else from nnU-Net's
    ``dataset.json`` labels, or None when neither is there."""
    file = root / "classes.txt"
    if not file.is_file():
        return nnunet_labels(root / "dataset.json") if (root / "dataset.json").is_file() else None
    names = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    if len(names) < 2:
        raise UserError(f"{file}: {len(names)} class names: list at least 2, background first, one per line")
    return names


def nnunet_labels(file: Path) -> tuple[str, ...]:
    """Class names by label from nnU-Net's ``dataset.json``: v2 ``{"labels": {"background": 0,
    "RV": 1}}`` or v1 ``{"labels": {"0": "background", "1": "RV"}}``; labels 0, 1, ... without gaps."""
    try:
        labels = json.loads(file.read_text())["labels"]
        by_label = dict((int(k), str(v)) if k.isdigit() else (int(v), str(k)) for k, v in labels.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{file}: no usable labels (one integer label per name; region-based labels are not supported): "
                        "fix it or list the names in classes.txt") from None
    if sorted(by_label) != list(range(len(by_label))) or len(by_label) < 2:
        raise UserError(f"{file}: labels {sorted(by_label)} are not 0, 1, 2, ...: fix it or list the names in classes.txt")
    return tuple(by_label[i] for i in range(len(by_label)))
