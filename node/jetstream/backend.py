"""The JetStream backend: a ``node.record_log.RecordBackend`` whose partitions live in one stream.

Opening it (:func:`open_jetstream_backend`, before the node is built) connects, checks that the
servers can promise SYNC and creates or checks the stream. A node that serves every partition has
them all loaded then (where each record is, and the snapshots: ``Node`` opens its partitions
synchronously, and must be built in a worker thread, whose recovery reads the records from the
stream); a node of a cluster loads one partition when it takes its lease
(:meth:`JetStreamBackend.load_partition`) and drops it when it hands it over. A group commit
starts each pending log's publisher and waits for their acks; the snapshots are objects of a
replicated object store bucket, one per partition, replaced whole. Not here: one subject's appends
and fencing (``subject_log``), the stream's settings (``stream``), reading records back
(``stream_reads``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ObjectNotFoundError,
    ServiceUnavailableError,
)
from nats.js.object_store import ObjectStore

from ..stats import NodeStats
from .connection import NatsOptions, check_server_version, check_sync_always, connect
from .errors import NatsRefused, NatsUnavailable
from .stream import (
    PEERS_OFFLINE,
    StoredSubject,
    StreamLayout,
    ensure_stream,
    scan_stream,
    stream_servers,
    subject_counts,
)
from .stream_reads import StreamReader
from .subject_log import HELD, JetStreamLog

__all__ = [
    "JetStreamBackend",
    "JetStreamSettings",
    "JetStreamStorage",
    "open_jetstream_backend",
    "when_settled",
]

log = logging.getLogger(__name__)

_SETUP_SECONDS = 20.0
_T = TypeVar("_T")
_HEADER_ROOM = 1024
"""Bytes of a message's payload limit left for its headers (message id, expected sequence)."""


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """The deployment's stream and how this node writes to it."""

    stream: str = "UNIMETER"
    replicas: int = 3
    partitions: int | None = None
    """The node's partition count (None: the stream's; 64 for a new stream)."""
    monitor_urls: tuple[str, ...] = ()
    """Each server's monitoring URL, to verify ``sync_interval: always`` (see ``connection``)."""
    allow_unsynced: bool = False
    """Start even when the servers' sync setting is unverified or not ``always`` (with a WARNING)."""
    stall_seconds: float = 10.0
    """Seconds without progress after which a log refuses writes and SYNC waits give up
    (UNAVAILABLE): longer than a leader election (about 6 s)."""
    epoch: str = ""
    """This writer's epoch in message ids (a fresh one per start when empty)."""
    cache_bytes: int = 256 << 10
    """Bytes of recent records each log keeps in memory besides the unacknowledged ones (the
    rest is read back from the stream; 0: all of it). ``unimeter serve --nats-record-cache-bytes``."""


class JetStreamStorage:
    """One partition: its two subject logs and its snapshot object."""

    def __init__(
        self,
        events: JetStreamLog,
        alerts: JetStreamLog,
        bucket: ObjectStore,
        name: str,
        snapshot: tuple[bytes, float] | None,
        held: Callable[[], bool] | None = None,
    ) -> None:
        """``held``: whether this node still holds the partition's lease (None: it always does)."""
        self.events = events
        self.alerts = alerts
        self._bucket = bucket
        self._name = name
        self._snapshot = snapshot
        self._held = held
        # A node taking the partition over has only the stream and the snapshot object, no local
        # files: every ListEvents position stays in memory (docs/operations.md, "Memory horizon").
        self.index_directory: Path | None = None

    def read_snapshot(self) -> tuple[bytes, float] | None:
        # Given to the first caller only (the partition, as it recovers) and then dropped, as is
        # every snapshot this storage writes: kept, they held each partition's last snapshot in
        # memory for as long as the node served it (the size of the state, again).
        snapshot, self._snapshot = self._snapshot, None
        return snapshot

    def write_snapshot(self, pieces: Sequence[bytes | memoryview]) -> asyncio.Future[None]:
        # An object store put takes the object whole.
        return asyncio.ensure_future(self._put(b"".join(pieces)))

    async def _put(self, data: bytes) -> None:
        if self._held is not None and not self._held():
            # A former owner resumed after a pause must not replace the new owner's snapshot.
            raise OSError(f"snapshot {self._name} not stored: this node no longer holds the partition")
        written_at = time.time()
        meta = ObjectMeta(name=self._name, description=repr(written_at))
        try:
            # Retried through a leader election of the bucket's stream: a put replaces the whole
            # object, so a second attempt after a lost answer stores the same snapshot.
            await when_settled(
                partial(self._bucket.put, self._name, data, meta=meta), f"snapshot {self._name}"
            )
        except Exception as exc:
            raise OSError(f"snapshot {self._name} not stored in JetStream: {exc}") from exc


class JetStreamBackend:
    """Every partition of the deployment's stream, owned by this node."""

    name = "nats"

    def __init__(
        self,
        client: NatsClient,
        js: JetStreamContext,
        layout: StreamLayout,
        bucket: ObjectStore,
        settings: JetStreamSettings,
    ) -> None:
        self._client = client
        self._settings = settings
        self._stall_seconds = settings.stall_seconds
        self._js = js
        self.layout = layout
        self._bucket = bucket
        self._reader = StreamReader(client, js, layout.stream)
        self._storages: dict[int, JetStreamStorage] = {}
        self._stats: NodeStats | None = None
        self.lease_state: Callable[[int], str] | None = None
        """The state of this node's lease on a partition (``subject_log.HELD``, ...), asked before
        each publish of a partition loaded afterwards; None: a node serving every partition."""
        self._commits: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> NatsClient:
        """The node's NATS connection (for the other JetStream users of the node: KV buckets)."""
        return self._client

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of that connection."""
        return self._js

    @property
    def reader(self) -> StreamReader:
        """What reads records back from the stream (its ``requests`` count the round trips)."""
        return self._reader

    @property
    def partitions(self) -> int:
        """The deployment's partition count, as its stream records it."""
        return self.layout.partitions

    def factory(self, config: object, stats: NodeStats) -> JetStreamBackend:
        """A ``node.node.BackendFactory`` handing this (already open) backend to the node, whose
        store-time histograms its logs feed."""
        del config  # the backend was opened with its own settings
        self._stats = stats
        for storage in self._storages.values():
            self._observe(storage)
        return self

    def _observe(self, storage: JetStreamStorage) -> None:
        if self._stats is not None:
            storage.events.on_sync = self._stats.fsync_events.observe
            storage.alerts.on_sync = self._stats.fsync_alerts.observe

    async def load_all(self) -> None:
        """Load every partition (one scan of the whole stream), for a node serving them all."""
        stored = await when_settled(lambda: scan_stream(self._js, self.layout), "the scan")
        for number in range(self.layout.partitions):
            name = f"partition-{number}"
            snapshot = await when_settled(partial(_read_snapshot, self._bucket, name), "a snapshot")
            self._add(number, stored, snapshot)
        log.info(
            "JetStream stream %s: %d partitions, %d records found",
            self.layout.stream, self.layout.partitions, sum(len(v.seqs) for v in stored.values()),
        )  # fmt: skip

    async def load_partition(self, number: int) -> JetStreamStorage:
        """Load partition ``number`` (its lease already held by this node): its snapshot first,
        then where every record of its subjects is (they include whatever that snapshot covers;
        recovery then reads from the snapshot's position on)."""
        name = f"partition-{number}"
        snapshot = await when_settled(partial(_read_snapshot, self._bucket, name), "a snapshot")
        stored = await when_settled(lambda: scan_stream(self._js, self.layout, number), "the scan")
        return self._add(number, stored, snapshot)

    def _add(
        self,
        number: int,
        stored: dict[str, StoredSubject],
        snapshot: tuple[bytes, float] | None,
    ) -> JetStreamStorage:
        # A fresh writer epoch per load: message ids of this load never repeat those of an
        # earlier load of the partition by this node (whose publishes may have been refused).
        epoch = self._settings.epoch or uuid.uuid4().hex[:12]
        logs = [
            JetStreamLog(
                self._js,
                self.layout.stream,
                self.layout.subject(number, kind),
                stored.get(self.layout.subject(number, kind)) or StoredSubject(),
                self._reader,
                cache_bytes=self._settings.cache_bytes,
                epoch=epoch,
                stall_seconds=self._stall_seconds,
                refuses_when_stalled=kind == "events",
                max_record_bytes=self._client.max_payload - _HEADER_ROOM,
                lease=partial(self.lease_state, number) if self.lease_state is not None else None,
                connected=lambda: self._client.is_connected,
            )
            for kind in ("events", "alerts")
        ]
        lease = self.lease_state
        held = (lambda: lease(number) == HELD) if lease is not None else None
        storage = JetStreamStorage(logs[0], logs[1], self._bucket, f"partition-{number}", snapshot, held)
        self._observe(storage)
        self._storages[number] = storage
        return storage

    async def drop_partition(self, number: int, reason: str) -> None:
        """Forget partition ``number`` (the node closed it, or stopped serving it): its logs are
        given up for ``reason`` and publish nothing more."""
        storage = self._storages.pop(number, None)
        if storage is not None:
            await storage.events.abandon(reason)
            await storage.alerts.abandon(reason)

    def subject_counts(self) -> Awaitable[dict[str, int]]:
        """Records of each partition's event subject in the stream (see ``stream.subject_counts``)."""
        return subject_counts(self._js, self.layout)

    def open_partition(self, number: int) -> JetStreamStorage:
        storage = self._storages.get(number)
        if storage is None:
            raise NatsRefused(
                f"partition {number} does not exist in JetStream stream {self.layout.stream} "
                f"({self.layout.partitions} partitions): the data directory's partition count differs"
            )
        return storage

    def commit_group(self, partitions: Sequence[int], *, background: bool, then: Callable[[], None]) -> None:
        """Publish what each log of ``partitions`` holds beyond its acks; ``then()`` once all are
        acknowledged (a failed log counts as done: its waiters see the failure), or once the stall
        time has passed without."""
        storages = [self._storages[n] for n in partitions if n in self._storages]
        futures = [
            log_.durable_future(log_.end_position)
            for storage in storages
            for log_ in (storage.events, storage.alerts)
            if log_.durable_position < log_.end_position
        ]
        if not futures:
            then()
            return

        async def wait() -> None:
            # Bounded like a log's own wait: during an outage a SYNC call over several partitions
            # goes on to their flushes, which answer UNAVAILABLE, and a tick lets the next one try.
            # Every caller checks what is durable after then(), so an early then() acks nothing.
            await asyncio.wait(futures, timeout=self._stall_seconds)
            then()

        task = asyncio.get_running_loop().create_task(wait())
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    def close(self) -> None:
        """Nothing to release synchronously: :meth:`disconnect` closes the connection."""

    async def disconnect(self) -> None:
        """Close the NATS connection (after the node closed its partitions)."""
        for task in list(self._commits):
            task.cancel()
        for storage in self._storages.values():
            await storage.events.stop()
            await storage.alerts.stop()
        await self._reader.close()
        await self._client.close()


async def open_jetstream_backend(
    options: NatsOptions, settings: JetStreamSettings, *, load: bool = True
) -> JetStreamBackend:
    """Connect, verify, set up the stream, and (``load``) load every partition.

    NatsUnavailable when no server answers; NatsRefused when the servers or the stream cannot
    serve the node as configured. Nothing is written before every check has passed, except a
    stream (and snapshot bucket) created when none existed.
    """
    client = await connect(options)
    try:
        js = client.jetstream(timeout=5.0)
        check_server_version(client)
        try:
            await js.account_info()
        except Exception as exc:
            urls = ", ".join(options.urls)
            raise NatsRefused(f"JetStream is not available to this account on {urls}: {exc}") from None
        layout = await when_settled(
            lambda: ensure_stream(js, settings.stream, settings.replicas, settings.partitions), "the stream"
        )
        bucket = await when_settled(
            lambda: _snapshot_bucket(js, layout, settings.replicas), "the snapshot bucket"
        )
        await _check_sync(js, settings, layout)
        backend = JetStreamBackend(client, js, layout, bucket, settings)
        if load:
            await backend.load_all()
        return backend
    except BaseException:
        await client.close()
        raise


async def when_settled(step: Callable[[], Awaitable[_T]], what: str) -> _T:
    """``step()``, tried again while JetStream answers with timeouts, "no responders" (a stream
    without a leader: JetStream's publishes, object store puts among them, raise it as
    ``NoStreamResponseError``), "unavailable" or "peer offline" (a node started during a leader
    election, or while a replica's server catches up, waits for it), for up to ``_SETUP_SECONDS``."""
    deadline = time.monotonic() + _SETUP_SECONDS
    while True:
        try:
            return await step()
        except (TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError, APIError) as exc:
            transient = (
                not isinstance(exc, APIError)
                or isinstance(exc, ServiceUnavailableError)
                or exc.err_code == PEERS_OFFLINE
            )
            if not transient:
                raise
            if time.monotonic() > deadline:
                raise NatsUnavailable(
                    f"JetStream did not answer for {what} within {_SETUP_SECONDS:.0f}s: {exc}"
                ) from None
            await asyncio.sleep(0.5)


async def _check_sync(js: JetStreamContext, settings: JetStreamSettings, layout: StreamLayout) -> None:
    servers: list[str] = []
    for stream in (layout.stream, f"OBJ_{layout.snapshot_bucket}"):  # the bucket's own stream
        servers += await when_settled(partial(stream_servers, js, stream), "the stream's servers")
    try:
        await check_sync_always(settings.monitor_urls, sorted(set(servers)))
    except NatsRefused as exc:
        if not settings.allow_unsynced:
            raise
        log.warning(
            "--allow-unsynced-jetstream: %s. SYNC acknowledgements do NOT mean the events are on disk; "
            "never run a billing deployment like this",
            exc,
        )


async def _snapshot_bucket(js: JetStreamContext, layout: StreamLayout, replicas: int) -> ObjectStore:
    try:
        return await js.object_store(layout.snapshot_bucket)
    except (BucketNotFoundError, NotFoundError):
        config = ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas, description="snapshots")
        return await js.create_object_store(layout.snapshot_bucket, config=config)


async def _read_snapshot(bucket: ObjectStore, name: str) -> tuple[bytes, float] | None:
    try:
        result = await bucket.get(name)
    except (ObjectNotFoundError, NotFoundError):
        return None
    info = result.info
    try:
        written_at = float(info.description or "0")
    except ValueError:
        written_at = 0.0
    return bytes(result.data or b""), written_at
