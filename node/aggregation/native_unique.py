"""The native engine's store of a COUNT_UNIQUE metric: :class:`~.unique.UniqueStore` with its
member histories, period rows and apply step in Rust (``unimeter_native.UniqueSets``,
native/src/unique_sets.rs).

Same interface, same state, same alerts and the same snapshot data as the Python store, so a
partition holds either and a snapshot written by one loads into the other. Reads go through
:mod:`.unique_reads`, shared with the Python store; the Rust side answers its two lookups.
``apply`` and ``apply_record`` are the Rust methods themselves. Not here: the choice of engine
(``node/partition_engine.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from cluster_client.types import EventRow

from .combos import Combos
from .snapshot_data import Chunked
from .spec import AlertRow, AppliedRow, MetricSpec
from .unique_reads import Scan, UniqueReads

__all__ = ["NativeUniqueStore"]


class NativeUniqueStore(UniqueReads):
    """COUNT_UNIQUE state of one metric, for every account of a partition, in Rust."""

    __slots__ = ("_combos", "_sets", "apply", "apply_record", "native", "spec")

    def __init__(self, spec: MetricSpec, sets_type: Callable[..., Any]) -> None:
        self.spec = spec
        thresholds = [(t.code, t.value, t.recurring) for t in spec.thresholds]
        period_of = spec.periods.period_of
        self._sets = sets_type(spec.code, list(spec.dims), thresholds, spec.carry_over, period_of)
        self.apply: Callable[[Sequence[AppliedRow], int], list[AlertRow]] = self._sets.apply
        """Apply one log record's rows of this metric (offset order); return the alerts they fire."""
        self.apply_record: Callable[[Sequence[EventRow], int, int], list[AlertRow]] = self._sets.apply_record
        """``(rows, first_offset, record_ref)``: :attr:`apply` for this metric's rows among a stored
        record's ``EventRow`` rows (row ``i`` has offset ``first_offset + i``), read in place."""
        self.native: Any = self._sets
        """The Rust state itself, which ``unimeter_native.apply_batch`` applies a stored batch's
        events to directly, grouped by metric once for the whole batch."""
        self._combos = Combos(spec.dims)

    @property
    def combos(self) -> Combos:
        """The combinations seen so far (a Python copy, refreshed when the Rust side has more)."""
        if len(self._combos.values) != self._sets.combo_count:
            self._combos = Combos(self.spec.dims, self._sets.combos())
        return self._combos

    def period_row(self, account_id: int, period_start: int) -> tuple[list[int], int]:
        return cast("tuple[list[int], int]", self._sets.period_row(account_id, period_start))

    def scan(
        self, account_id: int, lo: int | None, end: int, wanted: list[bool], group_of: list[int | None]
    ) -> Scan | None:
        return cast("Scan | None", self._sets.scan(account_id, lo, end, wanted, group_of))

    def to_snapshot(self) -> dict[str, object]:
        """The data of ``UniqueStore.to_snapshot`` for the same state: the same bytes once packed
        (accounts copy-on-write in Rust until :meth:`release_snapshot`)."""
        combos, n = self._sets.capture()
        return {"combos": combos, "accounts": Chunked(n, self._sets.chunk)}

    def release_snapshot(self) -> None:
        """End the copy-on-write of :meth:`to_snapshot` (its data is packed, or abandoned)."""
        self._sets.release()

    @classmethod
    def from_snapshot(
        cls, spec: MetricSpec, data: Mapping[str, object], sets_type: Callable[..., Any]
    ) -> NativeUniqueStore:
        """Rebuild a store saved by either engine's ``to_snapshot`` for the same metric generation."""
        store = cls(spec, sets_type)
        store._sets.load(data["combos"], data["accounts"])
        return store
