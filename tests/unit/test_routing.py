"""The client core's routing over two real embedded nodes, each serving half the partitions and
reached over the real node protocol on 127.0.0.1: seeds, owners, moves, deadlines, alert streams.

Which node serves which partition is set by ``Assignment``, a plain implementation of the node's
``PartitionOwnership`` (what the lease holder is in a cluster; each node's status names only its
own partitions): moving a partition here moves no data (each node has its own directory), so the
tests count what each node stored and answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from cluster_client import AggType, AlertThreshold, Client, DeliveryMode, Event, Metric
from cluster_client.errors import InvalidArgumentError, UnavailableError
from cluster_client.node_api import ClusterStatus
from cluster_client.remote_node import RemoteNode
from cluster_client.topology import PARTITION_NOT_OWNED, Topology
from cluster_client.types import Alert
from node.node import Node, NodeConfig
from node.ownership import not_owned
from node.protocol_server import NodeProtocolServer
from service.status_mapping import OWNER_HINT_KEY, status_of

PARTITIONS = 4
T0 = time.time_ns() - 60 * 1_000_000_000  # this period: realtime queries see it
METRIC = Metric("calls", AggType.SUM, thresholds=(AlertThreshold("every_1", 1, True),))


@dataclass
class Assignment:
    """The partitions a node serves now, each with its lease epoch, and where it believes the
    others are (the hint it sends back for them)."""

    epochs: dict[int, int] = field(default_factory=dict)
    hints: dict[int, str] = field(default_factory=dict)

    def holds(self, partition: int) -> bool:
        return partition in self.epochs

    def epoch(self, partition: int) -> int:
        return self.epochs.get(partition, 0)

    def owner_addr(self, partition: int) -> str | None:
        return self.hints.get(partition)

    async def cluster_status(self, local: ClusterStatus) -> ClusterStatus:
        return local


@dataclass
class Member:
    node: Node
    server: NodeProtocolServer
    assignment: Assignment

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def restart_protocol(self) -> None:
        """Close the node-protocol server (every connection drops) and serve again on its port."""
        port = self.server.port
        await self.server.close(grace=0)
        self.server = NodeProtocolServer(self.node, host="127.0.0.1", port=port)
        await self.server.start()


async def start_member(data: Path, held: dict[int, int]) -> Member:
    node = Node(NodeConfig(data, partitions=PARTITIONS, flush_interval=0.002))
    assignment = Assignment(dict(held))
    node.ownership = assignment
    await node.start()
    server = NodeProtocolServer(node, host="127.0.0.1", port=0)
    await server.start()
    node.node_addr = f"127.0.0.1:{server.port}"
    await node.create_metric(METRIC)  # each embedded node has a registry of its own
    return Member(node, server, assignment)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Member, Member]]:
    a = await start_member(tmp_path / "a", {0: 1, 1: 1})
    b = await start_member(tmp_path / "b", {2: 1, 3: 1})
    try:
        yield a, b
    finally:
        for m in (a, b):
            await m.server.close(grace=0)
            await m.node.close()


def accounts_by_partition() -> dict[int, int]:
    """One account per partition."""
    from cluster_client.partitioning import partition_of

    found: dict[int, int] = {}
    account = 1
    while len(found) < PARTITIONS:
        found.setdefault(partition_of(account, PARTITIONS), account)
        account += 1
    return found


ACCOUNTS = accounts_by_partition()


def batch(tag: str, value: int = 1) -> list[Event]:
    return [Event(a, "calls", value, T0 + p, event_id=f"{tag}-{p}") for p, a in ACCOUNTS.items()]


def stored(member: Member) -> list[int]:
    """Each partition's last offset on ``member``."""
    return [p.last_offset for p in member.node.partitions]


async def totals(client: Client) -> dict[int, int]:
    out = {}
    for p, account in ACCOUNTS.items():
        result = await client.query_realtime(account, "calls", timeout=5)
        out[p] = result.value.value
    return out


async def test_the_sdk_given_two_seeds_sends_each_partition_to_its_owner(pair: tuple[Member, Member]) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        result = await client.ingest(batch("x", 5), delivery=DeliveryMode.SYNC)
        assert (result.n_stored, result.n_duplicates) == (4, 0)
        assert await totals(client) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert stored(a) == [1, 1, 0, 0]
    assert stored(b) == [0, 0, 1, 1]


async def test_a_seed_that_does_not_answer_is_skipped(pair: tuple[Member, Member], tmp_path: Path) -> None:
    a, b = pair
    dead = NodeProtocolServer(a.node, host="127.0.0.1", port=0)
    await dead.start()
    dead_addr = f"127.0.0.1:{dead.port}"
    await dead.close(grace=0)
    async with await Client.connect([dead_addr, a.addr, b.addr]) as client:
        await client.ingest(batch("x"), delivery=DeliveryMode.SYNC)
        assert await totals(client) == {0: 1, 1: 1, 2: 1, 3: 1}


async def test_a_node_serves_calls_for_partitions_another_node_owns(pair: tuple[Member, Member]) -> None:
    a, b = pair
    client = await Client.in_cluster(
        a.node,
        a.node.node_id,
        RemoteNode,
        peers=[b.addr],
        metric_lookup=a.node.metric_of,
        metric_refresh=a.node.refresh_metrics,
    )
    try:
        result = await client.ingest(batch("x", 3), delivery=DeliveryMode.SYNC)
        assert (result.n_stored, result.n_duplicates) == (4, 0)
        assert await totals(client) == {0: 3, 1: 3, 2: 3, 3: 3}
        # Its own partitions in process, the others' over the node protocol to their owner.
        assert client.topology.owner(0) is a.node
        assert isinstance(client.topology.owner(2), RemoteNode)
        assert stored(a) == [1, 1, 0, 0]
        assert stored(b) == [0, 0, 1, 1]
    finally:
        await client.close()


async def test_a_moved_partition_is_followed_and_a_resent_batch_counts_nothing_twice(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        await client.ingest(batch("first"), delivery=DeliveryMode.SYNC, timeout=5)
        # Partition 2 moves from b to a under a later lease; the client's map still says b, and b
        # names a as the owner.
        del b.assignment.epochs[2]
        a.assignment.epochs[2] = 2
        b.assignment.hints[2] = a.addr
        second = batch("second", 10)
        result = await client.ingest(second, delivery=DeliveryMode.SYNC, timeout=10)
        assert (result.n_stored, result.n_duplicates) == (4, 0)
        assert client.topology.owner(2) is client.topology.nodes[a.node.node_id]
        assert stored(a) == [2, 2, 1, 0]
        assert stored(b) == [0, 0, 1, 2]
        again = await client.ingest(second, delivery=DeliveryMode.SYNC, timeout=10)
        assert (again.n_stored, again.n_duplicates) == (0, 4)
        assert again.offsets == result.offsets
        assert stored(a) == [2, 2, 1, 0]
        assert stored(b) == [0, 0, 1, 2]
        assert (await client.query_realtime(ACCOUNTS[2], "calls")).value.value == 10  # on a: only 'second'


async def test_an_unowned_partition_fails_at_the_deadline_with_its_reason(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        del b.assignment.epochs[3]  # nobody serves partition 3 now
        with pytest.raises(UnavailableError) as caught:
            await client.ingest(batch("x"), delivery=DeliveryMode.SYNC, timeout=1.0)
        assert caught.value.reason == PARTITION_NOT_OWNED, caught.value.message
        # The other partitions were stored, once; a later retry adds only partition 3.
        assert stored(a) == [1, 1, 0, 0]
        assert stored(b) == [0, 0, 1, 0]
        b.assignment.epochs[3] = 2
        result = await client.ingest(batch("x"), delivery=DeliveryMode.SYNC, timeout=5)
        assert (result.n_stored, result.n_duplicates) == (1, 3)
        with pytest.raises(UnavailableError) as queried:
            del b.assignment.epochs[3]
            await client.query_realtime(ACCOUNTS[3], "calls", timeout=1.0)
        assert queried.value.reason == PARTITION_NOT_OWNED


async def test_a_hint_points_the_map_at_the_owner_without_asking_any_node(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        topology = client.topology
        version = topology.version
        assert await topology.reroute([2], not_owned(2, a.addr)) is True
        assert topology.owner(2) is topology.nodes[a.node.node_id]
        assert topology.version == version + 1
        # A hint for a multi-partition call cannot say which partition it is about: the map is
        # fetched again instead, and the nodes' own word puts partition 2 back on b.
        assert await topology.reroute([2, 3], not_owned(2, a.addr)) is True
        assert topology.owner(2) is topology.nodes[b.node.node_id]


async def test_refreshes_reuse_one_connection_per_node(pair: tuple[Member, Member]) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        topology = client.topology
        await client.ingest(batch("x"), delivery=DeliveryMode.SYNC)
        before = dict(topology.nodes)
        for _ in range(3):
            await topology.refresh()
        assert topology.nodes == before
        assert {n.address for n in before.values()} == {a.addr, b.addr}  # type: ignore[attr-defined]


async def test_a_stale_view_never_undoes_a_later_lease(tmp_path: Path) -> None:
    a = await start_member(tmp_path / "a", {0: 5, 1: 5, 2: 5, 3: 5})
    b = await start_member(tmp_path / "b", {0: 3})
    try:
        topology = await Topology.from_seeds([a.addr], RemoteNode)
        try:
            assert topology.apply(await b.node.cluster_status()) is False  # epoch 3 < 5
            assert topology.owner(0) is topology.nodes[a.node.node_id]
        finally:
            await topology.close()
    finally:
        for m in (a, b):
            await m.server.close(grace=0)
            await m.node.close()


async def take(sub: AsyncIterator[Alert], n: int) -> list[Alert]:
    out: list[Alert] = []
    async with asyncio.timeout(10):
        while len(out) < n:
            out.append(await anext(sub))
    return out


async def test_a_subscription_over_two_nodes_resumes_each_where_it_was(pair: tuple[Member, Member]) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        async with client.alerts.subscribe() as sub:
            await client.ingest(batch("one"), delivery=DeliveryMode.SYNC)
            first = await take(sub, 4)
            # b's connections drop; its stream is opened again from where it was.
            await b.restart_protocol()
            await client.ingest(batch("two"), delivery=DeliveryMode.SYNC, timeout=10)
            second = await take(sub, 4)
            await client.ingest(batch("three"), delivery=DeliveryMode.SYNC, timeout=10)
            third = await take(sub, 4)
        got = sorted((x.partition, x.offset, x.value_at_cross) for x in [*first, *second, *third])
        assert got == [(p, o, o) for p in range(PARTITIONS) for o in (1, 2, 3)]
        assert sub.dropped() == 0


def test_an_escaped_not_owned_is_unavailable_naming_the_owner_and_a_retry_delay() -> None:
    status = status_of(not_owned(3, "10.0.0.7:7001"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    (raw,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    rich = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    retry = error_details_pb2.RetryInfo()
    assert [d.Unpack(info) or d.Unpack(retry) for d in rich.details] == [True, True]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        PARTITION_NOT_OWNED,
        "unimeter",
        {OWNER_HINT_KEY: "10.0.0.7:7001"},
    )
    assert retry.retry_delay.ToNanoseconds() == 1_000_000_000


async def test_a_subscription_follows_a_moved_partition_without_gap_or_repeat(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    p = 2
    account = ACCOUNTS[p]

    def event(i: int) -> Event:
        return Event(account, "calls", 1, T0 + i, event_id=f"m{i}")

    # Both nodes hold the same first three alerts of partition 2 (what a takeover replays).
    a.assignment.epochs[p] = 0
    for member in (a, b):
        for i in range(3):
            await member.node.ingest([(p, [event(i).row()])], True, "")
    del a.assignment.epochs[p]
    async with (
        await Client.connect([a.addr, b.addr]) as client,
        client.alerts.subscribe(account_ids=[account], from_beginning=True) as sub,
    ):
        assert [x.offset for x in await take(sub, 3)] == [1, 2, 3]  # from b, its owner
        # Partition 2 moves to a, which stores the next alert; b's stream is left behind.
        del b.assignment.epochs[p]
        a.assignment.epochs[p] = 2
        await client.topology.refresh()
        await client.ingest([event(3)], delivery=DeliveryMode.SYNC)
        (fourth,) = await take(sub, 1)
        assert (fourth.partition, fourth.offset, fourth.value_at_cross) == (p, 4, 4)
        assert sub.offsets()[p] == 4
    assert stored(a)[p] == 4
    assert stored(b)[p] == 3


async def test_a_subscription_naming_an_unknown_metric_is_refused_when_it_opens(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    async with await Client.connect([a.addr, b.addr]) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.alerts.subscribe(metric_codes=["nope"]).start()
        assert [(v.field, v.description) for v in caught.value.violations] == [
            ("metric_codes[0]", "unknown metric 'nope'")
        ]
