"""Validation of metrics and event batches (docs/semantics.md), shared by the client core and nodes.

The client core validates a whole batch before fanning it out, so an invalid event stores nothing on
any partition; each node validates its part again against its own registry. Functions here are
pure: they return normalised values or raise ``InvalidArgumentError`` with one field violation per
problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .errors import FieldViolation, InvalidArgumentError
from .periods import is_known_time_zone
from .types import (
    DEFAULT_FIXED_PERIOD_SECONDS,
    AggType,
    AlertThreshold,
    DimensionFilter,
    EventRow,
    Metric,
    OperationType,
    PeriodType,
)

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_ID_BYTES",
    "MAX_PROPERTIES",
    "MAX_PROPERTY_KEY_CHARS",
    "MAX_PROPERTY_VALUE_CHARS",
    "check_account_id",
    "check_code",
    "normalize_metric",
    "validate_rows",
]

MAX_BATCH_EVENTS = 10_000
MAX_EVENT_ID_BYTES = 128
MAX_PROPERTIES = 32
MAX_PROPERTY_KEY_CHARS = 64
MAX_PROPERTY_VALUE_CHARS = 256
MAX_DIMENSIONS = 8
MAX_DIMENSION_VALUES = 64
MAX_NAME_CHARS = 64
MAX_THRESHOLDS = 8
INT63 = 1 << 63
UINT64 = 1 << 64

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.:\-]{0,63}")


def check_code(code: str, field: str) -> FieldViolation | None:
    """A violation if ``code`` is not 1-64 chars of ``A-Z a-z 0-9 _ . : -`` starting with a letter."""
    if not code:
        return FieldViolation(field, "must not be empty")
    if _CODE.fullmatch(code) is None:
        return FieldViolation(field, "must be 1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter")
    return None


def check_account_id(account_id: int, field: str = "account_id") -> None:
    """Raise unless ``account_id`` is a non-zero uint64."""
    if not 0 < account_id < UINT64:
        raise InvalidArgumentError(
            f"{field} must be a non-zero uint64",
            violations=[FieldViolation(field, "must be a non-zero uint64")],
        )


def _name_violation(value: str, field: str) -> FieldViolation | None:
    if not value:
        return FieldViolation(field, "must not be empty")
    if len(value) > MAX_NAME_CHARS:
        return FieldViolation(field, f"must be at most {MAX_NAME_CHARS} characters")
    return None


def normalize_metric(metric: Metric, field: str = "metric") -> Metric:
    """The metric with defaults filled in, or InvalidArgumentError naming every bad field."""
    bad: list[FieldViolation] = []

    def add(v: FieldViolation | None) -> None:
        if v is not None:
            bad.append(v)

    add(check_code(metric.code, f"{field}.code"))
    try:
        agg_type = AggType(metric.agg_type or AggType.COUNT)
    except ValueError:
        agg_type = AggType.COUNT
        bad.append(FieldViolation(f"{field}.agg_type", f"unknown aggregation type {metric.agg_type}"))
    try:
        period_type = PeriodType(metric.period_type or PeriodType.FIXED)
    except ValueError:
        period_type = PeriodType.FIXED
        bad.append(FieldViolation(f"{field}.period_type", f"unknown period type {metric.period_type}"))
    cycle_day = metric.billing_cycle_day or 1
    if not 1 <= cycle_day <= 28:
        bad.append(FieldViolation(f"{field}.billing_cycle_day", "must be between 1 and 28"))
    fixed = metric.fixed_period_seconds or DEFAULT_FIXED_PERIOD_SECONDS
    if not 0 < fixed < INT63 // 1_000_000_000:
        bad.append(FieldViolation(f"{field}.fixed_period_seconds", "must be a positive number of seconds"))
    zone = metric.time_zone or "UTC"
    if not is_known_time_zone(zone):
        bad.append(FieldViolation(f"{field}.time_zone", f"unknown IANA time zone {zone!r}"))
    if metric.carry_over and agg_type is not AggType.COUNT_UNIQUE:
        bad.append(FieldViolation(f"{field}.carry_over", "applies to COUNT_UNIQUE metrics only"))

    filters: list[DimensionFilter] = []
    if len(metric.filters) > MAX_DIMENSIONS:
        bad.append(FieldViolation(f"{field}.filters", f"at most {MAX_DIMENSIONS} dimensions"))
    seen_keys: set[str] = set()
    for i, dim in enumerate(metric.filters):
        path = f"{field}.filters[{i}]"
        add(_name_violation(dim.key, f"{path}.key"))
        if dim.key in seen_keys:
            bad.append(FieldViolation(f"{path}.key", f"duplicate dimension {dim.key!r}"))
        seen_keys.add(dim.key)
        if not 1 <= len(dim.values) <= MAX_DIMENSION_VALUES:
            bad.append(FieldViolation(f"{path}.values", f"must hold 1 to {MAX_DIMENSION_VALUES} values"))
        for j, value in enumerate(dim.values):
            add(_name_violation(value, f"{path}.values[{j}]"))
        if len(set(dim.values)) != len(dim.values):
            bad.append(FieldViolation(f"{path}.values", "values must be distinct"))
        filters.append(DimensionFilter(dim.key, tuple(dim.values)))

    thresholds: list[AlertThreshold] = []
    if len(metric.thresholds) > MAX_THRESHOLDS:
        bad.append(FieldViolation(f"{field}.thresholds", f"at most {MAX_THRESHOLDS} thresholds"))
    seen_codes: set[str] = set()
    for i, th in enumerate(metric.thresholds):
        path = f"{field}.thresholds[{i}]"
        add(check_code(th.code, f"{path}.code"))
        if th.code in seen_codes:
            bad.append(FieldViolation(f"{path}.code", f"duplicate threshold code {th.code!r}"))
        seen_codes.add(th.code)
        if not 0 < th.value < INT63:
            bad.append(FieldViolation(f"{path}.value", "must be positive and below 2^63"))
        thresholds.append(AlertThreshold(th.code, th.value, bool(th.recurring)))

    if bad:
        raise InvalidArgumentError(f"invalid metric: {bad[0].field} {bad[0].description}", violations=bad)
    return Metric(
        code=metric.code,
        agg_type=agg_type,
        period_type=period_type,
        billing_cycle_day=cycle_day,
        fixed_period_seconds=fixed,
        time_zone=zone,
        carry_over=metric.carry_over,
        filters=tuple(filters),
        thresholds=tuple(thresholds),
        create_time_unix_nano=metric.create_time_unix_nano,
    )


def _event_violation(row: EventRow, metric: Metric | None, path: str) -> FieldViolation | None:
    account_id, code, value, time_ns, props, op, event_id = row
    if not 0 < account_id < UINT64:
        return FieldViolation(f"{path}.account_id", "must be a non-zero uint64")
    if not code:
        return FieldViolation(f"{path}.metric_code", "must not be empty")
    if metric is None:
        return FieldViolation(f"{path}.metric_code", f"unknown metric {code!r}")
    if op != OperationType.ADD and op != OperationType.REMOVE:
        return FieldViolation(f"{path}.operation", f"unknown operation {op}")
    agg = metric.agg_type
    if op == OperationType.REMOVE and (agg is AggType.MAX or agg is AggType.LATEST):
        return FieldViolation(f"{path}.operation", f"REMOVE is not allowed for {agg.name} metrics")
    if not 0 <= value < (UINT64 if agg is AggType.COUNT_UNIQUE else INT63):
        return FieldViolation(f"{path}.value", "must be below 2^63 (COUNT_UNIQUE member ids: 2^64)")
    if not 0 <= time_ns < INT63:
        return FieldViolation(f"{path}.time_unix_nano", "must be a non-negative int64 (0: server time)")
    if len(event_id) > MAX_EVENT_ID_BYTES // 4 and len(event_id.encode()) > MAX_EVENT_ID_BYTES:
        return FieldViolation(f"{path}.event_id", f"must be at most {MAX_EVENT_ID_BYTES} bytes")
    if props:
        if len(props) > MAX_PROPERTIES:
            return FieldViolation(f"{path}.properties", f"at most {MAX_PROPERTIES} properties")
        bad = [
            key
            for key, val in props.items()
            if not 0 < len(key) <= MAX_PROPERTY_KEY_CHARS or len(val) > MAX_PROPERTY_VALUE_CHARS
        ]
        if bad:
            # The smallest bad key, not the first met: a map's order on the wire is no order at all
            # (protobuf parsers differ), and both engines must name the same property.
            key = min(bad)
            if not 0 < len(key) <= MAX_PROPERTY_KEY_CHARS:
                return FieldViolation(f"{path}.properties", f"key {key[:80]!r} must be 1-64 characters")
            return FieldViolation(f"{path}.properties[{key}]", "must be at most 256 characters")
        for dim in metric.filters:
            got = props.get(dim.key)
            if got is not None and got not in dim.values:
                return FieldViolation(
                    f"{path}.properties[{dim.key}]",
                    f"{got[:80]!r} is not an allowed value of dimension {dim.key!r}",
                )
    return None


_OPERATIONS = frozenset((OperationType.ADD, OperationType.REMOVE))
_NO_REMOVE = (AggType.MAX, AggType.LATEST)


def _all_valid(rows: Sequence[EventRow], metric_of: Callable[[str], Metric | None]) -> bool:
    """Whether every row passes :func:`_event_violation`, checked column by column: ``min``,
    ``max`` and ``set`` run in C over the batch, where a call per event cost ~2 µs (a tenth of an
    event's ingest). Only sufficient: False (including rows of the wrong shape or types) sends the
    batch to the per-event check, which names every violation. Rows with properties are checked
    one by one here too (they need the metric's dimensions)."""
    try:
        accounts, codes, values, times, props, ops, ids = zip(*rows, strict=True)
        metrics = {code: metric_of(code) for code in set(codes)}
        if (
            None in metrics.values()
            or not 0 < min(accounts) <= max(accounts) < UINT64
            or not 0 <= min(values) <= max(values) < INT63
            or not 0 <= min(times) <= max(times) < INT63
        ):
            return False
        longest = max(map(len, ids))
        # Up to a quarter of the limit in characters always fits in bytes; ASCII ids fit up to it.
        if longest > MAX_EVENT_ID_BYTES // 4 and (longest > MAX_EVENT_ID_BYTES or not "".join(ids).isascii()):
            return False
        used_ops = set(ops)
        if not used_ops <= _OPERATIONS:
            return False
        if OperationType.REMOVE in used_ops and any(m.agg_type in _NO_REMOVE for m in metrics.values() if m):
            return False
        if any(props):
            return all(_event_violation(row, metrics[row[1]], "") is None for row in rows if row[4])
    except (TypeError, ValueError):
        return False
    return True


def validate_rows(
    rows: Sequence[EventRow],
    metric_of: Callable[[str], Metric | None],
    *,
    indexes: Sequence[int] | None = None,
) -> None:
    """Raise InvalidArgumentError with one violation per bad event (``events[i].field``).

    ``indexes`` maps each row to its position in the caller's request, so a node validating its
    part of a batch names the event as the caller numbered it.
    """
    if len(rows) > MAX_BATCH_EVENTS:
        raise InvalidArgumentError(
            f"a batch holds at most {MAX_BATCH_EVENTS} events",
            violations=[FieldViolation("events", f"at most {MAX_BATCH_EVENTS} events, got {len(rows)}")],
        )
    if _all_valid(rows, metric_of):
        return
    bad: list[FieldViolation] = []
    metrics: dict[str, Metric | None] = {}
    for i, row in enumerate(rows):
        code = row[1]
        metric = metrics[code] if code in metrics else metrics.setdefault(code, metric_of(code))
        violation = _event_violation(row, metric, f"events[{indexes[i] if indexes else i}]")
        if violation is not None:
            bad.append(violation)
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InvalidArgumentError(f"invalid event: {first.field}: {first.description}{more}", violations=bad)
