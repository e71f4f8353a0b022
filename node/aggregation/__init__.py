"""The aggregation engine of one partition (docs/semantics.md): pure in-memory state, no I/O.

The partition layer applies each log record's rows per metric with :meth:`PartitionAggregates.apply`
(which returns the alerts they fire), answers reads with ``realtime`` and ``query``, and checkpoints
with ``to_snapshot``/``from_snapshot``. Range queries read raw events only at a range's partial
edge minutes, through the :data:`FetchEvents` callback.
"""

from __future__ import annotations

from .aggregates import PartitionAggregates
from .spec import AlertRow, AppliedRow, FetchEvents, MetricSpec

__all__ = ["AlertRow", "AppliedRow", "FetchEvents", "MetricSpec", "PartitionAggregates"]
