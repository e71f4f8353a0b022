"""Issue 5's targets, computed from a run's results, and the rows of the summary table.

Every row is value, ceiling and ratio. Where no server can be the ceiling (memory), the ceiling is
the packed size of the data itself (stated as such), so the ratio still reads "times the minimum".
"""

from __future__ import annotations

from typing import Any, cast

from .config import BenchConfig
from .stats import ratio

__all__ = ["DEDUP_KEY_PACKED_BYTES", "SERIES_PACKED_BYTES", "evaluate_targets", "table_rows"]

SERIES_PACKED_BYTES = 88
"""Key (account, metric, period start: 3 x 8 B) + the 8 statistics of an AggValue (8 x 8 B)."""
DEDUP_KEY_PACKED_BYTES = 16
"""A 64-bit key digest and the 64-bit offset it maps to (docs/design.md, Deduplication)."""

_SPEC_SIZES = {"query": 1_000_000, "series": 500_000, "restart": 10_000_000}


def _async_row(results: dict[str, Any], batch: int, callers: int) -> dict[str, Any] | None:
    for row in results.get("async") or []:
        if row["batch"] == batch and row["callers"] == callers:
            return cast(dict[str, Any], row)
    return None


def _size_note(measured: int, spec_key: str) -> str:
    spec = _SPEC_SIZES[spec_key]
    return "" if measured >= spec else f"measured at {measured:,}; the target is stated at {spec:,}"


def _target(
    tid: str,
    name: str,
    value: float | None,
    limit: float | None,
    unit: str,
    rule: str,
    le: bool,
    note: str = "",
) -> dict[str, Any]:
    met = None if value is None or limit is None else (value <= limit if le else value >= limit)
    return {
        "id": tid,
        "name": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "rule": rule,
        "met": met,
        "note": note,
    }


def evaluate_targets(results: dict[str, Any], config: BenchConfig) -> list[dict[str, Any]]:
    """Each target with its value, limit and whether it was met (None when its section did not run)."""
    out = []
    row = _async_row(results, config.target_batch, config.target_callers)
    if row is not None:
        out.append(
            _target(
                "async_vs_ceiling",
                f"ASYNC {config.target_batch}-event batches, {config.target_callers} callers",
                row["unimeter"]["events_per_s"],
                0.5 * row["ceiling"]["events_per_s"],
                "events/s",
                "≥ 50% of the ceiling's events/s",
                le=False,
            )
        )
    fsync = results.get("fsync")
    sync = results.get("sync")
    if sync is not None:
        single = sync["single"]
        limit = None
        if fsync is not None and single["ceiling"]["p50_ms"] is not None:
            limit = single["ceiling"]["p50_ms"] + 2 * fsync["p50_ms"]
        out.append(
            _target(
                "sync_single_p50",
                "SYNC single-event p50",
                single["unimeter"]["p50_ms"],
                limit,
                "ms",
                "≤ ceiling unary round trip + 2 x fsync p50",
                le=True,
            )
        )
        batch = sync["batch"]
        out.append(
            _target(
                "sync_batch_vs_async",
                f"SYNC {batch['batch']}-event batches, {batch['callers']} callers",
                batch["unimeter"]["events_per_s"],
                0.6 * batch["async_events_per_s"],
                "events/s",
                "≥ 60% of the ASYNC rate at the same shape",
                le=False,
            )
        )
    query = results.get("query")
    if query is not None:
        note = _size_note(query["account_events"], "query")
        for key, name, factor in (
            ("realtime", "QueryRealtime p50", 1.3),
            ("month", "month-long Query p50", 2.0),
        ):
            section = query[key]
            ceiling = section["ceiling"]["p50_ms"]
            out.append(
                _target(
                    f"query_{key}_p50",
                    name,
                    section["unimeter"]["p50_ms"],
                    None if ceiling is None else factor * ceiling,
                    "ms",
                    f"≤ {factor} x ceiling round trip",
                    le=True,
                    note=note if key == "month" else "",
                )
            )
    alerts = results.get("alerts")
    if alerts is not None:
        out.append(
            _target(
                "alert_p99",
                "ingest→alert p99 at half max rate",
                alerts["unimeter"]["p99_ms"],
                20.0,
                "ms",
                "< 20 ms",
                le=True,
            )
        )
    memory = results.get("memory")
    if memory is not None:
        series = memory["series"]
        out.append(
            _target(
                "rss_per_series",
                "RSS per (account, metric, period) series",
                series["bytes_per_series"],
                512.0,
                "B",
                "≤ 512 B",
                le=True,
                note=_size_note(series["series"], "series"),
            )
        )
        out.append(
            _target(
                "bytes_per_dedup_key",
                "Dedup index bytes per key",
                memory["dedup"]["bytes_per_key"],
                32.0,
                "B",
                "≤ 32 B",
                le=True,
            )
        )
    restart = results.get("restart")
    if restart is not None:
        out.append(
            _target(
                "restart_ready",
                "restart to first successful query",
                restart["first_query_seconds"],
                3.0,
                "s",
                "≤ 3 s",
                le=True,
                note=_size_note(restart["events"], "restart"),
            )
        )
    cluster = results.get("cluster")
    if cluster is not None:
        sync = cluster["sync"]
        bare = sync["bare_publish"]["p50_ms"]
        out.append(
            _target(
                "cluster_sync_single_p50",
                "cluster SYNC single-event p50, through the partition's owner",
                sync["cluster"]["p50_ms"],
                None if bare is None else 1.5 * bare,
                "ms",
                "≤ 1.5 x bare JetStream publish p50",
                le=True,
            )
        )
        failover = cluster["failover"]
        out.append(
            _target(
                "cluster_failover_max",
                "failover, owner killed → first acknowledged write (max)",
                failover.get("max_s"),
                failover["lease_ttl_seconds"] + 2.0,
                "s",
                "≤ lease TTL + 2 s",
                le=True,
                note=failover.get("not_measured", ""),
            )
        )
    return out


def _quantile_rows(
    head: str,
    tail: str,
    measured: dict[str, Any],
    ceiling: dict[str, Any] | None,
    *,
    p50: dict[str, Any] | None = None,
    p99: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The p50 and p99 rows (ms) of one latency measurement, named ``f"{head} p50{tail}"`` and so on."""
    return [
        _row(
            f"{head} {q}{tail}", "ms", measured[f"{q}_ms"], None if ceiling is None else ceiling[f"{q}_ms"], t
        )
        for q, t in (("p50", p50), ("p99", p99))
    ]


def _row(
    name: str, unit: str, value: float | None, ceiling: float | None, target: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "unit": unit,
        "value": value,
        "ceiling": ceiling,
        "ratio": ratio(value, ceiling),
        "target": None if target is None else target["rule"],
        "limit": None if target is None else target["limit"],
        "met": None if target is None else target["met"],
        "note": "" if target is None else target["note"],
    }


def table_rows(
    results: dict[str, Any], targets: list[dict[str, Any]], config: BenchConfig
) -> list[dict[str, Any]]:
    """The summary table: one row per reported number, with its target where it has one."""
    by_id = {t["id"]: t for t in targets}
    rows = []
    fsync = results.get("fsync")
    if fsync is not None:
        rows += _quantile_rows("fsync 100 B", " (disk floor)", fsync, None)
    for row in results.get("async") or []:
        is_target = (row["batch"], row["callers"]) == (config.target_batch, config.target_callers)
        target = by_id.get("async_vs_ceiling") if is_target else None
        rows.append(
            _row(
                f"ASYNC batch {row['batch']} x {row['callers']} callers",
                "events/s",
                row["unimeter"]["events_per_s"],
                row["ceiling"]["events_per_s"],
                target,
            )
        )
    sync = results.get("sync")
    if sync is not None:
        single = sync["single"]
        rows += _quantile_rows(
            "SYNC 1 event", "", single["unimeter"], single["ceiling"], p50=by_id.get("sync_single_p50")
        )
        batch = sync["batch"]
        rows.append(
            _row(
                f"SYNC batch {batch['batch']} x {batch['callers']} callers",
                "events/s",
                batch["unimeter"]["events_per_s"],
                batch["ceiling"]["events_per_s"],
                by_id.get("sync_batch_vs_async"),
            )
        )
    query = results.get("query")
    if query is not None:
        n = query["account_events"]
        for key, label, tid in (
            ("realtime", "QueryRealtime", "query_realtime_p50"),
            ("month", "Query month", "query_month_p50"),
        ):
            section = query[key]
            rows += _quantile_rows(
                label, f" ({n:,} ev)", section["unimeter"], section["ceiling"], p50=by_id.get(tid)
            )
    alerts = results.get("alerts")
    if alerts is not None:
        rate = alerts["target_events_per_s"]
        rows += _quantile_rows(
            "ingest→alert",
            f" @ {rate:,.0f} ev/s",
            alerts["unimeter"],
            alerts["ceiling"],
            p99=by_id.get("alert_p99"),
        )
        # From each batch's send instead of its ack: the wait a user's event has (diagnostic).
        rows += _quantile_rows(
            "send→alert",
            f" @ {rate:,.0f} ev/s (diagnostic)",
            alerts["unimeter"]["from_send"],
            alerts["ceiling"]["from_send"],
        )
        # The same run from the server's side, to tell a slow disk from a loop out of CPU.
        seen = alerts["unimeter"].get("server_side", {})
        tail = f" @ {rate:,.0f} ev/s, server side (diagnostic)"
        for key, head in (("publish_delay", "arrival→publish"), ("log_syncs", "log sync")):
            if seen.get(key, {}).get("n"):
                rows += _quantile_rows(head, tail, seen[key], None)
        single = alerts.get("one_per_message")
        if single is not None:
            rows += _quantile_rows(
                "ingest→alert", f" @ {rate:,.0f} ev/s, 1 per msg (diagnostic)", single["unimeter"], None
            )
        low = alerts.get("low_rate")
        if low is not None:
            rate = low["target_events_per_s"]
            rows += _quantile_rows("ingest→alert", f" @ {rate:,.0f} ev/s (diagnostic)", low["unimeter"], None)
    engines = results.get("engines")
    if engines is not None:
        rows += _engine_rows(engines, results)
    memory = results.get("memory")
    if memory is not None:
        s = memory["series"]
        rows.append(
            _row(
                f"RSS per series ({s['series']:,} series)",
                "B",
                s["bytes_per_series"],
                SERIES_PACKED_BYTES,
                by_id.get("rss_per_series"),
            )
        )
        d = memory["dedup"]
        rows.append(
            _row(
                f"dedup index per key ({d['index_keys']:,.0f} keys)",
                "B",
                d["bytes_per_key"],
                DEDUP_KEY_PACKED_BYTES,
                by_id.get("bytes_per_dedup_key"),
            )
        )
        rows.append(
            _row(
                f"RSS difference per dedup key ({d['keys']:,})",
                "B",
                d["rss_bytes_per_key"],
                DEDUP_KEY_PACKED_BYTES,
            )
        )
    restart = results.get("restart")
    if restart is not None:
        n = restart["events"]
        c = restart["ceiling"]
        rows.append(_row(f"restart → ready line ({n:,} ev)", "s", restart["ready_seconds"], c["seconds"]))
        rows.append(
            _row(
                f"restart → first query ({n:,} ev)",
                "s",
                restart["first_query_seconds"],
                c["seconds"],
                by_id.get("restart_ready"),
            )
        )
        rows.append(_row(f"graceful stop ({n:,} ev)", "s", restart["stop_seconds"], None))
        python = restart["python_engine"]
        same = "same answer" if python["same_answer"] else "ANSWER DIFFERS"
        rows.append(
            _row(
                f"restart → first query, python engine ({same}, diagnostic)",
                "s",
                python["first_query_seconds"],
                c["seconds"],
            )
        )
    cluster = results.get("cluster")
    if cluster is not None:
        rows += _cluster_rows(cluster, by_id)
    return rows


def _engine_rows(engines: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    """The python engine's rows (diagnostic: the targets are the native engine's), each beside
    the ceiling's number for the same shape measured earlier in the run, where there is one."""
    ceiling_async = next(
        (
            row["ceiling"]["events_per_s"]
            for row in results.get("async") or []
            if (row["batch"], row["callers"]) == (engines["async"]["batch"], engines["async"]["callers"])
        ),
        None,
    )
    sync = results.get("sync")
    a, b = engines["async"], engines["sync_batch"]
    rows = [
        _row(
            f"ASYNC batch {a['batch']} x {a['callers']} callers, python engine (diagnostic)",
            "events/s",
            a["python"]["events_per_s"],
            ceiling_async,
        ),
        _row(
            f"SYNC batch {b['batch']} x {b['callers']} callers, python engine (diagnostic)",
            "events/s",
            b["python"]["events_per_s"],
            b["async_reference"]["events_per_s"],
        ),
    ]
    ceiling_single = sync["single"]["ceiling"] if sync is not None else None
    rows += _quantile_rows(
        "SYNC 1 event", ", python engine (diagnostic)", engines["sync_single"], ceiling_single
    )
    return rows


def _cluster_rows(cluster: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The cluster section's rows: SYNC beside the bare publish (its ceiling), the embedded node's
    SYNC and ASYNC beside the cluster's, failover times."""
    sync = cluster["sync"]
    bare = sync["bare_publish"]
    where = f"{cluster['nodes']} node(s), {cluster['servers']} nats-servers"
    rows = _quantile_rows(f"bare JetStream publish {bare['payload_bytes']} B", "", bare, None)
    rows += _quantile_rows(
        "bare publish with a node's headers", " (diagnostic)", sync["bare_publish_fenced"], bare
    )
    rows += _quantile_rows(
        "cluster SYNC 1 event, to its owner",
        f" ({where})",
        sync["cluster"],
        bare,
        p50=by_id.get("cluster_sync_single_p50"),
    )
    if sync.get("cluster_forwarded") is not None:
        rows += _quantile_rows("cluster SYNC 1 event, via another node", "", sync["cluster_forwarded"], bare)
    rows += _quantile_rows("embedded SYNC 1 event", " (same run)", sync["embedded"], bare)
    shape = cluster["async"]
    rows.append(
        _row(
            f"cluster ASYNC batch {shape['batch']} x {shape['callers']} callers ({where})",
            "events/s",
            shape["cluster"]["events_per_s"],
            shape["embedded"]["events_per_s"],
        )
    )
    rows.append(
        _row("embedded ASYNC, same shape (same run)", "events/s", shape["embedded"]["events_per_s"], None)
    )
    failover = cluster["failover"]
    ttl = failover["lease_ttl_seconds"]
    kills = failover.get("kills", 0)
    rows.append(_row(f"failover p50 ({kills} kills, lease TTL {ttl:g} s)", "s", failover.get("p50_s"), None))
    rows.append(
        _row(
            f"failover max ({kills} kills, lease TTL {ttl:g} s)",
            "s",
            failover.get("max_s"),
            None,
            by_id.get("cluster_failover_max"),
        )
    )
    return rows
