"""The native engine's store of a COUNT, SUM, MAX or LATEST metric: :class:`~.series.SeriesStore`
with its cells and apply step in Rust (``unimeter_native.SeriesCells``, native/src/series_cells.rs).

Same interface, same cells, same alerts and the same snapshot data as the Python store, so a
partition holds either and a snapshot written by one loads into the other. Reads go through
:mod:`.series_reads`, shared with the Python store; the Rust side answers their lookups (merged
buckets, period totals, minute positions). ``apply`` is the Rust method itself: one call per record
and metric, no Python object made per event. Not here: COUNT_UNIQUE metrics (:mod:`.unique` serves
both engines) and the choice of engine (``node/partition_engine.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

from cluster_client.types import EventRow

from .combos import Combos
from .grid import N_GRID_LEVELS
from .series_reads import Segments, SeriesReads
from .snapshot_data import Chunked, Deferred
from .spec import AlertRow, AppliedRow, MetricSpec

__all__ = ["NativeSeriesStore"]

CellsType = Callable[..., Any]
"""``unimeter_native.SeriesCells`` (the extension ships no type stubs)."""


class NativeSeriesStore(SeriesReads):
    """Pre-aggregated cells of one non-COUNT_UNIQUE metric, for every account of a partition, in Rust."""

    __slots__ = ("_cells", "_combos", "apply", "apply_record", "native", "spec")

    def __init__(self, spec: MetricSpec, cells_type: CellsType) -> None:
        self.spec = spec
        thresholds = [(t.code, t.value, t.recurring) for t in spec.thresholds]
        period_of = spec.periods.period_of
        self._cells = cells_type(int(spec.agg_type), spec.code, list(spec.dims), thresholds, period_of)
        self.apply: Callable[[Sequence[AppliedRow], int], list[AlertRow]] = self._cells.apply
        """Apply one log record's rows of this metric (a list, offset order); return the alerts
        they fire (``SeriesStore.apply``)."""
        self.apply_record: Callable[[Sequence[EventRow], int, int], list[AlertRow]] = self._cells.apply_record
        """``(rows, first_offset, record_ref)``: :attr:`apply` for this metric's rows among a stored
        record's ``EventRow`` rows (row ``i`` has offset ``first_offset + i``), read in place."""
        self.native: Any = self._cells
        """The Rust state itself, which ``unimeter_native.apply_batch`` applies a stored batch's
        events to directly, grouped by metric once for the whole batch."""
        self._combos = Combos(spec.dims)

    # ------------------------------------------------------------------------------------ reads

    @property
    def combos(self) -> Combos:
        """The combinations seen so far (a Python copy, refreshed when the Rust side has more)."""
        if len(self._combos.values) != self._cells.combo_count:
            self._combos = Combos(self.spec.dims, self._cells.combos())
        return self._combos

    @property
    def first_minute(self) -> int:
        return cast("int", self._cells.first_minute)

    @property
    def last_minute(self) -> int:
        return cast("int", self._cells.last_minute)

    @property
    def folded_minute(self) -> int:
        return cast("int", self._cells.folded_minute)

    def fold_minutes(self, minute: int) -> int:
        """``SeriesStore.fold_minutes``: drop the minute cells below ``minute``; how many."""
        return cast("int", self._cells.fold_minutes(minute))

    @property
    def memory_bytes(self) -> int:
        """Bytes the Rust cells hold (their vectors' capacity)."""
        return cast("int", self._cells.memory_bytes)

    def slots_of(self, account_id: int) -> Sequence[int]:
        return cast("list[int]", self._cells.slots_of(account_id))

    def merged(self, account_id: int, slot: int, segments: Segments) -> list[int] | None:
        return cast("list[int] | None", self._cells.merged(account_id, slot, segments))

    def total(self, account_id: int, period_start: int) -> tuple[list[int], int] | None:
        return cast("tuple[list[int], int] | None", self._cells.total(account_id, period_start))

    def minute_positions(self, account_id: int, minute: int) -> Sequence[int]:
        return cast("list[int]", self._cells.minute_positions(account_id, minute))

    # --------------------------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, object]:
        """The data of ``SeriesStore.to_snapshot`` for the same cells: the same bytes once packed.

        The Rust cells are copy-on-write until :meth:`release_snapshot`, as the Python store's
        are; the columns are read from them as each is packed.
        """
        cells = self._cells
        combos, extent, n_slots, account_slots = cells.capture()
        return {
            "combos": combos,
            "extent": extent,
            "levels": [
                [Deferred(_columns, cells, level, slot) for slot in range(n_slots)]
                for level in range(N_GRID_LEVELS + 1)
            ],
            "account_slots": account_slots,
            "folded": cells.folded_minute,
        }

    def release_snapshot(self) -> None:
        """End the copy-on-write of :meth:`to_snapshot` (its data is packed, or abandoned)."""
        self._cells.release()

    @classmethod
    def from_snapshot(
        cls, spec: MetricSpec, data: Mapping[str, object], cells_type: CellsType
    ) -> NativeSeriesStore:
        """Rebuild a store saved by either engine's ``to_snapshot`` for the same metric generation."""
        store = cls(spec, cells_type)
        store._cells.load(data["combos"], data["extent"], data["levels"], data["account_slots"])
        store.fold_minutes(int(cast("int", data["folded"])))
        return store


def _columns(cells: Any, level: int, slot: int) -> list[object]:
    """One (level, slot)'s snapshot columns, as ``series._columns`` gives them."""
    accounts, second = cells.columns(level, slot)
    chunk = partial(cells.chunk, level, slot)
    return [accounts, second, Chunked(len(accounts), chunk, packed=True), Deferred(cells.big, level, slot)]
