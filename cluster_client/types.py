"""Plain types shared by the client core, the node and the gRPC layer.

These mirror the messages of ``unimeter.v1`` without depending on protobuf, so the node and the
client core never import generated code. The hot path does not use them per event: a batch of
events travels as a list of :data:`EventRow` tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "DEFAULT_FIXED_PERIOD_SECONDS",
    "AggType",
    "AggValue",
    "Alert",
    "AlertThreshold",
    "DeliveryMode",
    "DimensionFilter",
    "Event",
    "EventRow",
    "GroupValue",
    "IngestResult",
    "Metric",
    "OperationType",
    "Period",
    "PeriodSelector",
    "PeriodType",
    "QueryResult",
    "StoredEvent",
]

DEFAULT_FIXED_PERIOD_SECONDS = 2_592_000


class AggType(IntEnum):
    """How a metric aggregates; numbers match ``unimeter.v1.AggType``."""

    COUNT = 1
    SUM = 2
    MAX = 3
    LATEST = 4
    COUNT_UNIQUE = 5


class PeriodType(IntEnum):
    """How a metric cuts time into periods; numbers match ``unimeter.v1.PeriodType``."""

    FIXED = 1
    CALENDAR = 2
    DAY = 3
    WEEK = 4


class OperationType(IntEnum):
    """ADD or REMOVE; numbers match ``unimeter.v1.OperationType``."""

    ADD = 1
    REMOVE = 2


class DeliveryMode(IntEnum):
    """When an ingest is acknowledged; numbers match ``unimeter.v1.DeliveryMode``."""

    ASYNC = 1
    SYNC = 2


class PeriodSelector(IntEnum):
    """One of the metric's own periods; numbers match ``unimeter.v1.PeriodSelector``."""

    CURRENT = 1
    PREVIOUS = 2


@dataclass(frozen=True, slots=True)
class DimensionFilter:
    """A declared dimension: its key and the values events may carry for it."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AlertThreshold:
    """A threshold on a metric's per-period value."""

    code: str
    value: int
    recurring: bool = False


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric definition. Defaults: docs/semantics.md; ``create_time_unix_nano`` is set by the server."""

    code: str
    agg_type: AggType = AggType.COUNT
    period_type: PeriodType = PeriodType.FIXED
    billing_cycle_day: int = 1
    fixed_period_seconds: int = DEFAULT_FIXED_PERIOD_SECONDS
    time_zone: str = "UTC"
    carry_over: bool = False
    filters: tuple[DimensionFilter, ...] = ()
    thresholds: tuple[AlertThreshold, ...] = ()
    create_time_unix_nano: int = 0


# One event on the hot path: (account_id, metric_code, value, time_unix_nano, properties or None,
# operation, event_id). ``operation`` is an OperationType number, ``event_id`` "" when absent,
# ``time_unix_nano`` 0 when the node should stamp it.
EventRow = tuple[int, str, int, int, "dict[str, str] | None", int, str]


@dataclass(slots=True)
class Event:
    """One usage event, as SDK users build it."""

    account_id: int
    metric_code: str
    value: int = 0
    time_unix_nano: int = 0
    properties: dict[str, str] | None = None
    operation: OperationType = OperationType.ADD
    delivery: DeliveryMode = DeliveryMode.ASYNC
    event_id: str = ""

    def row(self) -> EventRow:
        """This event as a hot-path row."""
        return (
            self.account_id,
            self.metric_code,
            self.value,
            self.time_unix_nano,
            self.properties or None,
            int(self.operation),
            self.event_id,
        )


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open range ``[start, end)`` of Unix nanoseconds."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class AggValue:
    """Every statistic of an aggregate; ``value`` is the metric type's primary one."""

    value: int = 0
    count: int = 0
    sum: int = 0
    max: int = 0
    last_value: int = 0
    last_event_time_unix_nano: int = 0
    unique_count: int = 0
    alert_flags: int = 0


@dataclass(frozen=True, slots=True)
class GroupValue:
    """One group of a group-by answer: the group's dimension values and its aggregate."""

    key: dict[str, str]
    value: AggValue


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to a query."""

    value: AggValue
    period: Period
    as_of_offset: int
    groups: tuple[GroupValue, ...] = ()


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an ingest stored: counts and each event's offset in request order (a list, or on
    the native engine a ``unimeter_native.UintList``: a read-only sequence of ints equal to the
    list of the same ints)."""

    n_stored: int
    n_duplicates: int
    offsets: Sequence[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored, with its partition and offset."""

    account_id: int
    metric_code: str
    value: int
    time_unix_nano: int
    properties: dict[str, str]
    operation: OperationType
    event_id: str
    offset: int
    partition: int


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold crossing from a partition's alert log."""

    account_id: int
    metric_code: str
    threshold_code: str
    threshold_value: int
    multiple: int
    value_at_cross: int
    period_start_unix_nano: int
    event_time_unix_nano: int
    record_time_unix_nano: int
    partition: int
    offset: int
