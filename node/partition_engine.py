"""Which code runs a partition's per-event work: the pure-Python reference or the native extension.

A :class:`PartitionEngine` is the set of parts a partition takes its per-event work from: the
dedup index (a new one, and one loaded from a snapshot) and the dedup key functions. ``python`` is
``node/dedup_index.py``; ``native`` is the same parts from the compiled ``unimeter_native``
extension (``native/``), which hold the same keys, answer the same and write the same snapshot
bytes, so a data directory moves between engines freely. The node gets the engine's name from its
config (the server passes the ingest engine it chose, ``service/ingest_engine.py``). Not here:
what a partition does with the parts (``node.partition``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .dedup_index import DedupIndex, derived_key, event_key

__all__ = ["PARTITION_ENGINES", "DedupTable", "PartitionEngine", "partition_engine"]

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


PYTHON = PartitionEngine("python", DedupIndex, DedupIndex.from_snapshot, event_key, derived_key)  # type: ignore[arg-type]


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
    return PartitionEngine("native", index, index.from_snapshot, module.event_key, module.derived_key)
