"""Ingestion racing the node's background work: snapshots packing in slices, grouped fsync rounds.

A snapshot packs in slices while ingestion goes on: it holds exactly the state at its position.

Ingestion between the capture and the file write must neither leak into the snapshot (replaying
those records after recovery would count them twice) nor be lost (they are replayed from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Client, Metric, Period
from cluster_client.partitioning import partition_of
from cluster_client.types import Alert, EventRow
from node import dedup_index, embedded_backend, filesystem_sync, segment_log
from node.alert_list import AlertList
from node.node import Node, NodeConfig
from node.partition import Partition
from node.record_log import RecordLog, RecordsNotLoaded

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
MINUTE = 60 * 1_000_000_000
DAY = Period(T0, T0 + 24 * 60 * MINUTE)
ACCOUNTS = 20_000


@contextlib.asynccontextmanager
async def recovered_node(directory: Path, partitions: int) -> AsyncIterator[tuple[Node, Client]]:
    """A node started on ``directory`` (recovering what is there), with its in-process client."""
    node = Node(NodeConfig(directory, partitions=partitions))
    await node.start()
    try:
        yield node, await Client.in_process(node, metric_lookup=node.metric_of)
    finally:
        await node.close()


@contextlib.asynccontextmanager
async def node_with_cap(
    directory: Path, partitions: int, heartbeat_interval: float, *, recurring: bool = False
) -> AsyncIterator[tuple[Node, Client]]:
    """A node with its in-process client and metric ``calls``, whose threshold ``cap`` (10) fires
    an alert once (or at every multiple, if ``recurring``)."""
    node = Node(NodeConfig(directory, partitions=partitions, heartbeat_interval=heartbeat_interval))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        cap = AlertThreshold("cap", 10, recurring=recurring)
        await client.metrics.create(Metric("calls", AggType.SUM, thresholds=(cap,)))
        yield node, client
    finally:
        await node.close()


async def sums(client: Client, accounts: set[int]) -> dict[int, int]:
    return {a: (await client.query(a, "calls", DAY)).value.sum for a in sorted(accounts)}


async def minute_hour_sums_and_events(client: Client, accounts: list[int]) -> list[object]:
    """Each account's sums over its own minute and its hour (minute and hour cells; `sums` reads
    day cells), and its stored events (the event index)."""
    out: list[object] = []
    for a in accounts:
        minute = T0 + (a - 1) % 50 * MINUTE
        out.append((await client.query(a, "calls", Period(minute, minute + MINUTE))).value.sum)
        out.append((await client.query(a, "calls", Period(T0, T0 + 60 * MINUTE))).value.sum)
        events, _ = await client.list_events(a, DAY.start, DAY.end, page_size=1000)
        out.append(sorted((e.offset, e.value) for e in events))
    return out


async def test_events_ingested_while_a_snapshot_packs_are_counted_once_after_recovery(tmp_path: Path) -> None:
    node = Node(NodeConfig(tmp_path / "live", partitions=1))
    await node.start()
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    touched: set[int] = set()
    try:
        await client.metrics.create(Metric("calls", AggType.SUM))
        # One cell per account and level: columns of 20,000 cells take several slices to pack.
        for batch in range(ACCOUNTS // 1000):
            seqs = range(batch * 1000, batch * 1000 + 1000)
            rows: list[EventRow] = [(1 + n, "calls", 1, T0 + n % 50 * MINUTE, None, 1, f"e{n}") for n in seqs]
            await client.ingest_rows(rows, sync=False)
        partition = node.partitions[0]
        snapshot = asyncio.create_task(partition.snapshot())
        during = 0
        while not snapshot.done():
            # Accounts all over the columns, into cells that exist: a leak would change them.
            accounts = [1 + (during * 100 + i) * 7919 % ACCOUNTS for i in range(100)]
            touched.update(accounts)
            rows = [
                (a, "calls", 2, T0 + (a - 1) % 50 * MINUTE, None, 1, f"d{during}-{i}")
                for i, a in enumerate(accounts)
            ]
            await client.ingest_rows(rows, sync=False)
            during += 1
            await asyncio.sleep(0)  # an in-process call to one partition never waits: let others in
        await snapshot
        assert during >= 3, "the snapshot did not let ingestion run while it packed"
        await client.ingest_rows([(7, "calls", 5, T0 + 7, None, 1, "after")], sync=True)
        touched.add(7)
        await partition.flush()
        shutil.copytree(tmp_path / "live", tmp_path / "crashed")  # as if killed right now
        expected = await sums(client, touched)
        sample = sorted(touched)[::50]
        expected_detail = await minute_hour_sums_and_events(client, sample)
    finally:
        await node.close()

    recovered = Node(NodeConfig(tmp_path / "crashed"))
    await recovered.start()
    try:
        again = await Client.in_process(recovered, metric_lookup=recovered.metric_of)
        assert recovered.partitions[0].last_offset == ACCOUNTS + 100 * during + 1
        assert await sums(again, touched) == expected
        assert await minute_hour_sums_and_events(again, sample) == expected_detail
        assert sum(expected.values()) == len(touched) + 2 * 100 * during + 5
    finally:
        await recovered.close()


@contextlib.contextmanager
def first_fsync_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the first log fsync from here on (in its thread) until ``release`` is set; yields
    ``(entered, release)``, ``entered`` set once that fsync waits."""
    entered, release, lock = threading.Event(), threading.Event(), threading.Lock()
    real = segment_log._fsync

    def holding_first(fd: int) -> None:
        with lock:
            first = not entered.is_set()
            entered.set()
        if first:
            release.wait(10)
        real(fd)

    monkeypatch.setattr(segment_log, "_fsync", holding_first)
    try:
        yield entered, release
    finally:
        release.set()


async def made_durable_by_the_ticks(log: RecordLog) -> None:
    """Wait (5 s at most) until the flush ticks have made everything appended to ``log`` durable."""
    async with asyncio.timeout(5):
        while log.durable_position < log.end_position:
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def four_partitions_on_threads(directory: Path) -> AsyncIterator[tuple[Node, Client]]:
    """A node of 4 partitions whose rounds sync one log at a time on the fsync threads (the python
    engine, no ``syncfs``: what ``first_fsync_held`` holds), no tick for an hour, metric ``calls``."""
    config = NodeConfig(directory, partitions=4, flush_interval=3600, engine="python", sync_filesystem=False)
    node = Node(config)
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        yield node, client
    finally:
        await node.close()


def calls_rows(tag: str, value: int) -> list[EventRow]:
    """One event of ``value`` for each of accounts 1-40 (all 4 partitions of a 4-partition node)."""
    return [(a, "calls", value, T0 + a, None, 1, f"{tag}{a}") for a in range(1, 41)]


@pytest.mark.parametrize("sync_filesystem", [True, False], ids=["syncfs", "fdatasync-per-log"])
async def test_a_sync_batch_over_partitions_fails_if_one_partition_cannot_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_filesystem: bool
) -> None:
    # SYNC batches over several partitions share grouped fsync rounds: one log's failure must
    # still reach the caller (no acknowledgement), while the other partitions become durable.
    # With syncfs, the write-back error is reported by syncfs (for the whole filesystem) and then
    # by the broken log's own fdatasync, which pins it on that log.
    config = NodeConfig(tmp_path / "data", partitions=4, flush_interval=3600, sync_filesystem=sync_filesystem)
    node = Node(config)
    assert node.backend.syncs_filesystem == (sync_filesystem and filesystem_sync.syncfs_supported())
    await node.start()
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    try:
        await client.metrics.create(Metric("calls", AggType.SUM))
        rows: list[EventRow] = [(a, "calls", 1, T0 + a, None, 1, f"s{a}") for a in range(1, 41)]
        parts = {client.partition_of(a) for a, *_ in rows}
        assert len(parts) == 4
        broken = node.partitions[0].events
        broken_fds = set(broken._wfds.values())
        real = segment_log._fsync

        def failing(fd: int) -> None:
            if fd in broken_fds:
                raise OSError(errno.EIO, "simulated I/O error")
            real(fd)

        def filesystem_failing(fd: int) -> None:
            raise OSError(errno.EIO, "simulated write-back error on the filesystem")

        monkeypatch.setattr(segment_log, "_fsync", failing)
        monkeypatch.setattr(filesystem_sync, "syncfs", filesystem_failing)
        with pytest.raises(OSError):
            await client.ingest_rows(rows, sync=True)
        for partition in node.partitions[1:]:
            assert partition.events.durable_position == partition.events.end_position > 0
        assert node.stats.flush_failures == 1  # the broken log, counted once
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            await node.close()


@pytest.mark.parametrize("recreate", [False, True], ids=["deleted", "deleted-and-created-again"])
async def test_a_metric_deleted_while_a_batch_is_sliced_in_leaves_the_batch_whole(
    tmp_path: Path, recreate: bool
) -> None:
    """A batch over many partitions is applied in slices, with the event loop free in between. It
    was validated against the metrics as they were when it arrived: a metric deleted (and
    re-created) between its slices changes nothing about how the rest of the batch is stored; its
    events are logged like events that arrived just before the delete, and counted by nobody."""
    node = Node(NodeConfig(tmp_path / "data", partitions=16))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        await client.metrics.create(Metric("kept", AggType.SUM))
        rows: list[EventRow] = [
            (1 + n, "calls" if n % 2 else "kept", 1, T0 + n * MINUTE, None, 1, f"e{n}") for n in range(64)
        ]
        by_partition: dict[int, list[EventRow]] = {}
        for row in rows:
            by_partition.setdefault(partition_of(row[0], 16), []).append(row)
        parts = sorted(by_partition.items())
        assert len(parts) > 8  # several slices
        ingest = asyncio.create_task(node.ingest(parts, False, "", validated=False))
        await asyncio.sleep(0)  # the first slice is in
        assert not ingest.done()
        await node.delete_metric("calls")
        if recreate:
            await client.metrics.create(Metric("calls", AggType.SUM))  # a new generation
        assert not ingest.done()  # slices of the batch are still to come
        outcomes = await asyncio.wait_for(ingest, 5)
        assert sum(len(o.offsets) for o in outcomes) == 64
        assert sum(p.last_offset for p in node.partitions) == 64  # every event logged once
        kept = {a: (await client.query(a, "kept", DAY)).value.sum for a in range(1, 65, 2)}
        assert set(kept.values()) == {1}
        if recreate:
            for account in range(2, 66, 2):  # the deleted generation's events count for nobody
                assert (await client.query(account, "calls", DAY)).value.sum == 0
    finally:
        await node.close()
    async with recovered_node(tmp_path / "data", 16) as (recovered, again):
        assert sum(p.last_offset for p in recovered.partitions) == 64
        assert {a: (await again.query(a, "kept", DAY)).value.sum for a in range(1, 65, 2)} == kept
        if recreate:
            for account in range(2, 66, 2):
                assert (await again.query(account, "calls", DAY)).value.sum == 0


async def test_an_alert_whose_log_is_held_by_another_round_is_published_once_that_log_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fires an alert gets an urgent flush; if its partition's event log already has a
    round in flight (here a SYNC caller's, held in fsync), that round does not cover the alert's
    event, so the alert is published only after the next one: never before its event is durable,
    and exactly once."""
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM, thresholds=(AlertThreshold("cap", 10),)))
        partition = node.partitions[0]
        async with client.alerts.subscribe() as subscription:
            with first_fsync_held(monkeypatch) as (entered, held):
                sync_call = asyncio.create_task(
                    client.ingest_rows([(1, "calls", 1, T0, None, 1, "s")], sync=True)
                )
                assert await asyncio.to_thread(entered.wait, 5)
                await client.ingest_rows([(1, "calls", 9, T0 + 1, None, 1, "a")], sync=False)  # reaches 10
                assert len(partition.alerts) == 1
                await asyncio.sleep(0.2)  # the urgent round is done; the event log is still held
                assert partition.published_alert_offset == 0
                assert partition.events.durable_position < partition.events.end_position
                held.set()
                await asyncio.wait_for(sync_call, 5)
            alert = await asyncio.wait_for(anext(aiter(subscription)), 5)
            assert (alert.threshold_code, alert.offset, alert.value_at_cross) == ("cap", 1, 10)
            assert partition.published_alert_offset == 1
            assert partition.events.durable_position == partition.events.end_position
            await asyncio.sleep(0.1)
            assert subscription.offsets()[0] == 1  # nothing after it: published once
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_batch_cancelled_between_its_slices_is_stored_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled (deadline, disconnect) while its batch over many partitions is sliced in
    still leaves the batch whole, then sees the cancellation: never half a batch."""
    node = Node(NodeConfig(tmp_path / "data", partitions=16))
    await node.start()
    order: list[str] = []
    real_ingest_parts = Partition.ingest_parts

    def recording(partitions: list[Partition], parts: list[list[EventRow]], *args: object) -> object:
        order.extend(rows[0][6] for rows in parts)
        return real_ingest_parts(partitions, parts, *args)  # type: ignore[arg-type]

    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        monkeypatch.setattr(Partition, "ingest_parts", staticmethod(recording))
        by_partition: dict[int, list[EventRow]] = {}
        for n in range(64):
            row: EventRow = (1 + n, "calls", 1, T0 + n * MINUTE, None, 1, f"c-{n}")
            by_partition.setdefault(partition_of(row[0], 16), []).append(row)
        parts = sorted(by_partition.items())
        cancelled = asyncio.create_task(node.ingest(parts, False, ""))
        await asyncio.sleep(0)  # its first slice is in
        assert order and not cancelled.done()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(cancelled, 5)
        assert sorted(order) == sorted(rows[0][6] for _, rows in parts)  # every part, none twice
        assert sum(p.last_offset for p in node.partitions) == 64
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_snapshot_moves_a_growing_dedup_index_in_steps_and_keeps_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dedup index growing when its partition is snapshotted is moved in steps with the loop free
    in between (finishing it inside the capture stalled the loop 25-45 ms at a few hundred
    thousand slots); the snapshot still holds every key: after recovery they are all duplicates."""
    monkeypatch.setattr(dedup_index, "_MOVE_SLOTS", 16)
    monkeypatch.setattr(dedup_index, "_MOVE_SLOTS_PER_KEY", 1)
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    rows: list[EventRow] = [(1 + n % 50, "calls", 1, T0 + n, None, 1, f"g{n}") for n in range(700)]
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        for start in range(0, 700, 100):
            await client.ingest_rows(rows[start : start + 100], sync=False)
        partition = node.partitions[0]
        assert partition.dedup.growing
        snapshot = asyncio.create_task(partition.snapshot())
        await asyncio.sleep(0)
        assert partition.dedup.growing and not snapshot.done()  # moving in steps, not captured yet
        await asyncio.wait_for(snapshot, 5)
        assert not partition.dedup.growing
        shutil.copytree(tmp_path / "data", tmp_path / "crashed")  # as if killed right after it
    finally:
        await node.close()
    async with recovered_node(tmp_path / "crashed", 1) as (_, again):
        result = await again.ingest_rows(rows, sync=False)
        assert (result.n_stored, result.n_duplicates) == (0, 700)


async def test_a_publish_wakes_only_the_subscriptions_whose_filters_may_match(tmp_path: Path) -> None:
    """Subscriptions filtering on other accounts, metrics or thresholds are not woken by alerts
    they cannot match (1,000 of them took 0.44 of a core at 30 publishes a second): their positions
    move past those alerts, and their heartbeats carry the moved positions. A subscription whose
    filters match is woken and gets the alert."""
    # A heartbeat wakes every subscription too: its interval must outlast the SYNC ingest below.
    async with node_with_cap(tmp_path / "data", 4, 2.0) as (node, client):
        everything = list(range(4))
        streams = [node.subscribe_alerts(everything, {}, False, [1000 + i], [], []) for i in range(50)]
        streams.append(node.subscribe_alerts(everything, {}, False, [7], ["calls"], ["cap"]))  # matches
        pending = []
        for stream in streams:
            first = await anext(stream)  # the starting heartbeat
            assert first.alert is None
            pending.append(asyncio.ensure_future(anext(stream)))
        await asyncio.sleep(0)  # every stream is waiting
        waiters = list(node.alerts._waiters)  # in subscription order; the matching one is last
        assert len(waiters) == len(streams)
        await client.ingest_rows([(7, "calls", 10, T0, None, 1, "e")], sync=True)
        partition = client.partition_of(7)
        assert node.partitions[partition].published_alert_offset == 1
        # Only the matching subscription was woken (by this call's publish, or by a flusher tick
        # that published first; either way its stream may have run on and re-registered since).
        assert [w.done() for w in waiters] == [False] * 50 + [True]
        item = await asyncio.wait_for(pending[-1], 5)
        assert item.alert is not None and (item.alert.account_id, item.alert.offset) == (7, 1)
        assert node.alerts.lag() == dict.fromkeys(range(4), 0)  # the others moved past it, unwoken
        beat = await asyncio.wait_for(pending[0], 5)  # their next item is a heartbeat...
        assert beat.alert is None and beat.offsets[partition] == 1  # ...past the alert
        for task in pending[1:-1]:
            task.cancel()
        await asyncio.gather(*pending[1:-1], return_exceptions=True)  # each stream is idle again
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_publish_reads_the_new_alerts_only_for_subscriptions_with_filters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription without filters wants every alert, so a publish wakes it without reading the
    alerts: each alert is built once, by its stream. One with filters has the publish read what
    the alerts hold of the filters (not the alerts) once, whatever the number of such
    subscriptions, to tell whether to wake it."""
    reads: list[tuple[str, int, int]] = []
    between, filter_keys = AlertList.between, AlertList.filter_keys

    def counted_between(self: AlertList, first: int, last: int) -> list[Alert]:
        reads.append(("alerts", first, last))
        return between(self, first, last)

    def counted_keys(self: AlertList, first: int, last: int) -> tuple[set[int], set[str], set[str]]:
        reads.append(("keys", first, last))
        return filter_keys(self, first, last)

    monkeypatch.setattr(AlertList, "between", counted_between)
    monkeypatch.setattr(AlertList, "filter_keys", counted_keys)
    # A heartbeat interval of a minute: no heartbeat wakes a stream.
    async with node_with_cap(tmp_path / "data", 1, 60, recurring=True) as (node, client):
        unfiltered = node.subscribe_alerts([0], {}, False, [], [], [])
        assert (await anext(unfiltered)).alert is None  # the starting heartbeat
        await client.ingest_rows([(7, "calls", 10, T0, None, 1, "e")], sync=True)
        item = await asyncio.wait_for(anext(unfiltered), 5)
        assert item.alert is not None and item.alert.offset == 1
        assert reads == [("alerts", 1, 1)]  # the stream's read alone
        filtered = [node.subscribe_alerts([0], {}, False, [7], [], []) for _ in range(3)]
        for stream in filtered:
            assert (await anext(stream)).alert is None
        pending = [asyncio.ensure_future(anext(stream)) for stream in [unfiltered, *filtered]]
        await asyncio.sleep(0)  # every stream is waiting
        assert len(node.alerts._waiters) == 4
        reads.clear()
        await client.ingest_rows([(7, "calls", 10, T0 + 1, None, 1, "f")], sync=True)
        for item in await asyncio.wait_for(asyncio.gather(*pending), 5):
            assert item.alert is not None and item.alert.offset == 2
        assert reads == [("keys", 2, 2)] + [("alerts", 2, 2)] * 4  # the publish's, then each stream's
        for stream in [unfiltered, *filtered]:
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_publish_whose_alerts_are_not_loaded_wakes_the_filtered_subscriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a log whose records live in a remote store, the publish may find the new alerts held by
    nobody (RecordsNotLoaded): it cannot tell what they match, so every subscription reading the
    partition wakes (its stream fetches and filters them), whatever its filters."""
    filter_keys = AlertList.filter_keys
    refused: list[int] = []

    def not_loaded_once(self: AlertList, first: int, last: int) -> tuple[set[int], set[str], set[str]]:
        if not refused:
            refused.append(first)
            raise RecordsNotLoaded([0])
        return filter_keys(self, first, last)

    async with node_with_cap(tmp_path / "data", 1, 60) as (node, client):
        streams = [node.subscribe_alerts([0], {}, False, account, [], []) for account in ([1000], [7])]
        pending = []
        for stream in streams:
            assert (await anext(stream)).alert is None
            pending.append(asyncio.ensure_future(anext(stream)))
        await asyncio.sleep(0)
        waiters = list(node.alerts._waiters)
        monkeypatch.setattr(AlertList, "filter_keys", not_loaded_once)
        await client.ingest_rows([(7, "calls", 10, T0, None, 1, "e")], sync=True)
        assert refused == [1]  # the publish's read, refused
        assert [w.done() for w in waiters] == [True, True]  # both woken, the other account's too
        item = await asyncio.wait_for(pending[1], 5)
        assert item.alert is not None and (item.alert.account_id, item.alert.offset) == (7, 1)
        await asyncio.sleep(0.05)
        assert not pending[0].done()  # read, filtered out, asleep again
        assert list(node.alerts._positions.values()) == [{0: 1}] * 2  # past it, read or skipped
        pending[0].cancel()
        await asyncio.gather(pending[0], return_exceptions=True)
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_publish_on_a_partition_a_subscription_does_not_read_leaves_it_alone(tmp_path: Path) -> None:
    """A subscription may read some partitions only (a client core subscribes per owning node). An
    alert published on another partition neither wakes it nor touches its positions, whatever its
    filters, and publishing goes on for everyone else. (A publish used to look up every waiting
    subscription's position on the partition: a KeyError in the SYNC call, the urgent flush or the
    flusher's tick that published.)"""
    async with node_with_cap(tmp_path / "data", 4, 60) as (node, client):  # no heartbeat wakes
        alerting = client.partition_of(7)
        others = [p for p in range(4) if p != alerting]
        streams = [
            node.subscribe_alerts(others, {}, False, [1000], [], []),  # filters that cannot match
            node.subscribe_alerts(others, {}, False, [7], [], []),  # filters that would match
            node.subscribe_alerts(list(range(4)), {}, False, [7], [], []),
        ]
        pending = []
        for stream in streams:
            assert (await anext(stream)).alert is None  # the starting heartbeat
            pending.append(asyncio.ensure_future(anext(stream)))
        await asyncio.sleep(0)
        waiters = list(node.alerts._waiters)
        await client.ingest_rows([(7, "calls", 10, T0, None, 1, "e")], sync=True)  # publishes it
        assert [w.done() for w in waiters] == [False, False, True]
        item = await asyncio.wait_for(pending[2], 5)
        assert item.alert is not None and (item.alert.account_id, item.alert.offset) == (7, 1)
        positions = list(node.alerts._positions.values())
        assert positions[:2] == [dict.fromkeys(others, 0)] * 2  # untouched, and still asleep
        assert not any(task.done() for task in pending[:2])
        for task in pending[:2]:
            task.cancel()
        await asyncio.gather(*pending[:2], return_exceptions=True)
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]


async def test_the_flusher_ticks_on_after_a_tick_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a tick raises (here its publish step, once), the next ticks still make ASYNC
    writes durable: a dead flusher would leave them in memory until a SYNC call or shutdown."""
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    real = Partition.publish_durable
    raised = [0]

    def failing_once(self: Partition, mark: tuple[int, int, int]) -> bool:
        if not raised[0]:
            raised[0] += 1
            raise RuntimeError("a bug in a publish step")
        return real(self, mark)

    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        monkeypatch.setattr(Partition, "publish_durable", failing_once)
        log = node.partitions[0].events
        for n in range(2):
            await client.ingest_rows([(1, "calls", 1, T0 + n, None, 1, f"t{n}")], sync=False)
            await made_durable_by_the_ticks(log)
            await asyncio.sleep(0.05)  # the tick that made it durable has returned
        assert raised[0] == 1
        assert "flush tick failed" in caplog.text
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_cancelled_snapshot_holds_the_next_one_until_its_file_write_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown cancels the maintenance loop, whose snapshot may be writing its file in a thread,
    then snapshots every partition: the second write must not start on the same temp file before
    the first one ends, and the cancelled snapshot still raises CancelledError."""
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    gate = threading.Event()
    started = threading.Event()
    order: list[str] = []
    real_write = embedded_backend.write_file_atomically

    def slow_first_write(path: Path, *parts: bytes) -> None:
        order.append(f"start {len(order) // 2 + 1}")
        if len(order) == 1:
            started.set()
            gate.wait(10)
        real_write(path, *parts)
        order.append(f"end {len(order) // 2 + 1}")

    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        await client.ingest_rows([(1, "calls", 1, T0, None, 1, "a")], sync=True)
        monkeypatch.setattr(embedded_backend, "write_file_atomically", slow_first_write)
        partition = node.partitions[0]
        first = asyncio.create_task(partition.snapshot())
        assert await asyncio.to_thread(started.wait, 5)
        first.cancel()
        second = asyncio.create_task(partition.snapshot())
        await asyncio.sleep(0.2)
        assert order == ["start 1"] and not first.done()  # the cancelled one still holds the lock
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(first, 5)
        await asyncio.wait_for(second, 5)
        assert order == ["start 1", "end 1", "start 2", "end 2"]
    finally:
        gate.set()
        monkeypatch.undo()
        await node.close()


async def test_close_flushes_every_partition_even_if_one_fails_to_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One partition whose snapshot fails at shutdown (a full disk, say) raises from close, but
    only after every partition's ASYNC writes are durable, its own included."""
    node = Node(NodeConfig(tmp_path / "data", partitions=4, flush_interval=3600))  # no tick flushes
    await node.start()
    real = Partition.snapshot

    async def failing_for_partition_0(self: Partition) -> None:
        if self.number == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        await real(self)

    client = await Client.in_process(node, metric_lookup=node.metric_of)
    await client.metrics.create(Metric("calls", AggType.SUM))
    rows: list[EventRow] = [(a, "calls", a, T0 + a, None, 1, f"c{a}") for a in range(1, 41)]
    assert {partition_of(a, 4) for a in range(1, 41)} == {0, 1, 2, 3}
    await client.ingest_rows(rows, sync=False)
    monkeypatch.setattr(Partition, "snapshot", failing_for_partition_0)
    with pytest.raises(OSError, match="No space left"):
        await node.close()
    assert "partition 0 did not close cleanly" in caplog.text
    monkeypatch.undo()
    async with recovered_node(tmp_path / "data", 4) as (_, again):
        assert await sums(again, set(range(1, 41))) == {a: a for a in range(1, 41)}


async def test_a_call_that_fails_after_its_record_is_stored_is_deduplicated_on_retry(tmp_path: Path) -> None:
    """A batch whose events record is appended but whose alert record cannot be (the alert log
    failed on a write error) raises to the caller; its record stays in the log, so a retry must be
    answered as a duplicate of it, and the events count once, before and after a restart. The
    partition takes no snapshot while a log is failed, so recovery regenerates the alert, and the
    ticks publish it."""
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    row: EventRow = (7, "calls", 10, T0, None, 1, "retried")
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    await client.metrics.create(Metric("calls", AggType.SUM, thresholds=(AlertThreshold("cap", 10),)))
    await node.close()  # a snapshot before the failure: recovery replays the record after it
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    partition = node.partitions[0]
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    partition.alert_log._fail(None, OSError(errno.EIO, "write error"))  # as a failed round does
    with pytest.raises(OSError, match="refuses further use"):
        await client.ingest_rows([row], sync=False)
    retry = await client.ingest_rows([row], sync=True)
    assert (retry.n_stored, retry.n_duplicates, retry.offsets) == (0, 1, [1])
    assert (await client.query(7, "calls", DAY)).value.sum == 10
    with pytest.raises(OSError, match="refuses further use"):
        await partition.snapshot()
    with pytest.raises(OSError):
        await node.close()
    async with recovered_node(tmp_path / "data", 1) as (again_node, again):
        assert (await again.query(7, "calls", DAY)).value.sum == 10
        recovered = again_node.partitions[0]
        assert [a.offset for a in recovered.alerts] == [1]  # regenerated at recovery
        async with asyncio.timeout(5):  # and published by a tick, with no write to prompt it
            while recovered.published_alert_offset < 1:
                await asyncio.sleep(0.005)
        # Its batch arrived in the process before: no publish delay of this one's to observe.
        assert again_node.stats.alert_publish_delay.count == 0


async def test_a_snapshot_cancelled_in_a_write_that_then_fails_still_raises_the_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The maintenance loop counts a failed snapshot and goes on; if the failure came after the
    loop was cancelled (shutdown), the snapshot must raise the cancellation, or the loop would
    never stop and shutdown would wait for it forever."""
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    await node.start()
    gate = threading.Event()
    started = threading.Event()

    def failing_write(path: Path, *parts: bytes) -> None:
        started.set()
        gate.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        await client.ingest_rows([(1, "calls", 1, T0, None, 1, "a")], sync=True)
        monkeypatch.setattr(embedded_backend, "write_file_atomically", failing_write)
        snapshot = asyncio.create_task(node.partitions[0].snapshot())
        assert await asyncio.to_thread(started.wait, 5)
        snapshot.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(snapshot, 5)
    finally:
        gate.set()
        monkeypatch.undo()
        await node.close()


async def test_a_sync_call_over_partitions_waits_for_what_it_appended_not_for_later_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SYNC call over several partitions takes its marks before its group commit: records that
    other calls append while the group syncs are theirs to wait for. (Marks taken after the group
    made the call wait for them as well, each partition then syncing in a round of its own.)"""
    async with four_partitions_on_threads(tmp_path / "data") as (node, client):
        with first_fsync_held(monkeypatch) as (entered, held):
            sync_call = asyncio.create_task(client.ingest_rows(calls_rows("s", 1), sync=True))
            assert await asyncio.to_thread(entered.wait, 5)  # the group's rounds are syncing
            await client.ingest_rows(calls_rows("a", 2), sync=False)
            ends = [p.events.end_position for p in node.partitions]
            held.set()
            result = await asyncio.wait_for(sync_call, 5)
        assert result.n_stored == 40
        # Acknowledged with the later records still buffered: the next tick (an hour away) or a
        # flush of their own makes them durable, not the first call.
        assert all(p.events.durable_position < end for p, end in zip(node.partitions, ends, strict=True))
        assert sum((await sums(client, set(range(1, 41)))).values()) == 120


async def test_sync_calls_arriving_while_a_group_syncs_share_the_next_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SYNC calls over several partitions that arrive while a SYNC group commit is in flight wait
    for the next group, which covers all their partitions at once: no partition syncs in a round
    of its own. A caller that gives up waiting leaves the groups going; every call's records are
    durable when it is acknowledged."""
    own_rounds = [0]
    real_start_job = segment_log.SegmentLog._start_job

    def counted_start_job(
        log: segment_log.SegmentLog, fsync: bool, waiters: list[asyncio.Future[None]]
    ) -> None:
        own_rounds[0] += 1
        real_start_job(log, fsync, waiters)

    async with four_partitions_on_threads(tmp_path / "data") as (node, client):
        monkeypatch.setattr(segment_log.SegmentLog, "_start_job", counted_start_job)
        with first_fsync_held(monkeypatch) as (entered, held):
            first = asyncio.create_task(client.ingest_rows(calls_rows("a", 1), sync=True))
            assert await asyncio.to_thread(entered.wait, 5)  # the first group is syncing
            second = asyncio.create_task(client.ingest_rows(calls_rows("b", 2), sync=True))
            third = asyncio.create_task(client.ingest_rows(calls_rows("c", 4), sync=True))
            gives_up = asyncio.create_task(client.ingest_rows(calls_rows("d", 8), sync=True))
            await asyncio.sleep(0.2)  # all three stored, waiting for the next group
            assert not (second.done() or third.done() or gives_up.done())
            gives_up.cancel()
            held.set()
            results = await asyncio.wait_for(asyncio.gather(first, second, third), 5)
        assert [r.n_stored for r in results] == [40, 40, 40]
        assert all(p.events.durable_position == p.events.end_position for p in node.partitions)
        assert own_rounds[0] == 0
        with pytest.raises(asyncio.CancelledError):
            await gives_up
        assert sum((await sums(client, set(range(1, 41)))).values()) == 40 * (1 + 2 + 4 + 8)


@contextlib.contextmanager
def dirty_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Record the number of each partition whose ``dirty`` is read from here on."""
    reads: list[int] = []
    real = Partition.dirty.fget
    assert real is not None

    def recorded(partition: Partition) -> bool:
        reads.append(partition.number)
        return bool(real(partition))

    monkeypatch.setattr(Partition, "dirty", property(recorded))
    yield reads


async def test_a_tick_looks_only_at_the_partitions_appended_to_since_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle node's ticks read no partition's state (they read all 64 of a node's, 100 times a
    second, before); an ASYNC write is made durable by the next tick, which looks at its
    partition alone."""
    node = Node(NodeConfig(tmp_path / "data", partitions=8, flush_interval=0.005))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        await asyncio.sleep(0.05)  # the first ticks looked at every partition (just recovered)
        with dirty_reads(monkeypatch) as reads:
            await asyncio.sleep(0.1)  # 20 idle ticks
            assert reads == []
            await client.ingest_rows([(7, "calls", 1, T0, None, 1, "e")], sync=False)
            written = node.partitions[partition_of(7, 8)]
            await made_durable_by_the_ticks(written.events)
            await asyncio.sleep(0.05)  # ten more ticks: the partition is clean, nobody looks
            assert set(reads) == {written.number}
            assert len(reads) <= 2  # the tick that flushed it, and its look after the round
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_write_a_tick_could_not_flush_is_made_durable_by_a_later_tick_without_another_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ASYNC write whose log a SYNC caller's round holds is left by the ticks meanwhile (that
    round covers only the records before it); once the round ends, a later tick makes it durable,
    with no later write to the partition to prompt it."""
    config = NodeConfig(
        tmp_path / "data", partitions=1, flush_interval=0.005, engine="python", sync_filesystem=False
    )
    node = Node(config)
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        events = node.partitions[0].events
        with first_fsync_held(monkeypatch) as (entered, held):
            sync_call = asyncio.create_task(
                client.ingest_rows([(1, "calls", 1, T0, None, 1, "s")], sync=True)
            )
            assert await asyncio.to_thread(entered.wait, 5)
            await client.ingest_rows([(1, "calls", 2, T0 + 1, None, 1, "a")], sync=False)
            await asyncio.sleep(0.1)  # 20 ticks, each leaving the held log to its round
            assert events.durable_position < events.end_position
            held.set()
            await asyncio.wait_for(sync_call, 5)
        await made_durable_by_the_ticks(events)
        assert (await client.query(1, "calls", DAY)).value.sum == 3
    finally:
        monkeypatch.undo()
        await node.close()
