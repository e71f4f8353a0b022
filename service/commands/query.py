"""``unimeter query``: an account's aggregate over a metric's current or previous period, or any range."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2

from .connection import Api
from .output import print_json, print_stdout, table, to_plain
from .parsing import format_time

__all__ = ["query"]

_STATS = [
    "VALUE",
    "COUNT",
    "SUM",
    "MAX",
    "LAST_VALUE",
    "LAST_EVENT_TIME",
    "UNIQUE_COUNT",
    "ALERT_FLAGS",
]


def _stats(v: types_pb2.AggValue) -> list[object]:
    return [
        v.value,
        v.count,
        v.sum,
        v.max,
        v.last_value,
        format_time(v.last_event_time_unix_nano),
        v.unique_count,
        v.alert_flags,
    ]


def query(
    api: Api,
    *,
    account_id: int,
    metric_code: str,
    selector: int,
    start: int,
    end: int,
    filters: Mapping[str, str],
    group_by: Sequence[str],
    as_json: bool,
) -> int:
    """Run Query and show the total (and one row per group with ``group_by``)."""
    request = qs.QueryRequest(
        account_id=account_id,
        metric_code=metric_code,
        period_selector=selector,  # type: ignore[arg-type]
        filters=dict(filters),
        group_by=list(group_by),
    )
    if not selector:
        request.period.CopyFrom(types_pb2.Period(start_unix_nano=start, end_unix_nano=end))
    response = api.query.Query(request, timeout=api.timeout)
    if as_json:
        print_json(
            {
                "account_id": account_id,
                "metric_code": metric_code,
                **to_plain(response),
            }
        )
        return 0
    period = response.period
    print_stdout(
        f"account {account_id}  metric {metric_code}  "
        f"period {format_time(period.start_unix_nano)} .. {format_time(period.end_unix_nano)}  "
        f"as of offset {response.as_of_offset}"
    )
    keys = list(group_by)
    rows: list[list[object]] = []
    total_label = ["(total)", *[""] * (len(keys) - 1)] if keys else []
    rows.append([*total_label, *_stats(response.value)])
    for group in response.groups:
        labels: list[object] = [group.key.get(k, "") or "(none)" for k in keys]
        rows.append([*labels, *_stats(group.value)])
    print_stdout(table([k for k in keys] + _STATS, rows))
    return 0
