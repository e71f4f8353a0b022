"""Fixed-scale decimals: values carry 6 decimal places as integers (``scale(45.0) == 45_000_000``)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ["SCALE", "scale", "unscale"]

SCALE = 1_000_000


def scale(amount: float | int | str | Decimal) -> int:
    """``amount`` in millionths, rounded half-even; ``scale(9.99) == 9_990_000``."""
    exact = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
    return int((exact * SCALE).to_integral_value(rounding=ROUND_HALF_EVEN))


def unscale(value: int) -> float:
    """The inverse of :func:`scale`, as a float (use ``Decimal(value) / SCALE`` for exact money)."""
    return value / SCALE
