"""The compiled view of a metric that the aggregation hot path reads, and the row shapes it trades in.

A :class:`MetricSpec` is built once per metric generation (not per event): it resolves the period
calculator, the declared dimensions and the thresholds into plain tuples. The row aliases describe
what the partition layer hands in (:data:`AppliedRow`), what it gets back (:data:`AlertRow`) and how
the engine reads raw events back for the edges of a range (:data:`FetchEvents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cluster_client.periods import PeriodCalculator
from cluster_client.types import AggType, AlertThreshold, Metric, PeriodType

__all__ = ["AlertRow", "AppliedRow", "FetchEvents", "MetricSpec"]

# One stored event of one metric: (account_id, value, time_unix_nano, properties or None, operation,
# offset). ``operation`` is an OperationType number (1 ADD, 2 REMOVE), already validated for the type.
AppliedRow = tuple[int, int, int, "dict[str, str] | None", int, int]

# One fired alert: (account_id, metric_code, threshold_code, threshold_value, multiple, value_at_cross,
# period_start_unix_nano, event_time_unix_nano). The partition layer adds record time and offsets.
AlertRow = tuple[int, str, str, int, int, int, int, int]


class FetchEvents(Protocol):
    """``(record_refs, account_id, metric_code, windows)`` -> that account's rows of that metric in
    those log records whose event time falls in one of the half-open ``[lo, hi)`` windows (the
    partial edge minutes). ``record_refs`` None: every record the partition's event index lists for
    the account in the windows' hours (edges inside hours whose minute cells are folded).

    Given ``whole_minutes`` (a list), a reader may put the events of minutes a window covers whole
    there instead of among the rows, as cells (any number: one per record and minute, say), which
    the caller merges with the rows' fold and never changes (a reader may keep them). A reader may
    also ignore it and return every row.
    """

    def __call__(
        self,
        record_refs: list[int] | None,
        account_id: int,
        metric_code: str,
        windows: list[tuple[int, int]],
        whole_minutes: list[list[int]] | None = None,
        /,
    ) -> list[AppliedRow]: ...


_DAY_SECONDS = 86_400


@dataclass(frozen=True, slots=True, eq=False)
class MetricSpec:
    """An immutable, hot-path-ready view of one generation of a metric."""

    code: str
    agg_type: AggType
    generation: int
    dims: tuple[str, ...]
    """Declared dimension keys, in declared order: an event's combination follows this order."""
    allowed: dict[str, frozenset[str]]
    """Declared dimension key -> its allowed values."""
    periods: PeriodCalculator
    thresholds: tuple[AlertThreshold, ...]
    carry_over: bool
    """As declared; only COUNT_UNIQUE metrics read it."""
    long_periods: bool
    """Periods longer than a day: a range spanning whole periods reads their aggregates, not days."""

    @classmethod
    def compile(cls, metric: Metric, generation: int) -> MetricSpec:
        """Compile ``metric`` (already validated by the registry) as generation ``generation``."""
        kind = PeriodType(metric.period_type)
        long_periods = kind in (PeriodType.CALENDAR, PeriodType.WEEK) or (
            kind is PeriodType.FIXED and metric.fixed_period_seconds > _DAY_SECONDS
        )
        return cls(
            code=metric.code,
            agg_type=AggType(metric.agg_type),
            generation=generation,
            dims=tuple(f.key for f in metric.filters),
            allowed={f.key: frozenset(f.values) for f in metric.filters},
            periods=PeriodCalculator.for_metric(metric),
            thresholds=tuple(metric.thresholds),
            carry_over=bool(metric.carry_over),
            long_periods=long_periods,
        )

    @property
    def unique(self) -> bool:
        """Whether this is a COUNT_UNIQUE metric (member-level state instead of buckets)."""
        return self.agg_type is AggType.COUNT_UNIQUE
