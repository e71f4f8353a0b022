"""The one wall clock a node reads, so that tests can move it and nothing else in the node does.

Every wall-clock read of the node goes through a :class:`Clock` given in ``NodeConfig.clock``:
arrival times (which stamp events sent without a time, order dedup expiry and alert record times),
dedup expiry, the current and previous period of queries, metric generations and the time of the
last snapshot. Durations the node measures for itself (flush ticks, snapshot intervals, recovery
time) use ``time.monotonic`` and are not wall-clock reads. How the node behaves when this clock
jumps is described in docs/reliability.md.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """A wall clock: Unix time in nanoseconds, which may jump back or forward."""

    def now_ns(self) -> int:
        """The current Unix time in nanoseconds."""
        ...


class SystemClock:
    """The operating system's wall clock (``time.time_ns``)."""

    def now_ns(self) -> int:
        """The current Unix time in nanoseconds."""
        return time.time_ns()


SYSTEM_CLOCK = SystemClock()
"""The clock of every node not given another one."""
