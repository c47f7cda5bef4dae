"""Segment image files with an exported model (ONNX Runtime only: no PyTorch needed to deploy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image

from .data import fit, grey_tile, normalise, overlay_tile, read_image
from ..errors import UserError


def load_session(model_dir: Path) -> onnxruntime.InferenceSession:
    """ONNX Runtime session of ``model_dir/model.onnx`` (as written by ``autosculpt export``)."""
    path = model_dir / "model.onnx"
    if not path.is_file():
        raise UserError(f"{path} not found: give the folder written by autosculpt export --out DIR")
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"{path}: not a valid ONNX model ({str(error).splitlines()[0]}): export it again") from None


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
    ratio = size / max(shape)
    scaled = (max(1, round(shape[0] * ratio)), max(1, round(shape[1] * ratio)))
    top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
    crop = labels[top : top + scaled[0], left : left + scaled[1]].astype(np.uint8)
    return np.asarray(Image.fromarray(crop).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def predict_files(model_dir: Path, images: list[Path], out: Path) -> list[Path]:
    """Write ``STEM_mask.png`` (labels 0..K-1) and ``STEM_overlay.png`` for each image."""
    session = load_session(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file in images:
        image = read_image(file)
        labels = segment(session, image)
        Image.fromarray(labels).save(out / f"{file.stem}_mask.png")
        overlay_tile(grey_tile(image), labels).save(out / f"{file.stem}_overlay.png")
        written.append(out / f"{file.stem}_mask.png")
    return written
