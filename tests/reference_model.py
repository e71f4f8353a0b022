"""A deliberately simple, obviously correct model of docs/semantics.md, for tests to compare against.

Everything is brute force over a plain list of stored events: a query sorts the events by (event
time, offset), keeps those in the range that match the filters and folds them; thresholds are
evaluated by computing the period's value from scratch after every event, in offset order. Periods
are computed here too, independently of ``cluster_client.periods`` (directly with ``zoneinfo``;
good for zones whose local midnight always exists, such as UTC and America/New_York). Nothing here
is fast; every answer can be checked by reading docs/semantics.md next to it.

Interface: ``ReferenceModel(metrics)``, ``.ingest(rows)`` with rows
``(account_id, metric_code, value, time_unix_nano, properties, operation, offset)`` in offset order,
``.query(account, metric, start, end, filters, group_by)``, ``.realtime(account, metric, now)``,
``.alerts()``; ``.add_metric``/``.delete_metric`` follow metric re-creation (docs/semantics.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from cluster_client.errors import OutOfRangeError
from cluster_client.types import AggType, AggValue, GroupValue, Metric, Period, PeriodType

__all__ = ["ModelAlert", "ModelEvent", "ReferenceModel", "model_period"]

ADD = 1
REMOVE = 2
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NS = 1_000_000_000

# (account_id, metric_code, threshold_code, threshold_value, multiple, value_at_cross,
#  period_start_unix_nano, event_time_unix_nano): the shape of node.aggregation.AlertRow
ModelAlert = tuple[int, str, str, int, int, int, int, int]


@dataclass(frozen=True)
class ModelEvent:
    """One stored event."""

    account_id: int
    metric_code: str
    value: int
    time: int
    properties: dict[str, str]
    operation: int
    offset: int


# ----------------------------------------------------------------------------------------- periods


def _local_midnight(tz: ZoneInfo, day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * NS


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, day.day)


def model_period(metric: Metric, t: int) -> tuple[int, int]:
    """The period ``[start, end)`` of ``metric`` holding instant ``t`` (docs/semantics.md)."""
    if metric.period_type == PeriodType.FIXED:
        width = metric.fixed_period_seconds * NS
        start = t // width * width
        return start, start + width
    tz = ZoneInfo(metric.time_zone)
    local = dt.datetime.fromtimestamp(t // NS, tz).date()
    if metric.period_type == PeriodType.DAY:
        first, following = local, local + dt.timedelta(days=1)
    elif metric.period_type == PeriodType.WEEK:
        first = local - dt.timedelta(days=local.weekday())
        following = first + dt.timedelta(days=7)
    else:
        cycle = metric.billing_cycle_day
        first = local.replace(day=cycle) if local.day >= cycle else _add_months(local.replace(day=cycle), -1)
        following = _add_months(first, 1)
    return _local_midnight(tz, first), _local_midnight(tz, following)


# ------------------------------------------------------------------------------------------- model


def _fold(metric: Metric, events: Sequence[ModelEvent]) -> AggValue:
    """Apply ``events`` in (time, offset) order to an empty aggregate of ``metric``'s type."""
    ordered = sorted(events, key=lambda e: (e.time, e.offset))
    adds = [e for e in ordered if e.operation == ADD]
    top = max((e.value for e in adds), default=0)
    last = adds[-1] if adds else None
    last_value = last.value if last else 0
    last_time = last.time if last else 0
    agg = AggType(metric.agg_type)
    if agg == AggType.COUNT_UNIQUE:
        members: set[int] = set()
        for e in ordered:
            if e.operation == ADD:
                members.add(e.value)
            else:
                members.discard(e.value)
        n = len(members)
        return AggValue(n, n, 0, top, last_value, last_time, n, 0)
    count = sum(1 if e.operation == ADD else -1 for e in ordered)
    total = sum(e.value if e.operation == ADD else -e.value for e in ordered) if agg == AggType.SUM else 0
    value = {AggType.COUNT: count, AggType.SUM: total, AggType.MAX: top, AggType.LATEST: last_value}[agg]
    return AggValue(value, count, total, top, last_value, last_time, 0, 0)


def _checked(value: AggValue) -> AggValue:
    for stat in (value.count, value.sum, value.value):
        if not INT64_MIN <= stat <= INT64_MAX:
            raise OutOfRangeError(f"{stat} does not fit in int64")
    return value


class ReferenceModel:
    """Brute-force Unimeter semantics over a list of events."""

    def __init__(self, metrics: Iterable[Metric] = ()) -> None:
        self._metrics: dict[str, Metric] = {}
        self._events: dict[str, list[ModelEvent]] = {}
        self._alerts: list[ModelAlert] = []
        # (account, metric, period start) -> [flags, highest multiple per threshold]
        self._alert_state: dict[tuple[int, str, int], list[int]] = {}
        for metric in metrics:
            self.add_metric(metric)

    def add_metric(self, metric: Metric) -> None:
        """Define (or re-create, empty) a metric."""
        self.delete_metric(metric.code)
        self._metrics[metric.code] = metric
        self._events[metric.code] = []

    def delete_metric(self, code: str) -> None:
        """Delete a metric: its events no longer count, even if it is created again."""
        self._metrics.pop(code, None)
        self._events.pop(code, None)
        for key in [k for k in self._alert_state if k[1] == code]:
            del self._alert_state[key]

    def period_of(self, metric_code: str, t: int) -> tuple[int, int]:
        """The metric's period holding ``t``."""
        return model_period(self._metrics[metric_code], t)

    def ingest(
        self, rows: Iterable[tuple[int, str, int, int, Mapping[str, str] | None, int, int]]
    ) -> list[ModelAlert]:
        """Store events (in offset order) and evaluate thresholds after each; return what fired."""
        fired: list[ModelAlert] = []
        for account, code, value, t, props, op, offset in rows:
            metric = self._metrics[code]
            event = ModelEvent(account, code, value, t, dict(props or {}), op or ADD, offset)
            self._events[code].append(event)
            fired.extend(self._evaluate(metric, event))
        self._alerts.extend(fired)
        return fired

    def _events_for(self, metric: Metric, account: int, start: int, end: int) -> list[ModelEvent]:
        carry = metric.agg_type == AggType.COUNT_UNIQUE and metric.carry_over
        return [
            e
            for e in self._events[metric.code]
            if e.account_id == account and e.time < end and (carry or e.time >= start)
        ]

    def _evaluate(self, metric: Metric, event: ModelEvent) -> list[ModelAlert]:
        if not metric.thresholds:
            return []
        start, end = model_period(metric, event.time)
        value = _fold(metric, self._events_for(metric, event.account_id, start, end)).value
        state = self._alert_state.setdefault(
            (event.account_id, metric.code, start), [0] * (len(metric.thresholds) + 1)
        )
        fired: list[ModelAlert] = []
        for i, threshold in enumerate(metric.thresholds):
            bit = 1 << i
            reached = value >= threshold.value
            if threshold.recurring and reached and value // threshold.value > state[1 + i]:
                state[1 + i] = value // threshold.value
                fired.append(
                    (event.account_id, metric.code, threshold.code, threshold.value, state[1 + i], value,
                     start, event.time)
                )  # fmt: skip
            if not threshold.recurring and reached and not state[0] & bit:
                fired.append(
                    (
                        event.account_id,
                        metric.code,
                        threshold.code,
                        threshold.value,
                        1,
                        value,
                        start,
                        event.time,
                    )
                )
            state[0] = state[0] | bit if reached else state[0] & ~bit
        return fired

    def query(
        self,
        account: int,
        metric_code: str,
        start: int,
        end: int,
        filters: Mapping[str, str] | None = None,
        group_by: Sequence[str] = (),
    ) -> tuple[AggValue, list[GroupValue]]:
        """The aggregate over ``[start, end)`` after filters, and one per group_by combination."""
        metric = self._metrics[metric_code]
        filters = dict(filters or {})
        events = [
            e
            for e in self._events_for(metric, account, start, end)
            if all(e.properties.get(k, "") == v for k, v in filters.items())
        ]
        main = _fold(metric, events)
        if (start, end) == model_period(metric, start) and not filters:
            state = self._alert_state.get((account, metric_code, start))
            main = _with_flags(main, state[0] if state else 0)
        keys = sorted({tuple(e.properties.get(k, "") for k in group_by) for e in events}) if group_by else []
        groups = [
            GroupValue(
                dict(zip(group_by, key, strict=True)),
                _checked(
                    _fold(
                        metric, [e for e in events if tuple(e.properties.get(k, "") for k in group_by) == key]
                    )
                ),
            )
            for key in keys
        ]
        return _checked(main), groups

    def realtime(self, account: int, metric_code: str, now: int) -> tuple[AggValue, Period]:
        """The unfiltered aggregate of the period holding ``now``, with its alert flags."""
        start, end = model_period(self._metrics[metric_code], now)
        value, _ = self.query(account, metric_code, start, end)
        return value, Period(start, end)

    def alerts(self) -> list[ModelAlert]:
        """Every alert fired so far, in firing order."""
        return list(self._alerts)


def _with_flags(value: AggValue, flags: int) -> AggValue:
    return AggValue(
        value.value,
        value.count,
        value.sum,
        value.max,
        value.last_value,
        value.last_event_time_unix_nano,
        value.unique_count,
        flags,
    )
