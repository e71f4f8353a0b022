"""Which code runs a partition's per-event work: the pure-Python reference or the native extension.

A :class:`PartitionEngine` is the set of parts a partition takes its per-event work from: the
dedup index (a new one, and one loaded from a snapshot), the dedup key functions, the batch loop
of ``Partition.ingest`` (dedup probe, offsets, stamping: :func:`python_dedup_batch`), its
counterpart in recovery's replay (:func:`python_replay_keys`) and the stores of the COUNT, SUM,
MAX and LATEST metrics' cells (``node/aggregation``'s ``SeriesStores``).
``python`` is this module, ``node/dedup_index.py`` and ``node/aggregation/series.py``; ``native``
is the same parts from the compiled ``unimeter_native`` extension (``native/``), which hold the
same keys and cells, answer the same and write the same snapshot bytes, so a data directory moves
between engines freely. The node
gets the engine's name from its config (the server passes the ingest engine it chose,
``service/ingest_engine.py``). Not here: what a partition does with the parts (``node.partition``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from cluster_client.types import EventRow

from .aggregation import MetricSpec
from .aggregation.aggregates import PYTHON_SERIES, SeriesStores
from .aggregation.native_series import NativeSeriesStore
from .dedup_index import DedupIndex, derived_key, event_key

__all__ = [
    "PARTITION_ENGINES",
    "BatchDedup",
    "DedupTable",
    "PartitionEngine",
    "partition_engine",
    "python_dedup_batch",
    "python_replay_keys",
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

DedupBatch = Callable[
    [DedupTable, list[EventRow], Callable[[str], "MetricSpec | None"], int, int], BatchDedup
]
"""``(index, rows, spec_of, next_offset, arrival) -> BatchDedup``."""


def python_dedup_batch(
    index: DedupTable,
    rows: list[EventRow],
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
    dedup_batch: DedupBatch
    replay_keys: ReplayKeys
    series: SeriesStores
    """The stores of COUNT, SUM, MAX and LATEST metrics (their cells, apply step and snapshots)."""


PYTHON = PartitionEngine(
    "python",
    DedupIndex,
    DedupIndex.from_snapshot,  # type: ignore[arg-type]
    event_key,
    derived_key,
    python_dedup_batch,
    python_replay_keys,
    PYTHON_SERIES,
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
    cells = module.SeriesCells
    return PartitionEngine(
        "native",
        index,
        index.from_snapshot,
        module.event_key,
        module.derived_key,
        module.dedup_batch,
        module.replay_keys,
        SeriesStores(
            partial(NativeSeriesStore, cells_type=cells),
            partial(NativeSeriesStore.from_snapshot, cells_type=cells),
        ),
    )
