"""The events the load generators send, encoded once and reused cheaply.

A load generator on a 2-core machine competes with the server for CPU, so the hot loop must not
build protobuf messages. Each caller encodes a few template batches up front; every template's
event ids start with a 16-byte sentinel, and one ``bytes.replace`` per call swaps in a unique
prefix, so every call carries fresh ids (no duplicates) for the cost of a memcpy. An
``IngestRequest`` is a concatenation of its fields, so extra events (the alert run's threshold
crossings) and the delivery field are appended as bytes.

This module is for the load generators and the orchestrator; it has no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from unimeter.v1 import ingest_service_pb2, types_pb2

__all__ = [
    "ALERT_METRIC",
    "ALERT_THRESHOLD",
    "DELIVERY_SYNC",
    "ID_SENTINEL",
    "METRIC_CODES",
    "QUERY_ACCOUNT",
    "QUERY_METRIC",
    "alert_events",
    "fill_batches",
    "ingest_templates",
    "metric_definitions",
    "unique_prefix",
]

METRIC_CODES = tuple(f"bench.sum{i}" for i in range(5))
"""The ingest workloads' SUM metrics (calendar month, UTC)."""
QUERY_METRIC = METRIC_CODES[0]
ALERT_METRIC = "bench.alerts"
"""A SUM metric with one recurring threshold: each event of value ALERT_THRESHOLD fires one alert."""
ALERT_THRESHOLD = 1_000_000
QUERY_ACCOUNT = 900_000_001
"""The account holding the query workload's events (outside every other workload's range)."""
SERIES_ACCOUNT_BASE = 100_000_000
"""First account of the memory workload (fresh server)."""

ID_SENTINEL = b"~" * 16
"""Prefix of every template event id; replaced by ``unique_prefix`` on each call."""
DELIVERY_SYNC = b"\x10\x02"
"""``IngestRequest.delivery = DELIVERY_MODE_SYNC`` (field 2, varint 2), appended to a request."""

_HOUR_NS = 3_600_000_000_000


def metric_definitions(n_metrics: int) -> list[types_pb2.Metric]:
    """The metrics every server of a run gets: ``n_metrics`` SUM metrics and the alert metric."""
    month = types_pb2.PERIOD_TYPE_CALENDAR
    out = [
        types_pb2.Metric(code=code, agg_type=types_pb2.AGG_TYPE_SUM, period_type=month)
        for code in METRIC_CODES[:n_metrics]
    ]
    out.append(
        types_pb2.Metric(
            code=ALERT_METRIC,
            agg_type=types_pb2.AGG_TYPE_SUM,
            period_type=month,
            thresholds=[types_pb2.AlertThreshold(code="every", value=ALERT_THRESHOLD, recurring=True)],
        )
    )
    return out


def unique_prefix(tag: int, slot: int, seq: int) -> bytes:
    """16 bytes unique per (run tag, caller slot, call number), to replace ``ID_SENTINEL``."""
    return b"%03d%03d%010d" % (tag % 1000, slot % 1000, seq % 10**10)


def _encode(events: list[types_pb2.Event]) -> bytes:
    return ingest_service_pb2.IngestRequest(events=events).SerializeToString()


def ingest_templates(
    *,
    slot: int,
    batch: int,
    count: int,
    accounts: int,
    metrics: int,
    now_ns: int,
    account_base: int = 1,
    with_ids: bool = True,
) -> list[bytes]:
    """``count`` encoded batches of ``batch`` events (explicit times in the last hour, sentinel ids).

    Accounts and metrics rotate so the callers together touch every (account, metric) pair.
    """
    codes = METRIC_CODES[:metrics]
    out = []
    for j in range(count):
        events = []
        for i in range(batch):
            k = (slot * count + j) * batch + i
            events.append(
                types_pb2.Event(
                    account_id=account_base + (k * 7919) % accounts,
                    metric_code=codes[k % metrics],
                    value=((k * 37) % 1000 + 1) * 1000,
                    time_unix_nano=now_ns - _HOUR_NS + (k * 104_729) % _HOUR_NS,
                    event_id=(ID_SENTINEL.decode() + f"-{i:019d}") if with_ids else "",
                )
            )
        out.append(_encode(events))
    return out


def alert_events(*, times: list[int], accounts: int) -> bytes:
    """Encoded alert-metric events, one per time; each adds exactly one threshold to its account."""
    return _encode(
        [
            types_pb2.Event(
                account_id=1 + (t // 7) % accounts,
                metric_code=ALERT_METRIC,
                value=ALERT_THRESHOLD,
                time_unix_nano=t,
                event_id=f"alert-{t}",
            )
            for t in times
        ]
    )


def fill_batches(spec: Mapping[str, Any]) -> Iterator[tuple[bytes, int]]:
    """(encoded request, events in it) for one filler's share of a fill; see the ``kind`` branches."""
    kind = spec["kind"]
    batch = spec["batch"]
    if kind == "templated":
        # Fast bulk fill (restart log): templates with fresh ids per call, like the ASYNC matrix.
        templates = ingest_templates(
            slot=spec["slot"],
            batch=batch,
            count=spec["templates"],
            accounts=spec["accounts"],
            metrics=spec["metrics"],
            now_ns=spec["now_ns"],
        )
        for seq in range(spec["n_batches"]):
            template = templates[seq % len(templates)]
            yield template.replace(ID_SENTINEL, unique_prefix(spec["tag"], spec["slot"], seq)), batch
    elif kind == "spread":
        # One account's events spread evenly over [start, end): event k of `total` at its own time.
        total, start, end = spec["total"], spec["start_ns"], spec["end_ns"]
        account, code = spec["account"], spec["metric"]
        span = end - start
        for lo in range(spec["first"], spec["first"] + spec["count"], batch):
            hi = min(lo + batch, spec["first"] + spec["count"])
            events = [
                types_pb2.Event(
                    account_id=account,
                    metric_code=code,
                    value=((k * 37) % 1000 + 1) * 1000,
                    time_unix_nano=start + k * span // total,
                    event_id=f"q-{k}",
                )
                for k in range(lo, hi)
            ]
            yield _encode(events), hi - lo
    elif kind == "grid":
        # Events over (account, metric) pairs: series `first..first+count` of the grid, `per_series`
        # events each, optionally with ids; no explicit time (the server stamps arrival time).
        codes = METRIC_CODES[: spec["metrics"]]
        metrics = len(codes)
        base, tag, slot = spec["account_base"], spec["tag"], spec["slot"]
        ids = spec["ids"]
        pending: list[types_pb2.Event] = []
        for rep in range(spec["per_series"]):
            for s in range(spec["first"], spec["first"] + spec["count"]):
                pending.append(
                    types_pb2.Event(
                        account_id=base + s // metrics,
                        metric_code=codes[s % metrics],
                        value=1000,
                        event_id=f"d{tag}-{slot}-{rep}-{s}" if ids else "",
                    )
                )
                if len(pending) == batch:
                    yield _encode(pending), batch
                    pending = []
        if pending:
            yield _encode(pending), len(pending)
    else:
        raise ValueError(f"unknown fill kind {kind!r}")
