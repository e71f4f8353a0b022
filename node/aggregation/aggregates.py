"""The aggregation engine of one partition: one store per metric, pure in-memory, no I/O.

:class:`PartitionAggregates` routes each call to the metric's store (bucketed cells for COUNT, SUM,
MAX and LATEST, member histories for COUNT_UNIQUE; in Python or in Rust as the engine chose:
:class:`StoreKinds`) and owns the snapshot format. A store belongs to one metric generation: a spec
of another generation (the metric was deleted and created again) finds an empty store, never the
old one's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from cluster_client.types import AggValue, GroupValue, Period

from .cells import agg_value, empty_cell
from .grid import HOUR, MINUTE
from .native_series import NativeSeriesStore
from .native_unique import NativeUniqueStore
from .series import SeriesStore
from .spec import AlertRow, AppliedRow, FetchEvents, MetricSpec
from .unique import UniqueStore

__all__ = ["PYTHON_STORES", "PartitionAggregates", "StoreKinds", "StoredApply"]

_T = TypeVar("_T")

_SNAPSHOT_VERSION = 2
"""2: each COUNT, SUM, MAX or LATEST store's data also says its folded minute (``"folded"``);
version 1, which has none (nothing folded), is still read."""
_READABLE_VERSIONS = (1, 2)
_MINUTES_PER_HOUR = HOUR // MINUTE
_Series = SeriesStore | NativeSeriesStore
_Unique = UniqueStore | NativeUniqueStore
_Store = _Series | _Unique
ApplyBatch = Callable[..., list[AlertRow]]
"""``unimeter_native.apply_batch`` (the extension ships no type stubs)."""
StoredApply = Callable[[int, Any, int, Mapping[str, int]], list[AlertRow]]
"""``(record_ref, rows, first_offset, generations) -> alerts``: a stored record into a partition's
event index and aggregates (:meth:`PartitionAggregates.native_apply`)."""


@dataclass(frozen=True, slots=True)
class StoreKinds:
    """How a partition's stores are made: the engine's choice (``node/partition_engine.py``). Both
    engines' stores hold the same state and write the same snapshots."""

    new_series: Callable[[MetricSpec], _Series]
    """An empty store for a COUNT, SUM, MAX or LATEST metric."""
    load_series: Callable[[MetricSpec, Mapping[str, object]], _Series]
    """Such a store from a snapshot's data for it (either engine's)."""
    new_unique: Callable[[MetricSpec], _Unique]
    """An empty store for a COUNT_UNIQUE metric."""
    load_unique: Callable[[MetricSpec, Mapping[str, object]], _Unique]
    """Such a store from a snapshot's data for it (either engine's)."""


PYTHON_STORES = StoreKinds(SeriesStore, SeriesStore.from_snapshot, UniqueStore, UniqueStore.from_snapshot)


class PartitionAggregates:
    """Every metric's aggregates for the accounts of one partition."""

    __slots__ = ("_captured", "_fetch_events", "_kinds", "_stores")

    def __init__(self, fetch_events: FetchEvents, kinds: StoreKinds = PYTHON_STORES) -> None:
        self._fetch_events = fetch_events
        self._kinds = kinds
        self._stores: dict[str, _Store] = {}
        self._captured: list[_Store] = []
        """Stores that are copy-on-write for the snapshot being packed."""

    def apply(self, spec: MetricSpec, rows: Sequence[AppliedRow], record_ref: int) -> list[AlertRow]:
        """Apply one log record's rows of ``spec``'s metric, in offset order; return the alerts they
        fire, in order."""
        if not rows:
            return []
        return self._store_for(spec).apply(rows, record_ref)

    def native_apply(
        self,
        apply_batch: ApplyBatch,
        add_record: Callable[[int, Any], Sequence[str]],
        spec_of: Callable[[str], MetricSpec | None],
    ) -> StoredApply:
        """The native engine's apply step of a stored record, bound to this partition's stores:
        ``(record_ref, rows, first_offset, generations) -> alerts``, the extension's
        ``apply_batch`` with the event index's ``add_record`` before it. The record's metrics in
        order of first appearance, each applied by its store if the metric still has the
        record's generation; ``rows`` are ``EventRow`` tuples (row ``i`` has offset
        ``first_offset + i``), read in place. Bound once (the stores' dict is this
        object's for its life), so a partition part costs one native call."""
        return partial(apply_batch, add_record, spec_of, self._stores, self._store_for)

    def native_ingest(self, part_ingest: Callable[..., _T], *parts: Any) -> _T:
        """``part_ingest(stores, store_for, *parts)``: the extension's ``PartIngest`` bound to this
        partition's stores (the dict is this object's for its life) and its other ``parts``."""
        return part_ingest(self._stores, self._store_for, *parts)

    def realtime(self, spec: MetricSpec, account_id: int, now_ns: int) -> tuple[AggValue, Period]:
        """The unfiltered aggregate of the period containing ``now_ns``, and that period."""
        store = self._store(spec)
        if store is None:
            start, end = spec.periods.period_of(now_ns)
            return agg_value(spec.agg_type, empty_cell()), Period(start, end)
        return store.realtime(account_id, now_ns)

    def query(
        self,
        spec: MetricSpec,
        account_id: int,
        start: int,
        end: int,
        filters: Mapping[str, str],
        group_by: Sequence[str],
    ) -> tuple[AggValue, list[GroupValue]]:
        """The aggregate over ``[start, end)`` of the events matching ``filters`` (already validated),
        and one aggregate per distinct ``group_by`` combination among them, ordered by its values.

        ``alert_flags`` is the period's when the range is exactly one of the metric's periods and no
        filter is given; otherwise 0 (flags belong to a period's unfiltered value).
        """
        store = self._store(spec)
        if store is None or start >= end:
            return agg_value(spec.agg_type, empty_cell()), []
        if isinstance(store, _Unique):
            return store.query(account_id, start, end, filters, group_by)
        return store.query(account_id, start, end, filters, group_by, self._fetch_events)

    def fold_minutes_before(self, cutoff_ns: int) -> int:
        """Fold the minute cells of every hour that ended at or before ``cutoff_ns`` into their hours;
        return how many cells were dropped (:meth:`fold_steps` in one go)."""
        return sum(self.fold_steps(cutoff_ns))

    def fold_steps(self, cutoff_ns: int) -> Iterator[int]:
        """Fold the minute cells of every hour that ended at or before ``cutoff_ns`` into their hours,
        a COUNT, SUM, MAX or LATEST store per step (``SeriesStore.fold_minutes``), each yielding
        the cells it dropped: the caller may serve others between steps. A store whose folded
        minute is already there costs one comparison; otherwise its step is a pass over its minute
        cells. Nothing while a snapshot is being packed (its copy-on-write reads those cells).

        COUNT_UNIQUE stores have nothing to fold: their member histories answer every range, and
        a history is per member, not per minute.
        """
        if self._captured:
            return
        minute = cutoff_ns // HOUR * _MINUTES_PER_HOUR
        for store in list(self._stores.values()):
            if not isinstance(store, _Unique) and store.folded_minute < minute:
                yield store.fold_minutes(minute)

    def forget_metric(self, code: str) -> None:
        """Drop the state of a deleted metric."""
        self._stores.pop(code, None)

    def _store_for(self, spec: MetricSpec) -> _Store:
        """The metric's store, a new one if it has none of this generation."""
        store = self._stores.get(spec.code)
        if store is None or store.spec.generation != spec.generation:
            kinds = self._kinds
            store = self._stores[spec.code] = (
                kinds.new_unique(spec) if spec.unique else kinds.new_series(spec)
            )
        return store

    def _store(self, spec: MetricSpec) -> _Store | None:
        store = self._stores.get(spec.code)
        if store is None or store.spec.generation != spec.generation:
            return None
        return store

    # --------------------------------------------------------------------------------- snapshot

    def to_snapshot(self) -> object:
        """The whole state as snapshot data (:mod:`.snapshot_data`) describing this moment, until
        :meth:`release_snapshot`: pack it first."""
        self.release_snapshot()  # an earlier capture that was never released is abandoned
        self._captured = list(self._stores.values())
        return {
            "v": _SNAPSHOT_VERSION,
            "metrics": [
                [code, store.spec.generation, int(store.spec.agg_type), store.to_snapshot()]
                for code, store in self._stores.items()
            ],
        }

    def release_snapshot(self) -> None:
        """End the copy-on-write that :meth:`to_snapshot` started (its data is packed)."""
        for store in self._captured:
            store.release_snapshot()
        self._captured = []

    @classmethod
    def from_snapshot(
        cls,
        data: object,
        fetch_events: FetchEvents,
        specs: Mapping[str, MetricSpec],
        kinds: StoreKinds = PYTHON_STORES,
    ) -> PartitionAggregates:
        """Rebuild the state saved by :meth:`to_snapshot`, keeping only metrics whose code is in
        ``specs`` with the same generation (a deleted or re-created metric starts empty)."""
        aggregates = cls(fetch_events, kinds)
        if not isinstance(data, Mapping) or data.get("v") not in _READABLE_VERSIONS:
            raise ValueError("unsupported aggregates snapshot")
        unfolded = data["v"] == 1
        for code, generation, agg_type, state in data["metrics"]:
            spec = specs.get(code)
            if spec is None or spec.generation != generation or int(spec.agg_type) != agg_type:
                continue
            if spec.unique:
                aggregates._stores[code] = kinds.load_unique(spec, state)
            else:
                if unfolded:
                    state = {**state, "folded": 0}
                aggregates._stores[code] = kinds.load_series(spec, state)
        return aggregates
