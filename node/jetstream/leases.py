"""Partition leases and node liveness in a replicated JetStream KV bucket: who may serve what, now.

One key per partition (``partition.<n>``) holds the lease of the node serving it, and one key per
node id (``node.<id>``) says that node is alive. Both are taken with a KV create (a compare-and-set
against "no live value") and renewed every TTL/3 with an update that expects the revision this node
wrote last, so a node that lost a key cannot write it again. The bucket's MaxAge is the TTL: a key
not renewed for a TTL is removed by the servers, and another node can then take it. A lease's
*epoch* is the revision at which it was taken (kept through renewals): strictly increasing from
owner to owner, it is the fencing token. The holder stops serving at a local monotonic deadline,
the time it *sent* its last successful renewal plus the TTL minus a safety margin: the servers
stored that renewal after it was sent, so the holder stops before the servers can expire the key.
A clean shutdown deletes the keys (compare-and-set on its last revision), so the next owner need
not wait for a TTL; so does a hand-over of one partition (``give_back``). Each record names the
node and its addresses (node protocol, gRPC), so a reader of the bucket knows where every live node
and every partition's holder is. Not here: what a node does with its partitions (``node.node``),
which node should hold which partition (``node.jetstream.assignment``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgpack
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from .errors import NatsRefused
from .kv_bucket import NOT_STORED, open_bucket

__all__ = ["LEASE_PREFIX", "NODE_PREFIX", "LeaseConflictError", "PartitionLeases", "lease_key", "node_key"]

log = logging.getLogger(__name__)

_EXPIRY_SLACK = 2.0
"""Seconds past the TTL a starting node waits for a dead holder's key to be removed (the servers
remove expired keys shortly after their age passes, ~0.3 s measured)."""


_TRANSIENT = (TimeoutError, *NOT_STORED, nats.js.errors.ServiceUnavailableError)
"""Errors of a write to the bucket that a moment later may not repeat (no leader yet, NATS away)."""


class LeaseConflictError(NatsRefused):
    """A lease or node id is held by another live node, or the bucket disagrees with this node."""


LEASE_PREFIX = "partition."
NODE_PREFIX = "node."


def lease_key(partition: int) -> str:
    """The KV key of ``partition``'s lease."""
    return f"{LEASE_PREFIX}{partition}"


def node_key(node_id: str) -> str:
    """The KV key of node ``node_id``'s liveness record (``.`` and ``:`` escaped, as keys need)."""
    return NODE_PREFIX + node_id.replace(".", "=2E").replace(":", "=3A")


@dataclass
class _Held:
    """One key this node holds: the revision it wrote last, the lease's epoch, its local deadline."""

    key: str
    revision: int
    epoch: int
    deadline: float
    reported_lapse: bool = False


class PartitionLeases:
    """This node's liveness record and partition leases in bucket ``kv`` (whose MaxAge is ``ttl``)."""

    def __init__(
        self,
        kv: KeyValue,
        node_id: str,
        *,
        ttl: float,
        node_addr: str = "",
        grpc_addr: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.ttl = ttl
        self.margin = ttl / 5
        """How long before the servers could expire a key this node stops treating it as held."""
        self._kv = kv
        self._clock = clock
        self._instance = uuid.uuid4().hex[:12]
        self._identity = {"node": node_id, "instance": self._instance, "addr": node_addr, "grpc": grpc_addr}
        self._record = msgpack.packb(self._identity)
        self._node: _Held | None = None
        self._leases: dict[int, _Held] = {}
        self._lost: set[int] = set()

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        node_id: str,
        *,
        ttl: float = 10.0,
        replicas: int = 1,
        bucket: str,
        node_addr: str = "",
        grpc_addr: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> PartitionLeases:
        """Open the bucket (creating it with MaxAge ``ttl``); LeaseConflictError if it exists with
        another TTL (every node must stop serving by the same clock the servers expire keys by)."""
        kv = await open_bucket(
            js,
            api.KeyValueConfig(
                bucket=bucket,
                description="Unimeter partition leases and node liveness",
                history=1,
                ttl=ttl,
                storage=api.StorageType.FILE,
                replicas=replicas,
            ),
        )
        existing = (await js.stream_info(f"KV_{bucket}")).config.max_age or 0.0
        if abs(existing - ttl) > 0.001:
            raise LeaseConflictError(
                f"the lease bucket {bucket!r} has a TTL of {existing:g}s and this node was given "
                f"--lease-ttl-seconds {ttl:g}: every node must use the bucket's TTL (start with "
                f"--lease-ttl-seconds {existing:g}, or delete the bucket while no node runs to change it)"
            )
        return cls(kv, node_id, ttl=ttl, node_addr=node_addr, grpc_addr=grpc_addr, clock=clock)

    @property
    def kv(self) -> KeyValue:
        """The bucket (for a watch of every node's and partition's record)."""
        return self._kv

    @property
    def instance(self) -> str:
        """This process's instance id, in every record it writes."""
        return self._instance

    # ------------------------------------------------------------------ what the node asks

    def holds(self, partition: int) -> bool:
        """Whether this node may serve ``partition`` now (its local deadline has not passed)."""
        held = self._leases.get(partition)
        if held is None:
            return False
        if self._clock() < held.deadline:
            return True
        self._report_lapse(partition, held)
        return False

    def _report_lapse(self, partition: int, held: _Held) -> None:
        """Log once that ``partition`` stopped being served for want of a renewal."""
        if held.reported_lapse or partition in self._lost:
            return
        held.reported_lapse = True
        log.error(
            "partition %d: lease (epoch %d) not renewed in time; not served until a renewal gets "
            "through (NATS unreachable?)", partition, held.epoch,
        )  # fmt: skip

    def epoch(self, partition: int) -> int:
        """The epoch of this node's lease on ``partition`` (0 if it never held it)."""
        held = self._leases.get(partition)
        return held.epoch if held is not None else 0

    def has(self, partition: int) -> bool:
        """Whether this node has ``partition``'s lease (lapsed or not; not lost)."""
        return partition in self._leases and partition not in self._lost

    def held(self) -> set[int]:
        """Partitions whose lease this node has (lapsed ones included, lost ones not)."""
        return set(self._leases) - self._lost

    def lost(self) -> set[int]:
        """Partitions whose lease another node took (or the servers expired) from under this one."""
        return set(self._lost)

    def forget(self, partition: int) -> None:
        """Drop a lost lease from this node's books (the node stopped serving the partition)."""
        self._leases.pop(partition, None)
        self._lost.discard(partition)

    # ------------------------------------------------------------------ taking

    async def join(self) -> None:
        """Take this node id's liveness record; LeaseConflictError if another live node has it."""
        self._node = await self._take(node_key(self.node_id), f"node id {self.node_id!r}")

    async def acquire(self, partitions: Iterable[int]) -> None:
        """Take every lease of ``partitions`` (waiting up to a TTL for dead holders' leases to
        expire); LeaseConflictError naming the holder if a live node holds one (then this node
        gives back what it took)."""

        async def take(partition: int) -> None:
            self._leases[partition] = await self._take(lease_key(partition), f"partition {partition}")

        try:
            async with asyncio.TaskGroup() as group:
                for partition in partitions:
                    group.create_task(take(partition))
        except BaseExceptionGroup as failed:
            await self.release()
            conflicts = failed.subgroup(LeaseConflictError)
            if conflicts is not None:
                raise conflicts.exceptions[0] from None
            raise

    async def try_take(self, partition: int) -> bool:
        """One attempt at ``partition``'s lease, without waiting: whether this node holds it now
        (False: another node holds it, or its record is still being removed)."""
        sent = self._clock()
        try:
            revision = await self._kv.create(lease_key(partition), self._record)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return False
        except _TRANSIENT as exc:
            log.warning("partition %d: lease not taken now (%s); trying again", partition, exc)
            return False
        self._lost.discard(partition)
        self._leases[partition] = _Held(
            lease_key(partition), revision, revision, sent + self.ttl - self.margin
        )
        return True

    async def _take(self, key: str, what: str) -> _Held:
        """Create ``key`` with this node's record. If another holder has it, wait until its record
        expires (at most a TTL and some slack); if the holder renews it meanwhile, it is alive:
        LeaseConflictError naming it."""
        give_up = self._clock() + self.ttl + _EXPIRY_SLACK
        first_seen: int | None = None
        while True:
            sent = self._clock()
            try:
                revision = await self._kv.create(key, self._record)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                # Held; or refused while another write to the key was being replicated, with no
                # value to read yet (the client then raises KeyNotFoundError).
                pass
            except _TRANSIENT:
                # The bucket's stream is electing a leader (a cluster just started): again.
                if self._clock() >= give_up:
                    raise
                await asyncio.sleep(0.1)
                continue
            else:
                return _Held(key, revision, revision, sent + self.ttl - self.margin)
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                # Expired, released or not yet written meanwhile: try again shortly.
                if self._clock() >= give_up:
                    raise LeaseConflictError(f"{what} could not be taken within {self.ttl:g}s") from None
                await asyncio.sleep(0.01)
                continue
            holder = msgpack.unpackb(entry.value)
            where = holder["addr"] or "no address"
            who = f"node {holder['node']!r} (instance {holder['instance']}, at {where})"
            if first_seen is None:
                first_seen = entry.revision
                log.warning(
                    "%s is held by %s; waiting up to %.0fs for it to expire", what, who, give_up - sent
                )
            elif entry.revision != first_seen:
                raise LeaseConflictError(
                    f"{what} is held by {who}, which renewed it: it is alive. Two live nodes with one "
                    "id, or two nodes for the same partitions, are refused: stop the other node or "
                    "give this one another --node-id"
                )
            if self._clock() >= give_up:
                raise LeaseConflictError(
                    f"{what} is held by {who}, and its record did not expire within {self.ttl:g}s "
                    f"+ {_EXPIRY_SLACK:g}s: stop the other node, or check the servers' clocks"
                )
            await asyncio.sleep(min(self.ttl / 10, 0.5))

    # ------------------------------------------------------------------ renewing

    async def run(self) -> None:
        """Renew every TTL/3 until cancelled."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew()
            except Exception:
                # Whatever it was, the next round must still run: without renewals every
                # partition stops at its deadline.
                log.exception("lease renewal failed")

    async def renew(self) -> None:
        """One renewal of the liveness record and every lease still held (concurrently). A lease
        whose compare-and-set fails was taken over or expired: lost for good (its state here may
        be behind the new owner's). A renewal that does not get through (NATS unreachable) leaves
        the deadline where it was: past it, the partition is not served until a renewal succeeds,
        which proves nobody took it meanwhile (the key is still at this node's revision)."""
        held = [(p, h) for p, h in self._leases.items() if p not in self._lost]
        if self._node is not None:
            if self._node.deadline == float("-inf"):
                await self._rejoin()
            else:
                held.append((-1, self._node))
        await asyncio.gather(*(self._renew_one(p, h) for p, h in held))
        now = self._clock()
        for partition, lease in self._leases.items():
            if now >= lease.deadline:
                self._report_lapse(partition, lease)

    async def _rejoin(self) -> None:
        """Take the liveness record again after losing it (a pause longer than the TTL: the
        servers expired it), so the other nodes count this node again; one attempt a round."""
        assert self._node is not None
        sent = self._clock()
        key = node_key(self.node_id)
        try:
            revision = await self._kv.create(key, self._record)
        except (TimeoutError, nats.errors.Error):
            return  # still held by another instance with this id, or NATS unreachable: next round
        self._node = _Held(key, revision, revision, sent + self.ttl - self.margin)
        log.warning("node id %r: liveness record taken again", self.node_id)

    async def _renew_one(self, partition: int, held: _Held) -> None:
        sent = self._clock()
        record = msgpack.packb({**self._identity, "epoch": held.epoch})
        try:
            try:
                held.revision = await self._kv.update(held.key, record, last=held.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                if not await self._adopt_late_renewal(held):
                    raise
                sent = self._clock()
                held.revision = await self._kv.update(held.key, record, last=held.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            held.deadline = float("-inf")
            if partition >= 0 and self._leases.get(partition) is not held:
                return  # given back meanwhile: its record was deleted on purpose
            if partition >= 0:
                self._lost.add(partition)
                log.error(
                    "partition %d: lease (epoch %d) lost: expired or taken over by another node; "
                    "this node no longer serves it", partition, held.epoch,
                )  # fmt: skip
            else:
                log.error(
                    "node id %r: liveness record lost (expired, or taken by another node)", self.node_id
                )
            return
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("%s: renewal failed: %s: %s", held.key, type(exc).__name__, exc)
            return
        if held.reported_lapse:
            held.reported_lapse = False
            log.warning("%s: renewed again (epoch %d)", held.key, held.epoch)
        held.deadline = sent + self.ttl - self.margin

    async def _adopt_late_renewal(self, held: _Held) -> bool:
        """Whether the key holds this very instance's record at a revision this node did not
        learn: a renewal whose answer was lost (it timed out here, or the client sent it again
        after reconnecting) that the servers stored. Nobody took the key then (a taker writes its
        own instance), so this node adopts that revision and renews on it."""
        try:
            entry = await self._kv.get(held.key)
        except nats.js.errors.KeyNotFoundError:
            return False
        record = msgpack.unpackb(entry.value)
        if record.get("instance") != self._instance or record.get("epoch") != held.epoch:
            return False
        held.revision = int(entry.revision or 0)
        return True

    # ------------------------------------------------------------------ giving back

    async def give_back(self, partition: int) -> None:
        """Stop serving ``partition`` and delete its lease (the node has flushed and snapshotted
        it), so the next owner takes it at once."""
        held = self._leases.pop(partition, None)
        self._lost.discard(partition)
        if held is not None:
            held.deadline = float("-inf")
            await self._delete_own(held)

    async def release(self) -> None:
        """Stop serving every partition at once, then delete this node's keys (compare-and-set on
        the revision it wrote last, so a key another node took meanwhile is left alone)."""
        keys = list(self._leases.values())
        if self._node is not None:
            keys.append(self._node)
        for held in keys:
            held.deadline = float("-inf")
        self._leases.clear()
        self._node = None
        await asyncio.gather(*(self._delete_own(held) for held in keys))

    async def _delete_own(self, held: _Held) -> None:
        """Delete ``held``'s key if it still holds this instance's record. A renewal in flight
        may have stored a revision this node has not learnt yet: the key is read again and
        deleted at that revision (a renewal landing after the delete is refused, as it expects
        the revision before the delete)."""
        revision = held.revision
        for _ in range(3):
            try:
                await self._kv.delete(held.key, last=revision)
                return
            except nats.js.errors.APIError as exc:
                # A refused delete comes back as a plain API error with the wrong-last-sequence code.
                if not isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) and exc.err_code != 10071:
                    log.warning("%s: not deleted (%s); it expires within %gs", held.key, exc, self.ttl)
                    return
                try:
                    entry = await self._kv.get(held.key)
                except (TimeoutError, nats.errors.Error):
                    return  # gone already (expired, deleted), or unreadable: it expires anyway
                if msgpack.unpackb(entry.value).get("instance") != self._instance:
                    return  # another node's record now
                revision = int(entry.revision or 0)
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("%s: not deleted (%s); it expires within %gs", held.key, exc, self.ttl)
                return
