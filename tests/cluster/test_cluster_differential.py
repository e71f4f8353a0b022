"""Differential: one seeded random workload sent to a single embedded ``unimeter serve`` and to a
3-node cluster (three ``serve --backend nats`` on a 3-server JetStream cluster) gives the same
answers, call by call.

The workload has every aggregation type, FIXED, CALENDAR, DAY and WEEK periods in several zones,
dimensions, one-shot and recurring thresholds, ADD and REMOVE corrections, events with and without
an id, duplicates within a batch and across batches, whole batches sent again, late events (past
periods), a metric deleted and created again (then its old events sent again) and accounts on every
partition. Both sides get the same calls, SYNC, one at a time (so arrival order is the same); the
cluster's calls go round-robin through its three nodes, so most are routed to another node's
partitions. Compared exactly: every ingest answer (offsets, duplicate
counts), an invalid batch's error, ``Query`` (whole range, random nanosecond ranges, the current and
previous period, filters, group_by) and ``QueryRealtime`` of every account and metric, every
``ListEvents`` page, every ``ListAlerts`` page, the metric list, and the whole alert log as a
subscription from the beginning through each node delivers it. This is not a test of failover
(the nodes keep their partitions throughout): other modules kill and restart nodes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from tests.cluster.conftest import running_cluster
from tests.cluster.helpers import accounts_by_partition, cluster_flags, three_nodes
from tests.conftest import Api, api_on_port
from tests.grpc_errors import details as error_details
from tests.process import start_serve
from tests.reliability.crash_loop import identity
from tools.nats_cluster import NatsCluster
from unimeter.v1 import alert_service_pb2 as al
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

PARTITIONS = 6
SEEDS = (1, 2, 3)
CALLS = 24
"""Ingest calls per seed before one metric is deleted and created again (then AFTER more)."""
AFTER = 4
SEC = 1_000_000_000
DAY = 86_400 * SEC
NOW = time.time_ns()
"""Events fall in the 70 days before this instant, most of them in the last two days."""
START, END = NOW - 70 * DAY, NOW + DAY
ACCOUNTS = (*accounts_by_partition(PARTITIONS), 2**64 - 1, 1_000_003)
DIMENSIONS = {"provider": ["aws", "gcp", "azure"], "region": ["us", "eu"]}
RPC = 30.0
"""Deadline of every call (the cluster's first calls may wait for a metric or a route)."""


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "differential")


def metrics(rng: random.Random, prefix: str) -> list[t.Metric]:
    """One metric of each type (two COUNT_UNIQUE: with and without carry-over), each with its own
    period type or zone, thresholds scaled to the values ``event`` draws."""
    dims = [t.DimensionFilter(key=k, values=v) for k, v in DIMENSIONS.items()]

    def th(code: str, value: int, recurring: bool = False) -> t.AlertThreshold:
        return t.AlertThreshold(code=code, value=value, recurring=recurring)

    return [
        t.Metric(
            code=f"{prefix}_calls",
            agg_type=t.AGG_TYPE_COUNT,
            period_type=t.PERIOD_TYPE_FIXED,
            fixed_period_seconds=3600,
            filters=dims,
            thresholds=[th("every", rng.randint(2, 4), True), th("three", 3)],
        ),
        t.Metric(
            code=f"{prefix}_bytes",
            agg_type=t.AGG_TYPE_SUM,
            period_type=t.PERIOD_TYPE_CALENDAR,
            billing_cycle_day=rng.randint(1, 28),
            time_zone="Europe/Berlin",
            filters=dims,
            thresholds=[th("over", rng.randint(500, 1500)), th("every_k", 300, True)],
        ),
        t.Metric(
            code=f"{prefix}_peak",
            agg_type=t.AGG_TYPE_MAX,
            period_type=t.PERIOD_TYPE_DAY,
            time_zone="America/New_York",
            filters=dims[:1],
            thresholds=[th("high", 900)],
        ),
        t.Metric(
            code=f"{prefix}_plan",
            agg_type=t.AGG_TYPE_LATEST,
            period_type=t.PERIOD_TYPE_WEEK,
            time_zone=rng.choice(["UTC", "Asia/Tokyo"]),
            thresholds=[th("top", 9)],
        ),
        t.Metric(
            code=f"{prefix}_seats",
            agg_type=t.AGG_TYPE_COUNT_UNIQUE,
            carry_over=True,
            thresholds=[th("five", 5), th("every_3", 3, True)],
        ),
        t.Metric(
            code=f"{prefix}_users",
            agg_type=t.AGG_TYPE_COUNT_UNIQUE,
            period_type=t.PERIOD_TYPE_DAY,
            time_zone="Asia/Kolkata",
            filters=dims[1:],
            thresholds=[th("two", 2)],
        ),
    ]


@dataclass
class Workload:
    """What one seed sends: its metrics and its ingest calls (one batch each); before call
    ``CALLS``, the metric ``recreated`` is deleted and created again."""

    metrics: list[t.Metric]
    calls: list[list[t.Event]] = field(default_factory=list)

    @property
    def recreated(self) -> t.Metric:
        return self.metrics[1]


def event(rng: random.Random, metric: t.Metric, event_id: str) -> t.Event:
    """A random event of ``metric``: a time in the last hour, the last two days or (late) in the 70
    days before."""
    agg = metric.agg_type
    value = {
        t.AGG_TYPE_COUNT: 1,
        t.AGG_TYPE_SUM: rng.randint(1, 400),
        t.AGG_TYPE_MAX: rng.randint(1, 1000),
        t.AGG_TYPE_LATEST: rng.randint(1, 10),
        t.AGG_TYPE_COUNT_UNIQUE: rng.choice([*range(1, 9), 2**64 - 1]),
    }[agg]
    removable = agg in (t.AGG_TYPE_COUNT, t.AGG_TYPE_SUM, t.AGG_TYPE_COUNT_UNIQUE)
    remove = removable and rng.random() < 0.2
    roll = rng.random()
    ago = (
        rng.randint(0, 3600 * SEC)
        if roll < 0.5
        else rng.randint(0, 2 * DAY)
        if roll < 0.8
        else rng.randint(2 * DAY, 69 * DAY)
    )
    properties = {d.key: rng.choice(list(d.values)) for d in metric.filters if rng.random() < 0.7}
    if rng.random() < 0.2:
        properties["note"] = rng.choice(["a", "b"])  # not a dimension: stored, not aggregated
    return t.Event(
        # Half the events on two accounts, so that thresholds are crossed, and crossed again.
        account_id=rng.choice(ACCOUNTS[:2] if rng.random() < 0.5 else ACCOUNTS),
        metric_code=metric.code,
        value=value,
        time_unix_nano=NOW - ago,
        properties=properties,
        operation=t.OPERATION_TYPE_REMOVE if remove else t.OPERATION_TYPE_ADD,
        # The request is SYNC, so the whole batch is, whatever an event asks (and it is not stored).
        delivery=rng.choice([t.DELIVERY_MODE_UNSPECIFIED, t.DELIVERY_MODE_ASYNC, t.DELIVERY_MODE_SYNC]),
        # Without an id, an event is deduplicated by its content (it has its own time).
        event_id=event_id if rng.random() < 0.8 else "",
    )


def workload(seed: int) -> Workload:
    rng = random.Random(seed)
    w = Workload(metrics(rng, f"s{seed}"))
    # The first event of every seed is of the metric re-created later, so that it has old events.
    sent: list[t.Event] = [event(rng, w.recreated, f"s{seed}-first")]
    w.calls.append(list(sent))
    for call in range(1, CALLS + AFTER):  # call: its index in w.calls
        if call == CALLS:
            # The first call after the re-creation: every event sent under the old generation,
            # again (the deleted generation's events and dedup keys must not show on either side).
            w.calls.append([e for e in sent if e.metric_code == w.recreated.code])
            continue
        if w.calls and rng.random() < 0.15:
            w.calls.append(list(rng.choice(w.calls)))  # a whole batch sent again
            continue
        batch: list[t.Event] = []
        for i in range(rng.randint(1, 8)):
            roll = rng.random()
            if batch and roll < 0.1:
                batch.append(rng.choice(batch))  # the same event twice in one batch
            elif sent and roll < 0.2:
                old = rng.choice(sent)  # an earlier event again; sometimes same id, other value
                copy = t.Event()
                copy.CopyFrom(old)
                if old.event_id and rng.random() < 0.5 and old.metric_code.endswith(("_bytes", "_peak")):
                    copy.value += 1
                batch.append(copy)
            else:
                batch.append(event(rng, rng.choice(w.metrics), f"s{seed}-{call}-{i}"))
        sent.extend(batch)
        w.calls.append(batch)
    assert len(w.calls) == CALLS + AFTER
    return w


def invalid_batch(w: Workload) -> list[t.Event]:
    """A batch with a REMOVE on MAX and an unknown metric after a good event: nothing is stored."""
    good = w.calls[0][0]
    peak = next(m.code for m in w.metrics if m.agg_type == t.AGG_TYPE_MAX)
    return [
        good,
        t.Event(
            account_id=ACCOUNTS[1],
            metric_code=peak,
            value=3,
            time_unix_nano=NOW,
            operation=t.OPERATION_TYPE_REMOVE,
            event_id="bad-1",
        ),
        t.Event(account_id=ACCOUNTS[2], metric_code="no_such_metric", value=1, time_unix_nano=NOW),
    ]


Outcome = Message | tuple[Any, ...]


async def outcome(call: Awaitable[Message]) -> Outcome:
    """The answer, or what a client can see of the failure: code, message, ErrorInfo reason, field
    violations and retry delay."""
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        return ("error", e.code(), e.details() or "", *error_details(e))


def comparable(answer: Outcome) -> Outcome:
    """``answer`` without what legitimately differs: an alert's record time is the wall clock of
    the node that appended it (each side appends at its own instant); everything else an alert holds
    follows from the event log, the same on both sides."""
    if isinstance(answer, al.ListAlertsResponse):
        for a in answer.alerts:
            a.record_time_unix_nano = 0
    # Each side stamps a metric with its clock when its CreateMetric call arrives.
    if isinstance(answer, ms.ListMetricsResponse):
        for m in answer.metrics:
            m.create_time_unix_nano = 0
    if isinstance(answer, ms.CreateMetricResponse):
        answer.metric.create_time_unix_nano = 0
    return answer


class Sides:
    """The embedded node and the cluster's three nodes; each call goes to the embedded node and to
    the next cluster node in turn, and the two answers must be the same."""

    def __init__(self, embedded: Api, cluster: list[Api]) -> None:
        self.embedded = embedded
        self.cluster = cluster
        self.turn = 0
        self.compared = 0
        self.seen: Counter[str] = Counter()
        """What the compared answers held (duplicates, alerts, errors): proof they were not empty."""

    async def same(self, what: str, call: Callable[[Api], Awaitable[Message]]) -> Outcome:
        """Both answers of ``call`` (equal), the embedded one returned. Answers naming a period the
        server resolves from its clock (QueryRealtime, a period selector) are asked again, both,
        if the two periods differ: a period boundary passed between the calls."""
        for _ in range(3):
            node = self.cluster[self.turn % len(self.cluster)]
            self.turn += 1
            mine = comparable(await outcome(call(self.embedded)))
            theirs = comparable(await outcome(call(node)))
            if not (hasattr(mine, "period") and hasattr(theirs, "period") and mine.period != theirs.period):
                break
        assert mine == theirs, f"{what}:\nembedded: {mine}\ncluster: {theirs}"
        self.compared += 1
        if isinstance(mine, tuple):
            self.seen["errors"] += 1
        elif isinstance(mine, ing.IngestResponse):
            self.seen["duplicates"] += mine.n_duplicates
        elif isinstance(mine, al.ListAlertsResponse):
            self.seen["alerts"] += len(mine.alerts)
            self.seen["recurring alerts past the first multiple"] += sum(a.multiple > 1 for a in mine.alerts)
        elif isinstance(mine, qs.QueryResponse):
            self.seen["groups"] += len(mine.groups)
        return mine


async def run_seed(sides: Sides, seed: int) -> None:
    w = workload(seed)
    for m in w.metrics:
        await sides.same(
            f"create {m.code}",
            lambda a, m=m: a.metrics.CreateMetric(ms.CreateMetricRequest(metric=m), timeout=RPC),
        )
    for i, batch in enumerate([*w.calls, invalid_batch(w)]):
        if i == CALLS:
            await sides.same(
                f"delete {w.recreated.code}",
                lambda a: a.metrics.DeleteMetric(ms.DeleteMetricRequest(code=w.recreated.code), timeout=RPC),
            )
            await sides.same(
                f"create {w.recreated.code} again",
                lambda a: a.metrics.CreateMetric(ms.CreateMetricRequest(metric=w.recreated), timeout=RPC),
            )
        request = ing.IngestRequest(events=batch, delivery=t.DELIVERY_MODE_SYNC)
        answer = await sides.same(
            f"seed {seed} ingest call {i}", lambda a, r=request: a.ingest.Ingest(r, timeout=RPC)
        )
        if i == CALLS:
            # The old generation's events again: stored anew, each once (its dedup keys went with it).
            assert isinstance(answer, ing.IngestResponse) and answer.n_stored == len(
                set(map(identity, batch))
            )
    # The last call was the invalid batch: refused whole, one violation per bad event, on both sides.
    assert isinstance(answer, tuple) and answer[1] == grpc.StatusCode.INVALID_ARGUMENT, answer
    assert [f for f, _ in answer[4]] == ["events[1].operation", "events[2].metric_code"], answer
    rng = random.Random(-seed)
    for account in ACCOUNTS:
        for m in w.metrics:
            await compare_queries(sides, rng, f"seed {seed} account {account} {m.code}", account, m)
        await compare_pages(sides, rng, f"seed {seed} account {account}", account, w)


async def compare_queries(sides: Sides, rng: random.Random, what: str, account: int, m: t.Metric) -> None:
    def query(period: tuple[int, int] | None = None, **kw: Any) -> Callable[[Api], Awaitable[Message]]:
        request = qs.QueryRequest(account_id=account, metric_code=m.code, **kw)
        if period is not None:
            request.period.CopyFrom(t.Period(start_unix_nano=period[0], end_unix_nano=period[1]))
        return lambda a: a.query.Query(request, timeout=RPC)

    await sides.same(
        f"{what} realtime",
        lambda a: a.query.QueryRealtime(
            qs.QueryRealtimeRequest(account_id=account, metric_code=m.code), timeout=RPC
        ),
    )
    await sides.same(f"{what} whole range", query((START, END)))
    for selector in (t.PERIOD_SELECTOR_CURRENT, t.PERIOD_SELECTOR_PREVIOUS):
        await sides.same(f"{what} selector {selector}", query(period_selector=selector))
    for _ in range(2):
        low, high = sorted(rng.randint(NOW - 3 * DAY, NOW) for _ in range(2))
        await sides.same(f"{what} [{low}, {high})", query((low, high)))
    keys = [d.key for d in m.filters]
    if keys:
        await sides.same(f"{what} group_by {keys}", query((START, END), group_by=keys))
        first = m.filters[0]
        value = rng.choice(list(first.values))
        await sides.same(
            f"{what} {first.key}={value} by {keys[-1:]}",
            query((NOW - 2 * DAY, END), filters={first.key: value}, group_by=keys[-1:]),
        )


async def compare_pages(sides: Sides, rng: random.Random, what: str, account: int, w: Workload) -> None:
    """Every ListEvents page (all metrics, then one metric) and every ListAlerts page, small pages."""
    for code in ("", rng.choice(w.metrics).code):
        token, size = "", rng.randint(2, 7)
        while True:
            request = qs.ListEventsRequest(
                account_id=account,
                start_unix_nano=START,
                end_unix_nano=END,
                metric_code=code,
                page_size=size,
                page_token=token,
            )
            page = await sides.same(
                f"{what} events {code!r} after {token!r}",
                lambda a, r=request: a.query.ListEvents(r, timeout=RPC),
            )
            assert isinstance(page, qs.ListEventsResponse), page
            token = page.next_page_token
            if not token:
                break
    after, size = 0, rng.randint(1, 4)
    while True:
        request = al.ListAlertsRequest(account_id=account, after_offset=after, page_size=size)
        page = await sides.same(
            f"{what} alerts after {after}", lambda a, r=request: a.alerts.ListAlerts(r, timeout=RPC)
        )
        assert isinstance(page, al.ListAlertsResponse), page
        if not page.has_more:
            break
        after = page.alerts[-1].offset


async def alert_log(api: Api) -> dict[int, list[t.Alert]]:
    """Each partition's alerts as ListAlerts of every account gives them, in offset order."""
    by_partition: dict[int, list[t.Alert]] = {}
    for account in ACCOUNTS:
        request = al.ListAlertsRequest(account_id=account, page_size=1000)
        answer = comparable(await api.alerts.ListAlerts(request, timeout=RPC))
        assert isinstance(answer, al.ListAlertsResponse) and not answer.has_more
        for alert in answer.alerts:
            by_partition.setdefault(alert.partition, []).append(alert)
    return {p: sorted(log, key=lambda a: a.offset) for p, log in by_partition.items()}


async def subscribed_alerts(api: Api, total: int) -> dict[int, list[t.Alert]]:
    """Each partition's alerts, in the order a subscription from the beginning delivers them,
    until ``total`` have come (record times cleared, see ``comparable``). Partitions interleave in
    whatever order their owners deliver them; within one, the order is the alert log's."""
    stream = api.alerts.AlertSubscribe(al.AlertSubscribeRequest(from_beginning=True), timeout=RPC)
    by_partition: dict[int, list[t.Alert]] = {}
    received = 0
    try:
        while received < total:
            message = await stream.read()
            assert message is not grpc.aio.EOF
            kind = message.WhichOneof("kind")
            alerts = (
                [message.alert] if kind == "alert" else list(message.batch.alerts) if kind == "batch" else []
            )
            for alert in alerts:
                alert.record_time_unix_nano = 0
                by_partition.setdefault(alert.partition, []).append(alert)
            received += len(alerts)
    finally:
        stream.cancel()
    return by_partition


async def test_the_cluster_answers_exactly_as_one_embedded_node(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    flags = cluster_flags(nats_cluster, stream_name, PARTITIONS, extra=("--flush-interval-ms", "2"))
    embedded = await asyncio.to_thread(
        start_serve, tmp_path / "embedded", "--partitions", str(PARTITIONS), "--flush-interval-ms", "2"
    )
    try:
        async with three_nodes(tmp_path, flags) as nodes:
            sides = Sides(api_on_port(embedded.grpc_port), [api_on_port(n.grpc_port) for n in nodes])
            try:
                for seed in SEEDS:
                    await run_seed(sides, seed)
                listed = await sides.same(
                    "metrics", lambda a: a.metrics.ListMetrics(ms.ListMetricsRequest(), timeout=RPC)
                )
                assert isinstance(listed, ms.ListMetricsResponse)
                assert len(listed.metrics) == 6 * len(SEEDS)
                # The comparisons were not vacuous: duplicates were found, alerts fired (recurring
                # ones past their first multiple), groups were formed, the invalid batches failed.
                seen = sides.seen
                assert seen["errors"] == len(SEEDS), seen
                assert min(seen.values()) > 0 and len(seen) == 5, seen
                # The whole alert log once more, as subscribers read it: on each side, each
                # partition's alerts are its ListAlerts answers in offset order, 1..n.
                expected = await alert_log(sides.embedded)
                total = sum(map(len, expected.values()))
                assert all(
                    [a.offset for a in log] == list(range(1, len(log) + 1)) for log in expected.values()
                )
                for api in (sides.embedded, *sides.cluster):
                    assert await subscribed_alerts(api, total) == expected
            finally:
                for api in (sides.embedded, *sides.cluster):
                    await api.channel.close()
    finally:
        await asyncio.to_thread(embedded.terminate)
