"""The JetStream backend under faults: the stream leader killed during SYNC ingests, every NATS
server down and back while a node runs, and the refusals at start (conflicting stream settings,
another partition count, servers that do not sync every write). Its own cluster: it kills servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_client import AggType, Client, Metric
from cluster_client.errors import UnavailableError
from cluster_client.partitioning import partition_of
from node.jetstream.backend import open_jetstream_backend
from node.jetstream.errors import NatsRefused
from node.node import NodeConfig
from node.records import decode_event_record
from tests.integration.helpers import SEC, T0
from tools.nats_cluster import NatsCluster

from .conftest import nats_options, node_on, open_backend, running_cluster, scan_records, settings

DAY = 86_400 * 1_000_000_000


@pytest.fixture(scope="module")
def faulty_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A cluster of this module's own: its tests kill servers."""
    yield from running_cluster(tmp_path_factory, "nats-faults")


async def test_stream_leader_killed_during_sync_appends(
    faulty_cluster: NatsCluster, stream_name: str
) -> None:
    """Writes stall for the election and resume; every acknowledged record is stored exactly once,
    in order, and so is every record whose wait gave up (it stays queued, with the same id). When
    the killed leader is the server the node's connection used, appends are refused until it has
    reconnected elsewhere: such a record was not stored, and its writer appends it again."""
    backend = await open_backend(faulty_cluster, stream_name, partitions=4)
    leader = (await backend.js.stream_info(stream_name)).cluster.leader  # type: ignore[union-attr]
    appended: dict[int, list[bytes]] = {p: [] for p in range(4)}
    acked: dict[int, int] = dict.fromkeys(range(4), 0)

    async def writer(partition: int) -> None:
        log = backend.open_partition(partition).events
        for i in range(40):
            record = f"p{partition}-{i}".encode()
            while True:
                try:
                    position = log.append(record)
                    break
                except UnavailableError:  # reconnecting: refused before anything was stored
                    await asyncio.sleep(0.05)
            appended[partition].append(record)
            while True:
                try:
                    await log.wait_durable(position + 1)
                    break
                except UnavailableError:
                    continue  # not acknowledged; the record stays queued and is waited for again
            acked[partition] = position + 1
            if partition == 0 and i == 10:
                faulty_cluster.kill(faulty_cluster.server_named(leader))

    try:
        await asyncio.wait_for(asyncio.gather(*(writer(p) for p in range(4))), timeout=60)
    finally:
        await backend.disconnect()
        faulty_cluster.start_server(faulty_cluster.server_named(leader))
    assert acked == dict.fromkeys(range(4), 40)
    again = await open_backend(faulty_cluster, stream_name, partitions=4)
    try:
        for partition in range(4):
            assert [r for _, r in await scan_records(again.open_partition(partition).events)] == appended[
                partition
            ]
    finally:
        await again.disconnect()


async def test_nats_down_answers_unavailable_then_resumes(
    tmp_path: Path, faulty_cluster: NatsCluster, stream_name: str
) -> None:
    backend = await open_backend(faulty_cluster, stream_name, partitions=2, stall_seconds=2.0)
    node = await node_on(backend, NodeConfig(tmp_path / "data", partitions=2))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        partition = partition_of(7, 2)
        other = next(a for a in range(8, 100) if partition_of(a, 2) != partition)
        both = [
            (partition, [(7, "calls", 3, T0 + 1, None, 1, "b")]),
            (1 - partition, [(other, "calls", 2, T0 + 1, None, 1, "o")]),
        ]
        both.sort()
        await node.ingest([(partition, [(7, "calls", 5, T0, None, 1, "a")])], True, "")
        for server in faulty_cluster.servers:
            faulty_cluster.kill(server)
        with pytest.raises(UnavailableError) as waited:  # a SYNC call over both partitions
            await node.ingest(both, True, "")
        assert waited.value.reason == "NATS_UNAVAILABLE" and waited.value.retry_after_seconds
        with pytest.raises(UnavailableError):  # stalled: new events are refused before they are stored
            await node.ingest([(partition, [(7, "calls", 11, T0 + 2, None, 1, "c")])], True, "")
        # Queries answer from applied state meanwhile ("b" is applied and waits to be stored).
        assert (await node.query(partition, 7, "calls", T0, T0 + DAY, 0, {}, [])).value.sum == 8
        faulty_cluster.start()
        while True:  # the retry is all duplicates, acknowledged once the records are stored
            try:
                outcomes = await node.ingest(both, True, "")
                break
            except UnavailableError:
                await asyncio.sleep(0.2)
        assert [o.n_duplicates for o in outcomes] == [1, 1]
        await node.ingest([(partition, [(7, "calls", 11, T0 + 2, None, 1, "c")])], True, "")
    finally:
        await node.close()
        await backend.disconnect()
    again = await open_backend(faulty_cluster, stream_name, partitions=2)
    node = await node_on(again, NodeConfig(tmp_path / "data", partitions=2))
    try:
        assert (await node.query(partition, 7, "calls", T0, T0 + DAY, 0, {}, [])).value.sum == 19
        assert node.partitions[partition].last_offset == 3
        assert (await node.query(1 - partition, other, "calls", T0, T0 + DAY, 0, {}, [])).value.sum == 2
    finally:
        await node.close()
        await again.disconnect()


async def test_reads_only_the_stream_can_answer_are_unavailable_while_nats_is_down(
    tmp_path: Path, faulty_cluster: NatsCluster, stream_name: str
) -> None:
    """Records not in the node's memory are read from the stream: with every server down such a
    read answers UNAVAILABLE (never an empty or partial page), what memory holds still answers,
    and the same read gives every event once NATS is back."""
    backend = await open_backend(faulty_cluster, stream_name, partitions=2, cache_bytes=2048)
    node = await node_on(backend, NodeConfig(tmp_path / "data", partitions=2))
    await node.start()
    step = 20 * 60 * SEC  # three records an hour: the last hour's are the newest, in the cache
    try:
        await node.create_metric(Metric("calls", AggType.SUM))
        p = partition_of(7, 2)
        other = next(a for a in range(8, 100) if partition_of(a, 2) == p)
        for i in range(60):
            account = (7, other)[i % 2]
            await node.ingest([(p, [(account, "calls", 1, T0 + i * step + SEC, None, 1, f"e{i}")])], True, "")
        for server in faulty_cluster.servers:
            faulty_cluster.kill(server)
        with pytest.raises(UnavailableError) as refused:
            await node.list_events(p, other, T0, T0 + DAY, "", 100, "")
        assert refused.value.reason == "NATS_UNAVAILABLE" and refused.value.retry_after_seconds
        assert "cannot be read from JetStream" in str(refused.value)
        with pytest.raises(UnavailableError):  # its first minute is partial: e1's record is read
            await node.query(p, other, "calls", T0 + step + SEC, T0 + DAY, 0, {}, [])
        # What memory holds answers: the newest records (the log's cache), and the aggregates.
        newest, _ = await node.list_events(p, other, T0 + 19 * 3600 * SEC, T0 + DAY, "", 100, "")
        assert [e.event_id for e in newest] == ["e57", "e59"]
        assert (await node.query(p, other, "calls", T0, T0 + DAY, 0, {}, [])).value.sum == 30
        faulty_cluster.start()
        async with asyncio.timeout(60):
            while True:
                try:
                    page, token = await node.list_events(p, other, T0, T0 + DAY, "", 100, "")
                    break
                except UnavailableError:
                    await asyncio.sleep(0.2)
        assert ([e.event_id for e in page], token) == ([f"e{i}" for i in range(1, 60, 2)], "")
        edge = await node.query(p, other, "calls", T0 + step + SEC, T0 + DAY, 0, {}, [])
        assert edge.value.sum == 30  # e1, the first, is inside the range
        async with asyncio.timeout(60):  # replicas answer reads before the streams have leaders
            while True:  # again: the close's snapshot needs a writable cluster
                try:
                    await node.ingest([(p, [(other, "calls", 1, T0, None, 1, "after")])], True, "")
                    break
                except UnavailableError:
                    await asyncio.sleep(0.2)
    finally:
        await node.close()
        await backend.disconnect()


async def test_conflicting_stream_settings_are_refused(faulty_cluster: NatsCluster, stream_name: str) -> None:
    backend = await open_backend(faulty_cluster, stream_name, partitions=2)
    await backend.js.add_stream(name=f"{stream_name}x", subjects=["other.>"], num_replicas=1)
    await backend.disconnect()
    with pytest.raises(
        NatsRefused, match=r"--partitions 3 differs from the 2 partitions of JetStream stream"
    ):
        await open_backend(faulty_cluster, stream_name, partitions=3)
    with pytest.raises(NatsRefused, match=r"exists with other settings: replicas 3 \(expected 1"):
        await open_backend(faulty_cluster, stream_name, replicas=1)
    with pytest.raises(NatsRefused, match=r"exists with other settings: subjects \['other.>'\]"):
        await open_backend(faulty_cluster, f"{stream_name}x", replicas=1)
    reopened = await open_backend(faulty_cluster, stream_name, partitions=None)  # the stream's own count
    assert reopened.partitions == 2
    await reopened.disconnect()


@pytest.fixture(scope="module")
def unsynced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-unsynced"), 1, sync_always=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_a_server_that_does_not_sync_every_write_is_refused(
    unsynced_server: NatsCluster, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(
        NatsRefused, match=r"nats-server n1 \(http://127.0.0.1:\d+\) does not sync every write"
    ):
        await open_backend(unsynced_server, stream_name, replicas=1)
    with pytest.raises(NatsRefused, match="cannot verify that the NATS servers sync every write"):
        await open_backend(unsynced_server, stream_name, replicas=1, monitor_urls=())
    with caplog.at_level(logging.WARNING, logger="node.jetstream.backend"):
        backend = await open_jetstream_backend(
            nats_options(unsynced_server),
            settings(unsynced_server, stream_name, replicas=1, allow_unsynced=True),
        )
    with contextlib.suppress(Exception):
        await backend.disconnect()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "--allow-unsynced-jetstream" in w and "do NOT mean the events are on disk" in w for w in warnings
    )


async def test_stream_leader_killed_during_node_sync_ingests(
    tmp_path: Path, faulty_cluster: NatsCluster, stream_name: str
) -> None:
    """SYNC ingests through a node, retried with the same event ids on UNAVAILABLE, while the
    stream leader is killed: every event is acknowledged, counted once and stored once."""
    backend = await open_backend(faulty_cluster, stream_name, partitions=4)
    leader = (await backend.js.stream_info(stream_name)).cluster.leader  # type: ignore[union-attr]
    node = await node_on(backend, NodeConfig(tmp_path / "data", partitions=4))
    await node.start()
    accounts = list(range(1, 9))

    async def writer(account: int) -> None:
        partition = partition_of(account, 4)
        for i in range(25):
            row = (account, "calls", 1, T0 + i, None, 1, f"{account}-{i}")
            while True:
                try:
                    await node.ingest([(partition, [row])], True, "")
                    break
                except UnavailableError:
                    await asyncio.sleep(0.1)
            if account == 1 and i == 5:
                faulty_cluster.kill(faulty_cluster.server_named(leader))

    try:
        await node.create_metric(Metric("calls", AggType.SUM))
        await asyncio.wait_for(asyncio.gather(*(writer(a) for a in accounts)), timeout=60)
        for account in accounts:
            result = await node.query(partition_of(account, 4), account, "calls", T0, T0 + DAY, 0, {}, [])
            assert result.value.sum == 25
    finally:
        await node.close()
        await backend.disconnect()
        faulty_cluster.start_server(faulty_cluster.server_named(leader))
    check = await open_backend(faulty_cluster, stream_name, partitions=4)
    try:
        ids = [
            row[6]
            for p in range(4)
            for _, record in await scan_records(check.open_partition(p).events)
            for row in decode_event_record(record).rows
        ]
        assert sorted(ids) == sorted(f"{a}-{i}" for a in accounts for i in range(25))
    finally:
        await check.disconnect()
