"""Segment images and volumes with an exported model (ONNX Runtime only: no PyTorch needed to deploy).

2D files (PNG, TIFF, JPEG) give ``STEM_mask.png`` and ``STEM_overlay.png``. A NIfTI volume
gives a label volume of the same file name, shape, affine and header (nnU-Net's
convention): it is cut into slices along its third (through-plane) axis, as training
data are, each slice fitted and normalised as in training, predicted, and mapped back
with nearest-neighbour resizing; a 4D volume (cine) is predicted frame by frame.
Inference runs at the thread count the model card says the model was measured at.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import onnxruntime
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import UserError
from .data import IMAGE_SUFFIXES, fit, grey_tile, normalise, overlay_tile, read_image, scaled_size

VOLUME_SUFFIXES = (".nii", ".nii.gz")


def load_session(model_dir: Path) -> onnxruntime.InferenceSession:
    """ONNX Runtime session of ``model_dir/model.onnx`` (as written by ``autosculpt export``),
    at the thread count of its model card's latency figure (1 without a card)."""
    path = model_dir / "model.onnx"
    if not path.is_file():
        raise UserError(f"{path} not found: give the folder written by autosculpt export --out DIR")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = measured_threads(model_dir)
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"{path}: not a valid ONNX model ({str(error).splitlines()[0]}): export it again") from None


def measured_threads(model_dir: Path) -> int:
    """The thread count of the model card's latency figure; 1 when there is no card."""
    try:
        card = json.loads((model_dir / "model.json").read_text())
        return max(1, int(card["latency"]["threads"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def segment(session: onnxruntime.InferenceSession, image: np.ndarray) -> np.ndarray:
    """Label map of a 2D ``image`` at its own size: fitted to the model's input like the
    training data (scale, pad, normalise), predicted, then mapped back."""
    size = session.get_inputs()[0].shape[-1]
    fitted, _ = fit(image[None], np.zeros((1, *image.shape), dtype=np.int64), size)
    batch = normalise(fitted)[:, None]
    labels = session.run(None, {session.get_inputs()[0].name: batch})[0].argmax(1)[0]
    return _unfit(labels, image.shape, size)


def _unfit(labels: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Undo :func:`fit` on a label map: crop the padding, resize (nearest) to ``shape``."""
    scaled = scaled_size(*shape, size)
    top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
    crop = labels[top : top + scaled[0], left : left + scaled[1]].astype(np.uint8)
    return np.asarray(Image.fromarray(crop).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def segment_volume(session: onnxruntime.InferenceSession, volume: np.ndarray, advance=lambda: None) -> np.ndarray:
    """Labels (uint8) of a (X, Y, Z) or (X, Y, Z, T) volume, slice by slice along Z, frame by
    frame along T; ``advance()`` is called after each slice."""
    if volume.ndim == 4:
        return np.stack([segment_volume(session, volume[..., t], advance) for t in range(volume.shape[3])], axis=3)
    labels = np.empty(volume.shape, dtype=np.uint8)
    for z in range(volume.shape[2]):
        labels[:, :, z] = segment(session, volume[:, :, z])
        advance()
    return labels


def inputs_of(paths: list[Path]) -> list[Path]:
    """The files to predict: each file given, and the images and volumes in each folder given
    (sorted); a missing path or an unsupported file is a UserError."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and _kind(p))
        elif path.is_file():
            if not _kind(path):
                raise UserError(f"{path}: not an image or volume: give {', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)} files")
            files.append(path)
        else:
            raise UserError(f"{path} not found: give existing image or NIfTI files, or folders of them")
    if not files:
        raise UserError(f"no image or NIfTI file in {', '.join(map(str, paths))}: give PNG, TIFF, JPEG or .nii.gz files")
    return files


def predict_files(model_dir: Path, inputs: list[Path], out: Path, quiet: bool = False) -> list[Path]:
    """Segment every input (see :func:`inputs_of`) into ``out``; the written mask files."""
    files = inputs_of(inputs)
    session = load_session(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=quiet or not console.is_terminal, transient=True) as progress:
        task = progress.add_task("predicting", total=len(files))
        for file in files:
            progress.update(task, description=f"predicting {file.name}")
            if _kind(file) == "volume":
                written.append(_predict_volume(session, file, out, progress))
            else:
                written.append(_predict_image(session, file, out))
            progress.advance(task)
    return written


def _predict_image(session: onnxruntime.InferenceSession, file: Path, out: Path) -> Path:
    image = read_image(file)
    labels = segment(session, image)
    Image.fromarray(labels).save(out / f"{file.stem}_mask.png")
    overlay_tile(grey_tile(image), labels).save(out / f"{file.stem}_overlay.png")
    return out / f"{file.stem}_mask.png"


def _predict_volume(session: onnxruntime.InferenceSession, file: Path, out: Path, progress: Progress) -> Path:
    """``out/<same name>``: the label volume on the input's grid, header and affine."""
    try:
        image = nibabel.load(file)
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # nibabel, gzip and zlib raise many types for a bad file
        raise UserError(f"{file}: unreadable NIfTI ({error}): re-export or remove the file") from None
    if volume.ndim not in (3, 4):
        raise UserError(f"{file}: a {volume.ndim}D volume: give 3D volumes, or 4D (cine: frames along the 4th axis)")
    slices = progress.add_task(f"  slices of {file.name}", total=int(np.prod(volume.shape[2:])))
    labels = segment_volume(session, volume, lambda: progress.advance(slices))
    progress.remove_task(slices)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    result = nibabel.Nifti1Image(labels, image.affine, header)
    result.set_sform(image.get_sform(), code=int(image.header["sform_code"]))
    result.set_qform(image.get_qform(), code=int(image.header["qform_code"]))
    result.header.set_slope_inter(1.0, 0.0)
    target = out / file.name
    nibabel.save(result, target)
    return target


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else None
