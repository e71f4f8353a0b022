"""Small statistics helpers: percentiles and latency summaries in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["bucket_percentile", "latency_summary", "percentile", "ratio"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bucket_percentile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of a histogram's observations, from its cumulative buckets
    ``(upper bound, count)``: interpolated linearly inside the bucket that holds it, the first one
    from 0, as Prometheus' ``histogram_quantile`` does; in the last, unbounded bucket, that
    bucket's lower bound. None for no observations."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = total * q / 100
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound) or count == below:  # count == below: the 0th percentile
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def latency_summary(latencies_ns: Sequence[int]) -> dict[str, float | int | None]:
    """n, p50, p90, p99, max and mean of nanosecond latencies, in milliseconds."""
    ms = [v / 1e6 for v in latencies_ns]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        "mean_ms": sum(ms) / len(ms) if ms else None,
    }


def ratio(value: float | None, ceiling: float | None) -> float | None:
    """``value / ceiling``, or None when either is missing or the ceiling is zero."""
    if value is None or not ceiling:
        return None
    return value / ceiling
