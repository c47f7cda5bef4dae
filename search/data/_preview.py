"""``save_preview``: a PNG of a few slices, each beside its mask overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...errors import UserError
from ._types import SPLITS, SegmentationData

TILE = 192  # pixels per shown image
PAIRS_PER_ROW = 2
OPACITY = 0.45
# Label 1, 2, 3, ... (background is never coloured): RV blue, myocardium green, LV red.
PALETTE = [(40, 120, 255), (60, 210, 90), (240, 60, 50), (250, 200, 40), (200, 80, 230), (40, 220, 220)]


def save_preview(data: SegmentationData, out: Path, count: int = 4, split: str = "test") -> Path:
    """Write ``count`` slices of ``split``, spread evenly through it, as a PNG grid at
    ``out``: each image (see :func:`image_tile`) beside the same image with its mask
    overlaid in colour, and a legend of the classes below.  Returns ``out``."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if count < 1:
        raise UserError(f"count {count} shows nothing: ask for at least 1 slice")
    part = getattr(data, split)
    picks = np.unique(np.linspace(0, len(part) - 1, min(count, len(part))).round().astype(int))
    rows = -(-len(picks) // PAIRS_PER_ROW)
    columns = 2 * min(len(picks), PAIRS_PER_ROW)
    legend = _legend(data.class_names, columns * TILE)
    canvas = Image.new("RGB", (columns * TILE, rows * TILE + legend.height))
    for n, index in enumerate(picks):
        tile = image_tile(part.images[index].numpy())
        overlay = overlay_tile(tile, part.masks[index].numpy())
        x, y = (n % PAIRS_PER_ROW) * 2 * TILE, (n // PAIRS_PER_ROW) * TILE
        canvas.paste(tile.convert("RGB"), (x, y))
        canvas.paste(overlay, (x + TILE, y))
    canvas.paste(legend, (0, rows * TILE))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def image_tile(image: np.ndarray) -> Image.Image:
    """A (C, H, W) image scaled to TILE pixels: in colour when it has 3 channels (RGB), else
    its first channel in grey; the 1st-99th percentiles of what is shown stretched to black-white."""
    shown = image.transpose(1, 2, 0) if len(image) == 3 else image[0]
    low, high = np.percentile(shown, [1, 99])
    scaled = np.clip((shown - low) / max(high - low, 1e-6), 0, 1)
    return Image.fromarray((scaled * 255).astype(np.uint8)).resize((TILE, TILE), Image.Resampling.BICUBIC)


def overlay_tile(tile: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image tile with each foreground label blended in its palette colour."""
    labels = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((TILE, TILE), Image.Resampling.NEAREST))
    rgb = np.asarray(tile.convert("RGB"), dtype=np.float32)
    colours = np.array([(0, 0, 0), *PALETTE], dtype=np.float32)[np.minimum(labels, len(PALETTE))]
    alpha = np.where(labels > 0, OPACITY, 0.0)[..., None]
    return Image.fromarray((rgb * (1 - alpha) + colours * alpha).astype(np.uint8))


def _legend(class_names: tuple[str, ...], width: int) -> Image.Image:
    """A strip with a colour swatch and the name of every foreground class."""
    legend = Image.new("RGB", (width, 28))
    draw = ImageDraw.Draw(legend)
    font = ImageFont.load_default(size=14)
    x = 8
    for label, name in enumerate(class_names[1:], start=1):
        colour = PALETTE[min(label, len(PALETTE)) - 1]
        draw.rectangle((x, 8, x + 12, 20), fill=colour)
        draw.text((x + 18, 6), name, fill=(230, 230, 230), font=font)
        x += 30 + int(draw.textlength(name, font=font))
    return legend
