"""Segment images and volumes with an exported model (ONNX Runtime only: no PyTorch needed to deploy).

2D files (PNG, TIFF, JPEG) give ``STEM_mask.png`` and ``STEM_overlay.png``. A NIfTI volume
gives a label volume of the same file name, shape, affine and header (nnU-Net's
convention): it is cut into slices along its third (through-plane) axis, as training
data are, each slice fitted and normalised as in training, predicted, and mapped back
with nearest-neighbour resizing; a 4D volume (cine) is predicted frame by frame.
Inputs carry the channels the model was trained on (its ONNX input shape, which the model
card records as ``input_shape``): a colour image 3 (RGB), a grey one 1, and a one-channel
model reads colour images as grey. For a model of several channels, NIfTI inputs are
nnU-Net's channel files ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... (see
``data._channels``), and each case gives one label volume ``CASE.nii.gz`` on the grid,
affine and header of ``CASE_0000``; for a one-channel model each NIfTI file is its own
input, whatever its name. Other channel counts are a UserError.
Inference runs at the thread count the model card says the model was measured at.

A model pruned from a trained nnU-Net (its card holds ``nnunet_preprocessing``) predicts as
nnU-Net does: each case ``CASE_0000.nii.gz`` (+ ``_0001`` ...) is preprocessed by the plans
(``data._nnunet``), its slices predicted at the patch size, the class probabilities resampled
back and the labels written as ``CASE.nii.gz`` on the input's grid, affine and header.
"""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import onnxruntime
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...errors import UserError
from ..data import (IMAGE_SUFFIXES, VOLUME_SUFFIXES, NnunetPreprocessing, channel_of, fit, group_channels,
                    image_channels, image_tile, is_volume, labels_on_file_grid, load_nifti, normalise, overlay_tile,
                    prepare_case, read_image, scaled_size, volume_name)
from .card import deployed_file, measured_threads, read_card


def load_session(model_dir: Path) -> onnxruntime.InferenceSession:
    """ONNX Runtime session of the file the model card deploys (its ``deploy``: ``model.onnx``
    or ``model.int8.onnx``, as written by ``autosculpt export``; ``model.onnx`` without a
    card), at the thread count of the card's latency figure (1 without a card)."""
    path = model_dir / deployed_file(model_dir)
    if not path.is_file():
        raise UserError(f"{path} not found: give the folder written by autosculpt export --out DIR")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = measured_threads(model_dir)
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"{path}: not a valid ONNX model ({str(error).splitlines()[0]}): export it again") from None


def segment(session: onnxruntime.InferenceSession, image: np.ndarray) -> np.ndarray:
    """Label map (H, W) of a (C, H, W) ``image`` at its own size: fitted to the model's input
    like the training data (scale, pad, normalise each channel), predicted, then mapped back."""
    size = session.get_inputs()[0].shape[-1]
    fitted, _ = fit(image[None], np.zeros((1, *image.shape[1:]), dtype=np.int64), size)
    labels = session.run(None, {session.get_inputs()[0].name: normalise(fitted)})[0].argmax(1)[0]
    return _unfit(labels, image.shape[1:], size)


def _unfit(labels: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Undo :func:`fit` on a label map: crop the padding, resize (nearest) to ``shape``."""
    scaled = scaled_size(*shape, size)
    top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
    crop = labels[top : top + scaled[0], left : left + scaled[1]].astype(np.uint8)
    return np.asarray(Image.fromarray(crop).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def segment_volume(session: onnxruntime.InferenceSession, volume: np.ndarray, advance=lambda: None) -> np.ndarray:
    """Labels (uint8), (X, Y, Z) or (X, Y, Z, T), of a (C, X, Y, Z) or (C, X, Y, Z, T) volume,
    slice by slice along Z, frame by frame along T; ``advance()`` is called after each slice."""
    if volume.ndim == 5:
        return np.stack([segment_volume(session, volume[..., t], advance) for t in range(volume.shape[4])], axis=3)
    labels = np.empty(volume.shape[1:], dtype=np.uint8)
    for z in range(volume.shape[3]):
        labels[:, :, z] = segment(session, volume[..., z])
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
    nnunet = nnunet_of(model_dir, files)
    cases = cases_of(files, session.get_inputs()[0].shape[1], nnunet is not None)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=quiet or not console.is_terminal, transient=True) as progress:
        task = progress.add_task("predicting", total=len(cases))
        for name, channels in cases.items():
            progress.update(task, description=f"predicting {name}")
            if nnunet is not None:
                written.append(_predict_nnunet_case(session, channels, out / name, nnunet))
            elif is_volume(channels[0]):
                written.append(_predict_volume(session, channels, out / name, progress))
            else:
                written.append(_predict_image(session, channels[0], out))
            progress.advance(task)
    return written


def nnunet_of(model_dir: Path, files: list[Path]) -> NnunetPreprocessing | None:
    """How nnU-Net preprocessed the model's training data, when the card says nnU-Net trained
    its baseline (then only NIfTI cases are predicted); None otherwise."""
    stored = read_card(model_dir).get("nnunet_preprocessing")
    if stored is None:
        return None
    if flat := next((file for file in files if not is_volume(file)), None):
        raise UserError(f"{flat.name}: the model was pruned from an nnU-Net, which reads NIfTI cases "
                        "(CASE_0000.nii.gz, ...): give those")
    return NnunetPreprocessing.from_dict(stored)


def cases_of(files: list[Path], channels: int, by_case: bool = False) -> dict[str, list[Path]]:
    """The input files of each prediction, by the name of the volume it writes (a 2D file's
    own name): one file each, except that for a model of several ``channels`` (or with
    ``by_case``, nnU-Net's naming whatever the channels) the NIfTI channel files CASE_0000,
    CASE_0001, ... of one case are one input, written as CASE.
    A one-channel model reads colour images as grey (luminance); otherwise an input with
    other channels than the model's is a UserError, found from names and image headers
    before anything is predicted."""
    cases, channel_files = {}, {}
    for file in files:
        if not is_volume(file):
            if channels > 1:
                _check_channels(channels, image_channels(file), file.name, "images in the colours it was trained on")
            cases[file.name] = [file]
        elif channels == 1 and not (by_case and channel_of(volume_name(file))):
            cases[file.name] = [file]
        elif channel_of(volume_name(file)) is None:
            _check_channels(channels, 1, file.name, "each case's channels as CASE_0000.nii.gz, CASE_0001.nii.gz, ...")
        else:
            channel_files[(file.parent / volume_name(file)).as_posix()] = file
    for case, group in group_channels(channel_files).items():
        name = Path(case).name
        _check_channels(channels, len(group), name, f"{name}_0000 to {name}_{channels - 1:04d}")
        cases[name + group[0].name[len(volume_name(group[0])):]] = group
    return cases


def _check_channels(expected: int, given: int, name: str, fix: str) -> None:
    if given != expected:
        raise UserError(f"model expects {expected} channel(s), {name} has {given}: give {fix}")


def _predict_image(session: onnxruntime.InferenceSession, file: Path, out: Path) -> Path:
    image = read_image(file, grey=session.get_inputs()[0].shape[1] == 1)
    labels = segment(session, image)
    Image.fromarray(labels).save(out / f"{file.stem}_mask.png")
    overlay_tile(image_tile(image), labels).save(out / f"{file.stem}_overlay.png")
    return out / f"{file.stem}_mask.png"


def _predict_volume(session: onnxruntime.InferenceSession, files: list[Path], target: Path, progress: Progress) -> Path:
    """``target``: the label volume of the channel files ``files`` (one file for one channel),
    on the grid, header and affine of the first."""
    volumes, images = zip(*(load_nifti(file) for file in files))
    for file, volume in zip(files, volumes):
        if volume.ndim not in (3, 4):
            raise UserError(f"{file}: a {volume.ndim}D volume: give 3D volumes, or 4D (cine: frames along the 4th axis)")
        if volume.shape != volumes[0].shape:
            raise UserError(f"{file}: shape {volume.shape} differs from {files[0].name} {volumes[0].shape}: "
                            "resample every channel onto one grid")
    slices = progress.add_task(f"  slices of {target.name}", total=int(np.prod(volumes[0].shape[2:])))
    labels = segment_volume(session, np.stack(volumes), lambda: progress.advance(slices))
    progress.remove_task(slices)
    return _write_labels(labels, images[0], target)


def _predict_nnunet_case(session: onnxruntime.InferenceSession, files: list[Path], target: Path,
                         plan: NnunetPreprocessing) -> Path:
    """``target``: nnU-Net's output for a case: preprocessed as nnU-Net preprocesses it, each slice
    predicted at the patch size, and the labels mapped back onto the first channel file's grid."""
    inputs, geometry = prepare_case(files, plan)
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: inputs[z:z + 1]})[0] for z in range(len(inputs))])
    image = nibabel.load(files[0])
    return _write_labels(labels_on_file_grid(logits, geometry, plan, image), image, target)


def _write_labels(labels: np.ndarray, image: nibabel.Nifti1Image, target: Path) -> Path:
    """Write ``labels`` as ``target`` with ``image``'s grid, affine and header (uint8, no scaling)."""
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    result = nibabel.Nifti1Image(labels, image.affine, header)
    result.set_sform(image.get_sform(), code=int(image.header["sform_code"]))
    result.set_qform(image.get_qform(), code=int(image.header["qform_code"]))
    result.header.set_slope_inter(1.0, 0.0)
    nibabel.save(result, target)
    return target


def _kind(path: Path) -> str | None:
    if is_volume(path):
        return "volume"
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else None
