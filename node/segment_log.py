"""Append-only, segmented, CRC-framed log of opaque byte payloads: the embedded backend's storage.

A ``SegmentLog`` is the embedded backend's ``node.record_log.RecordLog``: its positions are byte
positions. It stores records (``u32 length | u32 crc32(payload, seeded by length) | payload``,
little endian) in segment files named by their base position, addresses every record by a global
byte position that is stable across restarts, buffers appends in memory, and makes them durable by
group commit (one ``write`` + ``fdatasync`` serves every flush waiting at that time). The ``write``
to the page cache is made on the loop thread when the round starts; only the ``fdatasync`` (and the
rare round that creates a segment file) runs in an executor thread, or, for a round of the active
segment alone, in the kernel (``node.kernel_fdatasync``), so a stalled disk never blocks the loop
on a sync. The active segment file is allocated ahead of its records (:data:`_RESERVE_BYTES`),
so that a sync seldom has a new file size to commit. Opening a log validates every record and
cuts a torn or corrupt tail (reserved space is not one: :func:`_ends_cleanly`). It is for
one writer on one event loop; it knows nothing about what the payloads mean, does not compact or
expire segments, and is not thread-safe (only its own I/O runs in the executor).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import struct
import sys
import time
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

from . import filesystem_sync
from .kernel_fdatasync import KernelFdatasync
from .log_tail import LogTail, Tail

__all__ = ["SegmentLog", "run_rounds", "run_rounds_on_filesystem"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_HEADER_SIZE = _HEADER.size


def _crc(length: int, payload: bytes | bytearray | memoryview) -> int:
    """CRC-32 of the payload seeded by its length: a zero-filled tail (``crc32(b"") == 0``) or a
    damaged length field never passes as a record."""
    return zlib.crc32(payload, (length * 0x9E3779B1 + 0x5EED) & 0xFFFFFFFF)


_MAX_PAYLOAD = 0xFFFFFFFF
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_READ_CHUNK = 1 << 20  # scan/recovery read size; a module global so tests can shrink it
_READ_AHEAD = 64 << 10  # read(): one pread covers a record up to this size
_RESERVE_BYTES = (256 << 10) if hasattr(os, "posix_fallocate") else 0
"""How far ahead of its records the active segment file is allocated (0: never). An fdatasync
after an append that grows the file has to commit the filesystem's journal (the new size is
metadata a read of the data needs); inside space already allocated it only flushes the data. A
SYNC single-event call took 0.09 ms less end to end that way on the reference VM
(docs/benchmarks-history.md, session 20). The tail past the last record reads as zeros, which no frame
is (:func:`_crc`), and opening the log stops there without calling it damage
(:func:`_ends_cleanly`)."""
_RESERVE_AHEAD = _RESERVE_BYTES // 4
"""A round reserves the next :data:`_RESERVE_BYTES` once fewer than this are left allocated."""

# The sync functions the log uses, module-level so tests can count or fail them. fdatasync is enough
# for a segment file (it persists a size change, and the allocation of reserved space written
# into); directories get a full fsync.
if sys.platform == "linux":
    _fsync: Callable[[int], None] = os.fdatasync
else:  # pragma: no cover
    _fsync = os.fsync
_fsync_dir: Callable[[int], None] = os.fsync
_FDATASYNC: Callable[[int], None] = _fsync
"""What the kernel's asynchronous fdatasync does (``node.kernel_fdatasync``): rounds go to the
kernel only while ``_fsync`` is this, so a test that counts, fails or holds ``_fsync`` keeps every
round on the thread that calls it."""


class _Corrupt(Exception):
    """A frame that does not check out, at ``offset`` within its segment."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason


class _Job:
    """One write (+ sync) round: a detached buffer and where each part of it goes.

    A plain class with its own ``__init__``, not a dataclass: a flush tick makes one per dirty log
    (64 a tick and more), and the generated one, called with keywords and filling four default
    factories, ran a quarter more bytecodes (docs/benchmarks-history.md, session 24)."""

    __slots__ = (
        "created",
        "data",
        "dir_fd",
        "directory",
        "end",
        "fsync",
        "new_bases",
        "on_sync",
        "reserve",
        "start",
        "sync_bases",
        "sync_dir",
        "sync_seconds",
        "targets",
        "waiters",
        "wfds",
        "write_error",
        "written",
    )

    def __init__(
        self,
        data: bytes,
        start: int,
        end: int,
        fsync: bool,
        new_bases: list[int],
        targets: list[tuple[int, int, int]],
        wfds: dict[int, int],
        reserve: tuple[int, int, int] | None,
        sync_bases: list[int],
        dir_fd: int,
        sync_dir: bool,
        directory: Path,
        on_sync: Callable[[float], None] | None,
    ) -> None:
        self.data = data  # the records appended since the round before, joined
        self.start = start  # global position of data[0]
        self.end = end
        self.fsync = fsync
        self.new_bases = new_bases  # segment files this job creates, in order
        self.targets = targets  # (segment base, lo, hi) slices of data, in order
        self.wfds = wfds  # writable fds that exist at job start (active + not yet synced)
        self.reserve = reserve  # (segment base, offset, length) to allocate after writing
        self.sync_bases = sync_bases  # segments to sync if fsync: unsynced before, or written now
        self.dir_fd = dir_fd
        self.sync_dir = sync_dir
        self.directory = directory
        self.on_sync = on_sync  # the log's observer of fsync durations
        self.waiters: list[asyncio.Future[None]] = []  # one per waiting caller
        self.created: dict[int, int] = {}  # filled by the worker
        self.sync_seconds: float | None = None  # filled by the worker: time in its own fsyncs
        self.written = False  # the data was written on the loop thread when the round started
        self.write_error: OSError | None = None  # ... and that write failed: the round fails

    def fd_of(self, base: int) -> int:
        """The writable fd of segment ``base``: one that existed at the start, or one this round
        created."""
        return self.wfds[base] if base in self.wfds else self.created[base]


@dataclass(eq=False, slots=True)
class _NextRound:
    waiters: list[asyncio.Future[None]]
    fsync: bool


def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    """Wake a round's waiters with its outcome (a cancelled waiter's future is done already)."""
    for future in waiters:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
            future.exception()  # mark retrieved: its caller may be cancelled in this very turn


def _segment_path(directory: Path, base: int) -> Path:
    return directory / f"{base:020d}.seg"


def _write_all_at(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def _zero_tail(fd: int, start: int, size: int) -> bool:
    """Whether bytes ``start`` to ``size`` of a segment file are all zeros: the space reserved
    past its last record (:data:`_RESERVE_BYTES`), not a torn or damaged record."""
    while start < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - start), start)
        if not chunk or chunk.count(0) != len(chunk):
            return False
        start += len(chunk)
    return True


def _reserve_to(fill: int, allocated: int, segment_bytes: int) -> int | None:
    """The size to allocate a segment file with ``fill`` bytes of records and ``allocated``
    bytes of file to, if fewer than :data:`_RESERVE_AHEAD` are left past its records; None if
    not (or if reserving is off, or the file is as large as its segment may be)."""
    if not _RESERVE_BYTES or fill + _RESERVE_AHEAD <= allocated:
        return None
    stop = min(fill + _RESERVE_BYTES, segment_bytes)
    return stop if stop > max(fill, allocated) else None


def _ends_cleanly(fd: int, good: int, size: int, base: int, next_base: int | None) -> bool:
    """Whether a segment file whose records stop at ``good`` (of ``size`` bytes) simply ends
    there: a full segment whose successor starts exactly where its records end (the rest of its
    file is space reserved and never used, whatever it holds: no record is ever read from it), or
    the last segment with only reserved zeros after its records. Anything else after the last
    record is a torn or damaged one, and is cut, so that no stale frame could be read as a
    record once new ones are written over the start of it."""
    if next_base is not None:
        return next_base == base + good
    return _zero_tail(fd, good, size)


def _reserve(fd: int, offset: int, length: int) -> None:
    """Allocate ``length`` bytes of the file from ``offset`` (:data:`_RESERVE_BYTES`). Only ever
    an optimisation: a filesystem that cannot, or a full disk, leaves the writes to grow the file
    as they would anyway (and a full disk fails them there)."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        log.debug("segment file space not reserved: %s", exc)


def _run_job(job: _Job) -> None:
    """The syscalls of one round; runs in the executor (or inline for the synchronous paths)."""
    _write_job(job)
    if job.fsync:
        _sync_job(job)


def _write_early(job: _Job) -> None:
    """Write a round's data on the loop thread as it starts (see :meth:`SegmentLog._detach`)."""
    try:
        _write_job(job)
    except OSError as exc:
        job.write_error = exc
    job.written = True


def _write_job(job: _Job) -> None:
    if job.written:
        if job.write_error is not None:
            raise job.write_error
        return
    view = memoryview(job.data)
    for base, lo, hi in job.targets:
        fd = job.wfds.get(base)
        if fd is None:
            fd = job.created.get(base)
        if fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            fd = os.open(_segment_path(job.directory, base), flags, 0o644)
            job.created[base] = fd
        if hi > lo:
            _write_all_at(fd, view[lo:hi], job.start + lo - base)
    if job.reserve is not None:
        base, offset, length = job.reserve
        _reserve(job.fd_of(base), offset, length)


def _sync_job(job: _Job) -> None:
    started = time.perf_counter()
    for base in job.sync_bases:
        _fsync(job.fd_of(base))
    if job.created or job.sync_dir:
        _fsync_dir(job.dir_fd)
    job.sync_seconds = time.perf_counter() - started


def _each(step: Callable[[_Job], None], jobs: list[_Job]) -> list[BaseException | None]:
    """``step`` on each job in turn; each one's error, or None. One failure does not stop the rest."""
    errors: list[BaseException | None] = []
    for job in jobs:
        try:
            step(job)
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


def run_rounds(jobs: list[_Job]) -> list[BaseException | None]:
    """Run rounds taken with :meth:`SegmentLog.start_round`, one after the other (in the
    executor); each one's error, or None, in order. One round's failure does not stop the rest."""
    return _each(_run_job, jobs)


def positioned_writes(jobs: list[_Job]) -> list[tuple[int, int, bytes, int, int]] | None:
    """``(fd, file offset, data, reserve offset, reserve length)`` of each round, for a worker
    that writes them (and then reserves the space, if the length is not 0): None unless every
    round is a deferred one that stays in its segment file (a round creating a file needs the
    thread)."""
    writes = []
    for job in jobs:
        if job.written or job.new_bases:
            return None
        base = job.targets[0][0]
        _, offset, length = job.reserve or (base, 0, 0)
        writes.append((job.wfds[base], job.start - base, job.data, offset, length))
    return writes


def written_elsewhere(
    jobs: list[_Job], errnos: Sequence[int], sync_error: OSError | None, sync_seconds: float
) -> list[BaseException | None]:
    """The outcome of rounds a worker wrote (:func:`positioned_writes`; ``errnos``, 0 for a whole
    write) and then made durable with one ``syncfs`` (``sync_error`` None; its duration
    ``sync_seconds``): each round's error, or None. If the sync failed, the rounds it should have
    covered are left to :func:`run_rounds` (their errors None here, their data written)."""
    errors: list[BaseException | None] = []
    for job, code in zip(jobs, errnos, strict=True):
        job.written = True
        if code:
            job.write_error = OSError(code, os.strerror(code))
            errors.append(job.write_error)
        else:
            errors.append(None)
    if sync_error is None:
        _observe_syncfs(jobs, errors, sync_seconds)
    return errors


def _observe_syncfs(jobs: list[_Job], errors: list[BaseException | None], seconds: float) -> None:
    """Give one ``syncfs``'s duration to the first synced round of each observer
    (``SegmentLog.on_sync``): a histogram sees one observation per call, not one per log."""
    observed: list[Callable[[float], None] | None] = []
    for job, error in zip(jobs, errors, strict=True):
        if job.fsync and error is None and job.on_sync not in observed:
            observed.append(job.on_sync)
            job.sync_seconds = seconds


def run_rounds_on_filesystem(jobs: list[_Job], filesystem_fd: int) -> list[BaseException | None]:
    """:func:`run_rounds` with one ``syncfs`` of the filesystem holding ``filesystem_fd`` in place
    of each round's own fsyncs (every log must live on that filesystem; see
    ``node.filesystem_sync``). Directory entries of new segments are covered too.

    If ``syncfs`` reports a write-back error, each round then fsyncs its own files, so the error
    fails exactly the logs it hit. The duration of the ``syncfs`` is given to the first round of
    each observer (``SegmentLog.on_sync``): a histogram sees one observation per call, not one
    per log, and the event and alert logs' histograms each see the call that made them durable.
    """
    errors = _each(_write_job, jobs)
    pending = [i for i, job in enumerate(jobs) if job.fsync and errors[i] is None]
    if not pending:
        return errors
    started = time.perf_counter()
    try:
        filesystem_sync.syncfs(filesystem_fd)
    except OSError:
        for i, error in zip(pending, _each(_sync_job, [jobs[i] for i in pending]), strict=True):
            errors[i] = error
    else:
        _observe_syncfs(jobs, errors, time.perf_counter() - started)
    return errors


def _iter_records(fd: int, off: int, limit: int) -> Iterator[tuple[int, memoryview]]:
    """(offset, payload view) of each record in ``[off, limit)`` of a segment file, read in large chunks.

    Raises ``_Corrupt`` at the first frame that runs past ``limit`` or the end of the file, or whose
    CRC does not match.
    """
    while off < limit:
        chunk = os.pread(fd, min(_READ_CHUNK, limit - off), off)
        view = memoryview(chunk)
        size = len(chunk)
        p = 0
        while p + _HEADER_SIZE <= size:
            length, crc = _HEADER.unpack_from(chunk, p)
            end = p + _HEADER_SIZE + length
            if off + end > limit:
                raise _Corrupt(off + p, f"record length {length} runs past the end of the segment")
            if end > size:
                if p:
                    break
                # One record larger than a chunk: read it whole.
                chunk = os.pread(fd, end, off)
                if len(chunk) < end:
                    raise _Corrupt(off, "segment file ends inside a record")
                view = memoryview(chunk)
                size = end
            payload = view[p + _HEADER_SIZE : end]
            if _crc(length, payload) != crc:
                raise _Corrupt(off + p, "checksum mismatch")
            yield off + p, payload
            p = end
        if p == 0:
            raise _Corrupt(off, "segment file ends inside a record header")
        off += p


NewTail = Callable[[int, int, int], Tail]
"""``(end, last segment's fill, segment bytes) -> Tail``: a log's tail (``node.log_tail.LogTail``,
or the native engine's ``unimeter_native.LogTail``)."""

ValidPrefix = Callable[[int, int], tuple[int, "str | None"]]
"""``(fd, size) -> (length, reason or None)``: the longest prefix of whole, checksum-valid records
among a segment file's first ``size`` bytes, and why the rest is bad (:func:`valid_prefix`, or the
native engine's ``unimeter_native.valid_prefix``, which answers the same)."""


def valid_prefix(fd: int, size: int) -> tuple[int, str | None]:
    """Length of the longest prefix of whole, checksum-valid records, and why the rest is bad."""
    try:
        for _ in _iter_records(fd, 0, size):
            pass
    except _Corrupt as bad:
        return bad.offset, bad.reason
    return size, None


def _payload_from_memory(buf: bytes, off: int, position: int) -> bytes:
    """The payload of the record at ``off`` in a buffer; ValueError unless a valid frame starts there."""
    if off + _HEADER_SIZE > len(buf):
        raise ValueError(f"position {position} is not the start of a record")
    length, crc = _HEADER.unpack_from(buf, off)
    end = off + _HEADER_SIZE + length
    if end > len(buf):
        raise ValueError(f"position {position} is not the start of a record")
    # Views are released before returning (the tick writer's contract: no export outlives a read).
    view = memoryview(buf)
    try:
        payload = view[off + _HEADER_SIZE : end]
        try:
            if _crc(length, payload) != crc:
                raise ValueError(f"position {position} is not the start of a record (checksum mismatch)")
            return payload.tobytes()
        finally:
            payload.release()
    finally:
        view.release()


class SegmentLog:
    """A segmented append-only log of byte payloads addressed by global byte position.

    Build with :meth:`open`. ``append`` is synchronous and only buffers; ``flush`` writes (and by
    default fsyncs) everything appended before it, sharing one round of I/O among concurrent
    callers. Any I/O error while writing, syncing or truncating makes the log *failed*: every later
    mutating or reading call raises an ``OSError`` chained to the original, because after a failed
    fsync the kernel may have dropped the data while reporting later syncs as successful.
    """

    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        executor: Executor | None,
        kernel_sync: KernelFdatasync | None,
        dir_fd: int,
        bases: list[int],
        rfds: dict[int, int],
        active_fd: int,
        end: int,
        allocated: int,
        new_tail: NewTail,
    ) -> None:
        # Private: use SegmentLog.open().
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._executor = executor
        self._kernel_sync = kernel_sync
        self._dir_fd = dir_fd
        self._bases = bases  # bases of the segments whose files exist, sorted; the last is active
        self._rfds = rfds  # read-only fds, opened lazily per segment
        self._wfds: dict[int, int] = {bases[-1]: active_fd}  # active + segments with unsynced data
        self._unsynced: set[int] = set()  # segments written since their last sync
        self._dir_dirty = False  # a segment file was created/removed and the directory not synced
        self._written = end
        self._durable = end
        # Everything past what the rounds have taken: the appended records, the end, the last
        # segment's fill, the segments the buffer starts, and whether appends are refused
        # (node.log_tail; the native engine's appends a partition part's record to it directly).
        self._tail = new_tail(end, end - bases[-1], segment_bytes)
        # The last segment's file size as the rounds leave it (records + reserved space), which
        # the rounds alone change, so it is known without asking: (its base, its size).
        self._allocated = (bases[-1], allocated)
        self._job: _Job | None = None  # the round in flight
        self._next: _NextRound | None = None  # waiters for the round after it
        self._failure: BaseException | None = None
        self._closed = False
        self._release_when_idle = False
        self._truncations = 0
        self.on_sync: Callable[[float], None] | None = None
        """Called on the loop thread with the seconds each successful fsync round took (for metrics)."""
        self.on_failure: Callable[[], None] | None = None
        """Called once, when the log fails (a write or fsync error) and starts refusing writes."""

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes: int = 64 << 20,
        executor: Executor | None = None,
        kernel_sync: KernelFdatasync | None = None,
        scan: ValidPrefix = valid_prefix,
        new_tail: NewTail = LogTail,
    ) -> SegmentLog:
        """Open (or create) the log in ``directory``, validating every record (``scan``: the
        engine's reading of a segment file's valid prefix; ``new_tail``: its log tail).

        At the first torn or corrupt record (a frame that runs past the end of its file, or whose
        CRC does not match) the segment is truncated there and every later segment is deleted; a
        later segment whose base does not continue its predecessor is deleted the same way. Every
        kept segment is fsynced, so ``durable_position`` is honest even after a process crash that
        left unsynced data in the page cache. ``executor`` runs the write/fsync rounds (default: the
        loop's default executor); with ``kernel_sync``, a round that only has to fdatasync the
        active segment hands that to the kernel instead (see :meth:`_start_job`).
        """
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        directory = Path(directory)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            parent_fd = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _fsync_dir(parent_fd)
            finally:
                os.close(parent_fd)
        found = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _SEGMENT_NAME.match(p.name)))
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        rfds: dict[int, int] = {}
        try:
            return cls._recover(
                directory, segment_bytes, executor, kernel_sync, dir_fd, found, rfds, scan, new_tail
            )
        except BaseException:
            for fd in rfds.values():
                os.close(fd)
            os.close(dir_fd)
            raise

    @classmethod
    def _recover(
        cls,
        directory: Path,
        segment_bytes: int,
        executor: Executor | None,
        kernel_sync: KernelFdatasync | None,
        dir_fd: int,
        found: list[int],
        rfds: dict[int, int],
        scan: ValidPrefix,
        new_tail: NewTail,
    ) -> SegmentLog:
        kept: list[int] = []
        doomed: list[int] = []
        end = 0
        cut_at: int | None = None  # size to truncate the last kept segment to
        problem = ""
        for i, base in enumerate(found):
            if kept and base != end:
                problem = f"segment {base:020d}.seg does not continue the log (expected base {end})"
                doomed = found[i:]
                break
            fd = os.open(_segment_path(directory, base), os.O_RDONLY)
            rfds[base] = fd
            size = os.fstat(fd).st_size
            good, reason = scan(fd, size)
            next_base = found[i + 1] if i + 1 < len(found) else None
            if reason is not None and _ends_cleanly(fd, good, size, base, next_base):
                reason = None
            kept.append(base)
            end = base + good
            if reason is not None:
                problem = f"{reason} at position {end} (segment {base:020d}.seg)"
                cut_at = good
                doomed = found[i + 1 :]
                break

        cut_bytes = 0
        for base in reversed(doomed):
            path = _segment_path(directory, base)
            cut_bytes += path.stat().st_size
            path.unlink()
        if not kept:
            kept.append(0)
            active_fd = os.open(_segment_path(directory, 0), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        else:
            active_fd = os.open(_segment_path(directory, kept[-1]), os.O_WRONLY)
        try:
            if cut_at is not None:
                cut_bytes += os.fstat(active_fd).st_size - cut_at
                os.ftruncate(active_fd, cut_at)
            # Reserved now, so that the first SYNC round after a start syncs without a new size.
            fill, allocated = end - kept[-1], os.fstat(active_fd).st_size
            stop = _reserve_to(fill, allocated, segment_bytes)
            if stop is not None:
                _reserve(active_fd, fill, stop - fill)
                allocated = stop
            for base in kept[:-1]:
                _fsync(rfds[base])
            _fsync(active_fd)
            _fsync_dir(dir_fd)
        except BaseException:
            os.close(active_fd)
            raise
        if problem:
            log.warning(
                "partition log %s: %s; cut %d bytes, deleted %d later segment(s)",
                directory,
                problem,
                cut_bytes,
                len(doomed),
            )
        return cls(
            directory,
            segment_bytes,
            executor,
            kernel_sync,
            dir_fd,
            kept,
            rfds,
            active_fd,
            end,
            allocated,
            new_tail,
        )

    # ------------------------------------------------------------------ properties

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def segment_bytes(self) -> int:
        return self._segment_bytes

    @property
    def end_position(self) -> int:
        """Position after the last appended record (buffered or not): where the next append goes."""
        return self._tail.end

    @property
    def written_position(self) -> int:
        """Everything before this position has been handed to the OS."""
        return self._written

    @property
    def durable_position(self) -> int:
        """Everything before this position has been fsynced."""
        return self._durable

    @property
    def first_position(self) -> int:
        """Base of the first segment (0: segments are never expired)."""
        return self._bases[0]

    @property
    def segment_count(self) -> int:
        """Segments of the log, including ones that so far exist only in the buffer."""
        in_flight = len(self._job.new_bases) if self._job is not None else 0
        return len(self._bases) + in_flight + len(self._tail.pending_bases)

    @property
    def size_bytes(self) -> int:
        """Bytes in all segments plus the buffer (positions are contiguous across segments)."""
        return self._tail.end - self._bases[0]

    def __repr__(self) -> str:
        state = "failed" if self._failure is not None else "closed" if self._closed else "open"
        return (
            f"<SegmentLog {self._dir} {state} end={self._tail.end} written={self._written} "
            f"durable={self._durable} segments={self.segment_count}>"
        )

    # ------------------------------------------------------------------ appending and flushing

    def append(self, payload: bytes) -> int:
        """Buffer one record and return its position. No syscall; durable only after a flush."""
        length = len(payload)
        if length > _MAX_PAYLOAD:
            raise ValueError(f"payload of {length} bytes exceeds the 4 GiB record limit")
        return self.append_frame(_HEADER.pack(length, _crc(length, payload)) + payload)

    def append_frame(self, frame: bytes) -> int:
        """:meth:`append` of a record its caller framed: ``frame`` is the header and the payload
        as ``append`` writes them (the native engine's records that do not go to :attr:`tail`
        directly)."""
        tail = self._tail
        if tail.refusing:
            self.check_usable()
        return tail.append(frame)

    @property
    def tail(self) -> Tail:
        """The log's tail (``node.log_tail``): the native engine's ingest appends a partition
        part's record to it directly when it is the extension's, and while it does not refuse
        appends; everything else goes through :meth:`append`."""
        return self._tail

    async def flush(self, *, fsync: bool = True) -> None:
        """Write every record appended before the call to the OS, and fsync it if ``fsync``.

        Group commit: if a round is in flight and covers this caller, the caller just waits for
        it; otherwise the caller joins the next round, which starts when the in-flight one ends and
        covers everything appended until then, so one fsync serves all its waiters. The I/O runs
        in the executor. If the round fails, every waiter gets the error and the log is failed.
        Cancelling a waiter does not cancel the round.
        """
        self.check_usable()
        await self._flush(fsync)

    async def wait_durable(self, position: int) -> None:
        """Return once every record before ``position`` is fsynced (the record log protocol):
        a :meth:`flush` if it is not yet. Raises if the log failed, even if it was."""
        self.check_usable()
        if self._durable < position:
            await self._flush(True)

    async def _flush(self, fsync: bool) -> None:
        target = self._tail.end
        if (self._durable if fsync else self._written) >= target:
            return
        # Each caller waits on a future of its own, which the round's completion sets directly:
        # cancelling a waiter cancels only that future, never the round, and the caller resumes
        # one loop turn after the completion (a shared future behind asyncio.shield took two).
        future = asyncio.get_running_loop().create_future()
        job = self._job
        if job is not None and job.end >= target and (job.fsync or not fsync):
            job.waiters.append(future)
        elif job is None:
            self._start_job(fsync, [future])
        else:
            nxt = self._next
            if nxt is None:
                nxt = self._next = _NextRound([], fsync)
            else:
                nxt.fsync = nxt.fsync or fsync
            nxt.waiters.append(future)
        await future

    def _make_job(self, fsync: bool) -> _Job:
        """Detach the buffer into a job (on the loop thread; no I/O). A flush tick takes one per
        dirty log, so the usual case (no new segment file, nothing unsynced, the reserved space
        not running out) is spelled out."""
        data, start, end, new_bases = self._tail.detach()
        if new_bases:
            bounds = [start, *new_bases, end]
            owners = [self._bases[-1], *new_bases]
            targets = [(base, bounds[i] - start, bounds[i + 1] - start) for i, base in enumerate(owners)]
            written = [base for base, lo, hi in targets if hi > lo]
            last = new_bases[-1]
        else:
            last = self._bases[-1]
            targets = [(last, 0, end - start)]
            written = [last] if end > start else []
        unsynced = self._unsynced
        allocated_base, allocated = self._allocated
        if allocated_base == last and end - last + _RESERVE_AHEAD <= allocated:
            reserve = None  # what _reserve_for answers here, without the call
        else:
            reserve = self._reserve_for(last, end)
        return _Job(
            data,
            start,
            end,
            fsync,
            new_bases,
            targets,
            dict(self._wfds),
            reserve,
            sorted(unsynced.union(written)) if unsynced else written,
            self._dir_fd,
            self._dir_dirty,
            self._dir,
            self.on_sync,
        )

    def _reserve_for(self, base: int, end: int) -> tuple[int, int, int] | None:
        """``(base, offset, length)`` of the space a round ending at ``end`` in segment ``base``
        should allocate, if the segment is running out of it, noted as allocated from now on."""
        fill = end - base
        allocated_base, allocated = self._allocated
        stop = _reserve_to(fill, allocated if allocated_base == base else 0, self._segment_bytes)
        if stop is None:
            return None
        self._allocated = (base, stop)
        return (base, fill, stop - fill)

    def _detach(self, fsync: bool, *, defer_write: bool = False) -> _Job:
        """A round for the executor. A sync round that stays in existing segment files writes its
        data here, on the loop thread, unless ``defer_write``: a ``write`` to the page cache takes
        microseconds, and in the executor each ``write`` would have to win the GIL back from a
        busy loop (up to the switch interval each), which made a tick's 64 writes, and every
        round waiting behind them, tens of ms late under load. The thread then only syncs. A
        deferred round is written by a worker that needs no GIL (``node.tick_writes``), or else
        by its thread. Creating a segment file (a directory update, rare) stays in the thread."""
        job = self._make_job(fsync)
        # A round that reserves space takes the thread (an allocation is journal work, no loop's).
        if fsync and not job.new_bases and not defer_write and job.reserve is None:
            _write_early(job)
        return job

    def _start_job(self, fsync: bool, waiters: list[asyncio.Future[None]]) -> None:
        job = self._detach(fsync)
        job.waiters = waiters
        self._job = job
        if self._sync_in_kernel(job):
            return
        try:
            done = asyncio.get_running_loop().run_in_executor(self._executor, _run_job, job)
        except Exception as exc:  # e.g. the executor was shut down; the detached buffer is lost
            self._job = None
            self._fail(job, exc)
            _settle(waiters, exc)
            return
        done.add_done_callback(partial(self._on_job_done, job))

    def _sync_in_kernel(self, job: _Job) -> bool:
        """Hand a round whose data is written and which only has to fdatasync one existing
        segment (a SYNC caller's round, nearly always) to the kernel's asynchronous fdatasync,
        if no other sync is in the kernel; False if not (the executor takes it).

        The thread hand-off cost as much as the sync itself: waking a pool thread that then waits
        for the GIL, and handing the result back through the loop's self-pipe and a future chain.
        Here the loop thread submits the request and is woken by its completion's eventfd, and
        the kernel worker runs the same ``vfs_fsync`` as ``fdatasync`` does, so the round is as
        durable, and a stalled disk still never blocks the loop. The kernel starts that work on
        the loop's own CPU (``io_submit`` returns after 30-50 µs of it), where a pool thread can
        do it on the other core: rounds that pile up (SYNC callers of many partitions at once)
        go to the threads, which spread them, and only a lone round takes the short path. The
        loop's thread then waits for it on its CPU if it has nothing else to do
        (``KernelFdatasync.wait_on_cpu``).
        """
        kernel = self._kernel_sync
        if (
            kernel is None
            or kernel.in_flight
            or _fsync is not _FDATASYNC
            or not job.fsync
            or not job.written
            or job.write_error is not None
            or job.sync_dir
            or len(job.sync_bases) != 1
        ):
            return False
        if not kernel.submit(job.wfds[job.sync_bases[0]], partial(self._kernel_synced, job)):
            return False
        kernel.wait_on_cpu()  # a lone caller's sync: the loop's CPU stays awake for it
        return True

    def _kernel_synced(self, job: _Job, exc: OSError | None, seconds: float) -> None:
        if exc is None:
            job.sync_seconds = seconds
        self.finish_round(job, exc)

    def _on_job_done(self, job: _Job, done: asyncio.Future[None]) -> None:
        if done.cancelled():
            self.finish_round(job, OSError(errno.EIO, "partition log write was cancelled"))
        else:
            self.finish_round(job, done.exception())

    # A tick flushes many logs: instead of one executor hand-off (and its futures) per log, the
    # embedded backend (node.embedded_backend) takes each log's round with start_round, runs a
    # group of them per thread with run_rounds and hands each result back with finish_round. SYNC
    # waiters that arrive meanwhile see the round in flight and are served by it (or by the next),
    # as with flush().

    def start_round(self, *, defer_write: bool = False) -> _Job | None:
        """Detach an fsync round for :func:`run_rounds`; None if nothing is pending or a round is
        already in flight (that round, or the one queued after it, covers this log). With
        ``defer_write`` its data is not written yet (:func:`written_elsewhere`, or the thread)."""
        if self._job is not None or self._durable >= self._tail.end or self._tail.refusing:
            return None
        job = self._job = self._detach(True, defer_write=defer_write)
        return job

    def finish_round(self, job: _Job, exc: BaseException | None) -> None:
        """Apply the outcome of a round (``exc`` None: it succeeded) on the loop thread, wake its
        waiters and start the round queued after it."""
        self._job = None
        if exc is None:
            try:
                self._complete(job)
            except Exception as error:  # closing an fd failed: state unknown, so the log fails
                exc = error
        if exc is not None:
            self._fail(job, exc)
        if job.waiters:
            _settle(job.waiters, exc)
        nxt = self._next
        if nxt is not None:
            self._next = None
            if self._failure is None:
                self._start_job(nxt.fsync, nxt.waiters)
            else:
                _settle(nxt.waiters, self._failed_error())
        if self._release_when_idle and self._job is None:
            self._release()

    def _complete(self, job: _Job) -> None:
        """Apply a successful round's effect on positions and fds (loop thread)."""
        if job.new_bases:
            self._bases.extend(job.new_bases)
        if job.created:
            self._wfds.update(job.created)
        if job.fsync:
            if len(self._wfds) > 1:  # segments filled since the last sync: synced now, so closed
                active = self._bases[-1]
                for base in [b for b in self._wfds if b != active]:
                    os.close(self._wfds.pop(base))
            if self._unsynced:
                self._unsynced.clear()
            self._dir_dirty = False
            self._durable = job.end
            if job.on_sync is not None and job.sync_seconds is not None:
                job.on_sync(job.sync_seconds)
        else:
            self._unsynced.update(base for base, lo, hi in job.targets if hi > lo)
            self._dir_dirty = self._dir_dirty or bool(job.created)
        self._written = job.end

    def _fail(self, job: _Job | None, exc: BaseException) -> None:
        if job is not None:
            self._wfds.update(job.created)  # so that close() closes them
        if self._failure is None:
            self._failure = exc
            log.error("partition log %s failed: %s", self._dir, exc)
            if self.on_failure is not None:
                self.on_failure()
        self._tail.refusing = True

    def _run_sync_job(self, fsync: bool) -> None:
        """A round run inline on the calling thread (close_sync, truncate)."""
        job = self._make_job(fsync)
        try:
            _run_job(job)
        except BaseException as exc:
            self._fail(job, exc)
            raise
        self._complete(job)

    def _failed_error(self) -> Exception:
        failure = self._failure
        message = f"partition log {self._dir} failed earlier and refuses further use: {failure}"
        if isinstance(failure, OSError):
            return OSError(failure.errno, message) if failure.errno is not None else OSError(message)
        return OSError(errno.EIO, message)

    def check_usable(self) -> None:
        """Raise unless the log is open and has not failed."""
        if self._closed:
            raise RuntimeError(f"partition log {self._dir} is closed")
        if self._failure is not None:
            raise self._failed_error() from self._failure

    # ------------------------------------------------------------------ reading

    def read(self, position: int) -> bytes:
        """The payload of the record at ``position`` (buffered or on disk).

        ValueError if ``position`` is outside the log or not the start of a record (checked by the
        frame's bounds and CRC).
        """
        self.check_usable()
        tail = self._tail
        if position < self._bases[0] or position >= tail.end:
            raise ValueError(f"position {position} is outside the log [{self._bases[0]}, {tail.end})")
        if position >= tail.start:
            return _payload_from_memory(tail.buffered(), position - tail.start, position)
        job = self._job
        if job is not None and position >= job.start:
            return _payload_from_memory(job.data, position - job.start, position)
        return self._read_disk(position)

    async def read_many(self, positions: Sequence[int]) -> list[bytes]:
        """The records at ``positions``: a page-cache read each, as ``read``."""
        return [self.read(position) for position in positions]

    def _segment_of(self, position: int) -> tuple[int, int]:
        """(base, limit) of the on-disk segment holding ``position`` (< written); limit is exclusive."""
        i = bisect_right(self._bases, position) - 1
        base = self._bases[i]
        limit = self._bases[i + 1] if i + 1 < len(self._bases) else self._written
        return base, min(limit, self._written)

    def describe(self, position: int) -> str:
        """Where ``position`` (on disk) is, for an operator's message: its segment file and byte."""
        base, _ = self._segment_of(position)
        return f"byte {position - base} of {_segment_path(self._dir, base)} (log position {position})"

    def _read_fd(self, base: int) -> int:
        fd = self._rfds.get(base)
        if fd is None:
            fd = self._rfds[base] = os.open(_segment_path(self._dir, base), os.O_RDONLY)
        return fd

    def _read_disk(self, position: int) -> bytes:
        base, limit = self._segment_of(position)
        fd = self._read_fd(base)
        off = position - base
        head = os.pread(fd, min(_READ_AHEAD, limit - position), off)
        if len(head) < _HEADER_SIZE:
            raise ValueError(f"position {position} is not the start of a record")
        length, crc = _HEADER.unpack_from(head, 0)
        end = _HEADER_SIZE + length
        if position + end > limit:
            raise ValueError(f"position {position} is not the start of a record")
        if end <= len(head):
            payload = head[_HEADER_SIZE:end]
        else:
            payload = os.pread(fd, length, off + _HEADER_SIZE)
            if len(payload) < length:
                raise OSError(errno.EIO, f"segment {base:020d}.seg is shorter than the log expects")
        if _crc(length, payload) != crc:
            raise ValueError(f"position {position} is not the start of a record (checksum mismatch)")
        return payload

    def scan(self, start_position: int = 0) -> Iterator[tuple[int, bytes]]:
        """(position, payload) of every record from ``start_position`` up to the current end, in order.

        ``start_position`` must be a record start, a segment base, or the end (0 always works).
        Records appended after the call are not included. Disk segments are read in large chunks;
        buffered records are included. A record that fails its CRC on disk raises ``OSError``
        (EIO). The iterator may be suspended across appends and flushes; after ``truncate`` it must
        not be resumed (it raises RuntimeError).
        """
        self.check_usable()
        if start_position == 0:
            start_position = self._bases[0]
        end = self._tail.end
        if start_position != end and not self._is_base(start_position):
            self.read(start_position)  # ValueError unless a record starts there
        return self._scan(start_position, end)

    def _is_base(self, position: int) -> bool:
        job_bases = self._job.new_bases if self._job is not None else []
        return position in self._bases or position in job_bases or position in self._tail.pending_bases

    def _scan(self, position: int, stop: int) -> Iterator[tuple[int, bytes]]:
        truncations = self._truncations
        while position < stop:
            self._check_resumable(truncations)
            if position < self._written:
                base, limit = self._segment_of(position)
                limit = min(limit, stop)
                fd = self._read_fd(base)
                try:
                    for off, payload in _iter_records(fd, position - base, limit - base):
                        record = payload.tobytes()
                        payload.release()
                        yield base + off, record
                        if self._tail.refusing or self._truncations != truncations:
                            self._check_resumable(truncations)
                except _Corrupt as bad:
                    raise OSError(
                        errno.EIO,
                        f"partition log {self._dir}: {bad.reason} at position {base + bad.offset}",
                    ) from None
                position = limit
            else:
                record = self.read(position)
                yield position, record
                position += _HEADER_SIZE + len(record)

    def _check_resumable(self, truncations: int) -> None:
        self.check_usable()
        if self._truncations != truncations:
            raise RuntimeError("partition log was truncated during a scan; it cannot be resumed")

    # ------------------------------------------------------------------ truncating

    def truncate(self, position: int) -> None:
        """Cut the log so that ``end_position == position`` (a record start or the end), durably.

        Buffered records before ``position`` are written, the cut is applied (whole later segments
        deleted, the segment holding ``position`` truncated) and everything is fsynced before this
        returns, so afterwards ``durable_position == end_position == position``. Blocking I/O on
        the calling thread: meant for recovery. Not allowed while a flush is in flight.
        """
        self.check_usable()
        if self._job is not None:
            raise RuntimeError("cannot truncate a partition log while a flush is in flight")
        first = self._bases[0]
        end = self._tail.end
        if position < first or position > end:
            raise ValueError(f"position {position} is outside the log [{first}, {end}]")
        if position == end and self._durable == end:
            return
        if position != end and not self._is_base(position):
            self.read(position)  # ValueError unless a record starts there
        self._truncations += 1
        try:
            # 1. Drop buffered records at and after the cut, then write what remains of the buffer.
            kept = self._tail.cut(position)
            if kept:
                self._run_sync_job(fsync=False)
            # 2. Cut on disk: later segments go (last first), the one holding the cut shrinks.
            doomed = [b for b in self._bases[1:] if b >= position]
            for base in reversed(doomed):
                self._forget_segment(base)
                self._unsynced.discard(base)
                _segment_path(self._dir, base).unlink()
                self._bases.pop()
                self._dir_dirty = True
            active = self._bases[-1]
            wfd = self._wfds.get(active)
            if wfd is None:
                wfd = self._wfds[active] = os.open(_segment_path(self._dir, active), os.O_WRONLY)
            os.ftruncate(wfd, position - active)  # the reserved space goes too: no stale frames past the cut
            self._allocated = (active, position - active)
            # 3. Sync everything not yet durable, keep only the active writable fd.
            for fd in self._wfds.values():
                _fsync(fd)
            if self._dir_dirty:
                _fsync_dir(self._dir_fd)
                self._dir_dirty = False
            for base in [b for b in self._wfds if b != active]:
                os.close(self._wfds.pop(base))
            self._unsynced.clear()
        except BaseException as exc:
            self._fail(None, exc)
            raise
        self._written = self._durable = position
        self._tail.reset(position, position - active)

    def _forget_segment(self, base: int) -> None:
        for fds in (self._rfds, self._wfds):
            fd = fds.pop(base, None)
            if fd is not None:
                os.close(fd)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Flush with fsync and close every fd. Raises the failure if the log is failed (after
        releasing its fds): a close that returns normally means everything appended is durable."""
        if self._closed:
            return
        self._closed = self._tail.refusing = True
        try:
            if self._failure is None:
                await self._flush(True)
        finally:
            if self._job is None:
                self._release()
            else:  # close was cancelled mid-round: the worker still uses the fds
                self._release_when_idle = True
        if self._failure is not None:
            raise self._failed_error() from self._failure

    def close_sync(self) -> None:
        """Synchronous close (write + fsync on the calling thread), for code without an event loop."""
        if self._closed:
            return
        if self._job is not None:
            raise RuntimeError("a flush is in flight; use 'await close()'")
        self._closed = self._tail.refusing = True
        try:
            if self._failure is None and self._durable < self._tail.end:
                self._run_sync_job(fsync=True)
        finally:
            self._release()
        if self._failure is not None:
            raise self._failed_error() from self._failure

    def _release(self) -> None:
        self._release_when_idle = False
        for fds in (self._rfds, self._wfds):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
