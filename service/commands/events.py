"""``unimeter events``: an account's stored events in a time range, paging through ListEvents."""

from __future__ import annotations

import sys

from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2

from .connection import Api
from .output import print_json, print_stdout, properties_text, table, to_plain
from .parsing import format_time

__all__ = ["list_events"]

_HEADERS = ["TIME", "PARTITION", "OFFSET", "METRIC", "VALUE", "OP", "EVENT_ID", "PROPERTIES"]


def _row(e: qs.StoredEvent) -> list[object]:
    return [
        format_time(e.event.time_unix_nano),
        e.partition,
        e.offset,
        e.event.metric_code,
        e.event.value,
        "remove" if e.event.operation == types_pb2.OPERATION_TYPE_REMOVE else "add",
        e.event.event_id or "-",
        properties_text(e.event.properties),
    ]


def list_events(
    api: Api,
    *,
    account_id: int,
    metric_code: str,
    start: int,
    end: int,
    limit: int | None,
    page_size: int,
    as_json: bool,
) -> int:
    """Fetch pages until the range is exhausted or ``limit`` events are shown."""
    rows: list[list[object]] = []
    count = 0
    token = ""
    while True:
        want = page_size if limit is None else min(page_size, limit - count)
        response = api.query.ListEvents(
            qs.ListEventsRequest(
                account_id=account_id,
                start_unix_nano=start,
                end_unix_nano=end,
                metric_code=metric_code,
                page_size=want,
                page_token=token,
            ),
            timeout=api.timeout,
        )
        count += len(response.events)
        if as_json:  # JSON lines go out page by page: a long range needs no memory
            for e in response.events:
                print_json(to_plain(e))
        else:
            rows.extend(_row(e) for e in response.events)
        token = response.next_page_token
        if not token or (limit is not None and count >= limit):
            break
    if not as_json:
        print_stdout(table(_HEADERS, rows) if rows else "no events")
    if token:
        print(f"(stopped after {count} events; more follow: raise --limit)", file=sys.stderr)
    return 0
