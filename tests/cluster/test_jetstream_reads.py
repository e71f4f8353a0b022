"""Records read back from the stream: a JetStream log keeps in memory only what is not yet
acknowledged and a bounded cache of recent records, and every other read (a ListEvents page, the
edges of a range query, a recovery's replay) goes to the stream, batched, and returns exactly what
was appended. Against a real 3-server JetStream cluster."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node.jetstream.backend import JetStreamBackend
from node.jetstream.subject_log import JetStreamLog
from node.node import Node, NodeConfig
from node.record_log import RecordsNotLoaded
from tests.integration.helpers import SEC, T0
from tools.nats_cluster import NatsCluster

from .conftest import commit_partition, events_log, node_on, node_on_stream, open_backend, scan_records

CACHE = 2048
HOUR = 3600 * SEC
MINUTE = 60 * SEC


async def _replicated(backend: JetStreamBackend, stream: str) -> None:
    """Until every replica of the stream has every message: a direct get answered by a replica
    still catching up is completed from the leader, which would add requests to a count."""
    while True:
        info = await backend.js.stream_info(stream)
        replicas = info.cluster.replicas if info.cluster is not None else []
        if all(r.current and not r.lag for r in replicas or []):
            return
        await asyncio.sleep(0.05)


def _records(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        f"record {i} ".encode() + bytes(rng.randrange(256) for _ in range(rng.randrange(40, 160)))
        for i in range(n)
    ]


async def test_only_unacknowledged_and_recent_records_stay_in_memory(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    backend = await open_backend(nats_cluster, stream_name, cache_bytes=CACHE)
    try:
        log = events_log(backend, 0)
        appended = _records(600, seed=1)
        for record in appended:
            log.append(record)
        assert log.memory_bytes == sum(map(len, appended))  # nothing acknowledged: all kept for retries
        await commit_partition(backend, 0)
        assert log.durable_position == 600
        assert log.memory_bytes <= CACHE  # the records themselves are in the stream now
        assert log.size_bytes == sum(map(len, appended))
        tail = _records(5, seed=2)
        for record in tail:  # appended, not yet acknowledged: in memory, in every read
            log.append(record)
        everything = appended + tail
        assert log.memory_bytes <= CACHE + sum(map(len, tail))

        # Reads across the cache's edge: any order, repeats, the unacknowledged tail.
        await _replicated(backend, stream_name)
        wanted = [599, 0, 604, 1, 300, 300, 255, 256, 257, 600, *range(100, 140)]
        assert await log.read_many(wanted) == [everything[p] for p in wanted]
        with pytest.raises(RecordsNotLoaded) as not_loaded:
            log.read(10)  # on the event loop: never a network wait there
        assert not_loaded.value.positions == [10]
        assert await asyncio.to_thread(log.read, 10) == everything[10]  # in a thread: fetched
        assert log.read(604) == everything[604]
        for start in (0, 1, 255, 256, 257, 599, 600, 604, 605):
            assert await scan_records(log, start) == list(enumerate(everything))[start:]
        with pytest.raises(ValueError, match="no record at position 605"):
            await log.read_many([1, 605])
        assert log.memory_bytes <= CACHE + sum(map(len, tail))
    finally:
        await backend.disconnect()


async def test_a_scan_over_chunks_in_memory_and_chunks_in_the_stream(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    """A scan reads 256 records at a time, fetching the next chunk while one is used: chunks the
    cache holds whole are not fetched, the others are, and the scan is the log either way."""
    backend = await open_backend(nats_cluster, stream_name, cache_bytes=40 << 10)
    try:
        log = events_log(backend, 0)
        appended = [f"{i:04d}".encode() * 25 for i in range(1000)]  # 100 B each: the cache holds 400
        for record in appended:
            log.append(record)
        await commit_partition(backend, 0)
        assert await log.read_many(range(256, 512)) == appended[256:512]  # now cached: chunk 1 whole
        with pytest.raises(RecordsNotLoaded):
            log.read(0)
        assert log.read(300) == appended[300]
        assert await scan_records(log) == list(enumerate(appended))
        assert await scan_records(log, 500) == list(enumerate(appended))[500:]
    finally:
        await backend.disconnect()


async def test_records_larger_than_a_batch_answer_are_read_whole(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    """A run of records larger than one direct get sends (4 MiB) takes several requests, each
    continuing where the last stopped."""
    backend = await open_backend(nats_cluster, stream_name, cache_bytes=CACHE)
    try:
        log = events_log(backend, 1)
        big = [bytes([i]) * (300 << 10) for i in range(30)]  # 9 MiB in all
        for record in big:
            log.append(record)
        await commit_partition(backend, 1)
        assert log.memory_bytes == 0  # each larger than the whole cache
        assert await log.read_many(range(30)) == big
        assert [r for _, r in await scan_records(log)] == big
    finally:
        await backend.disconnect()


def _metric() -> Metric:
    return Metric("calls", AggType.SUM, thresholds=(AlertThreshold("every_50", 50, recurring=True),))


async def _answers(node: Node, accounts: list[int], partitions: int) -> list[object]:
    """Every page of each account's events (pages of 37; and of 5 with a metric filter that
    skips most records), range queries whose edges are partial minutes (read from records), and
    its alerts."""
    out: list[object] = []
    for account in accounts:
        p = partition_of(account, partitions)
        for metric, size in (("", 37), ("bytes", 5)):
            token = ""
            while True:
                page, token = await node.list_events(p, account, T0, T0 + 30 * HOUR, metric, size, token)
                out.append(page)
                if not token:
                    break
        for start, end in ((T0 + 7 * SEC, T0 + 5 * HOUR + 13 * SEC), (T0 + HOUR + 1, T0 + 20 * HOUR - 1)):
            out.append((await node.query(p, account, "calls", start, end, 0, {}, [])).value)
        out.append((await node.list_alerts(p, account, 0, 1000))[0])
    return out


async def test_a_restarted_node_replays_and_reads_its_records_from_the_stream(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    partitions = 2
    accounts = [a for a in range(1, 40) if partition_of(a, partitions) == 0][:3]
    backend = await open_backend(nats_cluster, stream_name, partitions=partitions, cache_bytes=CACHE)
    node = await node_on(backend, NodeConfig(tmp_path / "data", partitions=partitions))
    await node.start()
    try:
        await node.create_metric(_metric())
        await node.create_metric(Metric("bytes", AggType.SUM))
        for i in range(450):  # one record per batch; the accounts' records interleave
            account = accounts[i % len(accounts)]
            code = "bytes" if i % 7 == 0 else "calls"
            row: EventRow = (account, code, 1 + i % 3, T0 + i * 4 * MINUTE + i * SEC, None, 1, f"e{i}")
            await node.ingest([(0, [row])], i % 2 == 0, "")
            if i == 150:
                await node.partitions[0].snapshot()  # the restart replays the 299 records after it
        await node.partitions[0].flush()
        expected = await _answers(node, accounts, partitions)
        log = node.partitions[0].events
        assert isinstance(log, JetStreamLog) and log.memory_bytes <= CACHE
        # Another node on the stream while this one still runs, as after a crash: it recovers from
        # the snapshot and the records after it, which only the stream has.
        shutil.copytree(tmp_path / "data", tmp_path / "copy")
        async with node_on_stream(
            nats_cluster, stream_name, NodeConfig(tmp_path / "copy"), partitions=partitions, cache_bytes=CACHE
        ) as (other, again):
            assert other.partitions[0].records_since_snapshot == 299  # replayed from the stream
            assert other.partitions[0].last_offset == 450
            await _replicated(again, stream_name)
            before = again.reader.requests
            page, _ = await other.list_events(0, accounts[0], T0, T0 + 30 * HOUR, "", 100, "")
            assert [e.event_id for e in page] == [f"e{i}" for i in range(0, 300, 3)]
            # 100 records spread over 300 positions: batched (records a few apart share a
            # request), nowhere near one request per event.
            assert again.reader.requests - before <= 5
            assert await _answers(other, accounts, partitions) == expected
    finally:
        await node.close()
        await backend.disconnect()
