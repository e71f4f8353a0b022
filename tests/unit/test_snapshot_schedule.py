"""The periodic snapshots' schedule (``node/snapshot_schedule.py``): each partition once an
interval, at its own phase, none in the first interval, and none lost to a late tick."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.snapshot_schedule import snapshot_due

pytestmark = pytest.mark.timeout(60)


def _due_at_ticks(partitions: int, interval: float, ticks: list[float]) -> dict[int, list[float]]:
    """The ticks at which each partition is found due, for a loop ticking at ``ticks``."""
    found: dict[int, list[float]] = {n: [] for n in range(partitions)}
    since = 0.0
    for now in ticks:
        for number in range(partitions):
            if snapshot_due(number, partitions, interval, since, now):
                found[number].append(now)
        since = now
    return found


def test_64_partitions_over_60_s_are_spread_about_one_a_second() -> None:
    ticks = [float(t) for t in range(1, 601)]  # ten minutes of one-second ticks
    found = _due_at_ticks(64, 60.0, ticks)
    # Each partition once an interval from its first time, 60 + 60 * n / 64 s after start (the
    # tick that follows it), on to the end.
    for number, times in found.items():
        first = math.ceil(60 + 60 * number / 64)
        assert times == [float(t) for t in range(first, 601, 60)], number
    # At most two a tick (64 slots over 60 one-second ticks), never a round of all of them.
    per_tick = Counter(t for times in found.values() for t in times)
    assert max(per_tick.values()) == 2
    assert sorted(per_tick)[:3] == [60.0, 61.0, 62.0]


def test_a_late_tick_finds_every_partition_whose_time_passed() -> None:
    # A tick at 61 s, then none until 100 s (a long snapshot): the partitions due in between are
    # all found at 100 s, each once, and the next ones on time again.
    found = _due_at_ticks(64, 60.0, [61.0, 100.0, 101.0, 180.0])
    at_100 = [n for n, times in found.items() if 100.0 in times]
    assert at_100 == [n for n in range(64) if 61 < 60 * (1 + n / 64) <= 100]
    assert all(len(times) == len(set(times)) for times in found.values())


@given(
    partitions=st.integers(1, 256),
    interval=st.floats(0.05, 3600.0),
    gaps=st.lists(st.floats(0.001, 500.0), min_size=1, max_size=60),
)
def test_each_partition_is_due_once_for_each_of_its_times_passed(
    partitions: int, interval: float, gaps: list[float]
) -> None:
    ticks: list[float] = []
    for gap in gaps:
        ticks.append((ticks[-1] if ticks else 0.0) + gap)
    found = _due_at_ticks(partitions, interval, ticks)
    end = ticks[-1]
    for number, times in found.items():
        phase = interval * (1 + number / partitions)
        # The grid's points in (0, end]: a tick finds at most one partition's time at once, so
        # a partition is found due once per tick that has one or more of its points behind it.
        points = max(0, math.floor((end - phase) / interval) + 1)
        assert len(times) <= points
        assert (len(times) > 0) == (points > 0)
        assert all(t >= phase * (1 - 1e-9) for t in times)
