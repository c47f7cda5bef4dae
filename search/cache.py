"""Where autosculpt keeps what it computes once: generated data and trained baselines."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder for cached ``kind`` files (``data``, ``baselines``), created on demand.

    The root is ``$AUTOSCULPT_CACHE`` if set, else ``~/.cache/autosculpt``.
    """
    root = Path(os.environ.get("AUTOSCULPT_CACHE") or Path.home() / ".cache" / "autosculpt")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
