"""The RecordLog contract on JetStream: positions, durability, reads, scans, truncation, restarts,
message ids and fencing, against a real 3-server JetStream cluster."""

from __future__ import annotations

import asyncio

import pytest

from cluster_client.errors import InvalidArgumentError
from node.jetstream.backend import JetStreamBackend
from tools.nats_cluster import NatsCluster

from .conftest import open_backend, scan_records


async def _commit(backend: JetStreamBackend, partitions: list[int]) -> None:
    done = asyncio.get_running_loop().create_future()
    backend.commit_group(partitions, background=False, then=lambda: done.set_result(None))
    await done


async def test_positions_durability_reads_and_restart(nats_cluster: NatsCluster, stream_name: str) -> None:
    backend = await open_backend(nats_cluster, stream_name)
    try:
        log = backend.open_partition(1).events
        assert (log.end_position, log.durable_position) == (0, 0)
        positions = [log.append(f"record {i}".encode()) for i in range(5)]
        assert positions == [0, 1, 2, 3, 4]
        assert log.durable_position == 0  # appended, not yet asked for
        await log.wait_durable(3)
        assert log.durable_position >= 3
        await _commit(backend, [1])
        assert log.durable_position == 5
        assert log.read(2) == b"record 2"
        assert list(log.scan(3)) == [(3, b"record 3"), (4, b"record 4")]
        with pytest.raises(ValueError, match="no record at position 5"):
            log.read(5)
        assert backend.open_partition(0).events.end_position == 0  # partitions do not share subjects
        await log.close()
    finally:
        await backend.disconnect()
    again = await open_backend(nats_cluster, stream_name)
    try:
        log = again.open_partition(1).events
        assert await scan_records(log) == [(i, f"record {i}".encode()) for i in range(5)]
        assert await log.read_many([4, 0, 2]) == [b"record 4", b"record 0", b"record 2"]
        assert log.durable_position == log.end_position == 5
        assert log.append(b"record 5") == 5  # a new writer continues the numbering
        await log.wait_durable(6)
        assert "stream sequence" in log.describe(5)
    finally:
        await again.disconnect()


async def test_truncate_deletes_the_tail_in_the_stream(nats_cluster: NatsCluster, stream_name: str) -> None:
    backend = await open_backend(nats_cluster, stream_name)
    try:
        log = backend.open_partition(0).alerts
        for i in range(4):
            log.append(bytes([i]))
        await log.wait_durable(4)
        log.truncate(2)
        assert log.end_position == 2
        assert log.append(b"new") == 2  # published after the cut messages are deleted
        await log.wait_durable(3)
    finally:
        await backend.disconnect()
    again = await open_backend(nats_cluster, stream_name)
    try:
        assert await scan_records(again.open_partition(0).alerts) == [(0, b"\x00"), (1, b"\x01"), (2, b"new")]
    finally:
        await again.disconnect()


async def test_a_second_writer_is_fenced(nats_cluster: NatsCluster, stream_name: str) -> None:
    first = await open_backend(nats_cluster, stream_name)
    second = await open_backend(nats_cluster, stream_name)  # loaded the same (empty) subject
    try:
        mine = first.open_partition(0).events
        mine.append(b"first writer")
        await mine.wait_durable(1)
        theirs = second.open_partition(0).events
        theirs.append(b"stale writer")
        with pytest.raises(OSError, match="another writer appended"):
            await theirs.wait_durable(1)  # never acknowledged
        with pytest.raises(OSError):
            theirs.append(b"more")
        mine.append(b"first writer again")
        await mine.wait_durable(2)
    finally:
        await first.disconnect()
        await second.disconnect()
    check = await open_backend(nats_cluster, stream_name)
    try:
        assert [r for _, r in await scan_records(check.open_partition(0).events)] == [
            b"first writer",
            b"first writer again",
        ]
    finally:
        await check.disconnect()


async def test_a_retried_publish_is_stored_once(nats_cluster: NatsCluster, stream_name: str) -> None:
    backend = await open_backend(nats_cluster, stream_name)
    try:
        js = backend.js
        subject = backend.layout.subject(0, "events")
        headers = {"Nats-Msg-Id": "epoch.p0.0", "Nats-Expected-Last-Subject-Sequence": "0"}
        first = await js.publish(subject, b"once", headers=dict(headers))
        retry = await js.publish(subject, b"once", headers=dict(headers))
        assert retry.duplicate and retry.seq == first.seq
        info = await js.stream_info(stream_name)
        assert info.state.messages == 1
    finally:
        await backend.disconnect()


async def test_a_record_larger_than_a_message_is_refused_up_front(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    backend = await open_backend(nats_cluster, stream_name)
    try:
        log = backend.open_partition(0).events
        limit = backend.client.max_payload - 1024
        with pytest.raises(InvalidArgumentError) as refused:
            log.append(b"x" * (limit + 1))
        assert refused.value.violations[0].field == "events"
        assert log.end_position == 0  # nothing appended
        assert log.append(b"x" * limit) == 0
        await log.wait_durable(1)
    finally:
        await backend.disconnect()


@pytest.mark.parametrize("within_window", [True, False], ids=["duplicate-window", "after-the-window"])
async def test_an_attempt_stored_before_its_ack_was_lost_counts_once(
    nats_cluster: NatsCluster, stream_name: str, within_window: bool
) -> None:
    """The log's publish of a record an earlier attempt already stored (same message id): within
    the duplicate window JetStream answers with the stored sequence; after it, the wrong-sequence
    answer is recognised as this record's own earlier attempt. Either way: one message, acked."""
    backend = await open_backend(nats_cluster, stream_name, epoch="e1")
    try:
        js = backend.js
        if not within_window:
            info = await js.stream_info(stream_name)
            info.config.duplicate_window = 0.5
            updated = await js.update_stream(info.config)
            assert updated.config.duplicate_window == 0.5
        subject = backend.layout.subject(0, "events")
        headers = {"Nats-Msg-Id": f"e1.0.{subject}.0", "Nats-Expected-Last-Subject-Sequence": "0"}
        earlier = await js.publish(subject, b"record", headers=headers)  # the attempt whose ack was lost
        if not within_window:
            await asyncio.sleep(1.0)
        log = backend.open_partition(0).events
        log.append(b"record")
        await log.wait_durable(1)
        assert "stream sequence" in log.describe(0) and str(earlier.seq) in log.describe(0)
        assert (await js.stream_info(stream_name)).state.messages == 1
    finally:
        await backend.disconnect()


async def test_a_waiter_cancelled_as_its_record_becomes_durable_is_cancelled(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    # Python 3.11's wait_for returned normally when the cancellation met the completion: a node's
    # maintenance loop, cancelled at shutdown inside a snapshot's flush, then ran on for ever.
    backend = await open_backend(nats_cluster, stream_name)
    try:
        log = backend.open_partition(0).events
        log.append(b"record 0")
        # Done in the same loop turn as the waiter's own future, and its callback runs before the
        # waiter resumes: the cancellation arrives as the record is acknowledged.
        earlier = log.durable_future(1)
        waiter = asyncio.create_task(log.wait_durable(1))
        earlier.add_done_callback(lambda _: waiter.cancel())
        await asyncio.sleep(0)  # the waiter now waits for the record
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert log.durable_position == 1
        await log.close()
    finally:
        await backend.disconnect()


async def test_a_caller_cancelled_while_publishing_its_own_record_leaves_it_stored_once(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    # A lone SYNC wait publishes its record from the caller's task; cancelled mid-attempt, the
    # publisher task takes the record over with the same message id.
    backend = await open_backend(nats_cluster, stream_name)
    try:
        log = backend.open_partition(0).events
        log.append(b"record 0")
        waiter = asyncio.create_task(log.wait_durable(1))
        await asyncio.sleep(0)  # the waiter's attempt is under way
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await log.wait_durable(1)
        assert (await backend.js.stream_info(stream_name)).state.messages == 1
        await log.close()
    finally:
        await backend.disconnect()
    again = await open_backend(nats_cluster, stream_name)
    try:
        assert await scan_records(again.open_partition(0).events) == [(0, b"record 0")]
    finally:
        await again.disconnect()


async def test_records_appended_while_a_caller_publishes_its_own_follow_it_in_order(
    nats_cluster: NatsCluster, stream_name: str
) -> None:
    backend = await open_backend(nats_cluster, stream_name)
    try:
        log = backend.open_partition(0).events
        log.append(b"record 0")
        first = asyncio.create_task(log.wait_durable(1))
        await asyncio.sleep(0)  # the first caller is publishing its own record
        log.append(b"record 1")
        log.append(b"record 2")
        await asyncio.gather(first, log.wait_durable(3))
        assert log.durable_position == 3
        assert (await backend.js.stream_info(stream_name)).state.messages == 3
        await log.close()
    finally:
        await backend.disconnect()
    again = await open_backend(nats_cluster, stream_name)
    try:
        scanned = await scan_records(again.open_partition(0).events)
        assert scanned == [(0, b"record 0"), (1, b"record 1"), (2, b"record 2")]
    finally:
        await again.disconnect()
