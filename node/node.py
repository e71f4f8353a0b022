"""A Unimeter node: serves partitions of a deployment over one record backend.

The node is the ``NodeApi`` the client core calls (directly in-process, or through the node
protocol). It validates each partition batch against the metric registry, hands durability to its
commit scheduler (whose flusher makes ASYNC writes durable within the flush interval), takes
periodic snapshots, and serves alert streams from the partitions' alert logs. Where the records
live is the backend's business (``node.record_log``; the embedded one by default). A node on the
embedded backend opens every partition of its data directory at construction; a node of a cluster
starts with none and is handed partitions as it takes their leases (:meth:`Node.serve_partition`,
:meth:`Node.release_partition`; who decides is its ``ownership``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import TypeVar

import msgpack

from cluster_client.errors import (
    FieldViolation,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from cluster_client.node_api import AlertStreamItem, ClusterStatus, IngestOutcome, NodeInfo, PartitionInfo
from cluster_client.periods import PeriodCalculator
from cluster_client.types import Alert, EventRow, Metric, PeriodSelector, QueryResult, StoredEvent
from cluster_client.validation import validate_rows

from .aggregation import MetricSpec
from .alert_stream import AlertStreamer
from .atomic_file import write_file_atomically
from .clock import SYSTEM_CLOCK, Clock
from .commit_scheduler import CommitScheduler
from .data_dir_lock import DataDirectoryLock
from .embedded_backend import open_embedded_backend
from .ingest_turns import IngestTurns
from .metric_registry import FileMetricRegistry, MetricRegistry, metric_not_found
from .ownership import PartitionOwnership, not_owned
from .partition import Partition, PartitionConfig
from .partition_engine import partition_engine
from .query_validation import check_page_size, check_query
from .record_log import PartitionStorage, RecordBackend
from .snapshot_schedule import snapshot_due
from .stats import NodeStats

__all__ = ["BackendFactory", "Node", "NodeConfig"]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_PARTS_PER_SLICE = 4
_TURN_EVENTS = 1024
"""A turn at storing (``IngestTurns``) covers a batch of the usual size (SDKs send up to 1000
events) whole; a larger one goes to the back of the line after this many events."""
# A request's parts are read by these in C-level loops (``map``): per part, not per event, but a
# 1000-event request has 64 parts, and a Python loop spent ~20 bytecodes on each.
_PARTITION, _ROWS = itemgetter(0), itemgetter(1)
_DUPLICATES = attrgetter("n_duplicates")
_DISK_RECHECK_SECONDS = 0.1
_DISK_FULL_RETRY_SECONDS = 5.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to start. Defaults: docs/semantics.md."""

    data_dir: Path
    """Where partitions, snapshots and the metric registry live."""
    partitions: int | None = None
    """Partition count of a new data directory (default 64); an existing one keeps its own."""
    flush_interval: float = 0.010
    """Longest time an ASYNC write stays in memory before it is fsynced."""
    dedup_window_seconds: float = 86_400.0
    """How long an event's dedup key is remembered (by arrival time)."""
    alerts_in_memory: int = 10_000
    """Newest alerts each partition keeps in memory; ListAlerts and subscriptions read older
    ones from the alert log."""
    snapshot_interval: float = 60.0
    """Seconds between snapshots of a partition that changed (each partition at its own phase of
    the interval: ``node/snapshot_schedule.py``)."""
    memory_horizon_ns: int = 48 * 3600 * 1_000_000_000
    """The ListEvents index positions of an (account, hour) whose hour ended more than this
    before ``clock`` move from memory to on-disk index runs (embedded backend; 0: never).
    See docs/design.md, "Aged index runs"."""
    snapshot_every_records: int = 50_000
    """A partition with this many records since its snapshot gets a new one at the next check."""
    segment_bytes: int = 64 << 20
    """Size at which a log segment rolls over."""
    heartbeat_interval: float = 5.0
    """Idle alert streams send their offsets at least this often."""
    node_id: str = ""
    """Stable id of this node (generated and kept in the data directory when empty)."""
    node_addr: str = ""
    """Node-protocol address others reach this node at ("" when not served)."""
    grpc_addr: str = ""
    """gRPC address of the public API on this node."""
    fsync_threads: int = 8
    """Threads that run write+fsync for the partitions' logs."""
    min_free_disk_bytes: int = 256 << 20
    """Ingest answers RESOURCE_EXHAUSTED (reason DISK_FULL) while the data directory's filesystem
    has less free space than this (never acknowledge what it cannot store); 0: never."""
    sync_filesystem: bool = True
    """Make a group of logs durable (a flush tick, a SYNC batch over partitions) with one
    ``syncfs`` of the data directory's filesystem where that is safe (Linux 5.8+, every log on
    that filesystem); False, or where it is not safe: one fdatasync per log."""
    sync_spin_ns: int = 300_000
    """Longest a lone SYNC call's fdatasync, in the kernel, is waited for with the loop's thread
    yielding its CPU instead of sleeping, when the loop has nothing else to do
    (``KernelFdatasync.wait_on_cpu``); 0: the loop always sleeps."""
    clock: Clock = SYSTEM_CLOCK
    """The wall clock of every time the node reads (arrivals, dedup expiry, current periods)."""
    engine: str = "python"
    """Where the partitions' per-event work runs: ``python`` (the reference) or ``native`` (the
    ``unimeter_native`` extension; ValueError at start if it cannot be loaded). A server passes
    the ingest engine it chose. Both read and write the same data directory."""

    def __post_init__(self) -> None:
        if self.memory_horizon_ns < 0:
            raise ValueError(f"the memory horizon must be 0 (off) or positive: {self.memory_horizon_ns} ns")


BackendFactory = Callable[[NodeConfig, NodeStats], RecordBackend]
"""Builds the record backend a node's partitions live on, from the node's config and stats."""


class Node:
    """One node serving partitions over the backend ``backend_factory`` builds (the embedded one
    by default, whose node serves every partition of its data directory)."""

    def __init__(
        self,
        config: NodeConfig,
        backend_factory: BackendFactory = open_embedded_backend,
        registry: MetricRegistry | None = None,
        *,
        serve_all: bool = True,
    ) -> None:
        """``registry``: where metrics live (a shared one already open); the data directory's
        own file when None. ``serve_all``: open every partition now; False: none (a cluster node,
        handed partitions by its ownership)."""
        self.config = config
        # Before anything in the directory is read or written: a second process (or a second node
        # in this one) on it would hand out the same offsets and overwrite this one's snapshots.
        self._lock = DataDirectoryLock.acquire(config.data_dir)
        try:
            self.node_id = self._load_identity()
            self.registry = registry or FileMetricRegistry(config.data_dir / "metrics.msgpack", config.clock)
            self._specs: dict[str, MetricSpec] = {}
            for metric in self.registry.list():
                self._specs[metric.code] = MetricSpec.compile(metric, metric.create_time_unix_nano)
            self.stats = NodeStats()
            self._partition_config = PartitionConfig(
                dedup_window_ns=int(config.dedup_window_seconds * 1e9),
                memory_horizon_ns=config.memory_horizon_ns,
                clock=config.clock,
                engine=partition_engine(config.engine),
                alerts_in_memory=config.alerts_in_memory,
                publish_delays=self.stats.alert_publish_delay,
            )
            self.backend = backend_factory(config, self.stats)
            self._turns = turns = IngestTurns(_TURN_EVENTS)
            self.commit = CommitScheduler(self.backend, config.flush_interval, lambda: turns.others_waiting)
            started = time.monotonic()
            self._served: dict[int, Partition] = {}
            """The partitions this node serves now, by number."""
            try:
                for p in range(self.partitions_count if serve_all else 0):
                    self._served[p] = self._new_partition(p, self.backend.open_partition(p))
            except BaseException:
                self.backend.close()
                raise
            self.recovery_seconds = time.monotonic() - started
        except BaseException:
            self._lock.release()
            raise
        for partition in self._served.values():
            partition.events.on_failure = partition.alert_log.on_failure = self._count_failed_log
        self._forgotten: list[str] = []
        """Codes whose aggregates were dropped (a metric deleted or replaced), in order: a
        partition loaded meanwhile drops them too."""
        self.registry.on_change = self._metric_changed
        self.alerts = AlertStreamer(
            self._served, self.partitions_count, heartbeat_interval=config.heartbeat_interval
        )
        self.node_addr = config.node_addr
        self.grpc_addr = config.grpc_addr
        self.on_log_failure: Callable[[], None] | None = None
        """Told when a partition's log fails (a cluster node's ownership stops serving it)."""
        self.ownership: PartitionOwnership | None = None
        """The leases this node serves its partitions under, and the view of the rest of the
        cluster (a cluster node's assignment sets it); None: it owns every partition it opened."""
        self._closing = False
        self._disk_checked = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def partitions_count(self) -> int:
        """Number of partitions of the deployment (of the data directory, or the stream's)."""
        return self._partitions

    @property
    def partitions(self) -> list[Partition]:
        """The partitions this node serves now, by number (every one on the embedded backend)."""
        return sorted(self._served.values(), key=lambda p: p.number)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has begun."""
        return self._closing

    def _new_partition(self, number: int, storage: PartitionStorage) -> Partition:
        return Partition(number, storage, self._specs, self._partition_config, self.commit)

    def served(self, number: int) -> Partition | None:
        """Partition ``number`` if this node serves it now."""
        return self._served.get(number)

    async def serve_partition(self, number: int, storage: PartitionStorage) -> None:
        """Recover partition ``number`` from ``storage`` (its snapshot and records, already
        loaded) in a thread, so the event loop keeps serving the other partitions meanwhile, then
        serve it. The caller holds the partition's lease."""
        forgotten = len(self._forgotten)
        started = time.monotonic()
        partition = await asyncio.to_thread(self._new_partition, number, storage)
        # Metric deletions while it recovered reached only the partitions already served.
        for code in self._forgotten[forgotten:]:
            partition.forget_metric(code)
        partition.events.on_failure = partition.alert_log.on_failure = self._count_failed_log
        self._served[number] = partition
        self.commit.appended((partition,))  # its recovery may have logged alerts
        self.alerts.attach(partition)
        log.info(
            "partition %d served from offset %d (recovered in %.3fs)",
            number, partition.last_offset, time.monotonic() - started,
        )  # fmt: skip

    async def release_partition(self, number: int, *, clean: bool) -> None:
        """Stop serving partition ``number`` at once (its requests are refused from here on,
        its alert streams end). ``clean``: a hand-over, so flush, snapshot and close its logs
        first (raises if that fails; the partition is not served either way); otherwise (its
        lease was lost, its log fenced) it is just dropped."""
        partition = self._served.pop(number, None)
        if partition is None:
            return
        self.alerts.detach(partition)
        if clean:
            await partition.close()

    def _load_identity(self) -> str:
        path = self.config.data_dir / "node.msgpack"
        if path.exists():
            doc = msgpack.unpackb(path.read_bytes())
            if doc["format"] != _FORMAT_VERSION:
                raise RuntimeError(f"data directory format {doc['format']} is not supported")
            if self.config.partitions is not None and doc["partitions"] != self.config.partitions:
                log.warning(
                    "data directory has %d partitions; --partitions %d ignored",
                    doc["partitions"], self.config.partitions,
                )  # fmt: skip
            self._partitions = int(doc["partitions"])
            return str(doc["node_id"])
        node_id = self.config.node_id or f"node-{uuid.uuid4().hex[:12]}"
        self._partitions = self.config.partitions or 64
        doc = {"format": _FORMAT_VERSION, "partitions": self._partitions, "node_id": node_id}
        write_file_atomically(path, msgpack.packb(doc))
        return node_id

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the flusher and the snapshot loop."""
        # A shared registry may have changed while the node was being built (in a thread, its
        # listener not yet set): catch up with it before serving.
        for metric in self.registry.list():
            self._metric_changed(metric.code, metric)
        for code in [c for c in self._specs if self.registry.get(c) is None]:
            self._metric_changed(code, None)
        self._check_disk(time.monotonic())
        self.commit.start(self._served)
        self._tasks = [asyncio.create_task(self._maintenance_loop(), name="unimeter-maintenance")]

    async def close(self) -> None:
        """Stop background work, flush and snapshot every partition, release files."""
        if self._closing:
            return
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.commit.close()
        self.alerts.close()
        # Every partition is closed even if one fails (a failed log, a full disk): the others'
        # ASYNC writes still pending must not be left unflushed behind it.
        failed: list[BaseException] = []
        for partition in self.partitions:  # a copy: nothing is served while closing
            try:
                await partition.close()
            except Exception as exc:
                log.error("partition %d did not close cleanly: %s", partition.number, exc)
                failed.append(exc)
        self.backend.close()
        self._lock.release()  # last: every write of this node is done
        if failed:
            raise failed[0]

    def _count_failed_log(self) -> None:
        self.stats.flush_failures += 1
        if self.on_log_failure is not None:
            self.on_log_failure()

    async def _maintenance_loop(self) -> None:
        started = time.monotonic()
        ticked = 0.0  # seconds since ``started`` at the previous tick
        while True:
            await asyncio.sleep(1.0)
            self._check_disk(time.monotonic())
            self.expire()
            now = time.monotonic() - started
            interval = self.config.snapshot_interval
            for partition in self.partitions:  # a copy: partitions may come and go between snapshots
                if self._served.get(partition.number) is not partition:
                    continue  # handed over meanwhile (with a snapshot of its own)
                due = snapshot_due(partition.number, self._partitions, interval, ticked, now)
                if partition.records_since_snapshot and (
                    due or partition.records_since_snapshot >= self.config.snapshot_every_records
                ):
                    try:
                        await partition.snapshot()
                    except Exception as exc:
                        # One partition's failed snapshot (disk full, failed log) must not stop
                        # the loop that snapshots and expires every other partition.
                        self.stats.snapshot_failures += 1
                        log.error("partition %d: snapshot failed: %s", partition.number, exc)
                    else:
                        self.stats.snapshots += 1
            ticked = now  # a grid point passed while snapshotting is found at the next tick

    def expire(self) -> None:
        """Forget dedup keys that arrived more than the window before now by the node's clock (the
        maintenance loop calls this every second)."""
        now = self.config.clock.now_ns()
        for partition in self._served.values():
            partition.expire(now)

    def _partition(self, number: int) -> Partition:
        if self._closing:
            raise UnavailableError("node is shutting down", reason="NODE_CLOSING", retry_after_seconds=0.5)
        partition = self._served.get(number)
        held = self.ownership
        if partition is not None and (held is None or held.holds(number)):
            return partition
        if not 0 <= number < self._partitions:
            raise InvalidArgumentError(
                f"partition {number} does not exist",
                violations=[FieldViolation("partition", f"must be below {self._partitions}")],
            )
        raise not_owned(number, held.owner_addr(number) if held is not None else None)

    async def _spec(self, code: str, field: str = "metric_code") -> MetricSpec:
        spec = self._specs.get(code)
        if spec is None:
            await self.registry.refresh()  # created through another node a moment ago?
            spec = self._specs.get(code)
        if spec is None:
            raise InvalidArgumentError(
                f"unknown metric {code!r}", violations=[FieldViolation(field, f"unknown metric {code!r}")]
            )
        return spec

    # ------------------------------------------------------------------ NodeApi: metrics

    async def cluster_status(self) -> ClusterStatus:
        """Every node and partition: this node and what it serves, completed by its ownership
        with the rest of the cluster (other nodes, their partitions, leases and lags)."""
        me = NodeInfo(self.node_id, self.node_addr, self.grpc_addr, True)
        held = self.ownership
        infos = tuple(
            PartitionInfo(
                p.number,
                self.node_id if held is None or held.holds(p.number) else "",
                p.last_offset,
                len(p.alerts),
                held.epoch(p.number) if held is not None else 0,
            )
            for p in self.partitions
        )
        local = ClusterStatus(self._partitions, self.backend.name, (me,), infos)
        return local if held is None else await held.cluster_status(local)

    async def create_metric(self, metric: Metric) -> Metric:
        """Validate and register a metric (the registry tells ``_metric_changed``)."""
        return await self.registry.create(metric)

    async def get_metric(self, code: str) -> Metric:
        """One metric, or NotFoundError."""
        metric = self.registry.get(code)
        if metric is None:
            await self.registry.refresh()
            metric = self.registry.get(code)
        if metric is None:
            raise metric_not_found(code)
        return metric

    async def list_metrics(self) -> list[Metric]:
        """Every metric by code."""
        await self.registry.refresh()
        return self.registry.list()

    async def delete_metric(self, code: str) -> None:
        """Remove a metric; its aggregates are dropped, its events stay in the logs."""
        await self.registry.delete(code)

    def metric_of(self, code: str) -> Metric | None:
        """The registered metric named ``code`` (for validation)."""
        return self.registry.get(code)

    async def refresh_metrics(self) -> None:
        """Catch up with metric changes made through other nodes (before "unknown metric")."""
        await self.registry.refresh()

    def _metric_changed(self, code: str, metric: Metric | None) -> None:
        """The registry created or deleted ``code`` (through this node or another): a new
        generation gets a spec of its own, and the aggregates of the one it replaces are dropped
        (its events stay in the logs)."""
        old = self._specs.get(code)
        if old is not None and (metric is None or old.generation != metric.create_time_unix_nano):
            del self._specs[code]
            self._forgotten.append(code)
            for partition in self._served.values():
                partition.forget_metric(code)
        if metric is not None and code not in self._specs:
            self._specs[code] = MetricSpec.compile(metric, metric.create_time_unix_nano)

    # ------------------------------------------------------------------ NodeApi: ingest

    async def ingest(
        self,
        parts: Sequence[tuple[int, Sequence[EventRow]]],
        sync: bool,
        batch_id: str,
        *,
        validated: bool = False,
    ) -> list[IngestOutcome]:
        """Validate, store and apply each partition's part; SYNC waits for the group-commit fsyncs.
        On a cluster node a SYNC call is acknowledged only if the node still serves every partition
        it wrote once they are durable; a log it gave up (handed over, lease lost, fenced by
        another writer) answers PARTITION_NOT_OWNED, never an ack."""
        self._refuse_when_disk_low()
        targets = self._targets(parts)
        each = list(map(_ROWS, parts))
        if not validated:
            for rows in each:
                try:
                    validate_rows(rows, self.registry.get)
                except InvalidArgumentError:
                    await self.registry.refresh()  # a metric created through another node?
                    validate_rows(rows, self.registry.get)
        try:
            cancelled = False
            if len(parts) <= _PARTS_PER_SLICE:
                now = self.config.clock.now_ns()
                outcomes = Partition.ingest_parts(targets, each, batch_id, now, self._specs)
                if not sync:
                    self._flush_alerts(targets)
            else:
                outcomes, cancelled = await self._ingest_in_slices(targets, each, batch_id, sync)
            if cancelled:  # stored whole; the tick makes it durable (a cancelled SYNC caller waits no more)
                raise asyncio.CancelledError
            if sync:
                await self.commit.make_durable(targets)
                if self.ownership is not None:
                    self._check_still_served(targets)
        except OSError:
            if self.ownership is None:
                raise
            self._check_still_served(targets)
            raise
        n_events, n_dup = sum(map(len, each)), sum(map(_DUPLICATES, outcomes))
        stats = self.stats.ingest
        if sync:
            stats.batches_sync += 1
            stats.events_sync += n_events
        else:
            stats.batches_async += 1
            stats.events_async += n_events
        stats.duplicates += n_dup
        return outcomes

    def _flush_alerts(self, stored: list[Partition]) -> None:
        """Alerts are waited for by people: the partitions of ``stored`` (an ASYNC call's slice,
        just stored) that logged alerts are flushed, and the alerts published, now instead of at
        the next tick; everything else keeps the group commit of the flush interval. A SYNC
        call publishes its alerts once its own wait is over."""
        urgent = [part for part in stored if part.alerts_unpublished]
        if urgent:
            self.commit.flush_urgent(urgent)

    def _targets(self, parts: Sequence[tuple[int, object]]) -> list[Partition]:
        """The partitions of ``parts``, as :meth:`_partition` gives them (with its errors)."""
        if self.ownership is None and not self._closing:
            # The embedded node serves every partition: a dict read each (a 64-part batch asks 64).
            served = self._served
            try:
                return list(map(served.__getitem__, map(_PARTITION, parts)))
            except KeyError:
                pass  # a partition that does not exist: _partition names it
        return [self._partition(p) for p, _ in parts]

    def _check_still_served(self, targets: list[Partition]) -> None:
        """PARTITION_NOT_OWNED (naming the holder) for the first of ``targets`` this node no
        longer serves under a held lease, or whose logs were given up."""
        held = self.ownership
        assert held is not None
        for part in targets:
            number = part.number
            try:
                part.events.check_usable()
                part.alert_log.check_usable()
            except OSError:
                raise not_owned(number, held.owner_addr(number)) from None
            if self._served.get(number) is not part or not held.holds(number):
                raise not_owned(number, held.owner_addr(number))

    def _refuse_when_disk_low(self) -> None:
        """RESOURCE_EXHAUSTED while the data directory's filesystem is below its free-space floor
        (rechecked at most every 100 ms here, every second by the maintenance loop)."""
        now = time.monotonic()
        if now - self._disk_checked >= _DISK_RECHECK_SECONDS:
            self._check_disk(now)
        if self.stats.disk_free_bytes < self.config.min_free_disk_bytes:
            raise ResourceExhaustedError(
                f"the data directory's filesystem has {self.stats.disk_free_bytes} bytes free, below "
                f"the {self.config.min_free_disk_bytes} kept free; free space, then retry",
                reason="DISK_FULL",
                retry_after_seconds=_DISK_FULL_RETRY_SECONDS,
            )

    def _check_disk(self, now: float) -> None:
        self._disk_checked = now
        fs = os.statvfs(self.config.data_dir)
        self.stats.disk_free_bytes = fs.f_bavail * fs.f_frsize

    async def _ingest_in_slices(
        self,
        targets: list[Partition],
        parts: list[Sequence[EventRow]],
        batch_id: str,
        sync: bool,
    ) -> tuple[list[IngestOutcome], bool]:
        """Ingest a batch over many partitions a few parts at a time, with the event loop free in
        between: the flusher, alert streams, queries and batches of a slice or less must not
        wait behind all of a large batch.

        * An ASYNC batch's alerts are flushed slice by slice (:meth:`_flush_alerts`): an alert's
          fsync starts once its part is stored, and runs while the rest of the batch is, instead
          of after the batch's last slice.
        * Batches stored in slices take turns (:class:`IngestTurns`): one at a time, in arrival
          order, each turn up to ``_TURN_EVENTS`` events, so that batches in flight together
          finish one after the other instead of all at once (sharing the loop slice by slice
          left it idle while their callers all sent their next batches at the same moment).
        * The batch is stored against a copy of the metrics it was validated against, taken before
          any wait (metric changes are rare: a few entries). A metric deleted (or deleted and
          created again) meanwhile leaves the rest of the batch logged like events that arrived
          just before the delete, counted by nobody, instead of failing half-way or counting for a
          metric created after the batch arrived.
        * A batch is never half stored: a cancellation (the caller's deadline, a disconnect) that
          arrives between slices, or while the batch waits for its turn to come round again, is
          held until the batch is in (returned as True), then raised by the caller, as if it had
          come just after the batch. One that arrives before its first turn stores nothing.
        """
        specs = dict(self._specs)
        now = self.config.clock.now_ns()
        turns = self._turns
        await turns.take()  # cancellable: nothing is stored yet
        outcomes: list[IngestOutcome] = []
        cancelled = False
        turn_events = 0
        try:
            for start in range(0, len(parts), _PARTS_PER_SLICE):
                if start:
                    if turn_events >= turns.turn_events and turns.others_waiting:
                        cancelled |= await turns.step_back()
                        turn_events = 0
                    else:
                        try:
                            await asyncio.sleep(0)
                        except asyncio.CancelledError:
                            cancelled = True
                end = start + _PARTS_PER_SLICE
                stored = targets[start:end]
                sliced = parts[start:end]
                outcomes += Partition.ingest_parts(stored, sliced, batch_id, now, specs)
                turn_events += sum(map(len, sliced))
                if not sync:
                    self._flush_alerts(stored)
        finally:
            turns.give_up()
        return outcomes, cancelled

    # ------------------------------------------------------------------ NodeApi: queries

    async def query_realtime(self, partition: int, account_id: int, metric_code: str) -> QueryResult:
        """The aggregate of the metric's current period."""
        part = self._partition(partition)
        spec = await self._spec(metric_code)
        return part.query_realtime(spec, account_id, self.config.clock.now_ns())

    async def query(
        self,
        partition: int,
        account_id: int,
        metric_code: str,
        start: int,
        end: int,
        selector: int,
        filters: dict[str, str],
        group_by: list[str],
    ) -> QueryResult:
        """The aggregate over an exact range or the metric's current/previous period."""
        part = self._partition(partition)
        spec = await self._spec(metric_code)
        if selector:
            start, end = resolve_selector(spec.periods, selector, self.config.clock.now_ns())
        check_query(spec, start, end, filters, group_by)
        return await self._read(part, partial(part.query, spec, account_id, start, end, filters, group_by))

    async def list_events(
        self,
        partition: int,
        account_id: int,
        start: int,
        end: int,
        metric_code: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[StoredEvent], str]:
        """A page of the account's stored events."""
        part = self._partition(partition)
        if metric_code:
            await self._spec(metric_code)
        check_page_size(page_size)
        if end <= start:
            raise InvalidArgumentError(
                "end must be after start",
                violations=[FieldViolation("end_unix_nano", "must be greater than start_unix_nano")],
            )
        read = partial(part.list_events, account_id, start, end, metric_code, page_size or 100, page_token)
        return await self._read(part, read)

    async def _read(self, part: Partition, read: Callable[[], _T]) -> _T:
        """``read()`` of ``part`` with the records it needs (``Partition.reading``: fetched from
        the backend's store when not in memory). On a cluster node a log given up meanwhile (the
        partition handed over, its lease lost) answers PARTITION_NOT_OWNED naming the holder."""
        try:
            return await part.reading(read)
        except OSError:
            if self.ownership is not None:
                self._check_still_served([part])
            raise

    # ------------------------------------------------------------------ NodeApi: alerts

    async def list_alerts(
        self, partition: int, account_id: int, after_offset: int, page_size: int
    ) -> tuple[list[Alert], bool]:
        """The account's alerts after ``after_offset``."""
        check_page_size(page_size)
        return await self._partition(partition).list_alerts(account_id, after_offset, page_size or 100)

    def subscribe_alerts(
        self,
        partitions: list[int],
        since_offsets: dict[int, int],
        from_beginning: bool,
        account_ids: list[int],
        metric_codes: list[str],
        threshold_codes: list[str],
    ) -> AsyncIterator[AlertStreamItem]:
        """A stream of matching alerts with heartbeats (see AlertStreamer)."""
        return self.alerts.subscribe(
            partitions, since_offsets, from_beginning, account_ids, metric_codes, threshold_codes,
            known_metrics=self.registry.list(),
        )  # fmt: skip


def resolve_selector(periods: PeriodCalculator, selector: int, now_ns: int) -> tuple[int, int]:
    """The metric's period that ``selector`` names, at ``now_ns``."""
    if selector == PeriodSelector.CURRENT:
        return periods.period_of(now_ns)
    if selector == PeriodSelector.PREVIOUS:
        return periods.previous(now_ns)
    raise InvalidArgumentError(
        f"unknown period selector {selector}",
        violations=[FieldViolation("period_selector", f"unknown period selector {selector}")],
    )
