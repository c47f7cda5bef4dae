"""How numbers read on the page and in plot hovers; None reads as an em dash."""

from __future__ import annotations

from .. import units

DASH = "\u2014"
MINUS = "\u2212"


def dice(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def distance(value: float | None) -> str:
    """A Hausdorff distance, one decimal: ``4.2``."""
    return DASH if value is None else f"{value:.1f}"


def ms(value: float | None) -> str:
    """A latency at three significant digits, as the CLI prints it: ``1.87 ms``, ``33.7 ms``."""
    return DASH if value is None else units.ms(value)


def count(value: float | None) -> str:
    """7765892 -> ``7.77 M``; 414317 -> ``414 k``; 3.92e9 -> ``3.92 G``."""
    if value is None:
        return DASH
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{units.three_digits(value / size)} {unit}"
    return f"{value:.0f}"


def size(value: float | None) -> str:
    """Bytes in decimal units: ``31.1 MB``."""
    if value is None:
        return DASH
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{units.three_digits(value / scale)} {unit}"
    return f"{value:.0f} B"


def ratio(value: float | None) -> str:
    """``412×`` from ten up, ``6.1×`` below."""
    if value is None:
        return DASH
    return f"{value:.0f}\u00d7" if value >= 10 else f"{value:.1f}\u00d7"


def pct(value: float | None) -> str:
    """A signed percentage with a true minus sign: ``−1.8 %``."""
    if value is None:
        return DASH
    return signed(value, ".1f") + " %"


def signed(value: float, spec: str) -> str:
    text = format(abs(value), spec)
    return (MINUS if value < 0 and float(text) != 0 else "+") + text
