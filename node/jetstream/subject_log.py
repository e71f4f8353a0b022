"""One partition log on one JetStream subject: a ``node.record_log.RecordLog``.

Position ``p`` is the ``p``-th record of the subject (0, 1, 2, ...): it is known when ``append``
returns, before JetStream has the record, and it is the same after a restart, because the subject
holds the records in order and only this log writes it. The stream sequence of each stored record
is kept beside it (from the publish acks, and from the recovery scan).

A record is published with ``Nats-Msg-Id`` = ``<owner epoch>.<cuts>.<subject>.<position>`` (a retry after
a timeout or a leader election is stored once) and ``Nats-Expected-Last-Subject-Sequence`` = the
sequence of the record before it, so a writer that is not the latest cannot append: a wrong-sequence
answer fails the log, unless the subject's last message is this very record (an earlier attempt of
this publish, stored after its duplicate window). Publishes of one log are sequential; each attempt
is bounded, and attempts go on (same id) for as long as NATS does not answer: the log is *stalled*
after ``stall_seconds`` without progress, and then refuses new event records with UNAVAILABLE, while
SYNC waits give up with UNAVAILABLE (never an ack); while the connection is known to be down, new
event records are refused at once (never an ASYNC ack for a record nothing can store). On a cluster
node each attempt first asks the partition's lease (``lease``): lapsed (not renewed in time), the log
waits as for an outage; lost to another node, it fails without sending, so an owner resumed after a
pause sends nothing more.

In memory the log keeps only what it must: the records appended and not yet acknowledged (a
publish retried after a timeout sends them again with the same message id), the stream sequence
of each stored record (8 bytes a record: a read asks the stream for a sequence), and a small cache
of the records read or acknowledged last (``cache_bytes``: a range query's edges and a ListEvents
page mostly touch the newest). Everything else is read back from the stream (``stream_reads``):
``read_many`` on the event loop, ``read`` and ``scan`` in a worker thread (recovery), where they
wait for the loop's fetch; on the loop they raise ``RecordsNotLoaded`` rather than block it. Not
here: the stream, the connection, when durability is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from functools import partial

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from cluster_client.errors import FieldViolation, InvalidArgumentError, UnavailableError

from ..record_log import RecordsNotLoaded
from .stream import StoredSubject
from .stream_reads import StreamReader

__all__ = ["HELD", "LAPSED", "LOST", "JetStreamLog", "LeaseState"]

HELD, LAPSED, LOST = "held", "lapsed", "lost"
LeaseState = Callable[[], str]
"""The state of the lease a log publishes under: ``HELD``, ``LAPSED`` (not renewed in time: wait) or
``LOST`` (another node may own the partition: never publish again)."""

log = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE = 10071
"""JSStreamWrongLastSequenceErrF: the expected last subject sequence did not match."""
_ATTEMPT_SECONDS = 2.0
_RETRY_PAUSE_SECONDS = 0.25
_RETRY_AFTER_SECONDS = 1.0
_GAP = 8
"""Records between two wanted ones that a read fetches too, rather than send one more request."""
_SCAN_CHUNK = 256
"""Records a scan asks the stream for at a time (the next chunk is fetched while one is used)."""


class JetStreamLog:
    """A record log over subject ``subject`` of stream ``stream``."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        stored: StoredSubject,
        reader: StreamReader,
        *,
        cache_bytes: int,
        epoch: str,
        stall_seconds: float,
        refuses_when_stalled: bool,
        max_record_bytes: int,
        lease: LeaseState | None = None,
        connected: Callable[[], bool] | None = None,
    ) -> None:
        """``stored``: where the subject's messages are (their stream sequences, in order);
        ``reader`` reads them back; ``cache_bytes`` bounds the cache of recent records.
        ``refuses_when_stalled``: the event log refuses appends while stalled; the alert log never
        does (an alert record follows an event record already appended); likewise only the event
        log refuses a record over ``max_record_bytes`` (the servers' payload limit) up front: an
        alert record that large fails the log when JetStream refuses it. ``connected``: whether
        the node's NATS connection is up now; while it is down (reconnecting) the event log refuses
        appends at once, since nothing could store them (the alert log follows its events)."""
        self._js = js
        self._stream = stream
        self.subject = subject
        self._reader = reader
        self._loop = asyncio.get_running_loop()
        self._seqs: array[int] = array("q", stored.seqs)
        """Stream sequence of each stored record (its length is the durable position)."""
        self._pending: deque[bytes] = deque()
        """The records after the durable position, not yet acknowledged by the stream."""
        self._recent: OrderedDict[int, bytes] = OrderedDict()
        """Stored records acknowledged or read last, oldest first, ``cache_bytes`` at most."""
        self._recent_bytes = 0
        self._cache_bytes = cache_bytes
        self._size = stored.size_bytes
        self._epoch = epoch
        self._stall_seconds = stall_seconds
        self._refuses = refuses_when_stalled
        self._max_record = max_record_bytes
        self._lease = lease
        self._connected = connected
        self._cuts = 0
        """Truncations so far: part of the message id, so that a record appended at a position a
        truncation freed is not taken for the cut record's duplicate (the same epoch and position
        within the stream's duplicate window)."""
        self._cut: list[int] = []
        """Stream sequences a truncate removed from this log, still to be deleted in the stream."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._publisher: asyncio.Task[None] | None = None
        self._own_publish = False
        """Whether a caller is publishing the one pending record itself (see wait_durable)."""
        self._failure: OSError | None = None
        self._progress = time.monotonic()
        """When the publisher last stored something (or started with nothing behind)."""
        self.stalled = False
        """Whether the publisher has retried for ``stall_seconds`` without progress."""
        self.on_failure: Callable[[], None] | None = None
        self.on_sync: Callable[[float], None] | None = None
        """Observer of each record's store time (first attempt to ack), like the embedded
        backend's fsync round durations."""
        self._closed = False

    # ------------------------------------------------------------------ RecordLog

    @property
    def end_position(self) -> int:
        return len(self._seqs) + len(self._pending)

    @property
    def durable_position(self) -> int:
        return len(self._seqs)

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def segment_count(self) -> int:
        return 1  # one subject

    @property
    def memory_bytes(self) -> int:
        """Bytes of records held in memory: the unacknowledged ones and the cache of recent ones
        (the stream sequences besides: 8 bytes a record)."""
        return sum(len(r) for r in self._pending) + self._recent_bytes

    def append(self, record: bytes) -> int:
        self.check_usable()
        if self._refuses and (self.stalled or self._stalled_now()):
            raise UnavailableError(
                f"JetStream has not stored {self.subject} for {self._stall_seconds:.0f}s; retry later",
                reason="NATS_UNAVAILABLE",
                retry_after_seconds=_RETRY_AFTER_SECONDS,
            )
        if self._refuses and self._connected is not None and not self._connected():
            raise UnavailableError(
                f"the node's connection to NATS is down (reconnecting): {self.subject} cannot be "
                "stored now; retry with the same event ids",
                reason="NATS_UNAVAILABLE",
                retry_after_seconds=_RETRY_AFTER_SECONDS,
            )
        if self._refuses and len(record) > self._max_record:
            raise InvalidArgumentError(
                f"the batch's record for this partition is {len(record)} bytes, more than the "
                f"{self._max_record} a JetStream message may carry: send smaller batches",
                violations=[FieldViolation("events", f"at most {self._max_record} bytes per partition")],
            )
        if not self._pending:
            self._progress = time.monotonic()  # nothing was pending: the stall clock starts now
        self._pending.append(record)
        self._size += len(record)
        return self.end_position - 1

    async def wait_durable(self, position: int) -> None:
        """Wait for ``position``; UNAVAILABLE once the log has been stalled the whole
        ``stall_seconds`` (the record stays queued: a retry of the call waits for it again).

        A caller waiting for the log's one pending record, with no publisher running and nobody
        else waiting (a lone SYNC call, the common case), publishes it from its own task: no
        publisher task to start and no hand-back from it, two loop turns less per call. One
        attempt only: if it does not store the record, the publisher task takes over (same message
        id, so an attempt that was stored after all is stored once) and the caller waits for it."""
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows the caller's
            # cancellation when the future completes in the same loop turn, and the node's
            # maintenance loop, cancelled at shutdown in a snapshot's flush, then ran on for ever
            # (SIGTERM hung: seen in the rolling-restart test).
            async with asyncio.timeout(self._stall_seconds):
                if self._lone_pending(position) and await self._publish_own(position - 1):
                    return
                # The future is this caller's own: awaited directly (not through asyncio.shield),
                # a cancelled caller cancels only it, and resumes one loop turn after the ack.
                await self.durable_future(position)
        except TimeoutError:
            raise UnavailableError(
                f"JetStream has not acknowledged {self.subject} within {self._stall_seconds:.0f}s; "
                "retry with the same event ids",
                reason="NATS_UNAVAILABLE",
                retry_after_seconds=_RETRY_AFTER_SECONDS,
            ) from None

    def durable_future(self, position: int) -> asyncio.Future[None]:
        """A future done once every record before ``position`` is stored (failed with the log)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # a waiter that gave up must not leave it unretrieved
        if self._failure is not None:
            future.set_exception(self._failure)
        elif position <= len(self._seqs) and not self._cut:
            future.set_result(None)
        else:
            self._waiters.append((position, future))
            self.kick()
        return future

    def read(self, position: int) -> bytes:
        self.check_usable()
        self._check_position(position)
        record = self._in_memory(position)
        if record is not None:
            return record
        if self._on_loop():
            raise RecordsNotLoaded([position])
        return self._fetch_from_thread([position]).result()[position]

    async def read_many(self, positions: Sequence[int]) -> list[bytes]:
        self.check_usable()
        found: dict[int, bytes] = {}
        missing: list[int] = []
        for position in positions:
            self._check_position(position)
            record = self._in_memory(position)
            if record is None:
                missing.append(position)
            else:
                found[position] = record
        if missing:
            fetched = await self._fetch(sorted(set(missing)))
            for position in missing:
                found[position] = fetched[position]
                self._remember(position, fetched[position])
        return [found[position] for position in positions]

    def scan(self, start_position: int = 0) -> Iterator[tuple[int, bytes]]:
        stored = len(self._seqs)
        pending = list(self._pending)  # a copy: acknowledgements move records out meanwhile
        position = start_position
        ahead: dict[int, Future[dict[int, bytes]]] = {}
        """The fetch of the chunk starting at its key, started while the one before was used."""
        while position < stored:
            chunk = range(position, min(position + _SCAN_CHUNK, stored))
            records = [self._in_memory(p) for p in chunk]
            if any(r is None for r in records):
                if self._on_loop():
                    raise RecordsNotLoaded([p for p, r in zip(chunk, records, strict=True) if r is None])
                fetch = ahead.pop(position, None) or self._fetch_from_thread(list(chunk))
                after = range(chunk.stop, min(chunk.stop + _SCAN_CHUNK, stored))
                if after:
                    ahead = {after.start: self._fetch_from_thread(list(after))}
                fetched = fetch.result()
                records = [fetched[p] for p in chunk]
            for p, record in zip(chunk, records, strict=True):
                assert record is not None
                yield p, record
            position = chunk.stop
        for p in range(max(position, stored), stored + len(pending)):
            yield p, pending[p - stored]

    def truncate(self, position: int) -> None:
        """Cut the records from ``position`` on; their messages are deleted from the stream before
        anything else is published on the subject (a crash before that cuts them again at the next
        recovery, which reads the same messages)."""
        self.check_usable()
        removed = sum(len(record) for _, record in self.scan(position))
        stored = len(self._seqs)
        if position < stored:
            self._cut.extend(self._seqs[position:])
            del self._seqs[position:]
            self._pending.clear()
        else:
            while len(self._pending) > position - stored:
                self._pending.pop()
        for p in [p for p in self._recent if p >= position]:
            self._recent_bytes -= len(self._recent.pop(p))
        self._cuts += 1
        self._size -= removed

    def describe(self, position: int) -> str:
        seq = self._seqs[position] if position < len(self._seqs) else None
        where = f"stream sequence {seq}" if seq is not None else "not yet stored"
        return f"record {position} of JetStream subject {self.subject} ({where})"

    def check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise OSError(errno.EBADF, f"log {self.subject} is closed")

    async def close(self) -> None:
        """Wait (bounded by the stall time) for every record to be stored, then stop publishing."""
        try:
            if not self._closed:
                await self.wait_durable(self.end_position)
        except UnavailableError as exc:
            raise OSError(errno.EIO, f"{self.subject}: records not stored at close: {exc}") from None
        finally:
            self._closed = True
            await self.stop()

    async def abandon(self, reason: str) -> None:
        """Give the log up (its node no longer serves the partition): every later use and every
        waiter fails with ``reason``, and nothing more is published."""
        if self._failure is None:
            self._failure = OSError(errno.EIO, f"JetStream log {self.subject}: {reason}")
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(self._failure)
            self._waiters = []
        await self.stop()

    async def stop(self) -> None:
        """Stop publishing (what is still pending stays unstored): the connection is closing."""
        publisher = self._publisher
        if publisher is not None:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    # ------------------------------------------------------------------ reading

    def _check_position(self, position: int) -> None:
        if not 0 <= position < self.end_position:
            raise ValueError(f"no record at position {position} of {self.subject}")

    def _in_memory(self, position: int) -> bytes | None:
        stored = len(self._seqs)
        if position >= stored:
            return self._pending[position - stored]
        return self._recent.get(position)

    def _remember(self, position: int, record: bytes) -> None:
        """Keep a stored record in the cache of recent ones (dropping the oldest beyond its size)."""
        if position in self._recent or len(record) > self._cache_bytes:
            return
        self._recent[position] = record
        self._recent_bytes += len(record)
        while self._recent_bytes > self._cache_bytes:
            self._recent_bytes -= len(self._recent.popitem(last=False)[1])

    def _on_loop(self) -> bool:
        """Whether this runs on the event loop's thread (which must never wait for a fetch)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def _fetch(self, positions: list[int]) -> dict[int, bytes]:
        """Stored records at ``positions`` (increasing) from the stream, and maybe some between
        them: positions at most ``_GAP`` apart make one run of consecutive records, one batched
        read (an account's records of an hour lie close together among other accounts'), and
        the runs are read together."""
        runs: list[list[int]] = []
        for position in positions:
            if runs and position - runs[-1][-1] <= _GAP:
                runs[-1].extend(range(runs[-1][-1] + 1, position + 1))
            else:
                runs.append([position])
        seqs = self._seqs
        found = await self._reader.read(self.subject, [[seqs[p] for p in run] for run in runs])
        out: dict[int, bytes] = {}
        for run, records in zip(runs, found, strict=True):
            out.update(zip(run, records, strict=True))
        return out

    def _fetch_from_thread(self, positions: list[int]) -> Future[dict[int, bytes]]:
        """Start fetching ``positions`` on the event loop from a worker thread; its ``result()``
        is bounded by the reads' own timeouts."""
        return asyncio.run_coroutine_threadsafe(self._fetch(positions), self._loop)

    # ------------------------------------------------------------------ publishing

    def kick(self) -> None:
        """Start publishing what is pending, unless the publisher (or a caller publishing its own
        record) is at it already."""
        if self._publisher is None and not self._own_publish and self._failure is None and not self._closed:
            self._publisher = asyncio.get_running_loop().create_task(
                self._publish_pending(), name=f"unimeter-publish-{self.subject}"
            )

    def _stalled_now(self) -> bool:
        pending = self._pending or self._cut
        return bool(pending) and time.monotonic() - self._progress > self._stall_seconds

    def _lone_pending(self, position: int) -> bool:
        """Whether waiting for ``position`` waits for the log's one pending record, which nothing
        is publishing and nobody else waits for."""
        return (
            self._publisher is None
            and not self._own_publish
            and not self._waiters
            and not self._cut
            and self._failure is None
            and not self._closed
            and position == self.end_position == self.durable_position + 1
        )

    async def _publish_own(self, position: int) -> bool:
        """One attempt at storing record ``position`` from the waiting caller's task; True once it
        is stored. False: not stored by this attempt (JetStream did not answer in time, the lease
        lapsed, the connection failed, the log failed meanwhile): the publisher task takes it over
        for whoever waits, as it does when this caller is cancelled mid-attempt."""
        self._own_publish = True
        stored = False
        try:
            started = time.monotonic()
            seq = await self._store(position)
            if self._failure is None and not self._cut and self.durable_position == position:
                self._stored(position, seq, started)
                stored = True
        except _Refused as exc:
            self._fail(str(exc))
        except (TimeoutError, nats.errors.Error, APIError, OSError):
            pass  # retried by the publisher task, which also reports a stall
        finally:
            self._own_publish = False
            if not stored or self._waiters:
                self.kick()
        return stored

    async def _publish_pending(self) -> None:
        try:
            while self._failure is None and (self._cut or self._pending):
                if self._cut:
                    await self._retrying(self._delete_cut)
                    continue
                position = len(self._seqs)
                started = time.monotonic()
                seq = await self._retrying(partial(self._store, position))
                if self._failure is not None:
                    break
                self._stored(position, seq, started)
        except _Refused as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug must fail the log (no acks), not leave waiters hanging
            log.exception("publishing %s failed", self.subject)
            self._fail(f"publishing failed: {exc}")
        finally:
            self._publisher = None

    def _stored(self, position: int, seq: int, started: float) -> None:
        """Record the stream sequence of ``position`` (the next pending record, which moves to the
        cache of recent records), then wake the waiters it satisfies."""
        self._seqs.append(seq)
        self._remember(position, self._pending.popleft())
        self._progress = time.monotonic()
        if self.on_sync is not None:
            self.on_sync(self._progress - started)
        if self.stalled:
            self.stalled = False
            log.info("JetStream is storing %s again", self.subject)
        self._release()

    async def _retrying(self, attempt: Callable[[], Awaitable[int]]) -> int:
        """Run ``attempt`` until it succeeds (its result) or raises _Refused; a stall is reported
        after ``stall_seconds`` without progress."""
        while True:
            try:
                return await attempt()
            except _Refused:
                raise
            except (TimeoutError, nats.errors.Error, APIError, OSError) as exc:
                if time.monotonic() - self._progress > self._stall_seconds:
                    if not self.stalled:
                        log.warning("JetStream is not storing %s: %s; retrying", self.subject, exc)
                    self.stalled = True
                await asyncio.sleep(_RETRY_PAUSE_SECONDS)

    def _check_lease(self) -> None:
        """Before anything is sent: _Refused once the lease is lost, TimeoutError (retried) while
        it is lapsed."""
        if self._lease is not None:
            state = self._lease()
            if state == LOST:
                raise _Refused(f"this node lost the lease of {self.subject}; nothing more is sent")
            if state != HELD:
                raise TimeoutError(f"the lease of {self.subject} lapsed: not renewed in time")

    async def _store(self, position: int) -> int:
        self._check_lease()
        msg_id = f"{self._epoch}.{self._cuts}.{self.subject}.{position}"
        expected = self._seqs[position - 1] if position else 0
        headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(expected)}
        try:
            async with asyncio.timeout(_ATTEMPT_SECONDS + 0.5):  # not wait_for: see wait_durable
                ack = await self._js.publish(
                    self.subject, self._pending[0], timeout=_ATTEMPT_SECONDS, headers=headers
                )
        except nats.errors.MaxPayloadError:
            size = len(self._pending[0])
            raise _Refused(
                f"record {position} ({size} bytes) is larger than the servers' max_payload"
            ) from None
        except APIError as exc:
            if exc.err_code != _WRONG_LAST_SEQUENCE:
                raise
            last = await self._js.get_last_msg(self._stream, self.subject)
            if (last.headers or {}).get("Nats-Msg-Id") == msg_id:
                return int(last.seq or 0)  # our own earlier attempt, stored after its duplicate window
            raise _Refused(
                f"another writer appended to {self.subject} (stream sequence {last.seq} is not this "
                f"node's record {position}): this node no longer owns the partition"
            ) from None
        if ack.stream != self._stream:
            raise _Refused(f"{self.subject} was stored in stream {ack.stream}, not {self._stream}")
        return int(ack.seq)

    async def _delete_cut(self) -> int:
        self._check_lease()
        while self._cut:
            with contextlib.suppress(NotFoundError):  # deleted by an earlier attempt
                await self._js.delete_msg(self._stream, self._cut[-1])
            self._cut.pop()
        self._release()
        return 0

    def _release(self) -> None:
        durable = len(self._seqs) if not self._cut else -1
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for position, future in self._waiters:
            if position <= durable:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((position, future))
        self._waiters = keep

    def _fail(self, reason: str) -> None:
        self._failure = OSError(errno.EIO, f"JetStream log {self.subject} failed: {reason}")
        log.error("%s", self._failure)
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(self._failure)
        self._waiters = []
        if self.on_failure is not None:
            self.on_failure()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _Refused(Exception):
    """JetStream will never store the record (another writer owns the subject, or the record is
    larger than the servers take): the log fails."""
