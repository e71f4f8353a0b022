"""Which code runs a partition's per-event work: the pure-Python reference or the native extension.

A :class:`PartitionEngine` is the set of parts a partition takes its per-event work from: the
dedup index (a new one, and one loaded from a snapshot), the dedup key functions, the batch loop
of ``Partition.ingest`` (dedup probe, offsets, stamping, the event record's bytes:
:func:`python_dedup_record`) with the step that adds its new keys once the record is stored, its
counterpart in recovery's replay (:func:`python_replay_keys`), the aggregates' stores
(``node/aggregation``'s ``StoreKinds``), the event index, and the
step that applies a stored record to the index and the aggregates (:func:`python_apply_record`,
bound to a partition's by ``bind_apply``);
and, beside them, the worker a flush tick's writes can go to (``tick_writer``).
``python`` is this module, ``node/dedup_index.py``, ``node/event_index.py``,
``node/aggregation/series.py`` and ``unique.py``; ``native``
is the same parts from the compiled ``unimeter_native`` extension (``native/``), which hold the
same keys and cells, answer the same and write the same snapshot bytes, so a data directory moves
between engines freely. The node
gets the engine's name from its config (the server passes the ingest engine it chose,
``service/ingest_engine.py``). Not here: what a partition does with the parts (``node.partition``).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from cluster_client.node_api import IngestOutcome
from cluster_client.types import EventRow

from .aggregation import AlertRow, AppliedRow, MetricSpec, PartitionAggregates
from .aggregation.aggregates import PYTHON_STORES, ApplyBatch, StoredApply, StoreKinds
from .aggregation.native_series import NativeSeriesStore
from .aggregation.native_unique import NativeUniqueStore
from .aggregation.snapshot_data import Chunked, Crc32
from .dedup_index import DedupIndex, derived_key, event_key
from .event_index import HOUR_NS, EventIndex, NativeEventIndex
from .index_run import RunColumns
from .index_runs import IndexRuns
from .ingest_cursor import Cursor, IngestCursor
from .log_tail import LogTail
from .record_log import RecordLog
from .records import EventRecord, encode_event_record
from .segment_log import NewTail, SegmentLog, ValidPrefix, valid_prefix

__all__ = [
    "PARTITION_ENGINES",
    "BatchDedup",
    "DedupTable",
    "PartitionEngine",
    "RecordIndex",
    "native_bind_apply",
    "native_bind_ingest",
    "partition_engine",
    "python_add_new_keys",
    "python_apply_record",
    "python_bind_apply",
    "python_bind_ingest",
    "python_dedup_batch",
    "python_dedup_record",
    "python_ingest_parts",
    "python_replay_keys",
    "stepwise_ingest",
]

PARTITION_ENGINES = ("python", "native")
NATIVE_MODULE = "unimeter_native"


class DedupTable(Protocol):
    """What a partition uses of a dedup index (``node.dedup_index.DedupIndex`` documents it)."""

    @property
    def memory_bytes(self) -> int: ...

    @property
    def growing(self) -> bool: ...

    def __len__(self) -> int: ...

    def get(self, key: int) -> int | None: ...

    def add(self, arrival_ns: int, keys: list[int], offsets: list[int]) -> None: ...

    def expire(self, now_ns: int) -> int: ...

    def advance_growth(self) -> None: ...

    def to_snapshot(self) -> list[object]: ...


EventKey = Callable[[int, str, int, str], int]
DerivedKey = Callable[[int, str, int, int, int, int, "dict[str, str] | None"], int]

BatchDedup = tuple[
    list[int], list[EventRow], list[int], list[list[int]], dict[str, int], list[int], list[int]
]
"""What the batch loop returns: ``(offsets, stored, stamped, duplicates, generations, new_keys,
key_offsets)``: each request row's offset (a duplicate's is its original's), the rows to store
(stamped ones with the arrival time), the indexes in ``stored`` of the stamped rows,
``[request index, original offset]`` per duplicate, metric code → generation in order of first
appearance, and the keys to add to the index with their offsets once the record is stored."""


def python_dedup_batch(
    index: DedupTable,
    rows: Sequence[EventRow],
    spec_of: Callable[[str], MetricSpec | None],
    next_offset: int,
    arrival: int,
) -> BatchDedup:
    """The reference batch loop of ``Partition.ingest``: each row's dedup key (an explicit id's,
    else the content's if the row has its own time, else none) probed in the batch's earlier
    keys and in ``index`` (only read: the partition adds the new keys once its record is
    stored); a row not seen gets the next offset, a row without a time the arrival time."""
    dedup_get = index.get
    offsets: list[int] = []
    stored: list[EventRow] = []
    stamped: list[int] = []
    dups: list[list[int]] = []
    new_keys: list[int] = []
    key_offsets: list[int] = []
    batch_keys: dict[int, int] = {}
    gens: dict[str, int] = {}
    for i, row in enumerate(rows):
        account, code, value, t, props, op, event_id = row
        gen = gens.get(code)
        if gen is None:
            spec = spec_of(code)
            assert spec is not None, "rows are validated before ingest"
            gen = gens[code] = spec.generation
        if event_id:
            key: int | None = event_key(account, code, gen, event_id)
        elif t:
            key = derived_key(account, code, gen, t, value, op, props)
        else:
            key = None
        if key is not None:
            original = batch_keys.get(key)
            if original is None:
                original = dedup_get(key)
            if original is not None:
                offsets.append(original)
                dups.append([i, original])
                continue
            batch_keys[key] = next_offset
            new_keys.append(key)
            key_offsets.append(next_offset)
        if not t:
            stamped.append(len(stored))
            row = (account, code, value, arrival, props, op, event_id)
        stored.append(row)
        offsets.append(next_offset)
        next_offset += 1
    return offsets, stored, stamped, dups, gens, new_keys, key_offsets


DedupRecord = tuple[list[int], int, "bytes | None", Sequence[EventRow], dict[str, int], Any]
"""What a partition batch's dedup step returns: ``(offsets, n_duplicates, record, stored,
generations, new_keys)``: each request row's offset (a duplicate's is its original's), how many
rows were duplicates, the event record's stored bytes (None when no row is stored and there is no
batch id: nothing to log), the stored rows (stamped ones with the arrival time), metric code →
generation, and the new keys, for the engine's ``add_new_keys`` once the record is stored
(opaque: each engine holds them its own way)."""

DedupStep = Callable[
    [DedupTable, Sequence[EventRow], Callable[[str], "MetricSpec | None"], int, int, str], DedupRecord
]
"""``(index, rows, spec_of, first_offset, arrival, batch_id) -> DedupRecord``."""


def python_dedup_record(
    index: DedupTable,
    rows: Sequence[EventRow],
    spec_of: Callable[[str], MetricSpec | None],
    first_offset: int,
    arrival: int,
    batch_id: str,
) -> DedupRecord:
    """The reference dedup step of a partition batch: :func:`python_dedup_batch`, then the event
    record ``node.records`` encodes from its lists."""
    offsets, stored, stamped, dups, gens, new_keys, key_offsets = python_dedup_batch(
        index, rows, spec_of, first_offset, arrival
    )
    record = None
    if stored or batch_id:
        fields = EventRecord(first_offset, batch_id, arrival, gens, stored, stamped, len(rows), dups)
        record = encode_event_record(fields)
    return offsets, len(dups), record, stored, gens, (new_keys, key_offsets)


def python_add_new_keys(index: DedupTable, arrival: int, new_keys: tuple[list[int], list[int]]) -> None:
    """Remember the keys :func:`python_dedup_record` found new, as arrived at ``arrival``."""
    index.add(arrival, *new_keys)


ReplayKeys = Callable[[Sequence[EventRow], dict[str, int], Sequence[int], int], tuple[list[int], list[int]]]
"""``(rows, generations, stamped, first_offset) -> (keys, offsets)``."""


def python_replay_keys(
    rows: Sequence[EventRow], generations: dict[str, int], stamped: Sequence[int], first_offset: int
) -> tuple[list[int], list[int]]:
    """The dedup keys a replayed event record adds to the index, with their offsets (row ``i`` has
    ``first_offset + i``): an id's key, none for a row the node stamped, else the content's key,
    under the record's own generations (KeyError for a code the record has none for)."""
    stamped_rows = set(stamped)
    keys: list[int] = []
    offsets: list[int] = []
    for i, (account, code, value, t, props, op, event_id) in enumerate(rows):
        if event_id:
            keys.append(event_key(account, code, generations[code], event_id))
        elif i not in stamped_rows:
            keys.append(derived_key(account, code, generations[code], t, value, op, props))
        else:
            continue
        offsets.append(first_offset + i)
    return keys, offsets


class RecordIndex(Protocol):
    """What a partition reads of its event index (``node.event_index.EventIndex`` documents it)."""

    runs: IndexRuns | None

    def hours(self, account: int, start: int, end: int) -> Iterator[tuple[int, list[int]]]: ...

    def to_snapshot(self, below: int) -> Chunked: ...

    def aged(self, before: int, below: int) -> RunColumns: ...

    def drop_aged(self, before: int, below: int) -> None: ...


SpecOf = Callable[[str], "MetricSpec | None"]
BindApply = Callable[[Any, PartitionAggregates, SpecOf], StoredApply]
"""``(index, aggregates, spec_of) -> apply``: a partition's apply step of stored records, bound
to its event index and aggregates (``StoredApply``: ``(record_ref, rows, first_offset,
generations) -> alerts``)."""


def python_apply_record(
    index: EventIndex,
    aggregates: PartitionAggregates,
    spec_of: SpecOf,
    ref: int,
    rows: Sequence[EventRow],
    first_offset: int,
    gens: Mapping[str, int],
) -> list[AlertRow]:
    """The reference apply step of a stored record (row ``i`` has offset ``first_offset + i``):
    its (account, hour) pairs into the event index, in order of first appearance; its rows grouped
    by metric, in order of first appearance, each group applied to the aggregates if the metric
    still has the record's generation. Returns the alerts they fire, in order."""
    by_metric: dict[str, list[AppliedRow]] = {}
    hours: dict[tuple[int, int], None] = {}  # an ordered set: the index keeps accounts in row order
    offset = first_offset
    for account, code, value, t, props, op, _ in rows:
        group = by_metric.get(code)
        if group is None:
            group = by_metric[code] = []
        group.append((account, value, t, props, op, offset))
        hours[(account, t // HOUR_NS)] = None
        offset += 1
    index.add(ref, hours)
    fired: list[AlertRow] = []
    for code, applied in by_metric.items():
        spec = spec_of(code)
        if spec is None or spec.generation != gens[code]:
            continue  # the metric was deleted (and maybe re-created) after this record
        fired.extend(aggregates.apply(spec, applied, ref))
    return fired


def python_bind_apply(index: EventIndex, aggregates: PartitionAggregates, spec_of: SpecOf) -> StoredApply:
    """:func:`python_apply_record` bound to a partition's index and aggregates."""
    return partial(python_apply_record, index, aggregates, spec_of)


def native_bind_apply(
    apply_batch: ApplyBatch, index: NativeEventIndex, aggregates: PartitionAggregates, spec_of: SpecOf
) -> StoredApply:
    """:func:`python_apply_record`'s steps on the native index and stores, bound to a partition's
    (``apply_batch`` is the extension's): one native call per record of rows (recovery's, an
    in-process caller's; a server's ``EventBatch`` parts are applied inside ``PartIngest``),
    with no wrapper in between (``PartitionAggregates.native_apply``)."""
    return aggregates.native_apply(apply_batch, index.add_record, spec_of)


Append = Callable[[bytes], int]
"""An event log's ``append(record) -> position``."""

PartIngested = IngestOutcome | tuple[IngestOutcome, int, int, list[AlertRow], BaseException | None]
"""What a partition part's ingest returns: its ``IngestOutcome`` (each request row's offset, a
duplicate's its original's, and how many rows were duplicates), having moved the partition's
cursor on if it logged a record; or, when the partition has more to do, ``(outcome,
first_offset, arrival, fired, error)``: a record was logged with a batch id to remember, fired
alerts, or stopped on an exception after the record was appended. Such an error is handed back,
not raised: the record is stored (recovery replays it), so the partition remembers the batch
before raising it."""

Specs = Mapping[str, MetricSpec]
"""Metrics by code. The native ``PartIngest`` reads a dict with one C call a metric, where a
lookup function was a Python call (ten a partition part)."""

PartIngest = Callable[[Sequence[EventRow], Specs, int, str], PartIngested]
"""``(rows, specs, now_ns, batch_id) -> PartIngested``: a partition part's whole ingest, bound to
the partition's state (``specs`` is what the rows were validated against; ``now_ns`` the clock,
which the cursor's last arrival bounds from below)."""

PartsIngested = tuple[list[PartIngested], list[int], BaseException | None]
"""What a slice of parts' ingest returns: the answers of the parts ingested, in order; the
indexes of those that are tuples (their partitions have more to do: ``PartIngested``); and what
the next part raised (None: every part was ingested)."""

IngestParts = Callable[[list[PartIngest], list[Sequence[EventRow]], Specs, int, str], PartsIngested]
"""``(steps, parts, specs, now_ns, batch_id) -> PartsIngested``: each part through its step
(``PartIngest``, each bound to a partition), as :func:`python_ingest_parts`; lists, which the
native one reads without a copy."""

BindIngest = Callable[
    [DedupTable, Any, PartitionAggregates, Specs, StoredApply, RecordLog, Cursor], PartIngest
]
"""``(dedup, index, aggregates, specs, apply, log, cursor) -> PartIngest``: a partition's part
ingest bound to its dedup index, event index, aggregates, live metrics, apply step, event log and
ingest cursor."""


def stepwise_ingest(
    dedup_record: DedupStep,
    add_new_keys: Callable[[DedupTable, int, Any], None],
    dedup: DedupTable,
    apply: StoredApply,
    append: Append,
    cursor: Cursor,
    rows: Sequence[EventRow],
    specs: Specs,
    now_ns: int,
    batch_id: str,
) -> PartIngested:
    """A partition part's ingest as its steps, one call each: the dedup step and its record, the
    record appended, the cursor moved on, its new keys remembered, its rows applied (the
    reference of the native ``PartIngest``, and what that runs for rows that are not an
    ``EventBatch``). A part starts after the cursor's last offset, and arrives at ``now_ns`` or,
    if the clock went back, at the last arrival."""
    first_offset = cursor.last_offset + 1
    arrival = max(now_ns, cursor.last_arrival)
    offsets, n_dups, record, stored, gens, new_keys = dedup_record(
        dedup, rows, specs.get, first_offset, arrival, batch_id
    )
    outcome = IngestOutcome(offsets, n_dups)
    if record is None:
        return outcome
    position = append(record)
    cursor.last_arrival = arrival
    cursor.records += 1
    if stored:
        cursor.last_offset = first_offset + len(stored) - 1
    try:
        add_new_keys(dedup, arrival, new_keys)
        fired = apply(position, stored, first_offset, gens) if stored else []
    except Exception as exc:  # the record is stored: see PartIngested
        return outcome, first_offset, arrival, [], exc
    if batch_id or fired:
        return outcome, first_offset, arrival, fired, None
    return outcome


def python_ingest_parts(
    steps: list[PartIngest],
    parts: list[Sequence[EventRow]],
    specs: Specs,
    now_ns: int,
    batch_id: str,
) -> PartsIngested:
    """Each of a slice of a request's parts through its partition's step, in order, until one
    raises: the answers of the parts before it, the indexes of those that are tuples, and what it
    raised (None: all ingested). A part's exception is handed back, not raised, because the parts
    before it are stored and their partitions still have their answers to finish
    (``Partition.ingest_parts``). The reference of the native ``ingest_parts``, which runs the
    same steps in one call."""
    answers: list[PartIngested] = []
    unfinished: list[int] = []
    for i, (step, rows) in enumerate(zip(steps, parts, strict=True)):
        try:
            answer = step(rows, specs, now_ns, batch_id)
        except BaseException as exc:  # handed back whatever it is, as the native one does
            return answers, unfinished, exc
        if type(answer) is tuple:
            unfinished.append(i)
        answers.append(answer)
    return answers, unfinished, None


def python_bind_ingest(
    dedup: DedupTable,
    index: Any,
    aggregates: PartitionAggregates,
    specs: Specs,
    apply: StoredApply,
    log: RecordLog,
    cursor: Cursor,
) -> PartIngest:
    """:func:`stepwise_ingest` of the reference steps, bound to a partition's (its index,
    aggregates and metric lookup are in ``apply``)."""
    return partial(
        stepwise_ingest, python_dedup_record, python_add_new_keys, dedup, apply, log.append, cursor
    )


def native_bind_ingest(
    module: Any,
    dedup: DedupTable,
    index: NativeEventIndex,
    aggregates: PartitionAggregates,
    specs: Specs,
    apply: StoredApply,
    log: RecordLog,
    cursor: Cursor,
) -> PartIngest:
    """The extension's ``PartIngest`` (``module``'s), bound to a partition's: an ``EventBatch``
    (what the server's requests become) in one native call, other rows through
    :func:`stepwise_ingest` of the native steps. A segment log is handed each batch's record
    framed (``SegmentLog.append_frame``), or written straight into its tail when the log has the
    extension's (``SegmentLog.tail``)."""
    add_new_keys = module.DedupIndex.add_new_keys
    stepwise = partial(stepwise_ingest, module.dedup_record, add_new_keys, dedup, apply, log.append, cursor)
    append: Append = log.append
    framed, tail = False, None
    if isinstance(log, SegmentLog):
        append, framed = log.append_frame, True
        if isinstance(log.tail, module.LogTail):
            tail = log.tail
    part_ingest: PartIngest = aggregates.native_ingest(
        module.PartIngest, dedup, index.native, specs, append, framed, tail, cursor, IngestOutcome, stepwise
    )
    return part_ingest


@dataclass(frozen=True, slots=True)
class PartitionEngine:
    """The parts of one engine."""

    name: str
    new_dedup: Callable[[int], DedupTable]
    """A new, empty dedup index with the given window (ns)."""
    load_dedup: Callable[[int, Sequence[object]], DedupTable]
    """A dedup index from a snapshot's dedup part (either engine's); ValueError if it is not one."""
    event_key: EventKey
    derived_key: DerivedKey
    dedup_record: DedupStep
    add_new_keys: Callable[[DedupTable, int, Any], None]
    """``(index, arrival, new_keys)``: the keys ``dedup_record`` found new, once the record is stored."""
    replay_keys: ReplayKeys
    stores: StoreKinds
    """The aggregates' stores (their state, apply step and snapshots)."""
    new_index: Callable[[], RecordIndex]
    """A new, empty event index."""
    load_index: Callable[[list[list[Any]]], RecordIndex]
    """An event index from a snapshot's index part (either engine's)."""
    bind_apply: BindApply
    """A partition's step that applies a stored record to its event index and aggregates."""
    bind_ingest: BindIngest
    """A partition part's whole ingest: dedup, record, append, keys and apply."""
    ingest_parts: IngestParts = python_ingest_parts
    """A slice of a request's parts through their partitions' ingest steps; the native engine's
    in one call."""
    tick_writer: Callable[[], Any] | None = None
    """A new worker that writes and syncs a flush tick's rounds without the GIL
    (``node.tick_writes``); None: the tick's rounds are written on the loop thread."""
    valid_prefix: ValidPrefix = valid_prefix
    """How recovery reads a segment file's valid prefix when it opens a log (``SegmentLog.open``)."""
    crc32: Crc32 = zlib.crc32
    """``zlib.crc32(data, value)`` or a faster equal: a snapshot file's checksum, written and read."""
    new_log_tail: NewTail = LogTail
    """A segment log's tail (``node.log_tail``); the native engine's own, which its part ingest
    appends records to without a Python call."""
    new_cursor: Callable[[], Cursor] = IngestCursor
    """A new partition's ingest cursor (``node.ingest_cursor``); the native engine's own, which
    its part ingest moves on without a Python step."""


PYTHON = PartitionEngine(
    "python",
    DedupIndex,
    DedupIndex.from_snapshot,  # type: ignore[arg-type]
    event_key,
    derived_key,
    python_dedup_record,
    python_add_new_keys,
    python_replay_keys,
    PYTHON_STORES,
    EventIndex,
    EventIndex.from_snapshot,
    python_bind_apply,
    python_bind_ingest,
)


def partition_engine(name: str) -> PartitionEngine:
    """The engine called ``name``; ValueError for an unknown one, or for ``native`` where the
    extension cannot be loaded."""
    if name == "python":
        return PYTHON
    if name != "native":
        raise ValueError(f"partition engine must be one of {', '.join(PARTITION_ENGINES)}, got {name!r}")
    try:
        module = importlib.import_module(NATIVE_MODULE)
    except ImportError as exc:
        raise ValueError(f"the native engine needs {NATIVE_MODULE}, which cannot be loaded ({exc})") from exc
    index = module.DedupIndex
    cells, sets = module.SeriesCells, module.UniqueSets
    native_index = module.EventIndex
    return PartitionEngine(
        "native",
        index,
        index.from_snapshot,
        module.event_key,
        module.derived_key,
        module.dedup_record,
        index.add_new_keys,
        module.replay_keys,
        StoreKinds(
            partial(NativeSeriesStore, cells_type=cells),
            partial(NativeSeriesStore.from_snapshot, cells_type=cells),
            partial(NativeUniqueStore, sets_type=sets),
            partial(NativeUniqueStore.from_snapshot, sets_type=sets),
        ),
        lambda: NativeEventIndex(native_index()),
        partial(NativeEventIndex.from_snapshot, native_index),
        partial(native_bind_apply, module.apply_batch),
        partial(native_bind_ingest, module),
        module.ingest_parts,
        module.TickWriter,
        module.valid_prefix,
        module.crc32,
        module.LogTail,
        module.IngestCursor,
    )
