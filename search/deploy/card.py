"""The model card, ``model.json``: what ``autosculpt export`` writes beside the model files
and what ``predict`` and ``latency --model DIR`` read to run the file it deploys.

A folder without a card (a bare ``model.onnx``) reads as the empty card: it deploys
``model.onnx`` at one thread. Readers never fail on a card they cannot parse; they fall
back to those defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD = "model.json"
ONNX_FILE = "model.onnx"  # the fp32 model; model.int8.onnx (quantize.INT8_FILE) beside it when exported


def write_card(folder: Path, card: dict) -> None:
    """Write ``card`` as ``folder/model.json`` (indented JSON)."""
    (folder / CARD).write_text(json.dumps(card, indent=2))


def read_card(folder: Path) -> dict:
    """The card in ``folder``; empty when there is none or it is not a JSON object."""
    try:
        card = json.loads((folder / CARD).read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def deployed_file(folder: Path) -> str:
    """The file name the card deploys (its ``deploy``: ``model.onnx`` or ``model.int8.onnx``);
    ``model.onnx`` when the card does not say or names a path outside the folder."""
    deploy = read_card(folder).get("deploy")
    return deploy if isinstance(deploy, str) and "/" not in deploy and "\\" not in deploy else ONNX_FILE


def measured_threads(folder: Path) -> int:
    """The thread count of the card's latency figure; 1 when there is no card or it does not say."""
    try:
        return max(1, int(read_card(folder)["latency"]["threads"]))
    except (KeyError, TypeError, ValueError):
        return 1
