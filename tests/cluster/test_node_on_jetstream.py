"""A node on the JetStream backend, in process: snapshots go to the object store bucket, and a
node opened on the same stream loads them and replays only what follows, to exactly the state of
the node that wrote them (offsets, aggregates, dedup keys, thresholds, alert offsets); alerts past
the in-memory bound are read back from the stream."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Client, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node.jetstream.backend import JetStreamBackend
from node.jetstream.subject_log import JetStreamLog
from node.node import Node, NodeConfig
from node.records import AlertRecord, decode_event_record, encode_alert_record
from tests.integration.helpers import T0
from tools.nats_cluster import NatsCluster

from .conftest import node_on, node_on_stream, open_backend, scan_records

DAY = 86_400 * 1_000_000_000
PARTITIONS = 2


def _parts(rows: list[EventRow]) -> list[tuple[int, list[EventRow]]]:
    by_partition: dict[int, list[EventRow]] = {}
    for row in rows:
        by_partition.setdefault(partition_of(row[0], PARTITIONS), []).append(row)
    return sorted(by_partition.items())


async def _state(node: Node) -> list[object]:
    out: list[object] = []
    for account in range(1, 7):
        p = partition_of(account, PARTITIONS)
        out.append((await node.query(p, account, "calls", T0, T0 + DAY, 0, {}, [])).value)
        out.append((await node.list_events(p, account, T0, T0 + DAY, "", 1000, ""))[0])
        out.append((await node.list_alerts(p, account, 0, 1000))[0])
    out.append([(p.last_offset, len(p.alerts)) for p in node.partitions])
    return out


async def test_snapshot_in_the_cluster_then_replay(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    async with node_on_stream(
        nats_cluster, stream_name, NodeConfig(tmp_path / "data", partitions=PARTITIONS), partitions=PARTITIONS
    ) as (node, backend):
        await node.start()
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(
            Metric("calls", AggType.SUM, thresholds=[AlertThreshold("every_10", 10, recurring=True)])
        )
        first: list[EventRow] = [(a, "calls", 3, T0 + a, None, 1, f"a{a}") for a in range(1, 7)]
        original = await node.ingest(_parts(first), True, "batch-1")
        for partition in node.partitions:
            await partition.snapshot()
        # Stored in the bucket only: the storage keeps no snapshot bytes in memory.
        assert [backend.open_partition(p).read_snapshot() for p in range(PARTITIONS)] == [None, None]
        later: list[EventRow] = [
            (a, "calls", 4, T0 + 100 + a + i, None, 1, f"b{a}-{i}") for a in range(1, 7) for i in range(3)
        ]
        await node.ingest(_parts(later), False, "batch-2")  # ASYNC ...
        await node.ingest(_parts(first), True, "")  # ... made durable by a SYNC of every partition
        expected = await _state(node)
        assert any(p.alerts for p in node.partitions)
        # One store time per record published: 2 event records per partition, and the alert records.
        assert node.stats.fsync_events.count == 2 * PARTITIONS
        assert node.stats.fsync_alerts.count == sum(p.alert_log.end_position for p in node.partitions)
        # The lock is per data directory; the copy has the metric registry and the node's identity.
        shutil.copytree(tmp_path / "data", tmp_path / "copy")
        async with node_on_stream(
            nats_cluster, stream_name, NodeConfig(tmp_path / "copy"), partitions=PARTITIONS
        ) as (other, again):
            assert all(p.last_snapshot_time is not None for p in other.partitions)  # loaded from the bucket
            # Recovery took them; the storages do not keep them.
            assert [again.open_partition(p).read_snapshot() for p in range(PARTITIONS)] == [None, None]
            assert [p.records_since_snapshot for p in other.partitions] == [
                1,
                1,
            ]  # replayed: batch-2 (the all-duplicate SYNC stores nothing)
            assert await _state(other) == expected
            # Batch ids and dedup keys came back: a retried batch gets its original answer, and its
            # events sent again without the batch id are duplicates of the original offsets.
            assert await other.ingest(_parts(first), True, "batch-1") == original
            again_rows = await other.ingest(_parts(first), True, "")
            assert [o.offsets for o in again_rows] == [o.offsets for o in original]
            assert [o.n_duplicates for o in again_rows] == [len(rows) for _, rows in _parts(first)]


async def test_recovery_cuts_alert_records_of_events_never_stored(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    """An alert record whose event record never made it (its publish was never acknowledged) is cut
    by recovery: removed from the log and deleted from the stream."""
    backend = await open_backend(nats_cluster, stream_name, partitions=PARTITIONS)
    alerts = backend.open_partition(0).alerts
    row = [1, "calls", "every_10", 10, 1, 12, T0, T0, T0]
    alerts.append(encode_alert_record(AlertRecord(1, 1, [row])))
    await alerts.wait_durable(1)
    await backend.disconnect()

    again = await open_backend(nats_cluster, stream_name, partitions=PARTITIONS)
    node = await node_on(again, NodeConfig(tmp_path / "data", partitions=PARTITIONS))
    await node.start()
    try:
        assert len(node.partitions[0].alerts) == 0
        assert node.partitions[0].alert_log.end_position == 0
    finally:
        await node.close()  # closing the log deletes the cut messages (else the next publish does)
        await again.disconnect()
    check = await open_backend(nats_cluster, stream_name, partitions=PARTITIONS)
    try:
        assert await scan_records(check.open_partition(0).alerts) == []
    finally:
        await check.disconnect()


async def test_a_node_whose_stream_was_written_by_another_is_fenced(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    """Node A writes; node B starts on the same stream (a takeover) and writes; A's next SYNC on
    that partition is never acknowledged, and the stream holds B's record, not A's."""
    first = await open_backend(nats_cluster, stream_name, partitions=PARTITIONS)
    a = await node_on(first, NodeConfig(tmp_path / "a", partitions=PARTITIONS))
    await a.start()
    second: JetStreamBackend | None = None
    b: Node | None = None
    try:
        await a.create_metric(Metric("calls", AggType.SUM))
        row: EventRow = (1, "calls", 1, T0, None, 1, "a1")
        p = partition_of(1, PARTITIONS)
        await a.ingest([(p, [row])], True, "")
        shutil.copytree(tmp_path / "a", tmp_path / "b")  # B: the metric registry, another lock
        second = await open_backend(nats_cluster, stream_name, partitions=PARTITIONS)  # sees A's record
        b = await node_on(second, NodeConfig(tmp_path / "b"))
        await b.ingest([(p, [(1, "calls", 10, T0 + 1, None, 1, "b1")])], True, "")
        with pytest.raises(OSError, match="another writer appended"):
            await a.ingest([(p, [(1, "calls", 100, T0 + 2, None, 1, "a2")])], True, "")
        with pytest.raises(OSError):  # the partition stays failed: nothing more is acknowledged
            await a.ingest([(p, [(1, "calls", 100, T0 + 3, None, 1, "a3")])], False, "")
    finally:
        with contextlib.suppress(OSError):
            await a.close()
        await first.disconnect()
        if b is not None:
            await b.close()
        if second is not None:
            await second.disconnect()
    check = await open_backend(nats_cluster, stream_name, partitions=PARTITIONS)
    try:
        stored = [decode_event_record(r).rows for _, r in await scan_records(check.open_partition(p).events)]
        assert [[r[6] for r in rows] for rows in stored] == [["a1"], ["b1"]]
    finally:
        await check.disconnect()


async def _alerts_read(node: Node) -> list[object]:
    """Every alert as ListAlerts pages of 2 and as subscriptions from the start and from the
    middle read them, per partition: (account, multiple, value at cross, offset)."""
    out: list[object] = []
    for account in range(1, 7):
        p, after, more = partition_of(account, PARTITIONS), 0, True
        while more:
            page, more = await node.list_alerts(p, account, after, 2)
            out.append([(a.account_id, a.multiple, a.value_at_cross, a.offset) for a in page])
            after = page[-1].offset if page else after
    for partition in node.partitions:
        published = partition.published_alert_offset
        for since in (0, published // 2):
            stream = node.subscribe_alerts([partition.number], {partition.number: since}, False, [], [], [])
            got: list[tuple[int, int, int, int]] = []
            async with asyncio.timeout(10):
                async for item in stream:
                    if item.alert is not None:
                        a = item.alert
                        got.append((a.account_id, a.multiple, a.value_at_cross, a.offset))
                        if a.offset == published:
                            break
            await stream.aclose()  # type: ignore[attr-defined]
            out.append(got)
    return out


async def test_alerts_past_the_in_memory_bound_read_from_the_stream(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    """With one alert per partition in memory, every older alert is read back from the partition's
    alert subject: ListAlerts pages and subscriptions give exactly the alerts fired, in order, and
    the same after a node with none in memory recovers from the stream."""
    # No record cache: every alert that left memory is fetched from the stream when read.
    async with node_on_stream(
        nats_cluster,
        stream_name,
        NodeConfig(tmp_path / "data", partitions=PARTITIONS, alerts_in_memory=1),
        partitions=PARTITIONS,
        cache_bytes=0,
    ) as (node, _):
        await node.start()
        await node.create_metric(
            Metric("calls", AggType.SUM, thresholds=[AlertThreshold("every_10", 10, recurring=True)])
        )
        rounds = 6
        for r in range(1, rounds + 1):  # each event crosses the next multiple of 10: one alert
            rows: list[EventRow] = [(a, "calls", 10, T0 + r, None, 1, f"{r}-{a}") for a in range(1, 7)]
            await node.ingest(_parts(rows), True, "")
        # The model: a partition's alerts take offsets 1, 2, ... in the order their events applied.
        applied: dict[int, list[tuple[int, int, int, int]]] = {p: [] for p in range(PARTITIONS)}
        for k in range(1, rounds + 1):
            for a in range(1, 7):
                mine = applied[partition_of(a, PARTITIONS)]
                mine.append((a, k, 10 * k, len(mine) + 1))
        want: list[object] = []
        for account in range(1, 7):
            crossings = [x for x in applied[partition_of(account, PARTITIONS)] if x[0] == account]
            want += [crossings[i : i + 2] for i in range(0, rounds, 2)]
        for alerts in applied.values():
            want += [alerts, alerts[len(alerts) // 2 :]]
        got = await _alerts_read(node)
        assert got == want
        for partition in node.partitions:
            assert partition.alerts.in_memory <= 1
            assert len(partition.alerts) == len(applied[partition.number]) > 2
        shutil.copytree(tmp_path / "data", tmp_path / "copy")
        async with node_on_stream(
            nats_cluster,
            stream_name,
            NodeConfig(tmp_path / "copy", alerts_in_memory=0),
            partitions=PARTITIONS,
            cache_bytes=0,
        ) as (other, _):
            await other.start()
            assert await _alerts_read(other) == got


async def test_a_takeover_reads_only_the_alert_records_past_the_snapshot(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node loading a partition from the stream and its snapshot (a takeover) reads from the
    alert subject only the records past the snapshot and the one holding the alerts it keeps in
    memory (docs/design.md, "Alerts in memory and on disk"), and serves every alert as the node
    that wrote them did."""
    async with node_on_stream(
        nats_cluster,
        stream_name,
        NodeConfig(tmp_path / "data", partitions=PARTITIONS, alerts_in_memory=2),
        partitions=PARTITIONS,
        cache_bytes=0,
    ) as (node, _):
        await node.start()
        await node.create_metric(
            Metric("calls", AggType.SUM, thresholds=[AlertThreshold("every_10", 10, recurring=True)])
        )

        async def rounds(first: int, last: int) -> None:
            # Each event crosses the next multiple of 10: an alert record per partition and round,
            # holding its 3 accounts' alerts.
            for r in range(first, last + 1):
                rows: list[EventRow] = [(a, "calls", 10, T0 + r, None, 1, f"{r}-{a}") for a in range(1, 7)]
                await node.ingest(_parts(rows), True, "")

        await rounds(1, 10)
        for partition in node.partitions:
            await partition.snapshot()
        await rounds(11, 14)
        got = await _alerts_read(node)
        assert [p.alert_log.end_position for p in node.partitions] == [14, 14]
        read: set[tuple[str, int]] = set()
        scan, read_one = JetStreamLog.scan, JetStreamLog.read

        def counting_scan(log: JetStreamLog, start_position: int = 0) -> Iterator[tuple[int, bytes]]:
            for position, record in scan(log, start_position):
                read.add((log.subject, position))
                yield position, record

        def counting_read(log: JetStreamLog, position: int) -> bytes:
            read.add((log.subject, position))
            return read_one(log, position)

        monkeypatch.setattr(JetStreamLog, "scan", counting_scan)
        monkeypatch.setattr(JetStreamLog, "read", counting_read)
        shutil.copytree(tmp_path / "data", tmp_path / "copy")
        async with node_on_stream(
            nats_cluster,
            stream_name,
            NodeConfig(tmp_path / "copy", alerts_in_memory=2),
            partitions=PARTITIONS,
            cache_bytes=0,
        ) as (other, _):
            monkeypatch.undo()
            alert_records = sorted(p for subject, p in read if subject.endswith(".alerts"))
            # Per partition: records 10 to 13 (past the snapshot) and 9 (its newest 2 alerts).
            assert alert_records == sorted([9, 10, 11, 12, 13] * PARTITIONS)
            await other.start()
            assert await _alerts_read(other) == got
