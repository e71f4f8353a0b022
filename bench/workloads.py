"""The workloads: each section of a run, measured on Unimeter and on the ceiling in the same run.

Every section returns a JSON-ready dict. Throughput and latency sections measure the ceiling and
Unimeter back to back with the same load generators and payloads (ceiling first, so a noisy
neighbour is as likely to hit either). Memory and restart sections use their own fresh servers so
earlier workloads cannot distort them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import payloads
from .config import BenchConfig
from .fsync_probe import probe_fsync
from .loadgen import WorkerPool
from .processes import (
    ServerProcess,
    cpu_seconds,
    rss_bytes,
    scrape_gauge_sum,
    scrape_histograms,
    start_ceiling,
    start_unimeter,
)
from .report import Progress
from .stats import bucket_percentile, latency_summary, ratio

__all__ = ["Bench", "estimate_seconds"]

_DAY_NS = 86_400_000_000_000

LOW_ALERT_RATE_SHARE = 0.05
"""Share of the max ASYNC rate of the alert run's low-rate diagnostic."""

# Step estimates (seconds) for the progress bar only; nothing is decided by them.
_W_SERVER = 1.5
_FILL_RATE_GUESS = 40_000.0


def _w_run(seconds: float) -> float:
    return seconds + 0.8


def _w_lat(cfg: BenchConfig) -> float:
    return cfg.latency_seconds + 0.4


def _w_fsync(cfg: BenchConfig) -> float:
    return cfg.fsync_iterations * 0.003


def _w_fill(events: int) -> float:
    return events / _FILL_RATE_GUESS + 0.3


def _w_alert(cfg: BenchConfig) -> float:
    return cfg.alert_seconds + 2.0


def _w_recover(events: int) -> float:
    return events / 1_000_000 + 1.0


_ALERT_PATH: dict[str, tuple[str, dict[str, str]]] = {
    "publish_delay": ("unimeter_alert_publish_delay_seconds", {}),
    "log_syncs": ("unimeter_log_fsync_seconds", {"log": "events"}),
}
"""The server's histograms the alert run reads: its alerts' publish delays, its event logs' syncs."""


def _alert_path_summary(
    before: dict[str, list[tuple[float, float]]], after: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    """What the server saw between two reads of :data:`_ALERT_PATH`: how long its alerts waited
    from their batch's arrival to their publication, and how long its log syncs took (one
    observation per sync round or ``syncfs``), in ms, from the buckets; each that the server has.
    A diagnostic of the alert run: the latency from the server's side (from the batch's arrival,
    not its ack, and up to the publication, not the subscriber's read), and the disk's share of
    it."""
    out: dict[str, Any] = {}
    for key, new in after.items():
        if not new:
            continue  # a server without that histogram (an older checkout's, beside this one)
        buckets = [(bound, count - was) for (bound, count), (_, was) in zip(new, before[key], strict=True)]
        over_10ms = buckets[-1][1] - next(count for bound, count in buckets if bound >= 0.01)
        out[key] = {
            "n": int(buckets[-1][1]),
            **{f"p{q}_ms": _ms(bucket_percentile(buckets, q)) for q in (50, 99)},
            "over_10ms": int(over_10ms),
        }
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _warm_events(cfg: BenchConfig) -> int:
    return min(cfg.fill_batch * cfg.fill_callers, max(cfg.series // 2, 1), 20_000)


def estimate_seconds(cfg: BenchConfig) -> float:
    """The run's estimated duration, the progress bar's 100%."""
    s = set(cfg.sections)
    total = 3.0 + 2 * _W_SERVER
    if "fsync" in s:
        total += _w_fsync(cfg)
    if "async" in s:
        runs = len(cfg.batch_sizes) * len(cfg.callers) + cfg.target_pairs - 1
        total += 2 * runs * _w_run(cfg.run_seconds)
    if "sync" in s:
        total += 2 * _w_lat(cfg) + 3 * _w_run(cfg.run_seconds)
    if "query" in s:
        total += _w_fill(cfg.query_account_events) + 4 * _w_lat(cfg)
    if "alerts" in s:
        total += 4 * _w_alert(cfg)
    if "engines" in s:
        total += _W_SERVER + 3 * _w_run(cfg.run_seconds) + _w_lat(cfg)
    if "memory" in s:
        total += 2 * (_W_SERVER + _w_fill(2 * _warm_events(cfg) + cfg.series + cfg.dedup_keys))
    if "restart" in s:
        total += 3 * _W_SERVER + _w_fill(cfg.restart_events) + 3 * _w_recover(cfg.restart_events)
    if "cluster" in s:
        total += (cfg.cluster_nodes + 2) * _W_SERVER + 5 * _w_lat(cfg) + 2 * _w_run(cfg.run_seconds)
        if cfg.cluster_nodes > 1:
            total += cfg.failover_kills * (cfg.cluster_lease_ttl_seconds + 4)
    return total


class Bench:
    """One run's shared state: config, load generators, the two long-lived servers, progress."""

    def __init__(
        self,
        config: BenchConfig,
        pool: WorkerPool,
        *,
        data_root: Path,
        progress: Progress,
        unimeter: ServerProcess | None = None,
        ceiling: ServerProcess | None = None,
        server_args: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.pool = pool
        self.data_root = data_root
        self.progress = progress
        self.unimeter = unimeter
        self.ceiling = ceiling
        self.server_args = server_args
        self._tag = 0
        self.extra_servers: list[ServerProcess] = []

    def next_tag(self) -> int:
        """A number unique to one measurement, part of every event id it sends."""
        self._tag += 1
        return self._tag

    def _targets(self) -> list[tuple[str, ServerProcess]]:
        assert self.ceiling is not None and self.unimeter is not None
        return [("ceiling", self.ceiling), ("unimeter", self.unimeter)]

    def _templates(self, batch: int) -> int:
        # Small batches get more templates so a caller still spreads over many accounts.
        return self.config.templates_per_caller if batch >= 100 else max(self.config.templates_per_caller, 64)

    def _timed_tick(self, start_at: float, duration: float) -> Callable[[dict[int, float]], None]:
        def tick(_: dict[int, float]) -> None:
            self.progress.update((time.monotonic() - start_at) / duration)

        return tick

    # ------------------------------------------------------------------ building blocks

    def measure_ingest(
        self,
        server: ServerProcess | Sequence[ServerProcess],
        *,
        batch: int,
        callers: int,
        duration: float,
        sync: bool = False,
        alert: dict[str, int] | None = None,
        calls_per_second: float | None = None,
    ) -> dict[str, Any]:
        """Closed-loop (or paced) Ingest from ``callers`` processes for ``duration`` seconds.
        Given several servers (a cluster's nodes), caller ``i`` calls server ``i`` modulo their
        number, and the server CPU is theirs together."""
        cfg = self.config
        servers = [server] if isinstance(server, ServerProcess) else list(server)
        tag = self.next_tag()
        now_ns = time.time_ns() - int(cfg.event_age_seconds * 1e9)
        prepare = {
            "tag": tag,
            "batch": batch,
            "templates": self._templates(batch),
            "accounts": cfg.accounts,
            "metrics": cfg.metrics,
            "now_ns": now_ns,
            "sync": sync,
            "alert": alert,
            "calls_per_second": calls_per_second,
        }
        self.pool.run(
            [
                (
                    i,
                    "prepare_ingest",
                    {**prepare, "addr": servers[i % len(servers)].addr, "slot": i, "phase": i / callers},
                )
                for i in range(callers)
            ],
            timeout=300,
        )
        start_at = time.monotonic() + cfg.start_delay_seconds
        for i in range(callers):
            self.pool.submit(i, "go", start_at=start_at, duration=duration)
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_before = sum(cpu_seconds(s.pid) for s in servers)
        answers = self.pool.collect(
            range(callers), tick=self._timed_tick(start_at, duration), timeout=duration + 300
        )
        cpu_after = sum(cpu_seconds(s.pid) for s in servers)
        elapsed = max(a["last_ack_ns"] for a in answers) / 1e9 - start_at
        events = sum(a["events"] for a in answers)
        latencies = [v for a in answers for v in a["latencies_ns"]]
        return {
            "events": events,
            "calls": sum(a["calls"] for a in answers),
            "seconds": elapsed,
            "events_per_s": events / elapsed if elapsed > 0 else 0.0,
            "errors": sum(a["errors"] for a in answers),
            "first_error": next((a["first_error"] for a in answers if a["first_error"]), ""),
            "duplicates": sum(a["duplicates"] for a in answers),
            "server_cpu_s": cpu_after - cpu_before,
            "server_cpu_share": (cpu_after - cpu_before) / elapsed if elapsed > 0 else None,
            "call_latency": latency_summary(latencies),
            "_alert_calls": [call for a in answers for call in a["alert_calls"]],
        }

    def measure_latency(self, server: ServerProcess, kind: str, **args: Any) -> dict[str, Any]:
        """Sequential calls of ``kind`` from one load generator; latency percentiles in ms."""
        cfg = self.config
        started = time.monotonic()
        self.pool.submit(
            0,
            "latency",
            addr=server.addr,
            kind=kind,
            duration=cfg.latency_seconds,
            max_calls=cfg.latency_max_calls,
            tag=self.next_tag(),
            **args,
        )
        (answer,) = self.pool.collect([0], tick=self._timed_tick(started, cfg.latency_seconds + 0.1))
        return {**latency_summary(answer["latencies_ns"]), "answer": answer["answer"]}

    def fill(self, server: ServerProcess, specs: list[dict[str, Any]], total: int) -> dict[str, Any]:
        """Run one fill spec per load generator; progress by events stored."""

        def tick(done: dict[int, float]) -> None:
            self.progress.update(sum(done.values()) / max(total, 1))

        started = time.monotonic()
        answers = self.pool.run(
            [(i, "fill", {"addr": server.addr, "spec": spec}) for i, spec in enumerate(specs)],
            tick=tick,
        )
        seconds = time.monotonic() - started
        events = sum(a["events"] for a in answers)
        return {
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds if seconds > 0 else 0.0,
            "retries": sum(a["retries"] for a in answers),
            "duplicates": sum(a["duplicates"] for a in answers),
        }

    def create_metrics(self, server: ServerProcess) -> None:
        self.pool.run([(0, "create_metrics", {"addr": server.addr, "n_metrics": self.config.metrics})])

    def start_server(self, name: str, *extra: str) -> ServerProcess:
        """``unimeter serve`` on ``data_root/name`` (fresh the first time, recovered after)."""
        server = start_unimeter(self.data_root / name, *self.server_args, *extra, name=name)
        self.extra_servers.append(server)
        return server

    def _shares(self, total: int, parts: int) -> list[tuple[int, int]]:
        """(first, count) of ``total`` items split into ``parts`` contiguous shares."""
        base, extra = divmod(total, parts)
        out, first = [], 0
        for i in range(parts):
            count = base + (1 if i < extra else 0)
            out.append((first, count))
            first += count
        return out

    # ------------------------------------------------------------------ sections

    def section_fsync(self) -> dict[str, Any]:
        cfg = self.config
        self.progress.begin("fsync probe (100 B + fdatasync)", _w_fsync(cfg))
        result = probe_fsync(self.data_root / "fsync", cfg.fsync_iterations, progress=self.progress.update)
        self.progress.end()
        return result

    def section_async(self) -> list[dict[str, Any]]:
        cfg = self.config
        rows = []
        for batch in cfg.batch_sizes:
            for callers in cfg.callers:
                target = (batch, callers) == (cfg.target_batch, cfg.target_callers)
                rows.append(self._async_row(batch, callers, cfg.target_pairs if target else 1))
        return rows

    def _async_row(self, batch: int, callers: int, n_pairs: int) -> dict[str, Any]:
        """One shape of the ASYNC matrix: the ceiling, then unimeter right after, so that drift on the
        machine hits both alike. The target's shape takes ``n_pairs`` such pairs, every other one in
        the other order, and is the pair whose ratio is the median (all of them under ``pairs``): on
        the reference machine one pair's ratio moved by ±0.1 from run to run of the same code, as the
        host slowed one half of a pair more than the other (memory-bound work more than the
        ceiling's), and a median of pairs does not hang on one slow minute."""
        pairs = []
        for i in range(n_pairs):
            order = self._targets() if i % 2 == 0 else self._targets()[::-1]
            label = f"ASYNC batch={batch} callers={callers}"
            if n_pairs > 1:
                label += f" (pair {i + 1} of {n_pairs})"
            pair: dict[str, Any] = {
                name: self._timed_run(f"{label} → {name}", server, batch, callers) for name, server in order
            }
            pair["ratio"] = ratio(pair["unimeter"]["events_per_s"], pair["ceiling"]["events_per_s"])
            pairs.append(pair)
        by_ratio = sorted(pairs, key=lambda p: (p["ratio"] is None, p["ratio"] or 0.0))
        median = by_ratio[(len(pairs) - 1) // 2]
        row: dict[str, Any] = {"batch": batch, "callers": callers, **median}
        if n_pairs > 1:
            row["pairs"] = pairs
        return row

    def section_sync(self) -> dict[str, Any]:
        cfg = self.config
        assert self.unimeter is not None
        single: dict[str, Any] = {}
        for name, server in self._targets():
            self.progress.begin(f"SYNC single-event latency → {name}", _w_lat(cfg))
            single[name] = self.measure_latency(server, "ingest1", account=1, sync=True)
            self.progress.end()
        single["ratio_p50"] = ratio(single["unimeter"]["p50_ms"], single["ceiling"]["p50_ms"])
        single["ratio_p99"] = ratio(single["unimeter"]["p99_ms"], single["ceiling"]["p99_ms"])
        batch_size, callers = cfg.sync_batch, cfg.sync_batch_callers
        batch: dict[str, Any] = {"batch": batch_size, "callers": callers}
        for name, server in self._targets():
            batch[name] = self._timed_run(
                f"SYNC batch={batch_size} callers={callers} → {name}", server, batch_size, callers, sync=True
            )
        # The ASYNC reference is measured right after, not taken from the matrix minutes earlier:
        # on a noisy machine only back-to-back runs compare.
        reference = self._timed_run(
            f"ASYNC batch={batch_size} callers={callers} → unimeter (reference)",
            self.unimeter,
            batch_size,
            callers,
        )
        batch["ratio"] = ratio(batch["unimeter"]["events_per_s"], batch["ceiling"]["events_per_s"])
        batch["async_reference"] = reference
        batch["async_events_per_s"] = reference["events_per_s"]
        batch["ratio_to_async"] = ratio(batch["unimeter"]["events_per_s"], reference["events_per_s"])
        return {"single": single, "batch": batch}

    def section_engines(self) -> dict[str, Any]:
        """The python engine (the reference and fallback) beside the main server's, in the same
        run, on a fresh ``unimeter serve --engine python``: ASYNC at the target shape, SYNC
        batches with an ASYNC reference right after them, and single-event SYNC latency. The
        ceiling's numbers for the same shapes are the ones measured earlier in the run."""
        cfg = self.config
        self.progress.begin("python engine: starting a fresh server", _W_SERVER)
        server = self.start_server("python-engine", "--engine", "python")
        self.create_metrics(server)
        self.progress.end()

        shape = (cfg.target_batch, cfg.target_callers)
        async_ = self._timed_run(f"python engine: ASYNC batch={shape[0]} callers={shape[1]}", server, *shape)
        sync_shape = (cfg.sync_batch, cfg.sync_batch_callers)
        sync_batch = self._timed_run(
            f"python engine: SYNC batch={sync_shape[0]} callers={sync_shape[1]}",
            server,
            *sync_shape,
            sync=True,
        )
        reference = self._timed_run(
            f"python engine: ASYNC batch={sync_shape[0]} callers={sync_shape[1]} (reference)",
            server,
            *sync_shape,
        )
        self.progress.begin("python engine: SYNC single-event latency", _w_lat(cfg))
        single = self.measure_latency(server, "ingest1", account=1, sync=True)
        self.progress.end()
        server.kill()
        return {
            "engine": "python",
            "async": {"batch": shape[0], "callers": shape[1], "python": async_},
            "sync_batch": {
                "batch": sync_shape[0],
                "callers": sync_shape[1],
                "python": sync_batch,
                "async_reference": reference,
                "ratio_to_async": ratio(sync_batch["events_per_s"], reference["events_per_s"]),
            },
            "sync_single": single,
        }

    def section_query(self) -> dict[str, Any]:
        cfg = self.config
        assert self.unimeter is not None
        total = cfg.query_account_events
        now = time.time_ns()
        start_ns, end_ns = now - 30 * _DAY_NS, now - 1_000_000_000
        specs = [
            {
                "kind": "spread",
                "batch": cfg.query_fill_batch,
                "account": payloads.QUERY_ACCOUNT,
                "metric": payloads.QUERY_METRIC,
                "first": first,
                "count": count,
                "total": total,
                "start_ns": start_ns,
                "end_ns": end_ns,
            }
            for first, count in self._shares(total, cfg.fill_callers)
        ]
        self.progress.begin(f"query account: storing {total:,} events", _w_fill(total))
        fill = self.fill(self.unimeter, specs, total)
        self.progress.end()
        # A month-long range whose edges fall between buckets, so the exact-edge path is exercised.
        q_start, q_end = now - 30 * _DAY_NS + 1_234_567, now - 7_654_321
        out: dict[str, Any] = {
            "account_events": total,
            "fill": fill,
            "range": {"start_unix_nano": q_start, "end_unix_nano": q_end},
        }
        common = {"account": payloads.QUERY_ACCOUNT, "metric": payloads.QUERY_METRIC}
        for key, kind, extra in (
            ("realtime", "realtime", {}),
            ("month", "query", {"start_ns": q_start, "end_ns": q_end}),
        ):
            section: dict[str, Any] = {}
            for name, server in self._targets():
                label = "QueryRealtime" if kind == "realtime" else "month-long Query"
                self.progress.begin(f"{label} → {name}", _w_lat(cfg))
                section[name] = self.measure_latency(server, kind, **common, **extra)
                self.progress.end()
            section["ratio_p50"] = ratio(section["unimeter"]["p50_ms"], section["ceiling"]["p50_ms"])
            section["ratio_p99"] = ratio(section["unimeter"]["p99_ms"], section["ceiling"]["p99_ms"])
            out[key] = section
        return out

    def alert_run(self, server: ServerProcess, rate: float, per_message: int) -> dict[str, Any]:
        """Paced ingest at ``rate`` events/s with threshold-crossing events; ack → alert latency.
        The subscriber asks for up to ``per_message`` alerts per stream message."""
        cfg = self.config
        subscriber = cfg.alert_callers
        subscribe = {
            "addr": server.addr,
            "metric_codes": [payloads.ALERT_METRIC],
            "max_alerts_per_message": per_message,
        }
        self.pool.run([(subscriber, "subscribe", subscribe)])
        http_addr = server.http_addr
        before = None if http_addr is None else scrape_histograms(http_addr, _ALERT_PATH)
        alert = {
            "per_batch": cfg.alert_events_per_batch,
            "base_ns": time.time_ns() - 60_000_000_000,
            "stride": cfg.alert_callers,
        }
        load = self.measure_ingest(
            server,
            batch=cfg.alert_batch,
            callers=cfg.alert_callers,
            duration=cfg.alert_seconds,
            alert=alert,
            calls_per_second=rate / cfg.alert_batch / cfg.alert_callers,
        )
        (received,) = self.pool.run([(subscriber, "unsubscribe", {"settle": cfg.alert_settle_seconds})])
        # Alert-metric event times are unique per run, so an alert's event time names its batch.
        calls = {t: (sent, ack) for t, sent, ack in load.pop("_alert_calls")}
        latencies = [recv - calls[t][1] for t, recv in received if t in calls]
        # Diagnostic: from the batch's send, the whole wait of its events (their batch's time in
        # the server, queueing included, then the alert's).
        from_send = [recv - calls[t][0] for t, recv in received if t in calls]
        out = {
            "events_per_s": load["events_per_s"],
            "alerts_expected": len(calls),
            "alerts_received": len(received),
            "alerts_matched": len(latencies),
            "errors": load["errors"],
            "server_cpu_share": load["server_cpu_share"],
            **latency_summary(latencies),
            "from_send": latency_summary(from_send),
        }
        if http_addr is not None and before is not None:
            out["server_side"] = _alert_path_summary(before, scrape_histograms(http_addr, _ALERT_PATH))
        return out

    def section_alerts(self, async_rows: list[dict[str, Any]] | None) -> dict[str, Any]:
        cfg = self.config
        assert self.unimeter is not None
        rates = [r["unimeter"]["events_per_s"] for r in async_rows or []]
        if not rates:
            self.progress.begin("ASYNC max rate (reference for the alert run)", _w_run(cfg.run_seconds))
            rates = [
                self.measure_ingest(
                    self.unimeter, batch=cfg.alert_batch, callers=cfg.alert_callers, duration=cfg.run_seconds
                )["events_per_s"]
            ]
            self.progress.end()
        max_rate = max(rates)
        rate = max_rate / 2
        batched = cfg.alert_max_per_message
        out: dict[str, Any] = {
            "max_async_events_per_s": max_rate,
            "target_events_per_s": rate,
            "batch": cfg.alert_batch,
            "callers": cfg.alert_callers,
            "alert_events_per_batch": cfg.alert_events_per_batch,
            "max_alerts_per_message": batched,
        }
        for name, server in self._targets():
            self.progress.begin(f"ingest→alert at half max rate ({rate:,.0f} ev/s) → {name}", _w_alert(cfg))
            out[name] = self.alert_run(server, rate, batched)
            self.progress.end()
        out["ratio_p50"] = ratio(out["unimeter"]["p50_ms"], out["ceiling"]["p50_ms"])
        out["ratio_p99"] = ratio(out["unimeter"]["p99_ms"], out["ceiling"]["p99_ms"])
        # Diagnostic, not a target: the same rate with the default subscription, one alert per
        # message, to show what batching the stream is worth under load.
        self.progress.begin("ingest→alert at half max rate, one alert per message → unimeter", _w_alert(cfg))
        out["one_per_message"] = {"unimeter": self.alert_run(self.unimeter, rate, 1)}
        self.progress.end()
        # Diagnostic, not a target: the same pipeline nearly idle, to separate its own floor
        # (flush interval, fsyncs, fan-out) from queueing behind the ingest work at half rate.
        low = max_rate * LOW_ALERT_RATE_SHARE
        self.progress.begin(
            f"ingest→alert at {LOW_ALERT_RATE_SHARE:.0%} of max rate ({low:,.0f} ev/s) → unimeter",
            _w_alert(cfg),
        )
        low_run = self.alert_run(self.unimeter, low, batched)
        out["low_rate"] = {"target_events_per_s": low, "unimeter": low_run}
        self.progress.end()
        return out

    def _memory_run(self, name: str, *, with_ids: bool) -> dict[str, Any]:
        """One fresh server: warm-up, ``series`` series (one event each), then ``dedup_keys`` events.

        The last phase's events carry ids (a dedup key each) or not (no id and no explicit time:
        no key at all); everything before it is identical, so two runs differ only in the keys.
        """
        cfg = self.config
        label = "with ids" if with_ids else "without ids"
        self.progress.begin(f"memory ({label}): starting a fresh server", _W_SERVER)
        # No periodic snapshot during the measurement: a snapshot's transient buffers would inflate
        # the high-water RSS that the deltas are read from.
        server = self.start_server(
            name, "--snapshot-interval-seconds", "1000000", "--http-addr", "127.0.0.1:0"
        )
        self.create_metrics(server)
        self.progress.end()
        base = payloads.SERIES_ACCOUNT_BASE

        def grid(count: int, per_series: int, ids: bool, account_base: int) -> list[dict[str, Any]]:
            return [
                {
                    "kind": "grid",
                    "batch": cfg.fill_batch,
                    "metrics": cfg.metrics,
                    "account_base": account_base,
                    "first": first,
                    "count": n,
                    "per_series": per_series,
                    "ids": ids,
                    "tag": 1,
                    "slot": i,
                }
                for i, (first, n) in enumerate(self._shares(count, cfg.fill_callers))
            ]

        def settled_rss() -> int:
            time.sleep(cfg.memory_settle_seconds)  # past the flush: write buffers are released
            return rss_bytes(server.pid)

        # Warm-up on other accounts, so lazy imports and first-use caches are paid for up front.
        warm = _warm_events(cfg)
        self.progress.begin(f"memory ({label}): warm-up", _w_fill(2 * warm))
        self.fill(server, grid(warm, 1, True, base - 10_000_000), warm)
        self.fill(server, grid(warm, 1, False, base - 10_000_000), warm)
        self.progress.end()
        rss0 = settled_rss()
        self.progress.begin(f"memory ({label}): {cfg.series:,} series, one event each", _w_fill(cfg.series))
        series_fill = self.fill(server, grid(cfg.series, 1, False, base), cfg.series)
        self.progress.end()
        rss1 = settled_rss()
        span = min(cfg.series, cfg.dedup_keys)
        per_series = max(1, cfg.dedup_keys // span)
        n = span * per_series
        self.progress.begin(f"memory ({label}): {n:,} more events {label}", _w_fill(n))
        events_fill = self.fill(server, grid(span, per_series, with_ids, base), n)
        self.progress.end()
        rss2 = settled_rss()
        http_addr = server.http_addr
        assert http_addr is not None  # started with --http-addr above
        dedup_keys = scrape_gauge_sum(http_addr, "unimeter_dedup_keys")
        dedup_bytes = scrape_gauge_sum(http_addr, "unimeter_dedup_bytes")
        server.kill()  # its data is not needed: no graceful flush + snapshot to wait for
        return {
            "dedup_keys": dedup_keys,
            "dedup_bytes": dedup_bytes,
            "rss_start": rss0,
            "rss_after_series": rss1,
            "rss_after_events": rss2,
            "bytes_per_series": (rss1 - rss0) / cfg.series,
            "events": n,
            "bytes_per_event": (rss2 - rss1) / n,
            "fill_series": series_fill,
            "fill_events": events_fill,
        }

    def section_memory(self) -> dict[str, Any]:
        cfg = self.config
        plain = self._memory_run("memory-plain", with_ids=False)
        keyed = self._memory_run("memory-keyed", with_ids=True)
        n = plain["events"]
        return {
            "series": {
                "series": cfg.series,
                # Both runs create the same series the same way; their mean is the estimate.
                "bytes_per_series": (plain["bytes_per_series"] + keyed["bytes_per_series"]) / 2,
                "runs_bytes_per_series": [plain["bytes_per_series"], keyed["bytes_per_series"]],
            },
            "dedup": {
                "keys": n,
                # The index's own allocation (spare table capacity included) over its live keys,
                # warm-up keys included; read from the server's gauges.
                "bytes_per_key": keyed["dedup_bytes"] / keyed["dedup_keys"],
                "index_keys": keyed["dedup_keys"],
                "index_bytes": keyed["dedup_bytes"],
                # Cross-check from outside: the RSS difference between the two servers. Noisy: the
                # runs differ in how many minute cells their events open (arrival time crossing a
                # minute boundary), which the RSS sees and which has nothing to do with keys.
                "rss_bytes_per_key": keyed["bytes_per_event"] - plain["bytes_per_event"],
                "bytes_per_event_without_id": plain["bytes_per_event"],
                "bytes_per_event_with_id": keyed["bytes_per_event"],
            },
            "runs": {"without_ids": plain, "with_ids": keyed},
        }

    def section_restart(self) -> dict[str, Any]:
        cfg = self.config
        self.progress.begin("restart: starting a fresh server", _W_SERVER)
        server = self.start_server("restart")
        self.create_metrics(server)
        self.progress.end()
        total = cfg.restart_events
        batches = math.ceil(total / cfg.fill_batch)
        tag = self.next_tag()
        now = time.time_ns()
        specs = [
            {
                "kind": "templated",
                "batch": cfg.fill_batch,
                "templates": cfg.templates_per_caller,
                "accounts": cfg.accounts,
                "metrics": cfg.metrics,
                "now_ns": now,
                "tag": tag,
                "slot": i,
                "n_batches": count,
            }
            for i, (_, count) in enumerate(self._shares(batches, cfg.fill_callers))
        ]
        events = batches * cfg.fill_batch
        self.progress.begin(f"restart: logging {events:,} events", _w_fill(events))
        fill = self.fill(server, specs, events)
        self.progress.end()
        rss = rss_bytes(server.pid)
        self.progress.begin("restart: graceful stop (flush + snapshot)", _w_recover(events))
        stop_seconds = server.stop()
        self.progress.end()
        data_dir = self.data_root / "restart"
        files = [p for p in data_dir.rglob("*") if p.is_file()]
        log_bytes = sum(p.stat().st_size for p in files if "events" in p.parts)
        self.progress.begin("restart: ceiling (no-op server start, reading the data)", _W_SERVER)
        noop = start_ceiling(self.data_root)
        noop_ready = noop.ready_seconds
        noop.stop()
        read_started = time.monotonic()
        data_bytes = 0
        for path in files:
            with path.open("rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    data_bytes += len(chunk)
        read_seconds = time.monotonic() - read_started
        self.progress.end()
        self.progress.begin("restart: recovering", _w_recover(events))
        again, first = self._first_query("restart")
        first_query = first["ok_ns"] / 1e9 - again.started_monotonic
        rss_after = rss_bytes(again.pid)
        again.stop()
        self.progress.end()
        # The same directory (and the snapshot the stop above wrote) on the python engine: its
        # recovery time, and that it answers the first query as the other engine did.
        self.progress.begin("restart: recovering on the python engine", _w_recover(events))
        python, python_first = self._first_query("restart", "--engine", "python")
        python_engine = {
            "ready_seconds": python.ready_seconds,
            "first_query_seconds": python_first["ok_ns"] / 1e9 - python.started_monotonic,
            "same_answer": python_first["count"] == first["count"],
        }
        python.stop()
        self.progress.end()
        ceiling = noop_ready + read_seconds
        return {
            "events": events,
            "fill": fill,
            "log_bytes": log_bytes,
            "data_bytes": data_bytes,
            "rss_before_stop": rss,
            "rss_after_recovery": rss_after,
            "stop_seconds": stop_seconds,
            "ready_seconds": again.ready_seconds,
            "first_query_seconds": first_query,
            "ceiling": {
                "process_ready_seconds": noop_ready,
                "read_data_seconds": read_seconds,
                "seconds": ceiling,
            },
            "ratio": ratio(first_query, ceiling),
            "cpus": os.cpu_count(),
            "python_engine": python_engine,
        }

    def _timed_run(
        self, label: str, server: ServerProcess, batch: int, callers: int, *, sync: bool = False
    ) -> dict[str, Any]:
        """One timed ingest run of the configured length, shown as ``label`` in the progress bar."""
        self.progress.begin(label, _w_run(self.config.run_seconds))
        result = self.measure_ingest(
            server, batch=batch, callers=callers, duration=self.config.run_seconds, sync=sync
        )
        result.pop("_alert_calls")
        self.progress.end()
        return result

    def _first_query(self, name: str, *extra: str) -> tuple[ServerProcess, dict[str, Any]]:
        """``unimeter serve`` on ``data_root/name`` started, and its first successful QueryRealtime
        (account 1, the first metric): the server, and the load generator's answer."""
        server = self.start_server(name, *extra)
        query = {"addr": server.addr, "account": 1, "metric": payloads.METRIC_CODES[0]}
        (first,) = self.pool.run([(0, "first_query", query)])
        return server, first
