"""The cluster's metric registry in a JetStream KV bucket, against a real 3-server JetStream cluster.

Two registries on one bucket stand for two nodes: a creation race has exactly one winner,
generations increase strictly across delete and re-create, the watch keeps the other registry
current, and two Nodes sharing the bucket see each other's metrics as soon as a call returns.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from cluster_client import AggType, Client, Metric, Period
from cluster_client.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnavailableError
from node.jetstream.metric_registry import KvMetricRegistry, metric_key
from node.node import Node, NodeConfig
from tools.nats_cluster import NatsCluster

T0 = 1_772_323_200 * 1_000_000_000
DAY = Period(T0, T0 + 86_400 * 1_000_000_000)


@pytest.fixture
async def connections(nats_cluster: NatsCluster) -> AsyncIterator[list[NatsClient]]:
    """Two NATS connections: one per "node"."""
    conns = [await nats.connect(servers=nats_cluster.urls) for _ in range(2)]
    try:
        yield conns
    finally:
        for nc in conns:
            await nc.close()


@pytest.fixture
def bucket() -> str:
    """A bucket of this test's own on the module's cluster."""
    return f"metrics-{uuid.uuid4().hex[:8]}"


async def open_pair(conns: list[NatsClient], bucket: str) -> tuple[KvMetricRegistry, KvMetricRegistry]:
    first = await KvMetricRegistry.open(conns[0].jetstream(), bucket=bucket, replicas=3)
    second = await KvMetricRegistry.open(conns[1].jetstream(), bucket=bucket, replicas=3)
    return first, second


def test_keys_escape_what_kv_keys_do_not_allow() -> None:
    assert metric_key("api.calls:v2") == "metric/api=2Ecalls=3Av2"
    assert metric_key("A-b_c") == "metric/A-b_c"


async def test_two_nodes_racing_to_create_one_code_exactly_one_wins(
    connections: list[NatsClient], bucket: str
) -> None:
    first, second = await open_pair(connections, bucket)
    try:
        for round_ in range(5):
            code = f"race{round_}"
            results = await asyncio.gather(
                first.create(Metric(code, AggType.SUM)),
                second.create(Metric(code, AggType.COUNT)),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, Metric)]
            lost = [r for r in results if not isinstance(r, Metric)]
            assert len(won) == 1 and len(lost) == 1
            assert isinstance(lost[0], AlreadyExistsError) and lost[0].reason == "METRIC_EXISTS"
            await first.refresh()
            await second.refresh()
            assert first.get(code) == second.get(code) == won[0]
    finally:
        await first.close()
        await second.close()


class _Unanswered:
    """The bucket of a registry, answering its first ``n`` reads and writes of a kind with "no
    responders" (as JetStream does while the bucket's stream has no leader) before passing them on."""

    def __init__(self, kv: Any, n: int) -> None:
        self._kv = kv
        self.left = {"get": n, "create": n, "update": n, "delete": n}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._kv, name)
        if name not in self.left:
            return real

        async def write(*args: Any, **kwargs: Any) -> Any:
            if self.left[name]:
                self.left[name] -= 1
                raise nats.js.errors.NoStreamResponseError
            return await real(*args, **kwargs)

        return write


async def test_writes_nobody_answered_are_written_again_until_the_timeout(
    connections: list[NatsClient], bucket: str
) -> None:
    """A write answered by "no responders" was not stored (the bucket's stream had no leader for
    a moment, as right after it is created or during an election): the registry reads and writes
    again instead of answering UNAVAILABLE, and each metric is stored once. Past the registry's
    timeout the answer is UNAVAILABLE, naming the error."""
    first, second = await open_pair(connections, bucket)
    try:
        first._kv = _Unanswered(first._kv, 3)  # type: ignore[assignment]
        created = await first.create(Metric("calls", AggType.SUM))  # the counter's update, then the create
        await second.refresh()
        assert second.get("calls") == created
        await first.delete("calls")
        await second.refresh()
        assert second.get("calls") is None
        assert first._kv.left == {"get": 0, "create": 0, "update": 0, "delete": 0}  # type: ignore[attr-defined]
    finally:
        await first.close()
        await second.close()
    hasty = await KvMetricRegistry.open(connections[0].jetstream(), bucket=bucket, replicas=3, timeout=0.3)
    try:
        hasty._kv = _Unanswered(hasty._kv, 10**6)  # type: ignore[assignment]
        with pytest.raises(UnavailableError, match="did not answer: NoStreamResponseError"):
            await hasty.create(Metric("never", AggType.SUM))
    finally:
        await hasty.close()


async def test_a_watch_whose_consumer_times_out_is_created_again_and_starts_from_the_bucket(
    connections: list[NatsClient], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy cluster creating the watch's consumer can time out: the registry opens anyway,
    after trying again, with every metric the bucket holds, and the watch follows later changes."""
    first = await KvMetricRegistry.open(connections[0].jetstream(), bucket=bucket, replicas=3)
    timeouts = [2]
    real_watchall = KeyValue.watchall

    async def slow_watchall(kv: KeyValue, **kwargs: Any) -> KeyValue.KeyWatcher:
        if timeouts[0]:
            timeouts[0] -= 1
            raise nats.errors.TimeoutError
        return await real_watchall(kv, **kwargs)

    try:
        created = await first.create(Metric("calls", AggType.SUM))
        monkeypatch.setattr(KeyValue, "watchall", slow_watchall)
        second = await KvMetricRegistry.open(connections[1].jetstream(), bucket=bucket, replicas=3)
        try:
            assert timeouts == [0]
            assert second.list() == [created]
            later = await first.create(Metric("bytes", AggType.MAX))
            async with asyncio.timeout(10):
                while second.get("bytes") is None:
                    await asyncio.sleep(0.01)
            assert second.get("bytes") == later
        finally:
            await second.close()
    finally:
        await first.close()


async def test_generations_increase_strictly_over_delete_and_recreate_from_either_node(
    connections: list[NatsClient], bucket: str
) -> None:
    first, second = await open_pair(connections, bucket)
    try:
        generations = []
        for i in range(6):
            creator = (first, second)[i % 2]
            created = await creator.create(Metric("calls", AggType.SUM))
            generations.append(created.create_time_unix_nano)
            other = (second, first)[i % 2]
            removed = await other.delete("calls")
            assert removed == created
        assert generations == sorted(set(generations))
        with pytest.raises(NotFoundError):
            await first.delete("calls")
        await first.refresh()
        await second.refresh()
        assert first.get("calls") is None and second.get("calls") is None
    finally:
        await first.close()
        await second.close()


async def test_the_watch_keeps_another_registry_current_and_tells_its_listener(
    connections: list[NatsClient], bucket: str
) -> None:
    first, second = await open_pair(connections, bucket)
    changes: list[tuple[str, int | None]] = []
    second.on_change = lambda code, m: changes.append((code, m.create_time_unix_nano if m else None))
    try:
        created = await first.create(Metric("api.calls:v2", AggType.MAX))
        await first.delete("api.calls:v2")
        again = await first.create(Metric("api.calls:v2", AggType.COUNT))
        # No refresh on `second`: its watch alone brings every change, in order.
        async with asyncio.timeout(10):
            while len(changes) < 3:
                await asyncio.sleep(0.01)
        assert changes == [
            ("api.calls:v2", created.create_time_unix_nano),
            ("api.calls:v2", None),
            ("api.calls:v2", again.create_time_unix_nano),
        ]
        assert second.list() == [again]
        # A registry opened later starts from the bucket as it is.
        late = await KvMetricRegistry.open(connections[1].jetstream(), bucket=bucket)
        assert late.list() == [again]
        await late.close()
    finally:
        await first.close()
        await second.close()


async def test_a_metric_created_through_one_node_is_usable_at_once_through_another(
    connections: list[NatsClient], bucket: str, tmp_path: Path
) -> None:
    registries = await open_pair(connections, bucket)
    nodes = [
        Node(NodeConfig(tmp_path / f"n{i}", partitions=2), registry=registry)
        for i, registry in enumerate(registries)
    ]
    for node in nodes:
        await node.start()
    try:
        clients = [
            await Client.in_process(node, metric_lookup=node.metric_of, metric_refresh=node.refresh_metrics)
            for node in nodes
        ]
        for i in range(10):
            code = f"m{i}"
            await clients[0].metrics.create(Metric(code, AggType.SUM))
            # Right after the call returns: ingest, query and get through the other node.
            result = await clients[1].ingest_rows([(7, code, 5, T0 + 1, None, 1, "")], sync=True)
            assert result.n_stored == 1
            assert (await clients[1].query(7, code, DAY)).value.sum == 5
            assert (await clients[1].metrics.get(code)).code == code
        assert [m.code for m in await clients[1].metrics.list()] == [f"m{i}" for i in range(10)]
        # Deleted through the second node: the first stops accepting it once its watch sees it.
        await clients[1].metrics.delete("m0")
        await nodes[0].refresh_metrics()
        with pytest.raises(InvalidArgumentError, match="unknown metric 'm0'"):
            await clients[0].ingest_rows([(7, "m0", 5, T0 + 1, None, 1, "")], sync=False)
        with pytest.raises(NotFoundError):
            await clients[0].metrics.get("m0")
    finally:
        for node in nodes:
            await node.close()
        for registry in registries:
            await registry.close()


async def test_metrics_created_while_a_node_is_being_built_are_usable_once_it_starts(
    connections: list[NatsClient], bucket: str, tmp_path: Path
) -> None:
    first, second = await open_pair(connections, bucket)
    try:
        building = asyncio.create_task(
            asyncio.to_thread(Node, NodeConfig(tmp_path / "n", partitions=4), registry=second)
        )
        created = 0
        while not building.done() or created < 3:
            await first.create(Metric(f"during{created}", AggType.SUM))
            created += 1
        node = await building
        await node.start()
        try:
            await second.refresh()
            codes = [m.code for m in second.list()]
            assert codes == sorted(f"during{i}" for i in range(created))
            for code in codes:  # none of them "unknown metric" to the node
                assert (await node.query_realtime(0, 1, code)).value.sum == 0
        finally:
            await node.close()
    finally:
        await first.close()
        await second.close()


class SetClock:
    """A wall clock the test sets."""

    def __init__(self, now: int) -> None:
        self.now = now

    def now_ns(self) -> int:
        return self.now


async def test_generations_increase_across_nodes_whose_clocks_disagree(
    connections: list[NatsClient], bucket: str
) -> None:
    ahead = SetClock(T0 + 3600 * 10**9)
    behind = SetClock(T0)
    first = await KvMetricRegistry.open(connections[0].jetstream(), bucket=bucket, replicas=3, clock=ahead)
    second = await KvMetricRegistry.open(connections[1].jetstream(), bucket=bucket, replicas=3, clock=behind)
    try:
        a = await first.create(Metric("a", AggType.SUM))
        b = await second.create(Metric("b", AggType.SUM))  # its clock is an hour behind
        await second.delete("a")
        a2 = await second.create(Metric("a", AggType.SUM))
        behind.now = T0 + 7200 * 10**9  # now it is ahead
        c = await second.create(Metric("c", AggType.SUM))
        assert a.create_time_unix_nano == ahead.now
        assert (b.create_time_unix_nano, a2.create_time_unix_nano) == (ahead.now + 1, ahead.now + 2)
        assert c.create_time_unix_nano == behind.now
    finally:
        await first.close()
        await second.close()
