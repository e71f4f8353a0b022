"""Which partitions a cluster node serves: the balanced assignment over the live nodes, the
hand-overs and takeovers that follow from it, and the cluster-wide status any node answers.

Every node watches the lease bucket (``node.jetstream.leases``): its ``node.<id>`` keys are the live
nodes, its ``partition.<n>`` keys the partitions' holders. From the sorted live node ids every node
computes the same target map (:func:`balanced_assignment`). A node hands over each partition it
holds whose target is another node (flush, snapshot to the object store, close, delete the lease)
and takes each partition targeted at it once nobody holds its lease (create the lease first, then
load the snapshot and the partition's subjects, recover in a thread, serve). The watch wakes the
loop at every change, so a hand-over completes in a few round trips; a dead node's leases are taken
once they expire (TTL after its last renewal). A partition whose lease is lost, or whose log another
writer appended to (fenced), stops being served at once; it is loaded again from the stream if this
node still holds its lease. Every second each node reports its partitions' offsets and lag into a
members bucket whose keys outlive a dead node by ``MEMBER_MAX_AGE``: a node's status is built from
both buckets. Not here: the lease protocol (``leases``), loading records (``backend``), recovering
and serving a partition (``node.node``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import nats.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cluster_client.node_api import ClusterStatus, NodeInfo, PartitionInfo

from .kv_bucket import open_bucket, watch_bucket
from .leases import LEASE_PREFIX, NODE_PREFIX, PartitionLeases
from .subject_log import HELD, LAPSED, LOST

if TYPE_CHECKING:
    from ..node import Node
    from .backend import JetStreamBackend

__all__ = ["MEMBER_MAX_AGE", "Assignment", "balanced_assignment", "open_members_bucket"]

log = logging.getLogger(__name__)

MEMBER_MAX_AGE = 3600.0
"""Seconds a node that stopped reporting (dead, or stopped) stays listed, as not alive."""
_TICK_SECONDS = 0.25
"""Longest wait between two looks at the assignment without a change seen by the watch."""
_REPORT_SECONDS = 1.0
_LAG_MEASURE_SECONDS = 0.5
_LOADS_AT_ONCE = 8
_RETRY_FAILED_LOAD_SECONDS = 5.0
_STOP_SECONDS = 5.0
_K = TypeVar("_K", int, str)


def balanced_assignment(partitions: int, nodes: Iterable[str]) -> list[str]:
    """The node each partition should be served by, the same on every node given the same set.

    Shares differ by at most one: the first ``partitions % n`` node ids (sorted) get one more.
    Each partition, in order, goes to the node ranking it highest (rendezvous hashing of
    partition and node id) among those with share left, so a joining or leaving node moves
    roughly its own share, not the whole map.
    """
    order = sorted(set(nodes))
    if not order:
        return [""] * partitions
    base, extra = divmod(partitions, len(order))
    left = {node: base + (1 if i < extra else 0) for i, node in enumerate(order)}
    owners: list[str] = []
    for p in range(partitions):
        ranked = sorted(order, key=lambda node: _rank(node, p), reverse=True)
        chosen = next(node for node in ranked if left[node] > 0)
        left[chosen] -= 1
        owners.append(chosen)
    return owners


def _rank(node: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{partition}/{node}".encode(), digest_size=8).digest()


async def open_members_bucket(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    """The bucket each node reports its partitions' progress into (created when missing)."""
    return await open_bucket(
        js,
        api.KeyValueConfig(
            bucket=bucket,
            description="Unimeter nodes: addresses and partition progress (kept an hour)",
            history=1,
            ttl=MEMBER_MAX_AGE,
            storage=api.StorageType.FILE,
            replicas=replicas,
        ),
    )


@dataclass(slots=True)
class _Seen:
    """The last value the watch saw for a key, its revision, and when (monotonic) it was written."""

    value: dict[str, Any]
    revision: int
    written: float


class Assignment:
    """A cluster node's ownership (``node.ownership.PartitionOwnership``): takes, serves, hands
    over and reports partitions of ``node`` over ``backend`` under ``leases``."""

    def __init__(
        self,
        node: Node,
        backend: JetStreamBackend,
        leases: PartitionLeases,
        members: KeyValue,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._backend = backend
        self._leases = leases
        self._members_kv = members
        self._clock = clock
        self._me = node.node_id
        self._count = node.partitions_count
        self._live_nodes: dict[str, _Seen] = {}
        self._holders: dict[int, _Seen] = {}
        self._members: dict[str, dict[str, Any]] = {}
        self._targets: tuple[frozenset[str], list[str]] = (frozenset(), [])
        self._busy: dict[int, asyncio.Task[None]] = {}
        self._retry_at: dict[int, float] = {}
        self._loads = asyncio.Semaphore(_LOADS_AT_ONCE)
        self._lags: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._report_soon = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[KeyValue.KeyWatcher] = []
        self._follows: list[asyncio.Task[None]] = []
        self._last_entry = clock()
        self._stopped = False
        self._settled = asyncio.Event()

    @property
    def settled_once(self) -> bool:
        """Whether this node has served every partition of its share at least once since it
        started: a restarted node is not ready (``/readyz``, gRPC health) before, so a rolling
        restart that waits for it never stops the next node while this one has not taken its
        partitions back."""
        return self._settled.is_set()

    async def wait_settled(self) -> None:
        """Return once :attr:`settled_once` is true (at once if it is; it never turns false)."""
        await self._settled.wait()

    # ------------------------------------------------------------------ PartitionOwnership

    def holds(self, partition: int) -> bool:
        return self._leases.holds(partition)

    def epoch(self, partition: int) -> int:
        return self._leases.epoch(partition)

    def owner_addr(self, partition: int) -> str | None:
        seen = self._holders.get(partition)
        if seen is None or not self._alive(seen) or seen.value.get("instance") == self._leases.instance:
            return None
        return str(seen.value.get("addr") or "") or None

    def lease_state(self, partition: int) -> str:
        """HELD, LAPSED or LOST: what the partition's logs may do (``subject_log.LeaseState``)."""
        if self._leases.holds(partition):
            return HELD
        return LAPSED if self._leases.has(partition) else LOST

    async def cluster_status(self, local: ClusterStatus) -> ClusterStatus:
        """Every node listed in the buckets (alive: its liveness key is current) and every
        partition: its holder and lease epoch from the lease bucket, its offsets and lag from this
        node's own state when it serves it, else from its owner's last report (at most about a
        second old)."""
        # Bounded: a status must answer while NATS is away (the last report's lags stand in).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_LAG_MEASURE_SECONDS):
                await self._measure_lags()
        nodes: dict[str, NodeInfo] = {}
        for node_id, member in self._members.items():
            nodes[node_id] = NodeInfo(
                node_id, str(member.get("addr", "")), str(member.get("grpc", "")), False
            )
        for seen in self._live_nodes.values():
            if self._alive(seen):
                node_id = str(seen.value["node"])
                nodes[node_id] = NodeInfo(
                    node_id, str(seen.value.get("addr", "")), str(seen.value.get("grpc", "")), True
                )
        for me in local.nodes:
            nodes[me.node_id] = me
        served = {p.partition: p for p in local.partition_infos if p.owner_node_id}
        infos = [
            replace(served[p], lag=self._lags.get(p, 0)) if p in served else self._elsewhere(p)
            for p in range(self._count)
        ]
        return ClusterStatus(
            local.partitions,
            local.backend,
            tuple(sorted(nodes.values(), key=lambda n: n.node_id)),
            tuple(infos),
        )

    def _elsewhere(self, partition: int) -> PartitionInfo:
        """A partition this node does not serve: its live holder and epoch from the lease bucket,
        its lag from the holder's last report, its offsets the highest any node reported (without
        a live holder, when its node died and the lease is not yet taken over: no owner)."""
        holder = self._holders.get(partition)
        owner, epoch = "", 0
        if holder is not None and self._alive(holder):
            owner = str(holder.value["node"])
            epoch = int(holder.value.get("epoch") or holder.revision)
        # Offsets only grow: the highest any report has is the latest known (the new owner's
        # first report may be a moment behind the hand-over, or show the partition loading).
        last = alerts = lag = 0
        for node_id, report in self._members.items():
            progress = report.get("partitions", {}).get(partition)
            if progress is not None:
                last, alerts = max(last, int(progress[0])), max(alerts, int(progress[1]))
                if node_id == owner:
                    lag = int(progress[2])
        return PartitionInfo(partition, owner, last, alerts, epoch, lag)

    # ------------------------------------------------------------------ running

    async def start(self, settle_seconds: float) -> None:
        """Watch the buckets and start assigning; return once this node serves every partition
        targeted at it (or after ``settle_seconds``: the rest follows in the background)."""
        await self._watch()
        self._node.on_log_failure = self._wake.set
        self._tasks.append(asyncio.create_task(self._run(), name="unimeter-assignment"))
        self._tasks.append(asyncio.create_task(self._report_loop(), name="unimeter-member-report"))
        deadline = self._clock() + settle_seconds
        while not self._check_settled():
            if self._clock() > deadline:
                log.warning(
                    "not every partition assigned to this node is served yet; going on in the background"
                )
                return
            await asyncio.sleep(0.05)

    def _check_settled(self) -> bool:
        """Whether this node serves every partition the current view targets at it (the first
        time it does, ``settled_once`` turns True for good)."""
        target = self._target()
        settled = all(self._node.served(p) is not None for p, owner in enumerate(target) if owner == self._me)
        if settled and not self.settled_once:
            self._settled.set()
            log.info("this node serves its share: %d partitions", target.count(self._me))
        return settled

    async def stop(self) -> None:
        """Stop assigning (the node then closes every partition it serves, and gives the leases
        back): nothing is taken, loaded or handed over from here on."""
        self._stopped = True
        tasks = [*self._tasks, *self._busy.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_SECONDS)  # bounded: a shutdown must end
        await self._unwatch()
        for partition in self._node.partitions:
            if self.lease_state(partition.number) == LOST:  # another node's now: nothing to close
                await self._drop(partition.number)
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await self._members_kv.put(_member_key(self._me), msgpack.packb(self._report({})))

    async def _run(self) -> None:
        while not self._stopped:
            await _wait(self._wake, _TICK_SECONDS)
            if self._clock() - self._last_entry > self._leases.ttl:
                # This node's own renewals go through the bucket every TTL/3: a watch that saw
                # nothing for a TTL lost its consumer (a server restarted) or NATS is away.
                await self._unwatch()
                try:
                    await self._watch()
                except (TimeoutError, nats.errors.Error) as exc:
                    log.warning("lease bucket not watched (%s); trying again", exc)
            try:
                self._reconcile()
            except Exception:
                log.exception("partition assignment failed; trying again")
            if not self.settled_once:
                self._check_settled()  # a start whose settle wait ran out: ready once it is

    def _reconcile(self) -> None:
        """Start what the current view asks for: drop what is lost or fenced, hand over what is
        someone else's, take what is this node's."""
        if self._stopped or self._node.closing:
            return
        now = self._clock()
        target = self._target()
        held = self._leases.held()
        for p in self._leases.lost():
            self._begin(p, self._drop(p))
        for partition in self._node.partitions:
            p = partition.number
            try:
                partition.events.check_usable()
                partition.alert_log.check_usable()
            except OSError:
                self._begin(p, self._reload(p))
        for p in held:
            if target[p] != self._me and self._node.served(p) is not None:
                self._begin(p, self._hand_over(p))
            elif (
                self._node.served(p) is None
                and self._leases.holds(p)  # not while lapsed: loading would fail, again and again
                and now >= self._retry_at.get(p, 0.0)
            ):
                self._begin(p, self._load(p))  # dropped (its log failed) while the lease lapsed
        for p, owner in enumerate(target):
            if owner != self._me or p in held or now < self._retry_at.get(p, 0.0):
                continue
            holder = self._holders.get(p)
            if holder is None or not self._alive(holder):
                self._begin(p, self._take(p))

    def _begin(self, partition: int, work: Coroutine[None, None, None]) -> None:
        """Run ``work`` for ``partition`` unless something already runs for it."""
        if partition in self._busy:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work, name=f"unimeter-partition-{partition}")
        self._busy[partition] = task

        def done(_: asyncio.Task[None]) -> None:
            self._busy.pop(partition, None)
            self._wake.set()
            self._report_soon.set()  # what this node serves changed: tell the others now

        task.add_done_callback(done)

    async def _take(self, partition: int) -> None:
        if await self._leases.try_take(partition):
            log.info("partition %d: lease taken (epoch %d)", partition, self._leases.epoch(partition))
            await self._load(partition)

    async def _load(self, partition: int) -> None:
        try:
            async with self._loads:
                storage = await self._backend.load_partition(partition)
                if not self._leases.holds(partition) or self._stopped:
                    await self._backend.drop_partition(partition, "lease lost while loading")
                    return
                await self._node.serve_partition(partition, storage)
        except asyncio.CancelledError:
            await self._backend.drop_partition(partition, "node stopping")
            raise
        except Exception as exc:
            log.error("partition %d: not loaded (%s); giving its lease back", partition, exc)
            self._retry_at[partition] = self._clock() + _RETRY_FAILED_LOAD_SECONDS
            await self._backend.drop_partition(partition, "load failed")
            await self._leases.give_back(partition)

    async def _hand_over(self, partition: int) -> None:
        started = self._clock()
        try:
            await self._node.release_partition(partition, clean=True)
        except Exception as exc:
            # Not flushed or not snapshotted: the next owner replays the stream, which holds
            # everything acknowledged.
            log.error("partition %d: hand-over not clean: %s", partition, exc)
        await self._backend.drop_partition(partition, "handed over to another node")
        await self._leases.give_back(partition)
        log.info("partition %d handed over in %.3fs", partition, self._clock() - started)

    async def _drop(self, partition: int) -> None:
        await self._node.release_partition(partition, clean=False)
        await self._backend.drop_partition(partition, "lease lost")
        self._leases.forget(partition)

    async def _reload(self, partition: int) -> None:
        """A log failed (another writer appended, or JetStream refused a record): stop serving
        the partition, and load it again from the stream if the lease is still this node's."""
        log.error("partition %d: a log failed; not served until loaded again from the stream", partition)
        await self._node.release_partition(partition, clean=False)
        await self._backend.drop_partition(partition, "its log failed")
        if self._leases.holds(partition):
            await self._load(partition)

    # ------------------------------------------------------------------ the view

    def _target(self) -> list[str]:
        live = frozenset(
            [self._me, *(str(s.value["node"]) for s in self._live_nodes.values() if self._alive(s))]
        )
        if live != self._targets[0]:
            self._targets = (live, balanced_assignment(self._count, live))
            log.info(
                "live nodes %s: this node's share is %d partitions",
                sorted(live),
                self._targets[1].count(self._me),
            )
        return self._targets[1]

    def _alive(self, seen: _Seen) -> bool:
        return self._clock() - seen.written < self._leases.ttl

    async def _watch(self) -> None:
        self._last_entry = self._clock()
        for kv, apply in ((self._leases.kv, self._apply_lease), (self._members_kv, self._apply_member)):
            watcher = await watch_bucket(kv)
            self._watchers.append(watcher)
            follow = asyncio.create_task(self._follow(watcher, apply), name="unimeter-assignment-watch")
            self._follows.append(follow)

    async def _unwatch(self) -> None:
        for follow in self._follows:
            follow.cancel()
        for watcher in self._watchers:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]
        self._watchers = []
        self._follows = []

    async def _follow(self, watcher: KeyValue.KeyWatcher, apply: Callable[[KeyValue.Entry], None]) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            self._last_entry = self._clock()
            try:
                apply(entry)
            except Exception:
                log.exception("cannot apply %s at revision %d", entry.key, entry.revision)
            self._wake.set()

    def _written(self, entry: KeyValue.Entry) -> float:
        """When (on this node's monotonic clock) the servers stored ``entry``."""
        created: object = entry.created  # a datetime from a watch, despite its annotation
        if not isinstance(created, datetime.datetime):
            return self._clock()
        age = max(0.0, time.time() - created.timestamp())
        return self._clock() - age

    def _apply_lease(self, entry: KeyValue.Entry) -> None:
        key = entry.key
        seen = None
        if entry.operation not in (KV_DEL, KV_PURGE):
            seen = _Seen(msgpack.unpackb(entry.value), int(entry.revision or 0), self._written(entry))
        if key.startswith(LEASE_PREFIX):
            _put(self._holders, int(key[len(LEASE_PREFIX) :]), seen)
        elif key.startswith(NODE_PREFIX):
            _put(self._live_nodes, key, seen)

    def _apply_member(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            return
        member = msgpack.unpackb(entry.value, strict_map_key=False)
        self._members[str(member["node"])] = member

    # ------------------------------------------------------------------ reporting

    async def _measure_lags(self) -> None:
        counts = await self._backend.subject_counts()
        lags: dict[int, int] = {}
        for p in self._leases.held():
            stored = counts.get(self._backend.layout.subject(p, "events"), 0)
            partition = self._node.served(p)
            applied = partition.events.durable_position if partition is not None else 0
            lags[p] = max(0, stored - applied)
        self._lags = lags

    def _report(self, partitions: dict[int, list[int]]) -> dict[str, Any]:
        return {
            "node": self._me,
            "addr": self._node.node_addr,
            "grpc": self._node.grpc_addr,
            "partitions": partitions,
        }

    async def _report_loop(self) -> None:
        while not self._stopped:
            try:
                await self._measure_lags()
                progress = {
                    p.number: [p.last_offset, len(p.alerts), self._lags.get(p.number, 0)]
                    for p in self._node.partitions
                }
                for p in self._leases.held():
                    progress.setdefault(p, [0, 0, self._lags.get(p, 0)])  # loading
                await self._members_kv.put(_member_key(self._me), msgpack.packb(self._report(progress)))
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("progress report not stored: %s", exc)
            await _wait(self._report_soon, _REPORT_SECONDS)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, then clear it. Not ``asyncio.wait_for``:
    on Python 3.11 it can swallow a cancellation arriving as the wait ends, and a loop around it
    then never stops (seen: a node's shutdown waiting forever for its assignment loop)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    event.clear()


def _put(table: dict[_K, _Seen], name: _K, seen: _Seen | None) -> None:
    """Record ``seen`` under ``name``, or forget ``name`` (None: the key was deleted)."""
    if seen is None:
        table.pop(name, None)
    else:
        table[name] = seen


def _member_key(node_id: str) -> str:
    return "member." + node_id.replace(".", "=2E").replace(":", "=3A")
