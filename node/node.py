"""A Unimeter node on the embedded backend: owns every partition of a data directory.

The node is the ``NodeApi`` the client core calls (directly in-process, or through the node
protocol). It validates each partition batch against the metric registry, runs the flusher that
makes ASYNC writes durable within the flush interval, takes periodic snapshots, and serves alert
streams from the partitions' alert logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

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
from .alert_stream import AlertStreamer, release
from .clock import SYSTEM_CLOCK, Clock
from .filesystem_sync import syncfs_supported
from .metric_registry import MetricRegistry, write_file_atomically
from .partition import Partition, PartitionConfig
from .partition_log import PartitionLog, run_rounds, run_rounds_on_filesystem
from .query_validation import check_page_size, check_query
from .stats import NodeStats

__all__ = ["Node", "NodeConfig"]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_PARTS_PER_SLICE = 4
_DISK_RECHECK_SECONDS = 0.1
_DISK_FULL_RETRY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to start. Defaults are the SPEC's."""

    data_dir: Path
    """Where partitions, snapshots and the metric registry live."""
    partitions: int | None = None
    """Partition count of a new data directory (default 64); an existing one keeps its own."""
    flush_interval: float = 0.010
    """Longest time an ASYNC write stays in memory before it is fsynced."""
    dedup_window_seconds: float = 86_400.0
    """How long an event's dedup key is remembered (by arrival time)."""
    snapshot_interval: float = 60.0
    """Seconds between snapshots of partitions that changed."""
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
    has less free space than this (SPEC §6: never accept what it cannot store); 0: never."""
    sync_filesystem: bool = True
    """Make a group of logs durable (a flush tick, a SYNC batch over partitions) with one
    ``syncfs`` of the data directory's filesystem where that is safe (Linux 5.8+, every log on
    that filesystem); False, or where it is not safe: one fdatasync per log."""
    clock: Clock = SYSTEM_CLOCK
    """The wall clock of every time the node reads (arrivals, dedup expiry, current periods)."""


class Node:
    """One node owning all partitions of its data directory (embedded backend)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._executor = ThreadPoolExecutor(
            max_workers=config.fsync_threads, thread_name_prefix="unimeter-fsync"
        )
        # The tick's shares run on threads of their own: a SYNC caller's or an urgent alert
        # flush's round never queues behind a tick's shares of sequential fsyncs.
        self._tick_executor = ThreadPoolExecutor(
            max_workers=config.fsync_threads, thread_name_prefix="unimeter-tick"
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.node_id = self._load_identity()
        self.registry = MetricRegistry(config.data_dir / "metrics.msgpack", config.clock)
        self._specs: dict[str, MetricSpec] = {}
        for metric in self.registry.list():
            self._specs[metric.code] = MetricSpec.compile(metric, metric.create_time_unix_nano)
        partition_config = PartitionConfig(
            dedup_window_ns=int(config.dedup_window_seconds * 1e9),
            segment_bytes=config.segment_bytes,
            clock=config.clock,
        )
        started = time.monotonic()
        self.partitions = [
            Partition(
                p,
                config.data_dir / "partitions" / f"{p:04d}",
                self._specs,
                partition_config,
                self._executor,
            )
            for p in range(self.partitions_count)
        ]
        self.recovery_seconds = time.monotonic() - started
        self._filesystem_fd = self._open_filesystem_for_sync()
        """Descriptor of the data directory whose filesystem one syncfs makes durable, or None."""
        self.stats = NodeStats()
        for partition in self.partitions:
            partition.events.on_sync = self.stats.fsync_events.observe
            partition.alert_log.on_sync = self.stats.fsync_alerts.observe
            partition.events.on_failure = partition.alert_log.on_failure = self._count_failed_log
        self.alerts = AlertStreamer(self.partitions, heartbeat_interval=config.heartbeat_interval)
        self.node_addr = config.node_addr
        self.grpc_addr = config.grpc_addr
        self._closing = False
        self._disk_checked = 0.0
        self._urgent: set[asyncio.Task[None]] = set()
        self._urgent_partitions: set[int] = set()
        """Partitions an urgent alert flush is making durable: the tick leaves their logs to it."""
        self._tasks: list[asyncio.Task[None]] = []
        self._last_snapshot = time.monotonic()

    @property
    def partitions_count(self) -> int:
        """Number of partitions of the data directory."""
        return self._partitions

    def _open_filesystem_for_sync(self) -> int | None:
        if not self.config.sync_filesystem or not syncfs_supported():
            return None
        device = os.stat(self.config.data_dir).st_dev
        for partition in self.partitions:
            for directory in (partition.events.directory, partition.alert_log.directory):
                if os.stat(directory).st_dev != device:
                    log.info("%s is on another filesystem: one fdatasync per log", directory)
                    return None
        return os.open(self.config.data_dir, os.O_RDONLY | os.O_DIRECTORY)

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
        self._check_disk(time.monotonic())
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="unimeter-flusher"),
            asyncio.create_task(self._maintenance_loop(), name="unimeter-maintenance"),
        ]

    async def close(self) -> None:
        """Stop background work, flush and snapshot every partition, release files."""
        if self._closing:
            return
        self._closing = True
        for task in [*self._tasks, *self._urgent]:
            task.cancel()
        for task in [*self._tasks, *self._urgent]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.alerts.close()
        # Every partition is closed even if one fails (a failed log, a full disk): the others'
        # ASYNC writes still pending must not be left unflushed behind it.
        failed: list[BaseException] = []
        for partition in self.partitions:
            try:
                await partition.close()
            except Exception as exc:
                log.error("partition %d did not close cleanly: %s", partition.number, exc)
                failed.append(exc)
        self._tick_executor.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        if self._filesystem_fd is not None:
            os.close(self._filesystem_fd)
            self._filesystem_fd = None
        if failed:
            raise failed[0]

    async def _flush_loop(self) -> None:
        # Ticks start at a fixed rate, not a fixed pause after the previous tick's fsyncs: an ASYNC
        # write waits at most one interval for a tick to take it (plus that tick's own fsync).
        loop = asyncio.get_running_loop()
        interval = self.config.flush_interval
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick = max(next_tick + interval, loop.time())
            urgent = self._urgent_partitions
            dirty = [p for p in self.partitions if p.dirty and p.number not in urgent]
            if dirty:
                try:
                    await self._flush_tick(dirty)
                except Exception:
                    # A log's I/O error fails that log inside its round; anything raised here is a
                    # bug elsewhere (say, in a publish callback), and must not stop the ticks that
                    # make every ASYNC write durable.
                    log.exception("flush tick failed; ticking on")

    async def _flush_tick(self, partitions: list[Partition]) -> None:
        """Make the dirty partitions durable, then publish their alerts (see :meth:`_run_rounds`).
        Logs with a round in flight (a SYNC caller's, an urgent flush's) are left to it; their
        partitions publish at the next tick."""
        marks = [(p, p.flush_mark()) for p in partitions]
        await self._run_rounds(partitions, self._tick_executor)
        for partition, mark in marks:
            partition.publish_durable(mark)

    async def _flush_sync(self, partitions: list[Partition]) -> None:
        """A SYNC batch over several partitions: grouped rounds, then each partition's own flush,
        which returns at once if a grouped round covered it, waits for a round already in flight
        otherwise, raises if its log failed, and publishes its alerts."""
        await self._run_rounds(partitions, self._executor)
        for partition in partitions:
            await partition.flush()

    async def _run_rounds(self, partitions: list[Partition], executor: ThreadPoolExecutor) -> None:
        """:meth:`_start_rounds`, waited for. Cancelling the wait cancels only this waiter's
        future: the rounds go on and finish their logs."""
        done = asyncio.get_running_loop().create_future()
        self._start_rounds(partitions, executor, partial(release, done))
        await done

    def _start_rounds(
        self, partitions: list[Partition], executor: ThreadPoolExecutor, then: Callable[[], None]
    ) -> None:
        """One fsync round per pending log of ``partitions``, with one executor hand-off per
        thread; ``then()`` runs on the loop once every round is finished (at once if none).

        Every log's round is taken at once. Where one ``syncfs`` can make them all durable, one
        thread syncs them all with it (one journal commit instead of one per log; see
        ``node.filesystem_sync``). Otherwise the rounds are dealt to the threads (a thread runs its
        share one after the other): a few hand-offs instead of one per log; with 64 partitions the
        per-log futures were most of the flusher's loop time. Logs with a round in flight are
        skipped (that round, or the one queued after it, covers them). A thread hands its results
        back with one ``call_soon_threadsafe``: under load each hop through the loop's ready queue
        waits behind ingest slices, and ``run_in_executor``'s future chain took three.
        """
        rounds = [
            (log, job)
            for p in partitions
            for log in (p.events, p.alert_log)
            if (job := log.start_round()) is not None
        ]
        if not rounds:
            then()
            return
        if self._filesystem_fd is not None:
            shares = [rounds]
            run: Callable[[list[Any]], list[BaseException | None]] = partial(
                run_rounds_on_filesystem, filesystem_fd=self._filesystem_fd
            )
        else:
            threads = self.config.fsync_threads
            shares = [rounds[i::threads] for i in range(min(threads, len(rounds)))]
            run = run_rounds
        loop = asyncio.get_running_loop()
        left = [len(shares)]

        def finish(share: list[tuple[PartitionLog, Any]], errors: list[BaseException | None]) -> None:
            for (log_, job), exc in zip(share, errors, strict=True):
                log_.finish_round(job, exc)  # a failure fails the log, which counts and logs it
            left[0] -= 1
            if not left[0]:
                then()

        def in_thread(share: list[tuple[PartitionLog, Any]]) -> None:
            try:
                errors = run([job for _, job in share])
            except Exception as exc:  # not an I/O error of one round: every round of the share fails
                errors = [exc] * len(share)
            loop.call_soon_threadsafe(finish, share, errors)

        for share in shares:
            try:
                executor.submit(in_thread, share)
            except RuntimeError as exc:  # the executor was shut down: the rounds fail, not hang
                finish(share, [OSError(errno.EIO, f"flush not started: {exc}")] * len(share))

    def _count_failed_log(self) -> None:
        self.stats.flush_failures += 1

    def _flush_urgent(self, partitions: list[Partition]) -> None:
        """Flush partitions whose batch fired alerts now, and publish them; the tick skips them.

        One grouped round for all their logs (both logs of a partition in one hand-off, one
        syncfs where it is used), whose completion publishes the alerts it covered right there, on
        the loop: no task, no hop between the fsync and the subscribers' wake-up. A partition one
        of whose logs had a round in flight (a SYNC caller's, the tick's) was skipped by this
        round: a task waits for its flush, as a SYNC caller would, and publishes then.
        """
        numbers = {p.number for p in partitions} - self._urgent_partitions
        self._urgent_partitions |= numbers
        marks = [(p, p.flush_mark()) for p in partitions]

        def publish() -> None:
            self._urgent_partitions -= numbers
            waiting = [p for p, mark in marks if not p.publish_durable(mark)]
            if waiting and not self._closing:
                task = asyncio.create_task(self._publish_when_flushed(waiting))
                self._urgent.add(task)
                task.add_done_callback(self._urgent.discard)

        self._start_rounds(partitions, self._executor, publish)

    async def _publish_when_flushed(self, partitions: list[Partition]) -> None:
        results = await asyncio.gather(*(p.flush() for p in partitions), return_exceptions=True)
        for partition, exc in zip(partitions, results, strict=True):
            if isinstance(exc, BaseException):  # the failed log was counted and logged already
                log.warning("alerts of partition %d not published: %s", partition.number, exc)

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._check_disk(time.monotonic())
            self.expire()
            due = time.monotonic() - self._last_snapshot >= self.config.snapshot_interval
            for partition in self.partitions:
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
            if due:
                self._last_snapshot = time.monotonic()

    def expire(self) -> None:
        """Forget dedup keys that arrived more than the window before now by the node's clock (the
        maintenance loop calls this every second)."""
        now = self.config.clock.now_ns()
        for partition in self.partitions:
            partition.expire(now)

    def _partition(self, number: int) -> Partition:
        if self._closing:
            raise UnavailableError("node is shutting down", reason="NODE_CLOSING", retry_after_seconds=0.5)
        if not 0 <= number < len(self.partitions):
            raise InvalidArgumentError(
                f"partition {number} does not exist",
                violations=[FieldViolation("partition", f"must be below {len(self.partitions)}")],
            )
        return self.partitions[number]

    def _spec(self, code: str, field: str = "metric_code") -> MetricSpec:
        spec = self._specs.get(code)
        if spec is None:
            raise InvalidArgumentError(
                f"unknown metric {code!r}", violations=[FieldViolation(field, f"unknown metric {code!r}")]
            )
        return spec

    # ------------------------------------------------------------------ NodeApi: metrics

    async def cluster_status(self) -> ClusterStatus:
        """This node, every partition it owns, and their offsets."""
        me = NodeInfo(self.node_id, self.node_addr, self.grpc_addr, True)
        infos = tuple(
            PartitionInfo(p.number, self.node_id, p.last_offset, len(p.alerts)) for p in self.partitions
        )
        return ClusterStatus(len(self.partitions), "embedded", (me,), infos)

    async def create_metric(self, metric: Metric) -> Metric:
        """Validate and register a metric."""
        stored = self.registry.create(metric)
        self._specs[stored.code] = MetricSpec.compile(stored, stored.create_time_unix_nano)
        return stored

    async def get_metric(self, code: str) -> Metric:
        """One metric, or NotFoundError."""
        return self.registry.require(code)

    async def list_metrics(self) -> list[Metric]:
        """Every metric by code."""
        return self.registry.list()

    async def delete_metric(self, code: str) -> None:
        """Remove a metric; its aggregates are dropped, its events stay in the logs."""
        self.registry.delete(code)
        del self._specs[code]
        for partition in self.partitions:
            partition.aggregates.forget_metric(code)

    def metric_of(self, code: str) -> Metric | None:
        """The registered metric named ``code`` (for validation)."""
        return self.registry.get(code)

    # ------------------------------------------------------------------ NodeApi: ingest

    async def ingest(
        self, parts: list[tuple[int, list[EventRow]]], sync: bool, batch_id: str, *, validated: bool = False
    ) -> list[IngestOutcome]:
        """Validate, store and apply each partition's part; SYNC waits for the group-commit fsyncs."""
        self._refuse_when_disk_low()
        targets = [self._partition(p) for p, _ in parts]
        if not validated:
            for _, rows in parts:
                validate_rows(rows, self.registry.get)
        cancelled = False
        if len(parts) <= _PARTS_PER_SLICE:
            now = self.config.clock.now_ns()
            outcomes = [
                part.ingest(rows, batch_id, now, self._specs.get)
                for part, (_, rows) in zip(targets, parts, strict=True)
            ]
        else:
            outcomes, cancelled = await self._ingest_in_slices(targets, parts, batch_id)
        if not sync:
            urgent = [part for part in targets if part.published_alert_offset < len(part.alerts)]
            if urgent:
                # Alerts are waited for by people: a batch that fires one gets its partitions
                # flushed (and the alert published) now, instead of at the next tick; everything
                # else keeps the group commit of the flush interval.
                self._flush_urgent(urgent)
        if cancelled:  # stored whole; the tick makes it durable (a cancelled SYNC caller waits no more)
            raise asyncio.CancelledError
        if sync:
            if len(targets) == 1:
                await targets[0].flush()
            else:
                await self._flush_sync(targets)
        # Per call and partition, never per event: a few µs for a batch spread over 64 partitions.
        n_events = n_dup = 0
        for (_, rows), outcome in zip(parts, outcomes, strict=True):
            n_events += len(rows)
            n_dup += outcome.n_duplicates
        stats = self.stats.ingest
        if sync:
            stats.batches_sync += 1
            stats.events_sync += n_events
        else:
            stats.batches_async += 1
            stats.events_async += n_events
        stats.duplicates += n_dup
        return outcomes

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
        parts: list[tuple[int, list[EventRow]]],
        batch_id: str,
    ) -> tuple[list[IngestOutcome], bool]:
        """Ingest a batch over many partitions a few parts at a time, with the event loop free in
        between: a 1000-event batch over 64 partitions is ~20 ms of CPU, and the flusher, alert
        streams and queries must not wait behind all of it.

        * Batches in flight at once take turns slice by slice, so a small batch is not held up
          for the whole of a large one. (Letting them in one at a time was tried: it did not
          measurably help the alert path, and a 10,000-event batch, ~160 ms of CPU, would hold
          every other batch over several partitions for all of it.)
        * The batch is stored against a copy of the metrics it was validated against, taken before
          any wait (metric changes are rare: a few entries). A metric deleted (or deleted and
          created again) meanwhile leaves the rest of the batch logged like events that arrived
          just before the delete, counted by nobody, instead of failing half-way or counting for a
          metric created after the batch arrived.
        * A batch is never half stored: a cancellation (the caller's deadline, a disconnect) that
          arrives between slices is held until the batch is in (returned as True), then raised by
          the caller, as if it had come just after the batch.
        """
        spec_of = dict(self._specs).get
        now = self.config.clock.now_ns()
        outcomes: list[IngestOutcome] = []
        cancelled = False
        for i, (part, (_, rows)) in enumerate(zip(targets, parts, strict=True)):
            if i and not i % _PARTS_PER_SLICE:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    cancelled = True
            outcomes.append(part.ingest(rows, batch_id, now, spec_of))
        return outcomes, cancelled

    # ------------------------------------------------------------------ NodeApi: queries

    async def query_realtime(self, partition: int, account_id: int, metric_code: str) -> QueryResult:
        """The aggregate of the metric's current period."""
        part = self._partition(partition)
        spec = self._spec(metric_code)
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
        spec = self._spec(metric_code)
        if selector:
            start, end = resolve_selector(spec.periods, selector, self.config.clock.now_ns())
        check_query(spec, start, end, filters, group_by)
        return part.query(spec, account_id, start, end, filters, group_by)

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
            self._spec(metric_code)
        check_page_size(page_size)
        if end <= start:
            raise InvalidArgumentError(
                "end must be after start",
                violations=[FieldViolation("end_unix_nano", "must be greater than start_unix_nano")],
            )
        return part.list_events(account_id, start, end, metric_code, page_size or 100, page_token)

    # ------------------------------------------------------------------ NodeApi: alerts

    async def list_alerts(
        self, partition: int, account_id: int, after_offset: int, page_size: int
    ) -> tuple[list[Alert], bool]:
        """The account's alerts after ``after_offset``."""
        check_page_size(page_size)
        return self._partition(partition).list_alerts(account_id, after_offset, page_size or 100)

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
