"""The deployment's stream: its subjects, its settings (created, or checked against what exists),
the partition count it records, and a scan of where everything it holds is.

One stream per deployment holds every partition's records: subject
``unimeter.<stream>.p.<n>.events`` and ``unimeter.<stream>.p.<n>.alerts``, one message per record.
Records must never expire, so the stream has no limits; a stream that exists with other settings
(subjects, storage, replicas, limits, another partition count) was made by something else, or for
another deployment, and is refused with the conflict named. Not here: appending (``subject_log``).
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from .errors import NatsRefused

__all__ = [
    "PEERS_OFFLINE",
    "STREAM_FORMAT",
    "StoredSubject",
    "StreamLayout",
    "ensure_stream",
    "scan_stream",
    "subject_counts",
]

log = logging.getLogger(__name__)

STREAM_FORMAT = "1"
"""The ``unimeter.format`` the stream's metadata records: the layout of subjects and messages."""
_PARTITIONS_KEY = "unimeter.partitions"
_FORMAT_KEY = "unimeter.format"
_DUPLICATE_WINDOW_SECONDS = 120.0
_SCAN_IDLE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """Names of the deployment's stream, its subjects and its snapshot bucket."""

    stream: str
    partitions: int

    def subject(self, partition: int, kind: str) -> str:
        """The subject of one partition's ``events`` or ``alerts`` log."""
        return f"unimeter.{self.stream}.p.{partition}.{kind}"

    @property
    def subjects(self) -> list[str]:
        return [f"unimeter.{self.stream}.p.*.events", f"unimeter.{self.stream}.p.*.alerts"]

    @property
    def snapshot_bucket(self) -> str:
        return f"{self.stream}_snapshots"


def _desired(name: str, subjects: list[str], replicas: int, partitions: int) -> StreamConfig:
    return StreamConfig(
        name=name,
        description="Unimeter records: one subject per partition log, one message per record",
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        discard=DiscardPolicy.NEW,
        duplicate_window=_DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
        metadata={_PARTITIONS_KEY: str(partitions), _FORMAT_KEY: STREAM_FORMAT},
    )


def _conflicts(info: StreamInfo, subjects: list[str], replicas: int) -> list[str]:
    config = info.config
    found: list[str] = []
    if sorted(config.subjects or []) != sorted(subjects):
        found.append(f"subjects {config.subjects} (expected {subjects})")
    if config.storage != StorageType.FILE:
        found.append(f"storage {config.storage} (expected file)")
    if config.num_replicas != replicas:
        found.append(f"replicas {config.num_replicas} (expected {replicas}, --nats-replicas)")
    if config.retention != RetentionPolicy.LIMITS:
        found.append(f"retention {config.retention} (expected limits: records are never removed)")
    limits = {
        "max_age": config.max_age,
        "max_msgs": config.max_msgs,
        "max_bytes": config.max_bytes,
        "max_msgs_per_subject": config.max_msgs_per_subject,
    }
    for key, value in limits.items():
        if value not in (None, 0, -1):
            found.append(f"{key} {value} (expected none: records must never expire)")
    meta = config.metadata or {}
    if meta.get(_FORMAT_KEY) != STREAM_FORMAT:
        found.append(f"metadata {_FORMAT_KEY}={meta.get(_FORMAT_KEY)!r} (expected {STREAM_FORMAT!r})")
    return found


PEERS_OFFLINE = 10005
"""JetStream's error code for "no suitable peers for placement, peer offline": fewer servers are
current than the replicas asked for, as while a restarted server catches up."""


async def ensure_stream(
    js: JetStreamContext, name: str, replicas: int, partitions: int | None
) -> StreamLayout:
    """Create the stream, or check the one that exists; the layout with its partition count.

    ``partitions``: what the node was asked for (None: the stream's own count, 64 for a new one).
    NatsRefused naming every conflicting setting, or a partition count other than the stream's.
    """
    probe = StreamLayout(name, 0)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        count = partitions or 64
        config = _desired(name, probe.subjects, replicas, count)
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code == PEERS_OFFLINE:
                raise  # transient: a replica's server is restarting or lagging; the caller retries
            raise NatsRefused(f"cannot create JetStream stream {name}: {exc}") from None
        log.info("created JetStream stream %s: %d partitions, %d replica(s)", name, count, replicas)
        return StreamLayout(name, count)
    conflicts = _conflicts(info, probe.subjects, replicas)
    if conflicts:
        raise NatsRefused(
            f"JetStream stream {name} exists with other settings: {'; '.join(conflicts)}. "
            "Use another --nats-stream, or fix or delete that stream"
        )
    recorded = int((info.config.metadata or {}).get(_PARTITIONS_KEY, "0"))
    if recorded < 1:
        raise NatsRefused(f"JetStream stream {name} records no partition count: it was not made by unimeter")
    if partitions is not None and partitions != recorded:
        raise NatsRefused(
            f"--partitions {partitions} differs from the {recorded} partitions of JetStream stream "
            f"{name}: the count is fixed for a deployment (drop --partitions, or use another stream)"
        )
    return StreamLayout(name, recorded)


async def stream_servers(js: JetStreamContext, name: str) -> list[str]:
    """Names of the servers holding the stream (its leader and replicas)."""
    info = await js.stream_info(name)
    cluster = info.cluster
    if cluster is None:
        return []
    names = [cluster.leader] if cluster.leader else []
    names += [peer.name for peer in cluster.replicas or [] if peer.name]
    return names


@dataclass(slots=True)
class StoredSubject:
    """What a scan learned of one subject: the stream sequence of each of its messages, in order,
    and their payload bytes in all."""

    seqs: array[int] = field(default_factory=lambda: array("q"))
    size_bytes: int = 0


async def scan_stream(
    js: JetStreamContext, layout: StreamLayout, partition: int | None = None
) -> dict[str, StoredSubject]:
    """Where every record of the stream (or of one ``partition``'s two subjects) is, by subject.

    One ordered consumer reads the messages' headers only (one pass, not one per subject; the
    records themselves are read when needed, ``stream_reads``), until it has as many messages as
    the stream leader counted when the scan started. Not until the consumer says nothing is
    pending: an ordered consumer may sit on a replica still catching up (a server just
    restarted), whose "nothing pending" would silently drop acknowledged records. Each message
    waits at most ``_SCAN_IDLE_SECONDS`` (a TimeoutError: the caller may scan again). A record
    appended after the count (by a writer that no longer holds the partition) is not read: the
    reader's first append then fails the expected-sequence check, and it loads the partition again.
    """
    if partition is None:
        subjects = f"unimeter.{layout.stream}.p.>"
        info = await js.stream_info(layout.stream)  # answered by the stream leader
        expected, last = info.state.messages, info.state.last_seq
    else:
        subjects = f"unimeter.{layout.stream}.p.{partition}.*"
        info = await js.stream_info(layout.stream, subjects_filter=subjects)
        expected, last = sum((info.state.subjects or {}).values()), info.state.last_seq
    by_subject: dict[str, StoredSubject] = {}
    if not expected:
        return by_subject
    count = 0
    sub = await js.subscribe(subjects, ordered_consumer=True, stream=layout.stream, headers_only=True)
    try:
        while count < expected:
            msg = await sub.next_msg(timeout=_SCAN_IDLE_SECONDS)
            seq = msg.metadata.sequence.stream
            stored = by_subject.get(msg.subject)
            if stored is None:
                stored = by_subject[msg.subject] = StoredSubject()
            stored.seqs.append(seq)
            stored.size_bytes += int((msg.headers or {}).get("Nats-Msg-Size", "0"))
            count += 1
            if seq >= last:
                break
    finally:
        await asyncio.shield(sub.unsubscribe())
    if count != expected:
        raise NatsRefused(
            f"scanning {subjects} of JetStream stream {layout.stream} found {count} messages up to "
            f"its last sequence {last}, but the stream holds {expected}"
        )
    return by_subject


async def subject_counts(js: JetStreamContext, layout: StreamLayout) -> dict[str, int]:
    """How many records each partition's event subject holds (one request to the stream leader)."""
    info = await js.stream_info(layout.stream, subjects_filter=f"unimeter.{layout.stream}.p.*.events")
    return dict(info.state.subjects or {})
