"""The time grid: bucket widths and how a range ``[start, end)`` is cut into whole buckets.

Buckets are epoch-aligned UTC minutes, hours and days (each level divides the next), plus the
metric's own periods as an optional top level. A range is answered from the fewest whole buckets
that tile it; only the partial minutes at its two ends (and at a period boundary that is not on a
whole minute) are left as raw windows, to be read from the events themselves. A month-long,
nanosecond-unaligned range is at most 59 + 23 + 31 + 23 + 59 buckets and two raw minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster_client.periods import PeriodCalculator

__all__ = [
    "DAY",
    "HOUR",
    "LEVEL_WIDTHS",
    "MINUTE",
    "N_GRID_LEVELS",
    "PERIOD_LEVEL",
    "RangePlan",
    "plan_range",
]

MINUTE = 60 * 1_000_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LEVEL_WIDTHS = (MINUTE, HOUR, DAY)
N_GRID_LEVELS = len(LEVEL_WIDTHS)
PERIOD_LEVEL = N_GRID_LEVELS
"""Level number of the metric's periods (keyed by period start, not by an index)."""

_RATIOS = (HOUR // MINUTE, DAY // HOUR)


@dataclass(slots=True)
class RangePlan:
    """How to answer one range: whole buckets, in time order, and the raw windows left over."""

    segments: list[tuple[int, list[int]]] = field(default_factory=list)
    """(level, bucket indexes or, for PERIOD_LEVEL, period starts), in time order, no overlaps."""
    raw: list[tuple[int, int, int]] = field(default_factory=list)
    """(minute index, lo, hi): events with lo <= time < hi come from the raw events of that minute."""


def plan_range(start: int, end: int, periods: PeriodCalculator | None) -> RangePlan:
    """Tile ``[start, end)``; with ``periods``, whole periods inside the range are used as buckets."""
    plan = RangePlan()
    if start >= end:
        return plan
    if periods is not None:
        p_start, p_end = periods.period_of(start)
        first = p_start if p_start == start else p_end
        cursor = first
        whole: list[int] = []
        while cursor < end:
            s, e = periods.period_of(cursor)
            if e > end:
                break
            whole.append(s)
            cursor = e
        if whole:
            _tile(start, first, plan)
            plan.segments.append((PERIOD_LEVEL, whole))
            _tile(cursor, end, plan)
            return plan
    _tile(start, end, plan)
    return plan


def _tile(a: int, b: int, plan: RangePlan) -> None:
    """Append to ``plan`` the buckets and raw windows of ``[a, b)``."""
    if a >= b:
        return
    minute_a = a // MINUTE
    if a % MINUTE:
        hi = min(b, (minute_a + 1) * MINUTE)
        plan.raw.append((minute_a, a, hi))
        a = hi
        if a >= b:
            return
    minute_b = b // MINUTE
    if b % MINUTE:
        plan.raw.append((minute_b, minute_b * MINUTE, b))
        b = minute_b * MINUTE
        if a >= b:
            return
    lo, hi = a // MINUTE, b // MINUTE
    head: list[tuple[int, list[int]]] = []
    tail: list[tuple[int, list[int]]] = []
    level = 0
    for ratio in _RATIOS:
        up_lo = -(-lo // ratio)
        up_hi = hi // ratio
        if up_lo >= up_hi:
            break  # no whole bucket of the next level inside: finish at this level
        if lo < up_lo * ratio:
            head.append((level, list(range(lo, up_lo * ratio))))
        if up_hi * ratio < hi:
            tail.append((level, list(range(up_hi * ratio, hi))))
        lo, hi = up_lo, up_hi
        level += 1
    head.append((level, list(range(lo, hi))))
    plan.segments.extend(head)
    plan.segments.extend(reversed(tail))
