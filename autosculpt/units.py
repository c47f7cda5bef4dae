"""How milliseconds read wherever a user sees them: the CLI, the model card and the report."""

from __future__ import annotations


def ms(value: float) -> str:
    """A latency or budget at three significant digits: ``0.851 ms``, ``2.25 ms``, ``33.7 ms``;
    whole milliseconds from 1000 up (``1234 ms``)."""
    return f"{value:.3g} ms" if value < 1000 else f"{value:.0f} ms"
