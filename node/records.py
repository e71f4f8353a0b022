"""The bytes a partition stores: its event record, alert record and snapshot, each defined once.

Every backend stores these exact bytes (a segment file frame's payload, a JetStream message, a
snapshot file), so a data directory written by one version or backend reads back in another. Each
format is a named type with a version, one encoder and one decoder; the decoders check the shape
and the types of what they return and raise :class:`RecordFormatError` for anything else, so a
damaged or foreign payload is refused in one clear way, never half-applied. Not here: what the
records mean (``node.partition`` applies them) and where they are stored (``node.record_log``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from cluster_client.types import EventRow

from .aggregation.snapshot_data import Crc32, Piece, pack_in_slices

__all__ = [
    "ALERT_RECORD_VERSION",
    "EVENT_RECORD_VERSION",
    "SNAPSHOT_VERSION",
    "AlertIndex",
    "AlertRecord",
    "EventRecord",
    "RecordFormatError",
    "Snapshot",
    "decode_alert_record",
    "decode_event_record",
    "decode_snapshot",
    "encode_alert_record",
    "encode_event_record",
    "encode_snapshot",
]

EVENT_RECORD_VERSION = 1
"""The first element of an event record: its layout version."""
ALERT_RECORD_VERSION = 1
"""Version 1 of the alert record is untagged (a 3-element array, as every stored one is); a later
version must be told apart by its shape, e.g. a leading version number."""
SNAPSHOT_VERSION = 3
"""The ``"v"`` key of a snapshot holding the alert index (``"alert_index"``: :class:`AlertIndex`),
and the index runs it relies on if any (``"index_runs"``: ``[[file name, size, CRC], ...]``,
``node.index_run``). Version 2 holds runs and no alert index, version 1 neither (both are still
read: recovery then reads the whole alert log); one without an alert index is still written in
them. A version that knows no alert index refuses a version-3 snapshot and replays its logs."""
_RUNS_VERSION = 2
_SNAPSHOT_VERSIONS = (1, _RUNS_VERSION, SNAPSHOT_VERSION)


class RecordFormatError(ValueError):
    """A payload that is not a well-formed record, alert record or snapshot of a known version."""


class EventRecord(NamedTuple):
    """One partition batch, as logged: replaying it rebuilds dedup keys, aggregates and the batch
    id's answer. Stored row ``i`` has offset ``first_offset + i``."""

    first_offset: int
    batch_id: str
    """The caller's batch id ("" if none): a retry within the batch window gets this outcome."""
    arrival: int
    """Arrival time (ns) the node gave the batch; rows without an event time were stamped with it."""
    generations: dict[str, int]
    """Metric code → the generation the rows were validated against."""
    rows: Sequence[EventRow]
    """The stored (non-duplicate) events (a decoded record holds tuples, an ingested one lists)."""
    stamped: Sequence[int]
    """Indexes in ``rows`` of events whose time is the arrival time (they have no derived key)."""
    n_requested: int
    """Events in the request, duplicates included."""
    duplicates: Sequence[Sequence[int]]
    """``[request index, original offset]`` of each duplicate in the request."""


class AlertRecord(NamedTuple):
    """The alerts fired by one event record, with their offsets ``first_alert_offset + i``."""

    event_first_offset: int
    """``first_offset`` of the event record that fired them (recovery cuts alerts of lost events)."""
    first_alert_offset: int
    rows: list[list[Any]]
    """``[account, metric, threshold, threshold value, multiple, value, period start, event time,
    record time]`` per alert."""


class AlertIndex(NamedTuple):
    """Where a partition's alerts are, as of a snapshot of ``alert_count`` alerts: what recovery
    would otherwise rebuild by reading the whole alert log (``node.alert_list``). Packed bytes,
    not lists of ints: a partition keeps its alerts for years."""

    positions: Any
    """Alert log position of the record of alerts 1..alert_count: little-endian uint64 each, in
    ``bytes`` blocks (of 2**15 positions as written; any split reads back) (a list; a chunked one
    while a snapshot is packed)."""
    accounts: Any
    """``[account, offsets]`` of each account with alerts: its alert offsets in order, as
    little-endian uint32 (int64 when the partition has more than 2**32 - 1 alerts) (a list; a
    chunked one while a snapshot is packed)."""


@dataclass(slots=True)
class Snapshot:
    """A partition's state at one pair of log positions. ``aggregates``, ``dedup`` and ``index``
    are the (possibly deferred, see ``node.aggregation.snapshot_data``) data of their own
    modules, which read them back themselves."""

    partition: int
    event_position: int
    """The events log's end when captured: replay starts there (an opaque log position)."""
    last_offset: int
    last_arrival: int
    alert_position: int
    """The alert log's end when captured."""
    alert_count: int
    aggregates: Any
    dedup: Any
    index: Any
    batches: list[tuple[str, int, list[int], int]]
    """``(batch id, arrival, offsets, duplicates)`` of each batch id remembered."""
    index_runs: list[tuple[str, int, int]] = field(default_factory=list)
    """``(file name, size, CRC)`` of each index run (oldest first) holding positions the index
    part does not: ``node.index_runs``."""
    alert_index: AlertIndex | None = None
    """Where the ``alert_count`` alerts are; None in a snapshot of version 1 or 2."""


def encode_event_record(record: EventRecord) -> bytes:
    """The stored bytes of an event record. The native engine writes the same bytes in its dedup
    step (``native/src/py_event_record.rs``), tested byte for byte against this encoder."""
    return msgpack.packb((EVENT_RECORD_VERSION, *record))  # type: ignore[no-any-return]


def decode_event_record(data: bytes) -> EventRecord:
    """An event record from its bytes; RecordFormatError unless they are one."""
    # Arrays come back as tuples: a row is then an EventRow as it is, with no copy per event.
    fields = _unpack(data, "event record", use_list=False)
    if type(fields) is not tuple or len(fields) != 9:
        raise RecordFormatError("event record is not an array of 9 fields")
    version, first, batch_id, arrival, gens, raw_rows, stamped, n_req, dups = fields
    if version != EVENT_RECORD_VERSION or type(version) is not int:
        raise RecordFormatError(f"event record version {version!r} is not {EVENT_RECORD_VERSION}")
    if not (_is_int(first) and type(batch_id) is str and _is_int(arrival) and _is_int(n_req)):
        raise RecordFormatError("event record header fields have the wrong types")
    if type(gens) is not dict or not all(type(k) is str and _is_int(v) for k, v in gens.items()):
        raise RecordFormatError("event record generations are not a map of metric code to integer")
    if type(stamped) is not tuple or not all(_is_int(i) for i in stamped):
        raise RecordFormatError("event record stamped indexes are not a list of integers")
    if type(dups) is not tuple or not all(_is_pair_of_ints(d) for d in dups):
        raise RecordFormatError("event record duplicates are not [index, offset] pairs")
    if type(raw_rows) is not tuple:
        raise RecordFormatError("event record rows are not a list")
    for row in raw_rows:
        # One pass per row, type checks included: this runs for every event replayed at start
        # (~0.1 µs an event on top of unpacking it).
        if type(row) is not tuple or len(row) != 7:
            raise RecordFormatError("event record row is not an array of 7 fields")
        account, code, value, t, props, op, event_id = row
        if not (
            type(account) is int
            and type(code) is str
            and type(value) is int
            and type(t) is int
            and type(op) is int
            and type(event_id) is str
            and (props is None or (type(props) is dict and _is_str_map(props)))
        ):
            raise RecordFormatError("event record row fields have the wrong types")
    return EventRecord(first, batch_id, arrival, gens, raw_rows, stamped, n_req, dups)


def encode_alert_record(record: AlertRecord) -> bytes:
    """The stored bytes of an alert record."""
    return msgpack.packb(record)  # type: ignore[no-any-return]


_ALERT_ROW_TYPES = (int, str, str, int, int, int, int, int, int)


def decode_alert_record(data: bytes) -> AlertRecord:
    """An alert record from its bytes; RecordFormatError unless they are one."""
    fields = _unpack(data, "alert record")
    if type(fields) is not list or len(fields) != 3:
        raise RecordFormatError("alert record is not an array of 3 fields")
    event_first, first_alert, rows = fields
    if not (_is_int(event_first) and _is_int(first_alert) and type(rows) is list):
        raise RecordFormatError("alert record header fields have the wrong types")
    for row in rows:
        if (
            type(row) is not list
            or len(row) != len(_ALERT_ROW_TYPES)
            or not all(type(v) is t for v, t in zip(row, _ALERT_ROW_TYPES, strict=True))
        ):
            raise RecordFormatError("alert record row is not an alert")
    return AlertRecord(event_first, first_alert, rows)


_SNAPSHOT_CRC_BYTES = 4


async def encode_snapshot(snapshot: Snapshot, crc32: Crc32 = zlib.crc32) -> list[Piece]:
    """The stored bytes of a snapshot, packed in slices with the loop free in between: the msgpack
    map, then the CRC-32 of it (4 bytes, little endian), so that a damaged snapshot is refused
    instead of loaded as wrong numbers. Returned as the pieces they were packed in: a partition
    writes them to its snapshot file without joining them (one copy of the snapshot in memory,
    not two)."""
    runs = {"index_runs": [list(r) for r in snapshot.index_runs]} if snapshot.index_runs else {}
    index = snapshot.alert_index
    alerts = {} if index is None else {"alert_index": [index.positions, index.accounts]}
    return await pack_in_slices(
        {
            "v": SNAPSHOT_VERSION if alerts else _RUNS_VERSION if runs else 1,
            "partition": snapshot.partition,
            "event_pos": snapshot.event_position,
            "last_offset": snapshot.last_offset,
            "last_arrival": snapshot.last_arrival,
            "alert_pos": snapshot.alert_position,
            "alert_count": snapshot.alert_count,
            "aggregates": snapshot.aggregates,
            "dedup": snapshot.dedup,
            "index": snapshot.index,
            "batches": [list(b) for b in snapshot.batches],
            **runs,
            **alerts,
        },
        crc32_trailer=crc32,
    )


_SNAPSHOT_INTS = ("partition", "event_pos", "last_offset", "last_arrival", "alert_pos", "alert_count")


def decode_snapshot(data: bytes, crc32: Crc32 = zlib.crc32) -> Snapshot:
    """A snapshot from its bytes; RecordFormatError unless they are one of this version with a
    matching CRC (``crc32``: zlib's, or the native engine's, faster on a file of megabytes). Its
    ``aggregates``, ``dedup`` and ``index`` are checked by the modules that load them."""
    view = memoryview(data)  # views, not copies, of what may be a large file
    body, crc = view[:-_SNAPSHOT_CRC_BYTES], view[-_SNAPSHOT_CRC_BYTES:]
    if len(view) < _SNAPSHOT_CRC_BYTES or crc32(body, 0) != int.from_bytes(crc, "little"):
        raise RecordFormatError("snapshot checksum mismatch (the file is damaged)")
    state = _unpack(body, "snapshot", strict_map_key=False)
    if type(state) is not dict:
        raise RecordFormatError("snapshot is not a map")
    version = state.get("v")
    if version not in _SNAPSHOT_VERSIONS or type(version) is not int:
        raise RecordFormatError(f"snapshot version {version!r} is not 1, 2 or {SNAPSHOT_VERSION}")
    missing = [k for k in (*_SNAPSHOT_INTS, "aggregates", "dedup", "index", "batches") if k not in state]
    if missing:
        raise RecordFormatError(f"snapshot lacks {', '.join(missing)}")
    if not all(_is_int(state[k]) for k in _SNAPSHOT_INTS):
        raise RecordFormatError("snapshot positions and counters are not integers")
    batches: list[tuple[str, int, list[int], int]] = []
    if type(state["batches"]) is not list:
        raise RecordFormatError("snapshot batches are not a list")
    for entry in state["batches"]:
        if not (
            type(entry) is list
            and len(entry) == 4
            and type(entry[0]) is str
            and _is_int(entry[1])
            and type(entry[2]) is list
            and all(_is_int(o) for o in entry[2])
            and _is_int(entry[3])
        ):
            raise RecordFormatError("snapshot batch entry is not [batch id, arrival, offsets, duplicates]")
        batches.append((entry[0], entry[1], entry[2], entry[3]))
    if version == 1:
        runs: Any = []
    elif version == _RUNS_VERSION:
        runs = state.get("index_runs")  # the reason for version 2: one run at least
    else:
        runs = state.get("index_runs", [])
    if not (
        type(runs) is list
        and (runs or version != _RUNS_VERSION)
        and all(
            type(r) is list and len(r) == 3 and type(r[0]) is str and _is_int(r[1]) and _is_int(r[2])
            for r in runs
        )
    ):
        raise RecordFormatError("snapshot index runs are not a list of [file name, size, CRC]")
    alert_index = _decode_alert_index(state, version)
    return Snapshot(
        partition=state["partition"],
        event_position=state["event_pos"],
        last_offset=state["last_offset"],
        last_arrival=state["last_arrival"],
        alert_position=state["alert_pos"],
        alert_count=state["alert_count"],
        aggregates=state["aggregates"],
        dedup=state["dedup"],
        index=state["index"],
        batches=batches,
        index_runs=[(r[0], r[1], r[2]) for r in runs],
        alert_index=alert_index,
    )


def _decode_alert_index(state: dict[Any, Any], version: int) -> AlertIndex | None:
    """The snapshot's alert index (version 3), its shape checked; whether it describes the
    alert log is for recovery to find (``AlertList.restore``)."""
    if version != SNAPSHOT_VERSION:
        return None
    index = state.get("alert_index")
    if not (
        type(index) is list
        and len(index) == 2
        and type(index[0]) is list
        and all(type(block) is bytes for block in index[0])
        and sum(map(len, index[0])) == 8 * state["alert_count"]
        and type(index[1]) is list
        and all(type(e) is list and len(e) == 2 and _is_int(e[0]) and type(e[1]) is bytes for e in index[1])
    ):
        raise RecordFormatError("snapshot alert index is not [positions, [[account, offsets], ...]]")
    return AlertIndex(index[0], [(e[0], e[1]) for e in index[1]])


def _unpack(
    data: bytes | memoryview, what: str, *, strict_map_key: bool = True, use_list: bool = True
) -> Any:
    try:
        return msgpack.unpackb(data, strict_map_key=strict_map_key, use_list=use_list)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError and StackError are ValueErrors; a truncated payload is an
        # UnpackException; a map key of a type Python cannot hash is a TypeError.
        raise RecordFormatError(f"{what} is not valid msgpack: {exc}") from None


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_pair_of_ints(value: object) -> bool:
    return type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int


def _is_str_map(props: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) is str for k, v in props.items())
