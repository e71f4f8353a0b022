"""``unimeter serve --backend nats`` (a real process) through NATS outages, seen by a gRPC client
that retries with the same event ids: every nats-server killed and started again on the same ports
and stores, and the server leading the stream killed during SYNC ingests. Whatever the node
acknowledged is counted exactly once, by it and by a node started afresh on the stream; nothing
it refused is counted twice after the retry. Its own cluster: it kills servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest

from cluster_client import AggType, Metric
from cluster_client.errors import UnavailableError
from cluster_client.partitioning import partition_of
from node.node import NodeConfig
from tests.conftest import Api, api_on_port
from tests.grpc_errors import details
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest, query
from tests.process import ServeProcess, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

from .conftest import node_on, open_backend, running_cluster

TTL = 6.0
PARTITIONS = 4
HOUR = 3600 * SEC


@pytest.fixture(scope="module")
def outage_module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "nats-outage")


@pytest.fixture
def outage_cluster(outage_module_cluster: NatsCluster) -> NatsCluster:
    """The module's cluster with every server running (one a failed test left down started again)."""
    for server in outage_module_cluster.servers:
        if server.proc is None:
            outage_module_cluster.start_server(server, wait=False)
    outage_module_cluster.wait_healthy()
    return outage_module_cluster


def _serve(cluster: NatsCluster, data_dir: Path, stream: str) -> ServeProcess:
    return start_serve(
        data_dir,
        "--backend", "nats",
        "--node-id", "n1",
        "--nats-url", ",".join(cluster.urls),
        "--nats-monitor-url", ",".join(cluster.monitor_urls),
        "--nats-stream", stream,
        "--partitions", str(PARTITIONS),
        "--lease-ttl-seconds", str(TTL),
    )  # fmt: skip


async def _until_acknowledged(api: Api, *events: t.Event, sync: bool = True, seconds: float = 60) -> None:
    """Send ``events`` until the node acknowledges them (retried, with the same ids, after an
    UNAVAILABLE or a deadline: neither acknowledged anything)."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                await ingest(api, *events, sync=sync)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                await asyncio.sleep(0.1)


async def _sums(api: Api, accounts: list[int]) -> dict[int, int]:
    return {a: (await query(api, a, "calls", T0, T0 + HOUR)).value.sum for a in accounts}


async def _event_ids(api: Api, account: int) -> list[str]:
    page = await api.query.ListEvents(
        qs.ListEventsRequest(account_id=account, start_unix_nano=T0, end_unix_nano=T0 + HOUR, page_size=1000),
        timeout=10,
    )
    return sorted(e.event.event_id for e in page.events)


async def test_every_server_down_then_back_refuses_writes_answers_reads_and_resumes(
    tmp_path: Path, outage_cluster: NatsCluster, stream_name: str
) -> None:
    account = 7
    node = _serve(outage_cluster, tmp_path / "data", stream_name)
    try:
        api = api_on_port(node.grpc_port)
        await create_metric(api, "calls", t.AGG_TYPE_SUM)
        await ingest(api, ev(account, "calls", 5, T0 + SEC, event_id="a"), sync=True)
        for server in outage_cluster.servers:
            outage_cluster.kill(server)
        # The lease is still held locally (renewed every TTL/3, held until 0.8 TTL after the last
        # renewal): reads answer from applied state.
        assert (await query(api, account, "calls", T0, T0 + HOUR)).value.sum == 5
        # Neither a SYNC nor an ASYNC write is acknowledged while nothing can store it: the node
        # refuses it, retries the refusal inside the call's deadline, and answers it before the
        # deadline: UNAVAILABLE, NATS_UNAVAILABLE, with a retry delay.
        for delivery in (t.DELIVERY_MODE_SYNC, t.DELIVERY_MODE_ASYNC):
            event = ev(account, "calls", 7, T0 + 2 * SEC, event_id="b")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.ingest.Ingest(ing.IngestRequest(events=[event], delivery=delivery), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            reason, _, retry = details(refused.value)
            assert reason == "NATS_UNAVAILABLE" and retry, refused.value.details()
        # Once the lease has lapsed locally, the partition is not served at all: a takeover
        # elsewhere could be answering by then. Reads get no answer from the stale state:
        # UNAVAILABLE, with a retry delay, once the node has looked for an owner.
        async with asyncio.timeout(30):
            while True:
                try:
                    await query(api, account, "calls", T0, T0 + HOUR)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    assert details(err)[2], err.details()
                    break
                await asyncio.sleep(0.1)

        outage_cluster.start()  # the same ports and stores
        # No restart of the node: the retry of "b" is stored once, and new writes go through.
        await _until_acknowledged(api, ev(account, "calls", 7, T0 + 2 * SEC, event_id="b"))
        await _until_acknowledged(api, ev(account, "calls", 11, T0 + 3 * SEC, event_id="c"))
        assert (await query(api, account, "calls", T0, T0 + HOUR)).value.sum == 23
        assert await _event_ids(api, account) == ["a", "b", "c"]
        await api.channel.close()
    finally:
        node.kill9()
    # A node started afresh on the stream (after the old one's lease expired) has exactly that.
    again = _serve(outage_cluster, tmp_path / "again", stream_name)
    try:
        api = api_on_port(again.grpc_port)
        assert (await query(api, account, "calls", T0, T0 + HOUR)).value.sum == 23
        assert await _event_ids(api, account) == ["a", "b", "c"]
        await api.channel.close()
    finally:
        assert again.terminate() == 0


async def test_stream_leader_killed_during_sync_ingests_through_a_retrying_client(
    tmp_path: Path, outage_cluster: NatsCluster, stream_name: str
) -> None:
    """Writes stall for the election, then resume; every event acknowledged exactly once."""
    accounts = [next(a for a in range(1, 100) if partition_of(a, PARTITIONS) == p) for p in range(PARTITIONS)]
    node = _serve(outage_cluster, tmp_path / "data", stream_name)
    nc = await nats.connect(servers=outage_cluster.urls)
    leader = ""
    try:
        api = api_on_port(node.grpc_port)
        await create_metric(api, "calls", t.AGG_TYPE_SUM)
        info = await nc.jetstream().stream_info(stream_name)
        assert info.cluster is not None and info.cluster.leader
        leader = info.cluster.leader
        rounds = 30

        async def writer(account: int) -> None:
            for i in range(rounds):
                event = ev(account, "calls", 1, T0 + (i + 1) * SEC, event_id=f"{account}-{i}")
                await _until_acknowledged(api, event)
                if account == accounts[0] and i == 5:
                    await asyncio.to_thread(outage_cluster.kill, outage_cluster.server_named(leader))

        await asyncio.wait_for(asyncio.gather(*(writer(a) for a in accounts)), timeout=90)
        assert await _sums(api, accounts) == dict.fromkeys(accounts, rounds)
        await api.channel.close()
    finally:
        await nc.close()
        node.kill9()
        if leader:
            outage_cluster.start_server(outage_cluster.server_named(leader))
    again = _serve(outage_cluster, tmp_path / "again", stream_name)
    try:
        api = api_on_port(again.grpc_port)
        assert await _sums(api, accounts) == dict.fromkeys(accounts, rounds)
        for account in accounts:
            assert await _event_ids(api, account) == sorted(f"{account}-{i}" for i in range(rounds))
        await api.channel.close()
    finally:
        assert again.terminate() == 0


async def test_a_node_refuses_appends_at_once_while_its_connection_is_down(
    tmp_path: Path, outage_cluster: NatsCluster, stream_name: str
) -> None:
    """No ASYNC acknowledgement for a record nothing can store: while the connection is down the
    event log refuses at once, storing nothing; once it is back, the same event is stored."""
    backend = await open_backend(outage_cluster, stream_name, partitions=2)
    node = await node_on(backend, NodeConfig(tmp_path / "data", partitions=2))
    await node.start()
    partition = partition_of(7, 2)
    log = backend.open_partition(partition).events
    try:
        await node.create_metric(Metric("calls", AggType.SUM))
        await node.ingest([(partition, [(7, "calls", 5, T0, None, 1, "a")])], True, "")
        for server in outage_cluster.servers:
            outage_cluster.kill(server)
        async with asyncio.timeout(10):
            while backend.client.is_connected:
                await asyncio.sleep(0.01)
        stored = log.end_position
        for sync in (False, True):
            with pytest.raises(UnavailableError) as refused:
                await node.ingest([(partition, [(7, "calls", 7, T0 + 1, None, 1, "b")])], sync, "")
            assert refused.value.reason == "NATS_UNAVAILABLE"
            assert refused.value.retry_after_seconds == 1.0
            assert refused.value.message.startswith("the node's connection to NATS is down (reconnecting): ")
        assert log.end_position == stored
        assert (await node.query(partition, 7, "calls", T0, T0 + HOUR, 0, {}, [])).value.sum == 5
        outage_cluster.start()
        async with asyncio.timeout(60):
            while True:
                try:
                    await node.ingest([(partition, [(7, "calls", 7, T0 + 1, None, 1, "b")])], True, "")
                    break
                except UnavailableError:
                    await asyncio.sleep(0.1)
        assert (await node.query(partition, 7, "calls", T0, T0 + HOUR, 0, {}, [])).value.sum == 12
    finally:
        await node.close()
        await backend.disconnect()
