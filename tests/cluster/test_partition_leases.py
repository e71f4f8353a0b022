"""Partition leases and node liveness in a JetStream KV bucket, against a real 3-server cluster.

Two PartitionLeases objects on one bucket stand for two nodes. A node that stops renewing (paused,
or cut off from NATS) must stop serving before the other can take its lease: checked as an
ordering (at the moment the other node's take succeeds) and with an injected clock, never with a
timing threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from node.jetstream.leases import LeaseConflictError, PartitionLeases, lease_key
from tools.nats_cluster import NatsCluster

TTL = 1.5


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def conns(nats_cluster: NatsCluster) -> AsyncIterator[list[NatsClient]]:
    """Two NATS connections: one per "node"."""
    opened = [await nats.connect(servers=nats_cluster.urls) for _ in range(2)]
    try:
        yield opened
    finally:
        for nc in opened:
            await nc.close()


@pytest.fixture
def bucket() -> str:
    return f"leases-{uuid.uuid4().hex[:8]}"


async def open_leases(nc: NatsClient, bucket: str, node_id: str) -> PartitionLeases:
    return await PartitionLeases.open(nc.jetstream(), node_id, ttl=TTL, replicas=3, bucket=bucket)


@contextlib.asynccontextmanager
async def renewing(leases: PartitionLeases) -> AsyncIterator[None]:
    """``leases`` renewed in the background, as a serving node does."""
    task = asyncio.create_task(leases.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_take_renew_release_and_the_next_owner_takes_over_at_once(
    conns: list[NatsClient], bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await open_leases(conns[0], bucket, "a")
    b = await open_leases(conns[1], bucket, "b")
    await a.join()
    await a.acquire(range(4))
    assert all(a.holds(p) for p in range(4))
    epochs = [a.epoch(p) for p in range(4)]
    assert all(e > 0 for e in epochs) and len(set(epochs)) == 4
    await a.renew()
    await a.renew()
    assert all(a.holds(p) for p in range(4))
    assert [a.epoch(p) for p in range(4)] == epochs  # renewals keep the epoch
    await a.release()
    assert not any(a.holds(p) for p in range(4))
    with caplog.at_level(logging.WARNING, logger="node.jetstream.leases"):
        await b.join()
        await b.acquire(range(4))
    assert [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()] == []
    assert all(b.holds(p) for p in range(4))
    assert all(b.epoch(p) > max(epochs) for p in range(4))
    await b.release()


async def test_a_lease_a_live_node_renews_is_not_taken(conns: list[NatsClient], bucket: str) -> None:
    a = await open_leases(conns[0], bucket, "a")
    b = await open_leases(conns[1], bucket, "b")
    await a.join()
    await a.acquire([0, 1])
    async with renewing(a):
        with pytest.raises(
            LeaseConflictError, match=r"partition [01] is held by node 'a' .*which renewed it"
        ):
            await b.acquire([1, 2])
        assert not any(b.holds(p) for p in range(3))  # and gave back partition 2
        assert a.holds(0) and a.holds(1)
    await b.acquire([2])  # not left behind by the refused attempt: taken at once
    assert b.holds(2)
    await a.release()
    await b.release()


async def test_an_expired_lease_goes_to_the_next_node_with_a_higher_epoch_after_the_holder_stopped(
    conns: list[NatsClient], bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await open_leases(conns[0], bucket, "a")
    b = await open_leases(conns[1], bucket, "b")
    await a.acquire([0])
    assert a.holds(0)
    # `a` is paused: it never renews. `b` waits for the lease to expire on the servers ...
    await b.acquire([0])
    # ... and by the time it has it, `a` (on its own clock) has long stopped serving.
    assert not a.holds(0)
    assert b.holds(0) and b.epoch(0) > a.epoch(0)
    # `a` wakes up: its renewal is refused (compare-and-set on its old revision), lost for good.
    with caplog.at_level(logging.ERROR, logger="node.jetstream.leases"):
        await a.renew()
    assert f"partition 0: lease (epoch {a.epoch(0)}) lost" in caplog.text
    assert not a.holds(0)
    entry = await conns[1].jetstream().key_value(bucket)
    assert (await entry.get(lease_key(0))).value.find(b"b") >= 0
    await b.release()


async def test_a_renewal_stored_after_its_answer_was_lost_is_adopted_not_taken_for_a_takeover(
    conns: list[NatsClient], bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = await open_leases(conns[0], bucket, "a")
    await a.acquire([0])
    await a.renew()
    epoch = a.epoch(0)
    # The servers store a renewal of `a` that `a` never heard back about (its answer lost).
    kv = await conns[1].jetstream().key_value(bucket)
    entry = await kv.get(lease_key(0))
    await kv.update(lease_key(0), entry.value, last=entry.revision)
    with caplog.at_level(logging.ERROR, logger="node.jetstream.leases"):
        await a.renew()
    assert "lost" not in caplog.text
    assert a.holds(0) and a.epoch(0) == epoch
    # ... but a record of another instance at a later revision is a takeover: lost.
    entry = await kv.get(lease_key(0))
    other = await open_leases(conns[1], bucket, "a")  # same id, another process
    await kv.delete(lease_key(0), last=entry.revision)
    await other.acquire([0])
    await a.renew()
    assert not a.holds(0) and other.holds(0) and other.epoch(0) > epoch
    await other.release()


async def test_a_node_that_cannot_renew_stops_serving_before_its_ttl_could_expire_elsewhere(
    nats_cluster: NatsCluster, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    nc = await nats.connect(servers=nats_cluster.urls)
    # The deadline logic on a clock the test moves.
    leases = await PartitionLeases.open(nc.jetstream(), "a", ttl=TTL, replicas=3, bucket=bucket, clock=clock)
    taken_at = clock.now
    await leases.acquire([0, 1])
    renewed_at = clock.now = taken_at + 0.4
    await leases.renew()
    await nc.close()  # cut off from NATS: every later renewal fails
    clock.now = renewed_at + TTL / 3
    with caplog.at_level(logging.ERROR, logger="node.jetstream.leases"):
        await leases.renew()
        assert leases.holds(0) and leases.holds(1)  # not yet at the deadline
        clock.now = renewed_at + TTL - leases.margin - 1e-6
        assert leases.holds(0)
        clock.now = renewed_at + TTL - leases.margin  # still a margin before the servers' TTL
        assert not leases.holds(0) and not leases.holds(1)
        await leases.renew()
    assert caplog.text.count("not renewed in time") == 2  # once per partition
    assert 0 < leases.margin < TTL


async def test_two_live_nodes_with_one_id_are_refused_and_a_dead_ones_id_is_taken_over(
    conns: list[NatsClient], bucket: str
) -> None:
    first = await open_leases(conns[0], bucket, "n1")
    second = await open_leases(conns[1], bucket, "n1")
    await first.join()
    async with renewing(first):
        with pytest.raises(LeaseConflictError, match=r"node id 'n1' is held by node 'n1' .*renewed it"):
            await second.join()
    # `first` stops renewing (killed): its record expires and the id can be used again.
    await second.join()


async def test_a_bucket_with_another_ttl_is_refused_naming_both(conns: list[NatsClient], bucket: str) -> None:
    await open_leases(conns[0], bucket, "a")
    with pytest.raises(LeaseConflictError, match=r"has a TTL of 1.5s .* --lease-ttl-seconds 3"):
        await PartitionLeases.open(conns[1].jetstream(), "b", ttl=3.0, bucket=bucket)
