"""Routing on a real cluster: three nats-servers and three ``unimeter serve --backend nats``
processes sharing one stream, each serving some of the partitions under leases.

Any node serves every call (the client core routes each partition's share to its owner); the SDK
given the nodes as seeds keeps every acknowledged event exactly once while an owner is SIGKILLed;
a subscriber through one node sees every alert exactly once while partitions move (SIGTERM of
another node hands its partitions over).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster_client import AggType, Client, DeliveryMode, Event, Metric, Period
from tests.cluster.conftest import running_cluster
from tests.cluster.helpers import accounts_by_partition, cluster_flags, owners_settled, status, three_nodes
from tests.conftest import api_on_port
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest, query
from tests.process import ServeProcess
from tools.nats_cluster import NatsCluster
from unimeter.v1 import alert_service_pb2 as al
from unimeter.v1 import types_pb2 as t

TTL = 3.0
PARTITIONS = 6
END = T0 + 30 * 86_400 * SEC


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "routing")


def nats_flags(cluster: NatsCluster, stream: str) -> list[str]:
    return cluster_flags(cluster, stream, PARTITIONS, ttl=TTL, extra=("--flush-interval-ms", "2"))


ACCOUNTS = dict(enumerate(accounts_by_partition(PARTITIONS)))


def round_of(i: int) -> list[Event]:
    """One event of value 1 per partition: each raises its account's sum to the next multiple."""
    return [Event(a, "gb", 1, T0 + i * SEC, event_id=f"r{i}-{p}") for p, a in ACCOUNTS.items()]


def node_addrs(nodes: list[ServeProcess]) -> list[str]:
    return [f"127.0.0.1:{n.node_port}" for n in nodes]


async def test_one_node_serves_every_partition_with_exact_answers(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    async with three_nodes(tmp_path, nats_flags(nats_cluster, stream_name)) as nodes:
        api = api_on_port(nodes[0].grpc_port)
        try:
            await create_metric(api, "gb", t.AGG_TYPE_SUM)
            events = [ev(a, "gb", 10 * p + 1, T0 + SEC, event_id=f"e{p}") for p, a in ACCOUNTS.items()]
            response = await ingest(api, *events, sync=True)
            assert (response.n_stored, response.n_duplicates) == (PARTITIONS, 0)
            again = await ingest(api, *events, sync=True)
            assert (again.n_stored, again.n_duplicates) == (0, PARTITIONS)
            for p, account in ACCOUNTS.items():
                answer = await query(api, account, "gb", T0, END)
                assert (answer.value.sum, answer.value.count) == (10 * p + 1, 1)
        finally:
            await api.channel.close()
        # Each partition was stored once, by its owner: the offsets the status reports (another
        # node's partitions as their owner last reported them, about a second ago).
        async with asyncio.timeout(15):
            while True:
                response = await status(nodes[2].grpc_port)
                offsets = [p.last_offset for p in response.partition_infos]
                assert all(o <= 1 for o in offsets), offsets
                if offsets == [1] * PARTITIONS:
                    break
                await asyncio.sleep(0.2)


async def test_sdk_with_seeds_counts_every_acknowledged_event_once_through_an_owner_kill(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    async with three_nodes(tmp_path, nats_flags(nats_cluster, stream_name)) as nodes:
        owners = await owners_settled(nodes[0].grpc_port, {"n1", "n2", "n3"})
        async with await Client.connect(node_addrs(nodes)) as client:
            await client.metrics.create(Metric("calls", AggType.COUNT))
            batches = [
                [Event(a, "calls", 1, T0 + i * SEC, event_id=f"b{i}-{p}") for p, a in ACCOUNTS.items()]
                for i in range(40)
            ]
            acknowledged = 0
            for i, batch in enumerate(batches):
                if i == 10:
                    await asyncio.to_thread(nodes[1].kill9)  # n2 and its partitions, mid-stream
                result = await client.ingest(batch, delivery=DeliveryMode.SYNC, timeout=30)
                assert (result.n_stored, result.n_duplicates) == (PARTITIONS, 0)
                acknowledged += 1
            # Every batch again, the acknowledged ones included: nothing is stored twice.
            for batch in batches:
                result = await client.ingest(batch, delivery=DeliveryMode.SYNC, timeout=30)
                assert (result.n_stored, result.n_duplicates) == (0, PARTITIONS)
            for account in ACCOUNTS.values():
                answer = await client.query(account, "calls", Period(T0, END), timeout=30)
                assert answer.value.count == acknowledged
        after = await owners_settled(nodes[0].grpc_port, {"n1", "n3"})
        moved = [p for p, owner in owners.items() if owner == "n2"]
        assert moved and all(after[p] in {"n1", "n3"} for p in moved)


async def test_a_subscriber_through_one_node_sees_every_alert_once_while_partitions_move(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    async with three_nodes(tmp_path, nats_flags(nats_cluster, stream_name)) as nodes:
        api = api_on_port(nodes[0].grpc_port)
        try:
            await create_metric(
                api,
                "gb",
                t.AGG_TYPE_SUM,
                thresholds=[t.AlertThreshold(code="every_1", value=1, recurring=True)],
            )
            stream = api.alerts.AlertSubscribe(al.AlertSubscribeRequest())
            first = await stream.read()
            assert first.WhichOneof("kind") == "heartbeat"
            rounds = 12
            seen: list[tuple[int, int, int]] = []

            async def read_alerts(total: int) -> None:
                async with asyncio.timeout(30):
                    while len(seen) < total:
                        message = await stream.read()
                        assert message is not grpc.aio.EOF
                        if message.WhichOneof("kind") == "alert":
                            a = message.alert
                            seen.append((a.partition, a.offset, a.multiple))

            async with await Client.connect(node_addrs(nodes)) as client:
                for i in range(rounds):
                    if i == 4:
                        await asyncio.to_thread(nodes[2].terminate)  # n3 hands its partitions over
                    await client.ingest(round_of(i), delivery=DeliveryMode.SYNC, timeout=30)
                await read_alerts(rounds * PARTITIONS)
                # One more round: had anything been repeated, it would come before these.
                await client.ingest(round_of(rounds), delivery=DeliveryMode.SYNC, timeout=30)
                await read_alerts((rounds + 1) * PARTITIONS)
            stream.cancel()
        finally:
            await api.channel.close()
        rounds += 1
        # Each partition's alerts once each, in offset order: the multiples 1..rounds.
        for p in range(PARTITIONS):
            mine = [(o, m) for q, o, m in seen if q == p]
            assert mine == [(k, k) for k in range(1, rounds + 1)], (p, mine)
