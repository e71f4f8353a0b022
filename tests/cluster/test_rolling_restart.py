"""A rolling restart under load: three nats-servers and three ``unimeter serve --backend nats``
nodes, each in turn SIGTERMed, waited for, started again (same node id, data directory and flags,
new ports) and waited for until it owns partitions again, twice round in two orders, while clients
keep working.

What a user of the cluster must see through it: a retrying client (the SDK given every node as a
seed) gets no error at all, SYNC and ASYNC alike, and every acknowledged event is counted exactly
once; a subscriber sees every alert of the alert log exactly once, in offset order; and no node
logs an ERROR (a hand-over that was not clean, a failed flush tick). The subscriber is the SDK's
alert subscription, not a gRPC ``AlertSubscribe`` through one node: every node is restarted in
turn, so a stream through any single node ends at some point, and the subscription is the part
that carries each partition's position from owner to owner (a gRPC subscriber would have to do
the same by hand with ``since_offsets``).
"""

from __future__ import annotations

import asyncio
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
from tests.integration.helpers import SEC, T0
from tests.process import ServeProcess, start_serve
from tools.nats_cluster import NatsCluster

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


async def until_seen(seen: list[Alert], total: int) -> None:
    """Return once ``total`` alerts were seen; fail naming each partition's count if they never are."""
    deadline = time.monotonic() + 60
    while len(seen) < total:
        if time.monotonic() > deadline:
            counts = {p: sum(a.partition == p for a in seen) for p in ACCOUNTS}
            raise AssertionError(f"{len(seen)} alerts of {total} seen; by partition: {counts}")
        await asyncio.sleep(0.02)


async def restart_each_node_under_load(
    nodes: list[ServeProcess], flags: list[str], tmp_path: Path, writers: list[Writer]
) -> None:
    """Every node restarted in each order of ``ORDERS`` while ``writers`` run; they are stopped at
    the end (their last calls answered), whatever happens."""
    tasks = [asyncio.create_task(w.run()) for w in writers]
    try:
        await writers[0].progress(CALLS_PER_PHASE)
        for order in ORDERS:
            for i in order:
                await restart(nodes, i, flags, tmp_path)
                await writers[0].progress(CALLS_PER_PHASE)
                if any(w.error is not None for w in writers):
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
            async with watcher.alerts.subscribe(metric_codes=["gb"], from_beginning=True) as subscription:
                reader = asyncio.create_task(read_alerts(subscription, seen))
                try:
                    await restart_each_node_under_load(nodes, flags, tmp_path, writers)
                    for w in writers:
                        assert w.error is None, f"the {w.delivery.name} writer failed: {w.error!r}"
                    # One more SYNC round once everything is still: an alert the subscriber had
                    # been handed twice would come before these.
                    await client.ingest(sync.batch(sync.acknowledged), delivery=DeliveryMode.SYNC, timeout=30)
                    sync.acknowledged += 1
                    await until_seen(seen, sync.acknowledged * PARTITIONS)
                finally:
                    reader.cancel()

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
    # The nodes' logs (their stderr is this process's): a hand-over that was not clean, a flush
    # tick that failed, any ERROR, is a fault even when the numbers come out right.
    errors = [line for line in capfd.readouterr().err.splitlines() if '"level": "ERROR"' in line]
    assert errors == []
