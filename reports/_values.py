"""Reading stored values defensively: a study's attributes may be missing, old or hand-edited."""

from __future__ import annotations

import math
from typing import Any


def ratio(before: float | None, after: float | None) -> float | None:
    return before / after if before and after else None


def change_pct(before: float | None, after: float | None) -> float | None:
    return (after - before) / before * 100 if before and after is not None else None


def first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def last(values: Any) -> Any:
    return values[-1] if isinstance(values, list) and values else None


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def finite(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    number = finite(value)
    return int(number) if number is not None else None


def finite_dict(value: Any) -> dict[str, float]:
    return {str(k): f for k, v in as_dict(value).items() if (f := finite(v)) is not None}
