"""How numbers read wherever a user sees them: the CLI, the model card and the report."""

from __future__ import annotations


def three_digits(value: float) -> str:
    """Three significant digits (``0.851``, ``2.25``, ``33.7``), whole numbers from 1000 up."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def ms(value: float) -> str:
    """A latency or budget in milliseconds: ``0.851 ms``, ``2.25 ms``, ``33.7 ms``, ``1234 ms``."""
    return f"{three_digits(value)} ms"
