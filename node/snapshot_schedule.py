"""When each partition's periodic snapshot falls: spread over the interval, not all at once.

Every partition is snapshotted once an interval, but not in one round: partition ``n`` of ``P``
has its own phase, ``n / P`` of the interval, so with the default 60 s and 64 partitions about one
partition a second is snapshotted. A round of all 64 after a heavy load held the event loop in
slices of 2-16 ms for 3-4 s on end, and every call in those seconds waited behind them (single
SYNC calls: p99 11-12 ms, against 1.5 ms spread out; docs/benchmarks-history.md, "Snapshots spread over
the interval"). Spread out, the same work meets a few calls a second instead of all of them, and
the disk takes one partition's file at a time.

The schedule is a grid, not a timer per partition: partition ``n``'s snapshots fall at
``(1 + n / P + j) * interval`` seconds after the node's maintenance loop started (``j = 0, 1,
...``), so none comes sooner than one interval after start, and a partition loaded later (a
cluster node taking it over) keeps the slot its number gives it. The loop asks once a tick whether
a partition's grid point passed since the previous tick: a tick delayed by a long snapshot misses
no partition, it only finds several due at once.
"""

from __future__ import annotations

import math

__all__ = ["snapshot_due"]


def snapshot_due(number: int, partitions: int, interval: float, since: float, now: float) -> bool:
    """Whether one of partition ``number``'s snapshot times falls in ``(since, now]`` (seconds
    since the maintenance loop started), with ``partitions`` partitions and one snapshot each
    ``interval`` seconds."""
    phase = interval * (1 + number / partitions)  # the first time; the grid's points before it are not times
    return now >= phase and math.floor((now - phase) / interval) > math.floor((since - phase) / interval)
