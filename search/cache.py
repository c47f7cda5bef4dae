"""Where autosculpt keeps what it computes once (generated data, trained baselines), written atomically."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder for cached ``kind`` files (``data``, ``baselines``), created on demand.

    The root is ``$AUTOSCULPT_CACHE`` if set, else ``~/.cache/autosculpt``.
    """
    root = Path(os.environ.get("AUTOSCULPT_CACHE") or Path.home() / ".cache" / "autosculpt")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(partial)`` to a file beside ``path``, then rename it over ``path``: a reader
    (another worker) sees the old file or the whole new one, never half of one. A failed
    write leaves ``path`` as it was and no partial file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
