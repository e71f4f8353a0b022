"""``unimeter metrics create|get|list|delete``: the metric registry."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from cluster_client.types import DEFAULT_FIXED_PERIOD_SECONDS
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import types_pb2

from .connection import Api
from .errors import CliError, ExitCode
from .output import key_values, print_json, print_stdout, table, to_plain
from .parsing import format_time

__all__ = ["AGG_TYPES", "PERIOD_TYPES", "create", "delete", "get", "list_metrics"]

AGG_TYPES = {
    "count": types_pb2.AGG_TYPE_COUNT,
    "sum": types_pb2.AGG_TYPE_SUM,
    "max": types_pb2.AGG_TYPE_MAX,
    "latest": types_pb2.AGG_TYPE_LATEST,
    "count_unique": types_pb2.AGG_TYPE_COUNT_UNIQUE,
}
PERIOD_TYPES = {
    "fixed": types_pb2.PERIOD_TYPE_FIXED,
    "calendar": types_pb2.PERIOD_TYPE_CALENDAR,
    "day": types_pb2.PERIOD_TYPE_DAY,
    "week": types_pb2.PERIOD_TYPE_WEEK,
}
_AGG_NAMES = {v: k for k, v in AGG_TYPES.items()}
_PERIOD_NAMES = {v: k for k, v in PERIOD_TYPES.items()}


def _agg_name(m: types_pb2.Metric) -> str:
    return _AGG_NAMES.get(m.agg_type, str(m.agg_type))


def _period_text(m: types_pb2.Metric) -> str:
    kind = _PERIOD_NAMES.get(m.period_type, str(m.period_type))
    if m.period_type == types_pb2.PERIOD_TYPE_FIXED:
        return f"fixed {m.fixed_period_seconds}s"
    if m.period_type == types_pb2.PERIOD_TYPE_CALENDAR:
        return f"calendar from day {m.billing_cycle_day} {m.time_zone}"
    return f"{kind} {m.time_zone}"


def _dimension_text(d: types_pb2.DimensionFilter) -> str:
    return f"{d.key}={','.join(d.values)}"


def _threshold_text(t: types_pb2.AlertThreshold) -> str:
    return f"{t.code}={t.value}" + (":recurring" if t.recurring else "")


def _show(m: types_pb2.Metric) -> None:
    pairs: list[tuple[str, object]] = [
        ("code", m.code),
        ("agg_type", _agg_name(m)),
        ("period_type", _PERIOD_NAMES.get(m.period_type, str(m.period_type))),
        ("fixed_period_seconds", m.fixed_period_seconds),
        ("billing_cycle_day", m.billing_cycle_day),
        ("time_zone", m.time_zone),
        ("carry_over", str(m.carry_over).lower()),
    ]
    pairs += [("dimension", _dimension_text(d)) for d in m.filters] or [("dimension", "-")]
    pairs += [("threshold", _threshold_text(t)) for t in m.thresholds] or [("threshold", "-")]
    pairs.append(("created", format_time(m.create_time_unix_nano)))
    print_stdout(key_values(pairs))


def create(
    api: Api,
    *,
    code: str,
    agg_type: str,
    period_type: str,
    billing_cycle_day: int,
    fixed_period_seconds: int,
    time_zone: str,
    carry_over: bool,
    dimensions: Sequence[types_pb2.DimensionFilter],
    thresholds: Sequence[types_pb2.AlertThreshold],
    as_json: bool,
    if_not_exists: bool = False,
) -> int:
    """Create a metric and show it as stored (defaults filled in).

    With ``if_not_exists``, a metric of that code with the same definition counts as created (a
    script or tour can run twice); one with a different definition is still an error."""
    metric = types_pb2.Metric(
        code=code,
        agg_type=AGG_TYPES[agg_type],
        period_type=PERIOD_TYPES[period_type],
        billing_cycle_day=billing_cycle_day,
        fixed_period_seconds=fixed_period_seconds,
        time_zone=time_zone,
        carry_over=carry_over,
        filters=list(dimensions),
        thresholds=list(thresholds),
    )
    try:
        created = api.metrics.CreateMetric(ms.CreateMetricRequest(metric=metric), timeout=api.timeout).metric
    except grpc.RpcError as exc:
        if not if_not_exists or exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        created = api.metrics.GetMetric(ms.GetMetricRequest(code=code), timeout=api.timeout).metric
        if not _same_definition(metric, created):
            raise CliError(
                f"metric {code} already exists with a different definition "
                f"(see `unimeter metrics get {code}`)",
                ExitCode.BAD_INPUT,
            ) from None
    if as_json:
        print_json(to_plain(created))
    else:
        _show(created)
    return 0


def _same_definition(asked: types_pb2.Metric, stored: types_pb2.Metric) -> bool:
    """Whether ``stored`` is what creating ``asked`` stores, once the server's defaults fill it in."""
    want = types_pb2.Metric()
    want.CopyFrom(asked)
    want.billing_cycle_day = asked.billing_cycle_day or 1
    want.fixed_period_seconds = asked.fixed_period_seconds or DEFAULT_FIXED_PERIOD_SECONDS
    want.time_zone = asked.time_zone or "UTC"
    have = types_pb2.Metric()
    have.CopyFrom(stored)
    have.create_time_unix_nano = 0
    return want == have


def get(api: Api, *, code: str, as_json: bool) -> int:
    """Show one metric."""
    metric = api.metrics.GetMetric(ms.GetMetricRequest(code=code), timeout=api.timeout).metric
    if as_json:
        print_json(to_plain(metric))
    else:
        _show(metric)
    return 0


def list_metrics(api: Api, *, as_json: bool) -> int:
    """Every metric, by code."""
    metrics = api.metrics.ListMetrics(ms.ListMetricsRequest(), timeout=api.timeout).metrics
    if as_json:
        print_json([to_plain(m) for m in metrics])
        return 0
    rows = [
        [
            m.code,
            _agg_name(m),
            _period_text(m),
            "yes" if m.carry_over else "no",
            " ".join(_dimension_text(d) for d in m.filters) or "-",
            " ".join(_threshold_text(t) for t in m.thresholds) or "-",
        ]
        for m in metrics
    ]
    if not rows:
        print_stdout("no metrics")
        return 0
    print_stdout(table(["CODE", "AGG_TYPE", "PERIOD", "CARRY_OVER", "DIMENSIONS", "THRESHOLDS"], rows))
    return 0


def delete(api: Api, *, code: str) -> int:
    """Delete a metric (its stored events stay in the log)."""
    api.metrics.DeleteMetric(ms.DeleteMetricRequest(code=code), timeout=api.timeout)
    print_stdout(f"deleted metric {code}")
    return 0
