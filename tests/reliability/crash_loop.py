"""The crash loop: SIGKILL a real ``unimeter serve`` again and again under load, and check after every
restart that nothing was lost, doubled or mis-aggregated, against the reference model.

Each cycle runs mixed SYNC and ASYNC ingest from several writers (duplicates of earlier events, REMOVE
corrections, events in past periods, events without an id; COUNT, SUM, MAX, LATEST and COUNT_UNIQUE
metrics with one-shot and recurring thresholds) while queries and an alert subscriber run, then kills
the server: at a random moment, inside a snapshot write, or at a random moment followed by a second
kill while the restarted node is still recovering. After the restart it checks, and again after
resending every batch not acknowledged SYNC:

* every event of a SYNC-acknowledged batch is stored, and no event is stored twice;
* what ``ListEvents`` says is stored only grows: every partition's earlier events keep their offsets;
* every ``Query`` (each account, metric and hourly period touched, the whole range, and two ranges
  with edges inside hours) equals the reference model fed exactly the stored events;
* the alert log equals the model's alerts, offsets run 1..n in every partition, nothing verified
  earlier or sent to the subscriber changed, and the subscriber got each partition's alerts in
  order without gaps;
* after the resend, the stored events are exactly the unique events ever sent.

``python -m tests.reliability.crash_loop --cycles 100`` runs it (``make soak``); the bounded
``tests/crash/test_crash_loop.py`` runs a few cycles in ``make test``. The workload and the kill
schedule come from ``--seed`` (printed with every summary); kill timing is real time, so a seed
reproduces the workload and the kinds of kills, not the exact instants.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cluster_client.types import AggType, AggValue, AlertThreshold, Metric
from service.convert import metric_to_proto
from tests.engines import TARGETS, Target, target_named
from tests.reference_model import ReferenceModel
from tests.reliability.killable_serve import KillableServe
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import (
    alert_service_pb2_grpc,
    ingest_service_pb2_grpc,
    metrics_service_pb2_grpc,
    query_service_pb2_grpc,
)
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

__all__ = ["CrashLoop", "Summary", "main", "run_crash_loop"]

SEC = 1_000_000_000
HOUR = 3600 * SEC
HOURS = 12
BASE = 1_772_323_200 * SEC  # 2026-03-01T00:00Z; the workload's events fall in the 12 hours after it
# Ranges with edges inside hours: those hours are past the memory horizon, so the server reads
# their partial hours from the log (docs/design.md, "Folded minutes").
UNALIGNED = (
    (BASE + 17 * 60 * SEC + 3 * SEC + 1, BASE + 5 * HOUR + 41 * 60 * SEC + 7),
    (BASE + 6 * HOUR + 59 * 60 * SEC + 59 * SEC, BASE + HOURS * HOUR - 1),
)
INT64_MAX = 2**63 - 1
PARTITIONS = 8
ACCOUNTS = tuple(range(1, 9))
WRITERS = 3
RPC_TIMEOUT = 30.0
KINDS = ("ingest", "snapshot", "recovery")
"""Where a cycle's kill lands: a random moment of the load; inside a snapshot write; a random moment,
then again while the restarted node is still recovering. Cycles take them in turn."""
SERVE_ARGS = (
    "--partitions",
    str(PARTITIONS),
    "--snapshot-interval-seconds",
    "0.1",
    "--alerts-in-memory",
    "3",
)
"""A snapshot of every changed partition at every maintenance tick (each second): kills often land
near one, and recovery starts from a snapshot plus a log tail. Three alerts a partition in memory:
every older one the checks and the subscriber read comes from the alert log."""

METRICS = (
    Metric(
        "calls", AggType.COUNT, fixed_period_seconds=3600, thresholds=(AlertThreshold("every_20", 20, True),)
    ),
    Metric(
        "bytes",
        AggType.SUM,
        fixed_period_seconds=3600,
        thresholds=(AlertThreshold("over_10k", 10_000), AlertThreshold("every_4k", 4_000, True)),
    ),
    Metric("peak", AggType.MAX, fixed_period_seconds=3600, thresholds=(AlertThreshold("peak_990", 990),)),
    Metric("plan", AggType.LATEST, fixed_period_seconds=3600, thresholds=(AlertThreshold("top_plan", 9),)),
    Metric(
        "seats",
        AggType.COUNT_UNIQUE,
        fixed_period_seconds=3600,
        thresholds=(AlertThreshold("seats_25", 25), AlertThreshold("every_10", 10, True)),
    ),
)
REMOVABLE = frozenset({"calls", "bytes", "seats"})
AGG_FIELDS = tuple(f.name for f in dataclasses.fields(AggValue))
ALERT_FIELDS = (
    "account_id",
    "metric_code",
    "threshold_code",
    "threshold_value",
    "multiple",
    "value_at_cross",
    "period_start_unix_nano",
    "event_time_unix_nano",
)
"""The fields of an alert the model computes (all but record time, partition and offset)."""

Identity = tuple[Any, ...]
StoredRow = tuple[int, int, t.Event]
"""(partition, offset, event as stored)."""


def identity(e: t.Event) -> Identity:
    """What the server deduplicates ``e`` by: its id, or (time, value, operation, properties)."""
    if e.event_id:
        return (e.account_id, e.metric_code, e.event_id)
    return (
        e.account_id,
        e.metric_code,
        e.time_unix_nano,
        e.value,
        e.operation,
        tuple(sorted(e.properties.items())),
    )


def content(e: t.Event) -> tuple[Any, ...]:
    """The stored fields of an event (not its delivery mode)."""
    return (
        e.account_id,
        e.metric_code,
        e.value,
        e.time_unix_nano,
        dict(e.properties),
        e.operation,
        e.event_id,
    )


@dataclass
class Batch:
    """One Ingest call of the workload."""

    events: list[t.Event]
    sync: bool
    acked: bool = False


@dataclass
class Summary:
    """What a run did and found."""

    target: str
    seed: int
    cycles: int = 0
    batches: int = 0
    events_sent: int = 0
    """Unique events sent (duplicates not counted)."""
    events_stored: int = 0
    sync_acked_events: int = 0
    resent_batches: int = 0
    kills: int = 0
    kills_in_snapshot: int = 0
    """Kills that left a snapshot file half written."""
    kills_in_recovery: int = 0
    """Kills before the ready line while partitions were still recovering."""
    kills_before_ready: int = 0
    """Kills aimed at recovery that landed after it but before the ready line."""
    alerts: int = 0
    alerts_seen_by_subscriber: int = 0
    queries_compared: int = 0
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary ``make soak`` prints."""
        return (
            f"crash loop {self.target} seed={self.seed}: cycles {self.cycles}, batches {self.batches}, "
            f"events {self.events_sent} sent / {self.events_stored} stored "
            f"({self.sync_acked_events} SYNC-acknowledged), {self.resent_batches} batches resent, "
            f"kills {self.kills} (during snapshot {self.kills_in_snapshot}, during recovery "
            f"{self.kills_in_recovery}, after recovery before ready {self.kills_before_ready}), "
            f"alerts {self.alerts} (subscriber saw {self.alerts_seen_by_subscriber}), "
            f"queries compared {self.queries_compared}, mismatches: {len(self.mismatches)}, "
            f"{self.seconds:.0f} s"
        )


@dataclass
class Api:
    """Stubs on one channel."""

    channel: grpc.aio.Channel
    ingest: ingest_service_pb2_grpc.IngestServiceStub
    query: query_service_pb2_grpc.QueryServiceStub
    alerts: alert_service_pb2_grpc.AlertServiceStub
    metrics: metrics_service_pb2_grpc.MetricsServiceStub

    @classmethod
    def to(cls, port: int) -> Api:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return cls(
            channel,
            ingest_service_pb2_grpc.IngestServiceStub(channel),
            query_service_pb2_grpc.QueryServiceStub(channel),
            alert_service_pb2_grpc.AlertServiceStub(channel),
            metrics_service_pb2_grpc.MetricsServiceStub(channel),
        )


class CrashLoop:
    """The loop's state: everything sent, what was verified, the model, the subscriber's view."""

    def __init__(self, target: Target, data_dir: Path, seed: int) -> None:
        self.target = target
        self.data_dir = data_dir
        self.rng = random.Random(seed)
        self.summary = Summary(target.name, seed)
        self.sent: dict[Identity, t.Event] = {}
        self.pool: list[t.Event] = []
        """Events sent so far, for duplicates."""
        self.sync_acked: set[Identity] = set()
        self.verified: dict[int, list[StoredRow]] = defaultdict(list)
        """Per partition, the stored events of the last check, in offset order."""
        self.fed: dict[int, int] = defaultdict(int)
        """Per partition, how many of its stored events the model has."""
        self.models = {a: ReferenceModel(METRICS) for a in ACCOUNTS}
        self.alerts: dict[tuple[int, int], t.Alert] = {}
        """The alert log at the last check, by (partition, offset)."""
        self.seen: dict[tuple[int, int], t.Alert] = {}
        """Every alert the subscriber was sent, by (partition, offset)."""
        self.serial = 0
        self.server: KillableServe | None = None

    # ------------------------------------------------------------------ the loop

    async def run(self, cycles: int, progress: Callable[[Summary], None] | None = None) -> Summary:
        """Create the metrics, then run ``cycles`` cycles (``progress`` is called after each)."""
        started = time.monotonic()
        try:
            await self._start()
            api = Api.to(self._port)
            try:
                for metric in METRICS:
                    await api.metrics.CreateMetric(
                        ms.CreateMetricRequest(metric=metric_to_proto(metric)), timeout=RPC_TIMEOUT
                    )
            finally:
                await api.channel.close()
            for cycle in range(cycles):
                await self._cycle(cycle, KINDS[cycle % len(KINDS)])
                self.summary.cycles += 1
                self.summary.seconds = time.monotonic() - started
                if progress is not None:
                    progress(self.summary)
                if self.summary.mismatches:
                    break  # the model no longer describes the server: later cycles prove nothing
        finally:
            if self.server is not None:
                self.server.kill()
            self.summary.seconds = time.monotonic() - started
        return self.summary

    @property
    def _port(self) -> int:
        assert self.server is not None
        return self.server.grpc_port

    def _mismatch(self, cycle: int, what: str) -> None:
        self.summary.mismatches.append(f"cycle {cycle}: {what}")

    async def _start(self, kill_after_recovered: int | None = None) -> KillableServe:
        server = KillableServe(
            self.data_dir,
            [*SERVE_ARGS, *self.target.serve_args],
            partitions=PARTITIONS,
            kill_after_recovered=kill_after_recovered,
        )
        self.server = server
        if not await asyncio.to_thread(server.wait_ready) and kill_after_recovered is None:
            await asyncio.to_thread(server.wait_exit)
            raise RuntimeError("unimeter serve exited before it was ready:\n" + "\n".join(server.log_tail))
        return server

    async def _cycle(self, cycle: int, kind: str) -> None:
        batches: list[Batch] = []
        killed = asyncio.Event()
        api = Api.to(self._port)
        since = {p: max(o for q, o in self.alerts if q == p) for p in {q for q, _ in self.alerts}}
        load = [
            *(asyncio.create_task(self._writer(api, cycle, w, batches, killed)) for w in range(WRITERS)),
            asyncio.create_task(self._querier(api, cycle, killed)),
            asyncio.create_task(self._subscriber(api, cycle, since, killed)),
        ]
        server = self.server
        assert server is not None
        try:
            await asyncio.sleep(self.rng.uniform(0.3, 1.2))
            killed.set()
            if kind == "snapshot":
                if await asyncio.to_thread(server.kill_during_snapshot, 5.0):
                    self.summary.kills_in_snapshot += 1
            else:
                await asyncio.to_thread(server.kill)
            self.summary.kills += 1
            await asyncio.wait_for(asyncio.gather(*load), RPC_TIMEOUT * 2)
        finally:
            for task in load:
                task.cancel()
            await api.channel.close()
        self._check_server_log(cycle, server)
        if kind == "recovery":
            await self._kill_during_recovery(cycle)
        await self._start()
        await self._verify(cycle, batches)

    async def _kill_during_recovery(self, cycle: int) -> None:
        server = await self._start(kill_after_recovered=self.rng.randint(1, PARTITIONS - 1))
        if server.ready:  # the kill came too late: recovery and startup were over
            await asyncio.to_thread(server.kill)
        else:
            await asyncio.to_thread(server.wait_exit)
            if server.recovered < PARTITIONS:
                self.summary.kills_in_recovery += 1
            else:
                self.summary.kills_before_ready += 1
        self.summary.kills += 1
        self._check_server_log(cycle, server)

    def _check_server_log(self, cycle: int, server: KillableServe) -> None:
        for error in server.errors:
            self._mismatch(cycle, f"the server logged an error: {error}")

    # ------------------------------------------------------------------ load

    def _event(self, rng: random.Random, cycle: int) -> t.Event:
        """A new event (never sent before)."""
        self.serial += 1
        metric = rng.choice(METRICS)
        code = metric.code
        # Most events fall in the cycle's "current" hour; a quarter in any of the 12, mostly past.
        hour = cycle % HOURS if rng.random() < 0.75 else rng.randrange(HOURS)
        when = BASE + hour * HOUR + rng.randrange(3600) * SEC + self.serial  # unique: id-less keys differ
        op = t.OPERATION_TYPE_REMOVE if code in REMOVABLE and rng.random() < 0.15 else t.OPERATION_TYPE_ADD
        value = {"calls": 1, "bytes": rng.randint(1, 1000), "peak": rng.randint(0, 1000)}.get(code)
        if value is None:
            value = rng.randint(0, 9) if code == "plan" else rng.randint(1, 40)
        event_id = "" if rng.random() < 0.1 else f"e{self.serial}"
        return t.Event(
            account_id=rng.choice(ACCOUNTS),
            metric_code=code,
            value=value,
            time_unix_nano=when,
            operation=op,
            event_id=event_id,
        )

    def _batch(self, rng: random.Random, cycle: int) -> Batch:
        events = []
        for _ in range(rng.randint(1, 12)):
            if self.pool and rng.random() < 0.12:
                events.append(rng.choice(self.pool))  # a duplicate: the same event sent again
                continue
            event = self._event(rng, cycle)
            self.sent[identity(event)] = event
            self.pool.append(event)
            events.append(event)
        return Batch(events, sync=rng.random() < 0.4)

    async def _writer(
        self, api: Api, cycle: int, writer: int, batches: list[Batch], killed: asyncio.Event
    ) -> None:
        rng = random.Random(self.rng.random() + writer)
        while not killed.is_set():
            batch = self._batch(rng, cycle)
            batches.append(batch)
            self.summary.batches += 1
            delivery = t.DELIVERY_MODE_SYNC if batch.sync else t.DELIVERY_MODE_ASYNC
            try:
                await api.ingest.Ingest(
                    ing.IngestRequest(events=batch.events, delivery=delivery), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError as exc:
                if not killed.is_set():
                    self._mismatch(cycle, f"ingest failed before the kill: {exc.code()} {exc.details()}")
                return
            batch.acked = True
            if batch.sync:
                self.sync_acked.update(identity(e) for e in batch.events)
            await asyncio.sleep(rng.uniform(0.0, 0.02))

    async def _querier(self, api: Api, cycle: int, killed: asyncio.Event) -> None:
        """Queries during the load: they must answer until the kill (their values are checked later)."""
        rng = random.Random(self.rng.random())
        while not killed.is_set():
            account, metric = rng.choice(ACCOUNTS), rng.choice(METRICS).code
            start = BASE + rng.randrange(HOURS) * HOUR
            try:
                if rng.random() < 0.5:
                    await api.query.Query(
                        qs.QueryRequest(
                            account_id=account,
                            metric_code=metric,
                            period=t.Period(start_unix_nano=start, end_unix_nano=start + HOUR),
                        ),
                        timeout=RPC_TIMEOUT,
                    )
                else:
                    await api.query.QueryRealtime(
                        qs.QueryRealtimeRequest(account_id=account, metric_code=metric), timeout=RPC_TIMEOUT
                    )
            except grpc.aio.AioRpcError as exc:
                if not killed.is_set():
                    self._mismatch(cycle, f"query failed before the kill: {exc.code()} {exc.details()}")
                return
            await asyncio.sleep(0.01)

    async def _subscriber(self, api: Api, cycle: int, since: dict[int, int], killed: asyncio.Event) -> None:
        """Resume after the last verified alert of each partition; record everything sent."""
        expected = {p: since.get(p, 0) + 1 for p in range(PARTITIONS)}
        per_message = self.rng.choice([0, 50])
        call = api.alerts.AlertSubscribe(
            als.AlertSubscribeRequest(
                since_offsets=since, from_beginning=True, max_alerts_per_message=per_message
            )
        )
        try:
            async for msg in call:
                kind = msg.WhichOneof("kind")
                received = (
                    [msg.alert] if kind == "alert" else list(msg.batch.alerts) if kind == "batch" else []
                )
                for alert in received:
                    key = (alert.partition, alert.offset)
                    if alert.offset != expected[alert.partition]:
                        self._mismatch(
                            cycle, f"subscriber got {key}, expected offset {expected[alert.partition]}"
                        )
                    expected[alert.partition] = alert.offset + 1
                    if key in self.seen and self.seen[key] != alert:
                        self._mismatch(
                            cycle, f"subscriber got {key} twice, different: {self.seen[key]} / {alert}"
                        )
                    self.seen[key] = alert
        except grpc.aio.AioRpcError as exc:
            if not killed.is_set():
                self._mismatch(cycle, f"alert stream failed before the kill: {exc.code()} {exc.details()}")

    # ------------------------------------------------------------------ checks

    async def _verify(self, cycle: int, batches: Sequence[Batch]) -> None:
        api = Api.to(self._port)
        try:
            await self._check(api, cycle, "after restart")
            if self.summary.mismatches:
                return
            for batch in batches:
                if not (batch.sync and batch.acked):
                    await api.ingest.Ingest(
                        ing.IngestRequest(events=batch.events, delivery=t.DELIVERY_MODE_SYNC),
                        timeout=RPC_TIMEOUT,
                    )
                    self.summary.resent_batches += 1
            await self._check(api, cycle, "after resending", complete=True)
        finally:
            await api.channel.close()
        self.summary.events_sent = len(self.sent)
        self.summary.sync_acked_events = len(self.sync_acked)
        self.summary.alerts = len(self.alerts)
        self.summary.alerts_seen_by_subscriber = len(self.seen)

    async def _check(self, api: Api, cycle: int, when: str, complete: bool = False) -> None:
        stored = await _stored_events(api)
        self.summary.events_stored = len(stored)
        mismatch = len(self.summary.mismatches)

        def bad(what: str) -> None:
            self._mismatch(cycle, f"{when}: {what}")

        ids = Counter(identity(e) for _, _, e in stored)
        for key, n in ids.items():
            if n > 1:
                bad(f"{key} stored {n} times")
            if key not in self.sent:
                bad(f"{key} stored but never sent")
        for _, _, e in stored:
            if identity(e) in self.sent and content(self.sent[identity(e)]) != content(e):
                bad(f"{identity(e)} stored as {content(e)}, sent as {content(self.sent[identity(e)])}")
        for key in self.sync_acked - ids.keys():
            bad(f"{key} was acknowledged SYNC but is not stored")
        if complete and ids.keys() != self.sent.keys():
            bad(f"after resending, {len(self.sent.keys() - ids.keys())} sent events are not stored")
        by_partition: dict[int, list[StoredRow]] = defaultdict(list)
        for row in stored:
            by_partition[row[0]].append(row)
        for p, rows in by_partition.items():
            rows.sort(key=lambda r: r[1])
            before = self.verified[p]
            if [(o, content(e)) for _, o, e in rows[: len(before)]] != [
                (o, content(e)) for _, o, e in before
            ]:
                bad(f"partition {p}: events stored earlier changed or moved")
            if [o for _, o, _ in rows] != list(range(1, len(rows) + 1)):
                bad(f"partition {p}: event offsets are not 1..{len(rows)}")
        if len(self.summary.mismatches) > mismatch:
            return  # the model cannot follow a log that changed
        for p, rows in by_partition.items():
            for _, offset, e in rows[self.fed[p] :]:
                self.models[e.account_id].ingest([(*content(e)[:6], offset)])
            self.fed[p] = len(rows)
            self.verified[p] = rows
        await self._check_queries(api, stored, bad)
        await self._check_alerts(api, bad)

    async def _check_queries(self, api: Api, stored: list[StoredRow], bad: Callable[[str], None]) -> None:
        ranges: set[tuple[int, str, int, int]] = {
            (a, m.code, start, end)
            for a in ACCOUNTS
            for m in METRICS
            for start, end in ((BASE, BASE + HOURS * HOUR), *UNALIGNED)
        }
        for _, _, e in stored:
            start = e.time_unix_nano // HOUR * HOUR
            ranges.add((e.account_id, e.metric_code, start, start + HOUR))
        limit = asyncio.Semaphore(16)

        async def compare(account: int, code: str, start: int, end: int) -> None:
            async with limit:
                got = await api.query.Query(
                    qs.QueryRequest(
                        account_id=account,
                        metric_code=code,
                        period=t.Period(start_unix_nano=start, end_unix_nano=end),
                    ),
                    timeout=RPC_TIMEOUT,
                )
            want, _ = self.models[account].query(account, code, start, end)
            if _stats(got.value) != _stats(want):
                bad(
                    f"Query({account}, {code}, hour {(start - BASE) // HOUR}): "
                    f"{_stats(got.value)} != {_stats(want)}"
                )

        await asyncio.gather(*(compare(*r) for r in sorted(ranges)))
        self.summary.queries_compared += len(ranges)

    async def _check_alerts(self, api: Api, bad: Callable[[str], None]) -> None:
        log: dict[tuple[int, int], t.Alert] = {}
        for account in ACCOUNTS:
            after, more = 0, True
            while more:
                page = await api.alerts.ListAlerts(
                    als.ListAlertsRequest(account_id=account, after_offset=after, page_size=1000),
                    timeout=RPC_TIMEOUT,
                )
                for alert in page.alerts:
                    log[(alert.partition, alert.offset)] = alert
                    after = alert.offset
                more = page.has_more
        for p in range(PARTITIONS):
            offsets = sorted(o for q, o in log if q == p)
            if offsets != list(range(1, len(offsets) + 1)):
                bad(f"partition {p}: alert offsets are not 1..{len(offsets)}")
        for account in ACCOUNTS:
            want = self.models[account].alerts()
            for metric in METRICS:
                mine = [
                    _alert_row(log[k])
                    for k in sorted(log)
                    if log[k].account_id == account and log[k].metric_code == metric.code
                ]
                model = [a for a in want if a[1] == metric.code]
                if mine != model:
                    bad(f"alerts of ({account}, {metric.code}): {mine} != model {model}")
        for what, earlier in (("verified earlier", self.alerts), ("sent to the subscriber", self.seen)):
            for key, alert in earlier.items():
                if log.get(key) != alert:
                    bad(f"alert {key} {what} is now {log.get(key)}, was {alert}")
        self.alerts = log


async def _stored_events(api: Api) -> list[StoredRow]:
    out: list[StoredRow] = []
    for account in ACCOUNTS:
        token = ""
        while True:
            page = await api.query.ListEvents(
                qs.ListEventsRequest(
                    account_id=account,
                    start_unix_nano=0,
                    end_unix_nano=INT64_MAX,
                    page_size=1000,
                    page_token=token,
                ),
                timeout=RPC_TIMEOUT,
            )
            out.extend((s.partition, s.offset, s.event) for s in page.events)
            token = page.next_page_token
            if not token:
                break
    return out


def _stats(v: Any) -> tuple[int, ...]:
    """The statistics of an aggregate (a proto ``AggValue`` or the model's), in one order."""
    return tuple(int(getattr(v, f)) for f in AGG_FIELDS)


def _alert_row(a: t.Alert) -> tuple[Any, ...]:
    return tuple(getattr(a, f) for f in ALERT_FIELDS)


async def run_crash_loop(
    target: Target, data_dir: Path, cycles: int, seed: int, progress: Callable[[Summary], None] | None = None
) -> Summary:
    """Run ``cycles`` cycles of the loop on a fresh ``data_dir``."""
    return await CrashLoop(target, data_dir, seed).run(cycles, progress)


def _print_progress(summary: Summary) -> None:
    print(
        f"  cycle {summary.cycles}: {summary.events_stored} events stored, {summary.kills} kills, "
        f"mismatches {len(summary.mismatches)}, {summary.seconds:.0f} s",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.crash_loop", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cycles", type=int, default=100, help="kill/restart cycles per target (default 100)"
    )
    parser.add_argument("--seed", type=int, default=None, help="workload and kill schedule (default: random)")
    parser.add_argument(
        "--target",
        action="append",
        default=None,
        help=f"engine-backend to run on, repeatable (default all: {', '.join(t.name for t in TARGETS)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--progress", action="store_true", help="a line on stderr after every cycle")
    args = parser.parse_args(argv)
    targets = [target_named(n) for n in args.target] if args.target else list(TARGETS)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    failed = False
    for target in targets:
        data_dir = Path(tempfile.mkdtemp(prefix=f"unimeter-crash-{target.name}-"))
        try:
            summary = asyncio.run(
                run_crash_loop(
                    target, data_dir / "data", args.cycles, seed, _print_progress if args.progress else None
                )
            )
        finally:
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
        for mismatch in summary.mismatches[:50]:
            print(f"MISMATCH {mismatch}", file=sys.stderr)
        print(summary.line(), flush=True)
        failed = failed or bool(summary.mismatches) or summary.cycles < args.cycles
    if failed:
        print(f"crash loop FAILED; reproduce the workload with --seed {seed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
