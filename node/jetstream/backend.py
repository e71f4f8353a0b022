"""The JetStream backend: a ``node.record_log.RecordBackend`` whose partitions live in one stream.

Opening it (:func:`open_jetstream_backend`, before the node is built) connects, checks that the
servers can promise SYNC, creates or checks the stream, scans every partition's records and loads
their snapshots: ``Node`` opens its partitions synchronously, so everything they recover from is in
memory by then. A group commit starts each pending log's publisher and waits for their acks; the
snapshots are objects of a replicated object store bucket, one per partition, replaced whole. Not
here: one subject's appends and fencing (``subject_log``), the stream's settings (``stream``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
    ServiceUnavailableError,
)
from nats.js.object_store import ObjectStore

from ..stats import NodeStats
from .connection import NatsOptions, check_server_version, check_sync_always, connect
from .errors import NatsRefused, NatsUnavailable
from .stream import PEERS_OFFLINE, StreamLayout, ensure_stream, scan_stream, stream_servers
from .subject_log import JetStreamLog

__all__ = ["JetStreamBackend", "JetStreamSettings", "JetStreamStorage", "open_jetstream_backend"]

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


class JetStreamStorage:
    """One partition: its two subject logs and its snapshot object."""

    def __init__(
        self,
        events: JetStreamLog,
        alerts: JetStreamLog,
        bucket: ObjectStore,
        name: str,
        snapshot: tuple[bytes, float] | None,
    ) -> None:
        self.events = events
        self.alerts = alerts
        self._bucket = bucket
        self._name = name
        self._snapshot = snapshot

    def read_snapshot(self) -> tuple[bytes, float] | None:
        return self._snapshot

    def write_snapshot(self, data: bytes) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._put(data))

    async def _put(self, data: bytes) -> None:
        written_at = time.time()
        meta = ObjectMeta(name=self._name, description=repr(written_at))
        try:
            # Retried through a leader election of the bucket's stream: a put replaces the whole
            # object, so a second attempt after a lost answer stores the same snapshot.
            await _settled(partial(self._bucket.put, self._name, data, meta=meta), f"snapshot {self._name}")
        except Exception as exc:
            raise OSError(f"snapshot {self._name} not stored in JetStream: {exc}") from exc
        self._snapshot = (data, written_at)


class JetStreamBackend:
    """Every partition of the deployment's stream, owned by this node."""

    name = "nats"

    def __init__(
        self,
        client: NatsClient,
        js: JetStreamContext,
        layout: StreamLayout,
        storages: dict[int, JetStreamStorage],
        stall_seconds: float,
    ) -> None:
        self._client = client
        self._stall_seconds = stall_seconds
        self._js = js
        self.layout = layout
        self._storages = storages
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
    def partitions(self) -> int:
        """The deployment's partition count, as its stream records it."""
        return self.layout.partitions

    def factory(self, config: object, stats: NodeStats) -> JetStreamBackend:
        """A ``node.node.BackendFactory`` handing this (already open) backend to the node, whose
        store-time histograms its logs feed."""
        del config  # the backend was opened with its own settings
        for storage in self._storages.values():
            storage.events.on_sync = stats.fsync_events.observe
            storage.alerts.on_sync = stats.fsync_alerts.observe
        return self

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
        futures = [
            log_.durable_future(log_.end_position)
            for number in partitions
            for log_ in (self._storages[number].events, self._storages[number].alerts)
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
        await self._client.close()


async def open_jetstream_backend(options: NatsOptions, settings: JetStreamSettings) -> JetStreamBackend:
    """Connect, verify, set up the stream and load every partition (records and snapshot).

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
        layout = await _settled(
            lambda: ensure_stream(js, settings.stream, settings.replicas, settings.partitions), "the stream"
        )
        bucket = await _settled(
            lambda: _snapshot_bucket(js, layout, settings.replicas), "the snapshot bucket"
        )
        await _check_sync(js, settings, layout)
        stored = await _settled(lambda: scan_stream(js, layout), "the scan")
        epoch = settings.epoch or uuid.uuid4().hex[:12]
        storages = {}
        for number in range(layout.partitions):
            logs = [
                JetStreamLog(
                    js,
                    layout.stream,
                    layout.subject(number, kind),
                    stored.get(layout.subject(number, kind), []),
                    epoch=epoch,
                    stall_seconds=settings.stall_seconds,
                    refuses_when_stalled=kind == "events",
                    max_record_bytes=client.max_payload - _HEADER_ROOM,
                    connected=lambda: client.is_connected,
                )
                for kind in ("events", "alerts")
            ]
            name = f"partition-{number}"
            snapshot = await _settled(partial(_read_snapshot, bucket, name), "a snapshot")
            storages[number] = JetStreamStorage(logs[0], logs[1], bucket, name, snapshot)
        log.info(
            "JetStream stream %s: %d partitions, %d records loaded (writer epoch %s)",
            layout.stream, layout.partitions, sum(len(v) for v in stored.values()), epoch,
        )  # fmt: skip
        return JetStreamBackend(client, js, layout, storages, settings.stall_seconds)
    except BaseException:
        await client.close()
        raise


async def _settled(step: Callable[[], Awaitable[_T]], what: str) -> _T:
    """``step()``, tried again while JetStream answers with timeouts, "unavailable" or "peer
    offline" (a node started during a leader election, or while a replica's server catches up,
    waits for it), for up to ``_SETUP_SECONDS``."""
    deadline = time.monotonic() + _SETUP_SECONDS
    while True:
        try:
            return await step()
        except (TimeoutError, nats.errors.NoRespondersError, APIError) as exc:
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
        servers += await _settled(partial(stream_servers, js, stream), "the stream's servers")
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
