"""Plain counters a node keeps about itself, for whoever exports them (``service/`` turns them into
Prometheus metrics at scrape time).

Nothing here knows about Prometheus or any exporter: these are ints and a fixed-bucket histogram of
ints, updated once per batch, per I/O round or per published alert record on the event loop thread,
never per event, so the hot path pays a few attribute increments. Readers take a consistent-enough
view by reading attributes; a scrape racing an update may see one batch counted in ``events`` but
not yet in ``batches``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ALERT_DELAY_BUCKETS", "FSYNC_BUCKETS", "Histogram", "IngestStats", "NodeStats"]

# fdatasync on an SSD takes ~0.1-2 ms; on network disks or under contention tens of ms. The
# buckets resolve both ends and show the multi-second stalls that make SYNC ingest time out.
FSYNC_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

# An alert is published about one fsync after its batch is stored (~1 ms on an SSD); a flush
# interval (10 ms) or a slow disk moves it to tens of ms, an overloaded node or a stalled disk to
# seconds. The 20 ms bound is the latency the benchmark holds the alert path to.
ALERT_DELAY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """A cumulative-at-read histogram of plain ints: ``counts[i]`` observations ``<= bounds[i]``
    (non-cumulative per bucket; the last slot counts what is above every bound)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``value`` (``times`` observations of it)."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus ``le``).
        self.counts[bisect_left(self.bounds, value)] += times
        self.count += times
        self.sum += value * times

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` per bucket, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass(slots=True)
class IngestStats:
    """What ``Node.ingest`` accepted, by delivery mode. Rejected batches are counted by the API layer."""

    batches_async: int = 0
    """Ingest calls acknowledged with ASYNC delivery (one call may span many partitions)."""
    batches_sync: int = 0
    """Ingest calls acknowledged with SYNC delivery."""
    events_async: int = 0
    """Events in ASYNC calls (stored plus duplicates)."""
    events_sync: int = 0
    """Events in SYNC calls (stored plus duplicates)."""
    duplicates: int = 0
    """Events answered as duplicates of stored ones."""


@dataclass(slots=True)
class NodeStats:
    """Every counter of one node. Per-partition sizes are read from the partitions themselves."""

    ingest: IngestStats = field(default_factory=IngestStats)
    fsync_events: Histogram = field(default_factory=lambda: Histogram(FSYNC_BUCKETS))
    """Seconds per write+fsync round of the event logs (one round serves every waiting batch)."""
    fsync_alerts: Histogram = field(default_factory=lambda: Histogram(FSYNC_BUCKETS))
    """Seconds per write+fsync round of the alert logs."""
    alert_publish_delay: Histogram = field(default_factory=lambda: Histogram(ALERT_DELAY_BUCKETS))
    """Seconds from the arrival of the batch that fired an alert to the alert's publication (both
    its records durable), one observation per alert that ingest in this process logged."""
    snapshots: int = 0
    """Partition snapshots written since start."""
    snapshot_failures: int = 0
    """Snapshots that raised (the partition keeps its older snapshot and replays more at recovery)."""
    flush_failures: int = 0
    """Background flushes that raised (the log is then failed; see the server log)."""
    disk_free_bytes: int = 0
    """Free space of the data directory's filesystem for unprivileged writers, as last checked."""
