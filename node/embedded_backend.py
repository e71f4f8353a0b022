"""The embedded backend: every partition's logs as segment files on the node's own disk.

It implements ``node.record_log.RecordBackend`` for one machine. A partition's directory holds
its two ``SegmentLog`` directories (``events``, ``alerts``) and its snapshot file. Durability of
many logs at once is grouped: every pending log's fsync round is taken in one go and either synced
with one ``syncfs`` of the data directory's filesystem (``node.filesystem_sync``; where it is
sound) or dealt to the fsync threads, one hand-off per thread; a single log's own round (a SYNC
call's) is synced by the kernel where it can be (``node.kernel_fdatasync``; see docs/design.md,
"Durability and group commit"). On the native engine a group's rounds are written and synced by
a worker that needs no GIL (``node.tick_writes``). The fsync durations feed the node's per-log histograms. Not
here: when durability is asked for (``node.commit_scheduler``) and what the records mean.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic_file import write_file_atomically
from .filesystem_sync import syncfs_supported
from .kernel_fdatasync import KernelFdatasync
from .log_tail import LogTail
from .partition_engine import partition_engine
from .segment_log import NewTail, SegmentLog, ValidPrefix, run_rounds, run_rounds_on_filesystem, valid_prefix
from .stats import NodeStats
from .tick_writes import TickWrites

if TYPE_CHECKING:
    from .node import NodeConfig

__all__ = ["EmbeddedBackend", "SegmentPartitionStorage", "open_embedded_backend"]

log = logging.getLogger(__name__)

_SNAPSHOT_FILE = "snapshot.msgpack"

Errors = list[BaseException | None]
"""Each round's error, or None."""


class SegmentPartitionStorage:
    """One partition's directory: ``events/`` and ``alerts/`` segment logs, its snapshot file and
    ``index/``, its index runs."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        executor: ThreadPoolExecutor,
        kernel_sync: KernelFdatasync | None = None,
        scan: ValidPrefix = valid_prefix,
        new_tail: NewTail = LogTail,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.index_directory: Path | None = directory / "index"
        """Where the partition's index runs of aged hours live (``node.index_runs``)."""
        self.events, self.alerts = self.logs = tuple(
            SegmentLog.open(
                directory / name,
                segment_bytes=segment_bytes,
                executor=executor,
                kernel_sync=kernel_sync,
                scan=scan,
                new_tail=new_tail,
            )
            for name in ("events", "alerts")
        )
        """Both logs, in the order a group commit takes their rounds."""

    def read_snapshot(self) -> tuple[bytes, float] | None:
        """The snapshot file's bytes and mtime, or None if there is none."""
        path = self.directory / _SNAPSHOT_FILE
        try:
            return path.read_bytes(), path.stat().st_mtime
        except FileNotFoundError:
            return None

    def write_snapshot(self, pieces: Sequence[bytes | memoryview]) -> asyncio.Future[None]:
        """Replace the snapshot file atomically with ``pieces``, in the loop's default executor."""
        return asyncio.get_running_loop().run_in_executor(
            None, write_file_atomically, self.directory / _SNAPSHOT_FILE, *pieces
        )


class EmbeddedBackend:
    """Partitions under ``<data_dir>/partitions/NNNN``, made durable by grouped fsync rounds."""

    name = "embedded"

    def __init__(
        self,
        data_dir: Path,
        *,
        segment_bytes: int = 64 << 20,
        fsync_threads: int = 8,
        sync_filesystem: bool = True,
        sync_spin_ns: int = 0,
        stats: NodeStats | None = None,
        tick_writer: Callable[[], Any] | None = None,
        scan: ValidPrefix = valid_prefix,
        new_tail: NewTail = LogTail,
    ) -> None:
        self._data_dir = data_dir
        self._scan = scan
        """How a segment file's valid prefix is read when a partition's logs are opened (the engine's)."""
        self._new_tail = new_tail
        """The engine's log tail, which its ingest may append to directly (``node.log_tail``)."""
        self._segment_bytes = segment_bytes
        self._fsync_threads = fsync_threads
        self._stats = stats
        self._executor = ThreadPoolExecutor(max_workers=fsync_threads, thread_name_prefix="unimeter-fsync")
        # The tick's shares run on threads of their own: a SYNC caller's or an urgent alert
        # flush's round never queues behind a tick's shares of sequential fsyncs.
        self._tick_executor = ThreadPoolExecutor(
            max_workers=fsync_threads, thread_name_prefix="unimeter-tick"
        )
        # A log's own round (a SYNC caller's, one partition) is synced by the kernel where it can
        # be: no thread hand-off on the SYNC path (see node.kernel_fdatasync).
        self._kernel_sync = KernelFdatasync.open(spin_ns=sync_spin_ns)
        self._partitions: dict[int, SegmentPartitionStorage] = {}
        self._device = os.stat(data_dir).st_dev
        self._filesystem_fd: int | None = None
        """Descriptor of the data directory whose filesystem one syncfs makes durable, or None."""
        if sync_filesystem and syncfs_supported():
            self._filesystem_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        self._tick_writes: TickWrites | None = None
        """Where a group's rounds go when one syncfs covers them and the engine has a worker."""
        if self._filesystem_fd is not None and tick_writer is not None:
            self._tick_writes = TickWrites(tick_writer(), self._filesystem_fd)

    @property
    def syncs_filesystem(self) -> bool:
        """Whether a group of logs is made durable by one ``syncfs`` (else one fdatasync per log)."""
        return self._filesystem_fd is not None

    @property
    def syncs_in_kernel(self) -> bool:
        """Whether a log's own round is handed to the kernel's asynchronous fdatasync (else to
        the fsync threads)."""
        return self._kernel_sync is not None

    def open_partition(self, number: int) -> SegmentPartitionStorage:
        storage = SegmentPartitionStorage(
            self._data_dir / "partitions" / f"{number:04d}",
            self._segment_bytes,
            self._executor,
            self._kernel_sync,
            self._scan,
            self._new_tail,
        )
        self._partitions[number] = storage
        if self._stats is not None:
            storage.events.on_sync = self._stats.fsync_events.observe
            storage.alerts.on_sync = self._stats.fsync_alerts.observe
        for directory in (storage.events.directory, storage.alerts.directory):
            if self._filesystem_fd is not None and os.stat(directory).st_dev != self._device:
                # One syncfs is sound only if it covers every log.
                log.info("%s is on another filesystem: one fdatasync per log", directory)
                if self._tick_writes is not None:
                    self._tick_writes.close()
                    self._tick_writes = None
                os.close(self._filesystem_fd)
                self._filesystem_fd = None
        return storage

    def commit_group(self, partitions: Sequence[int], *, background: bool, then: Callable[[], None]) -> None:
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
        storages = self._partitions
        # With the native worker every group's rounds go to it unwritten: a tick's, and one
        # somebody waits for (SYNC batches over many partitions, an urgent alert flush), which
        # gains the most from a worker that never waits for the GIL.
        ticks = self._tick_writes
        defer_write = ticks is not None
        rounds = [
            (log_, job)
            for number in partitions
            for log_ in storages[number].logs
            if (job := log_.start_round(defer_write=defer_write)) is not None
        ]
        if not rounds:
            then()
            return
        if self._filesystem_fd is not None:
            shares = [rounds]
            run: Callable[[list[Any]], Errors] = partial(
                run_rounds_on_filesystem, filesystem_fd=self._filesystem_fd
            )
        else:
            threads = self._fsync_threads
            shares = [rounds[i::threads] for i in range(min(threads, len(rounds)))]
            run = run_rounds
        executor = self._tick_executor if background else self._executor
        loop = asyncio.get_running_loop()
        left = [len(shares)]

        def finish(share: list[tuple[SegmentLog, Any]], errors: Errors) -> None:
            for (log_, job), exc in zip(share, errors, strict=True):
                log_.finish_round(job, exc)  # a failure fails the log, which counts and logs it
            left[0] -= 1
            if not left[0]:
                then()

        def in_thread(share: list[tuple[SegmentLog, Any]], run: Callable[[list[Any]], Errors]) -> None:
            try:
                errors = run([job for _, job in share])
            except Exception as exc:  # not an I/O error of one round: every round of the share fails
                errors = [exc] * len(share)
            loop.call_soon_threadsafe(finish, share, errors)

        def start(share: list[tuple[SegmentLog, Any]], run: Callable[[list[Any]], Errors]) -> None:
            try:
                executor.submit(in_thread, share, run)
            except RuntimeError as exc:  # the executor was shut down: the rounds fail, not hang
                finish(share, [OSError(errno.EIO, f"flush not started: {exc}")] * len(share))

        def written(errors: Errors, synced: bool) -> None:
            if synced:
                finish(rounds, errors)
            else:  # the syncfs failed: each round syncs on its own, pinning the error on its log
                start(rounds, run_rounds)

        if ticks is not None and ticks.run([job for _, job in rounds], written):
            return
        for share in shares:
            start(share, run)

    def close(self) -> None:
        """Stop the tick writer, the fsync threads and the kernel's syncs (after their rounds) and
        close the filesystem descriptor."""
        if self._tick_writes is not None:
            self._tick_writes.close()
            self._tick_writes = None
        self._tick_executor.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        if self._kernel_sync is not None:
            self._kernel_sync.close()
        if self._filesystem_fd is not None:
            os.close(self._filesystem_fd)
            self._filesystem_fd = None


def open_embedded_backend(config: NodeConfig, stats: NodeStats) -> EmbeddedBackend:
    """The default backend factory of a node: its data directory, its fsync settings, and what
    its engine does natively (the tick's writes, the recovery scan of the logs)."""
    engine = partition_engine(config.engine)
    return EmbeddedBackend(
        config.data_dir,
        segment_bytes=config.segment_bytes,
        fsync_threads=config.fsync_threads,
        sync_filesystem=config.sync_filesystem,
        sync_spin_ns=config.sync_spin_ns,
        stats=stats,
        tick_writer=engine.tick_writer,
        scan=engine.valid_prefix,
        new_tail=engine.new_log_tail,
    )
