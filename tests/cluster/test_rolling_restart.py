"""A rolling restart under load: three nats-servers and three ``unimeter serve --backend nats``
nodes, each in turn SIGTERMed, waited for, started again (same node id, data directory and flags,
new ports) and waited for until it owns partitions again, twice round in two orders, while clients
keep working.

What a user of the cluster must see through it: a retrying client (the SDK given every node as a
seed) gets no error at all, SYNC and ASYNC alike, and every acknowledged event is counted exactly
once; a subscriber sees every alert of the alert log exactly once, in offset order; and no node
logs an ERROR (a hand-over that was not clean, a failed flush tick).

Two subscribers. The SDK's alert subscription is the one a user should run through a rolling
restart: every node is restarted in turn, so a stream through any single node ends at some point,
and the subscription carries each partition's position from owner to owner by itself. A gRPC
``AlertSubscribe`` through one node is what a client without the SDK has: the node's own routing
follows the partitions other nodes hand over, and before that node is stopped the client moves to
another one, resuming with ``since_offsets`` (as docs/operations.md tells it to).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster_client import (
    AggType,
    Alert,
    AlertSubscription,
    AlertThreshold,
    Client,
    DeliveryMode,
    Event,
    Metric,
    Period,
)
from tests.cluster.conftest import running_cluster
from tests.cluster.helpers import accounts_by_partition, cluster_flags, owners_settled, three_nodes
from tests.conftest import Api, api_on_port
from tests.integration.helpers import SEC, T0
from tests.process import ServeProcess, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import alert_service_pb2 as al

PARTITIONS = 6
MS = SEC // 1000
END = T0 + 30 * 86_400 * SEC
ACCOUNTS = dict(enumerate(accounts_by_partition(PARTITIONS)))
NODE_IDS = ("n1", "n2", "n3")
ORDERS = ((0, 1, 2), (2, 0, 1))
"""Which node is restarted when: every node once, then every node again in another order."""
CALLS_PER_PHASE = 5
"""SYNC calls the writer gets acknowledged between two restarts (the cluster works in between)."""


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "rolling")


@dataclass
class Writer:
    """A loop of ingest calls, one event per partition each, with ids unique to the call: what it
    got acknowledged, and the first error it saw (it stops there)."""

    client: Client
    metric: str
    delivery: DeliveryMode
    pause: float
    acknowledged: int = 0
    slowest: float = 0.0
    error: Exception | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def batch(self, i: int) -> list[Event]:
        tag = self.delivery.name[0].lower()
        return [Event(a, self.metric, 1, T0 + i * MS, event_id=f"{tag}{i}-{p}") for p, a in ACCOUNTS.items()]

    def ids(self, partition: int) -> list[str]:
        """The ids of the events of ``partition`` acknowledged so far."""
        tag = self.delivery.name[0].lower()
        return [f"{tag}{i}-{partition}" for i in range(self.acknowledged)]

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                result = await self.client.ingest(
                    self.batch(self.acknowledged), delivery=self.delivery, timeout=30
                )
                assert (result.n_stored, result.n_duplicates) == (PARTITIONS, 0), result
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.acknowledged += 1
                await asyncio.sleep(self.pause)
        except Exception as exc:  # kept for the test to report, with the call it failed
            self.error = exc

    async def progress(self, calls: int) -> None:
        """Return once ``calls`` more calls were acknowledged (or the writer failed)."""
        target = self.acknowledged + calls
        async with asyncio.timeout(60):
            while self.acknowledged < target and self.error is None:
                await asyncio.sleep(0.02)


@dataclass
class GrpcSubscriber:
    """A gRPC ``AlertSubscribe`` through one node, moved to another node (resuming with
    ``since_offsets`` at the last alert it got per partition) before its node is restarted: what a
    client without the SDK does. Through a node that stays up, the stream must not break."""

    seen: list[tuple[int, int, int]] = field(default_factory=list)
    """(partition, offset, multiple) of each alert, in the order received."""
    node: int = -1
    error: BaseException | None = None
    _api: Api | None = None
    _task: asyncio.Task[None] | None = None

    async def open(self, node: int, port: int) -> None:
        await self.close()
        self.node = node
        self._api = api_on_port(port)
        positions: dict[int, int] = {}
        for p, offset, _ in self.seen:
            positions[p] = offset
        request = al.AlertSubscribeRequest(metric_codes=["gb"], since_offsets=positions, from_beginning=True)
        self._task = asyncio.create_task(self._read(self._api, request))

    async def _read(self, api: Api, request: al.AlertSubscribeRequest) -> None:
        try:
            async for message in api.alerts.AlertSubscribe(request):
                if message.WhichOneof("kind") == "alert":
                    a = message.alert
                    self.seen.append((a.partition, a.offset, a.multiple))
            raise AssertionError(f"the alert stream through n{self.node + 1} ended")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # kept for the test to report
            self.error = exc

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._api is not None:
            await self._api.channel.close()
            self._api = None


async def restart(nodes: list[ServeProcess], i: int, flags: list[str], tmp_path: Path) -> None:
    """SIGTERM node ``i``, wait for its exit, start it again as it was, wait until it owns some
    partitions again; ``nodes[i]`` is then the new process."""
    code = await asyncio.to_thread(nodes[i].terminate)
    assert code == 0, f"{NODE_IDS[i]} exited with {code}"
    node_id = NODE_IDS[i]
    nodes[i] = await asyncio.to_thread(start_serve, tmp_path / node_id, *flags, "--node-id", node_id)
    await owners_settled(nodes[i].grpc_port, set(NODE_IDS))


async def read_alerts(subscription: AlertSubscription, seen: list[Alert]) -> None:
    async for alert in subscription:
        seen.append(alert)


async def until_seen(seen: list[Alert] | list[tuple[int, int, int]], total: int) -> None:
    """Return once ``total`` alerts were seen; fail if they never are."""
    deadline = time.monotonic() + 60
    while len(seen) < total:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(seen)} alerts of {total} seen")
        await asyncio.sleep(0.02)


async def restart_each_node_under_load(
    nodes: list[ServeProcess],
    flags: list[str],
    tmp_path: Path,
    writers: list[Writer],
    subscriber: GrpcSubscriber,
) -> None:
    """Every node restarted in each order of ``ORDERS`` while ``writers`` run, ``subscriber``
    moved off each node before it is stopped; the writers are stopped at the end (their last
    calls answered), whatever happens."""
    tasks = [asyncio.create_task(w.run()) for w in writers]
    try:
        await writers[0].progress(CALLS_PER_PHASE)
        for order in ORDERS:
            for i in order:
                if subscriber.node == i:
                    other = (i + 1) % len(nodes)
                    await subscriber.open(other, nodes[other].grpc_port)
                await restart(nodes, i, flags, tmp_path)
                await writers[0].progress(CALLS_PER_PHASE)
                if subscriber.error is not None or any(w.error is not None for w in writers):
                    return
    finally:
        for w in writers:
            w.stop.set()
        await asyncio.gather(*tasks)


async def listed_event_ids(client: Client, account: int, metric: str) -> list[str]:
    """The ids of the account's events of ``metric``, read page by page through ListEvents."""
    ids: list[str] = []
    token = ""
    while True:
        events, token = await client.list_events(
            account, T0, END, metric_code=metric, page_size=500, page_token=token, timeout=30
        )
        ids += [e.event_id for e in events]
        if not token:
            return ids


async def alert_log(client: Client, account: int) -> list[Alert]:
    """The account's whole alert log, read page by page through ListAlerts."""
    logged: list[Alert] = []
    more = True
    while more:
        page, more = await client.alerts.list(
            account, logged[-1].offset if logged else 0, page_size=500, timeout=30
        )
        logged += page
    return logged


async def test_a_rolling_restart_under_load_fails_loses_and_doubles_nothing(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    flags = cluster_flags(nats_cluster, stream_name, PARTITIONS, extra=("--flush-interval-ms", "2"))
    async with three_nodes(tmp_path, flags) as nodes:
        seeds = [f"127.0.0.1:{n.node_port}" for n in nodes]
        async with await Client.connect(seeds) as client, await Client.connect(seeds) as watcher:
            every_1 = AlertThreshold("every_1", 1, recurring=True)
            await client.metrics.create(Metric("gb", AggType.SUM, thresholds=(every_1,)))
            await client.metrics.create(Metric("calls", AggType.COUNT))
            sync = Writer(client, "gb", DeliveryMode.SYNC, pause=0.0)
            asynchronous = Writer(client, "calls", DeliveryMode.ASYNC, pause=0.01)
            writers = [sync, asynchronous]
            seen: list[Alert] = []
            through_grpc = GrpcSubscriber()
            await through_grpc.open(0, nodes[0].grpc_port)
            async with watcher.alerts.subscribe(metric_codes=["gb"], from_beginning=True) as subscription:
                reader = asyncio.create_task(read_alerts(subscription, seen))
                try:
                    await restart_each_node_under_load(nodes, flags, tmp_path, writers, through_grpc)
                    for w in writers:
                        assert w.error is None, f"the {w.delivery.name} writer failed: {w.error!r}"
                    # One more SYNC round once everything is still: an alert a subscriber had
                    # been handed twice would come before these.
                    await client.ingest(sync.batch(sync.acknowledged), delivery=DeliveryMode.SYNC, timeout=30)
                    sync.acknowledged += 1
                    await until_seen(seen, sync.acknowledged * PARTITIONS)
                    await until_seen(through_grpc.seen, sync.acknowledged * PARTITIONS)
                    assert through_grpc.error is None, f"the gRPC subscriber failed: {through_grpc.error!r}"
                finally:
                    reader.cancel()
                    await through_grpc.close()

            # Every acknowledged event once: the aggregates, and the events listed page by page.
            for p, account in ACCOUNTS.items():
                for w in writers:
                    answer = await client.query(account, w.metric, Period(T0, END), timeout=30)
                    assert answer.value.count == w.acknowledged, (w.metric, p)
                    assert sorted(await listed_event_ids(client, account, w.metric)) == sorted(w.ids(p))
                assert (await client.query(account, "gb", Period(T0, END))).value.sum == sync.acknowledged

            # The alert log holds each partition's multiples 1..n at offsets 1..n, and the
            # subscriber saw exactly those, in offset order.
            expected = [(k, k) for k in range(1, sync.acknowledged + 1)]
            for p, account in ACCOUNTS.items():
                assert [(a.offset, a.multiple) for a in await alert_log(client, account)] == expected, p
                mine = [(a.offset, a.multiple) for a in seen if a.partition == p]
                assert mine == expected, (p, len(mine), len(expected))
                by_grpc = [(o, m) for q, o, m in through_grpc.seen if q == p]
                assert by_grpc == expected, (p, len(by_grpc), len(expected))
    # The nodes' logs (their stderr is this process's): a hand-over that was not clean, a flush
    # tick that failed, any ERROR, is a fault even when the numbers come out right.
    errors = [line for line in capfd.readouterr().err.splitlines() if '"level": "ERROR"' in line]
    assert errors == []
