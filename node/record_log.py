"""The seam under the partition: what a partition needs from the storage of its records.

A partition appends records (bytes from ``node.records``) to two logs, its events and its alerts,
keeps a snapshot beside them, and leaves durability to ``node.commit_scheduler``. These protocols
are all it knows: a log hands out opaque positions that only increase, and a backend makes many
partitions' logs durable together in whatever way is cheapest for it. The embedded backend
(``node.embedded_backend`` over ``node.segment_log``) is one implementation; a replicated log is
another, written against these protocols without touching what is above them. Not here: record
formats, when durability is asked for, and anything about files, segments or fsync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

__all__ = ["PartitionStorage", "RecordBackend", "RecordLog", "RecordsNotLoaded", "read_fetching"]

_T = TypeVar("_T")


class RecordsNotLoaded(Exception):
    """A synchronous read on the event loop's thread asked for records the log does not hold in
    memory: a backend whose older records live in a remote store (JetStream) fetches them over
    the network, which the loop cannot wait for. ``await log.read_many(positions)`` fetches them."""

    def __init__(self, positions: Sequence[int]) -> None:
        super().__init__(
            f"records {list(positions)[:8]} are not in memory, and the event loop's thread does not "
            "wait for the network: await read_many, or read them in a worker thread"
        )
        self.positions = list(positions)


class RecordLog(Protocol):
    """An append-only log of records addressed by opaque positions.

    A position is an int that only increases along the log and stays valid across restarts; a
    caller compares and stores positions (a snapshot holds them) but never computes one. Appends
    are in memory until the backend makes them durable. An I/O failure makes the log *failed*:
    every later append, read or wait raises ``OSError``, since what it holds is no longer known.
    """

    on_failure: Callable[[], None] | None
    """Called once, when the log fails and starts refusing writes."""

    @property
    def end_position(self) -> int:
        """Where the next record goes: every record appended so far is before it."""
        ...

    @property
    def durable_position(self) -> int:
        """Every record before this position is durable."""
        ...

    @property
    def size_bytes(self) -> int:
        """Bytes the log's records take in its storage (framing included)."""
        ...

    @property
    def segment_count(self) -> int:
        """Storage units the log occupies (segment files for the embedded backend)."""
        ...

    def append(self, record: bytes) -> int:
        """Add a record (not yet durable) and return its position. Raises if the log failed."""
        ...

    async def wait_durable(self, position: int) -> None:
        """Return once every record before ``position`` is durable, asking for it if nobody has.
        Raises if the log failed, even when ``position`` was durable before the failure."""
        ...

    def read(self, position: int) -> bytes:
        """The record at ``position``; ValueError if no record starts there. It may wait for
        storage: a disk read, or on a replicated backend a network round trip, which it does only
        off the event loop's thread (recovery runs in a worker thread): on the loop it raises
        RecordsNotLoaded for a record it does not hold in memory."""
        ...

    async def read_many(self, positions: Sequence[int]) -> list[bytes]:
        """The records at ``positions``, in that order (ValueError as ``read``), for a caller on
        the event loop: what is not in memory is fetched together, in as few round trips as the
        backend can; UnavailableError when its storage does not answer in time."""
        ...

    def scan(self, start_position: int = 0) -> Iterator[tuple[int, bytes]]:
        """(position, record) from ``start_position`` (a record's position, ``end_position``, or 0
        for the beginning) up to the end at the call. Reads storage like ``read`` (on the loop's
        thread, RecordsNotLoaded at the first record not in memory)."""
        ...

    def truncate(self, position: int) -> None:
        """Durably remove the record at ``position`` and every later one (recovery cuts alert
        records whose events were lost); afterwards ``end_position == position``."""
        ...

    def describe(self, position: int) -> str:
        """Where the record at ``position`` is, in the backend's own terms, for an operator's
        message (the embedded backend: segment file and byte)."""
        ...

    def check_usable(self) -> None:
        """Raise unless the log is open and has not failed."""
        ...

    async def close(self) -> None:
        """Make everything appended durable and release the log; raises if it failed."""
        ...


class PartitionStorage(Protocol):
    """One partition's storage: its two logs and the slot of its latest snapshot."""

    @property
    def events(self) -> RecordLog:
        """Event records (``node.records.EventRecord``), one per ingested partition batch."""
        ...

    @property
    def alerts(self) -> RecordLog:
        """Alert records (``node.records.AlertRecord``)."""
        ...

    index_directory: Path | None
    """The local directory of the partition's index runs of aged hours (``node.index_runs``), or
    None: the backend keeps every ListEvents position in memory."""

    def read_snapshot(self) -> tuple[bytes, float] | None:
        """The latest snapshot's bytes and the wall-clock time it was stored, or None. Read by
        the partition's recovery; the JetStream storage answers only its first call (with the
        snapshot it was loaded with) and None after: it keeps no snapshot bytes in memory."""
        ...

    def write_snapshot(self, pieces: Sequence[bytes | memoryview]) -> asyncio.Future[None]:
        """Start replacing the snapshot with the bytes of ``pieces``, one after the other,
        atomically; the future ends with the write (it runs on even if the caller stops waiting
        for it). Pieces, not their join: the file takes them without a second copy in memory."""
        ...


class RecordBackend(Protocol):
    """Where a node's partitions keep their records, and how they become durable together."""

    name: str
    """What ``GetClusterStatus`` reports as the backend ("embedded")."""

    def open_partition(self, number: int) -> PartitionStorage:
        """Open (or create) partition ``number``'s storage, recovering a torn tail of its logs."""
        ...

    def commit_group(self, partitions: Sequence[int], *, background: bool, then: Callable[[], None]) -> None:
        """Start making both logs of each of ``partitions`` durable up to their ends now, in as few
        operations as the backend can; ``then()`` runs on the event loop once all are done (at once
        if none was pending). A log whose durability is already under way is left to it. A log's
        failure fails that log (its waiters see it), never the group. ``background``: the periodic
        flush, which must not hold up a caller's or an alert's round."""
        ...

    def close(self) -> None:
        """Release what the backend holds beyond its logs (threads, descriptors), after every
        partition's logs are closed."""
        ...


async def read_fetching(log: RecordLog, read: Callable[[], _T], loaded: dict[int, bytes]) -> _T:
    """``read()`` (synchronous: a query, an event page, an alert page) with the records of ``log``
    it needs at hand in ``loaded``, which ``read`` consults before ``log.read``.

    A log whose older records live in a remote store (JetStream) answers a read of one it does not
    hold in memory with RecordsNotLoaded, naming every record the read is about to need (not just
    the first: a page is one round trip, not one per record); they are fetched together into
    ``loaded`` and ``read()`` runs again. Reads change nothing, so running one again is safe, and
    each run is one synchronous step, so what it sees is consistent; records appended meanwhile
    are in the log's memory.
    """
    while True:
        try:
            return read()
        except RecordsNotLoaded as exc:
            wanted = [p for p in dict.fromkeys(exc.positions) if p not in loaded]
            if not wanted:
                raise  # nothing new to fetch: running the read again would loop for ever
        loaded.update(zip(wanted, await log.read_many(wanted), strict=True))
