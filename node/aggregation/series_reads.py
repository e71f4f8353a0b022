"""Reads of a COUNT, SUM, MAX or LATEST metric's cells: realtime values and range queries.

Both stores of those metrics, the pure-Python :class:`~.series.SeriesStore` and the native
engine's :class:`~.native_series.NativeSeriesStore`, answer through these functions, so the two
can only differ in the cells they hold, never in how a range is cut, filtered, grouped or merged.
A store offers the few lookups of :class:`SeriesCellsView`; the range is planned here
(:mod:`.grid`), whole buckets are merged by the store, and the partial minutes at the edges are
folded here from the raw events the partition reads back: through the minute cells' record
positions, or, for the part of an edge inside an hour whose minute cells are folded (older than the
memory horizon: ``SeriesStore.fold_minutes``), through the event index's records of that hour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, cast

from cluster_client.types import AggType, AggValue, GroupValue, Period

from .cells import agg_value, empty_cell, fold_row, merge_cells
from .combos import Combos
from .grid import HOUR, MINUTE, PERIOD_LEVEL, plan_range
from .spec import AppliedRow, FetchEvents, MetricSpec

__all__ = ["SeriesCellsView", "SeriesReads", "series_query", "series_realtime"]

Segments = list[tuple[int, list[int]]]
"""(level, bucket indexes, or period starts for PERIOD_LEVEL), in time order, no overlaps."""


class SeriesCellsView(Protocol):
    """What the reads need of a store's cells."""

    @property
    def spec(self) -> MetricSpec: ...

    @property
    def combos(self) -> Combos: ...

    @property
    def first_minute(self) -> int: ...

    @property
    def last_minute(self) -> int: ...

    @property
    def folded_minute(self) -> int:
        """Minutes below this have no minute cells (folded into their hours)."""
        ...

    def slots_of(self, account_id: int) -> Sequence[int]:
        """The combination slots (``1 + combination``) the account has events in."""
        ...

    def merged(self, account_id: int, slot: int, segments: Segments) -> list[int] | None:
        """The statistics of the account's cells of ``slot`` in ``segments`` merged (None: none)."""
        ...

    def total(self, account_id: int, period_start: int) -> tuple[list[int], int] | None:
        """The account's unfiltered period cell's statistics and alert flags (None: no events)."""
        ...

    def minute_positions(self, account_id: int, minute: int) -> Sequence[int]:
        """The positions of the records that fed the account's unfiltered minute cell."""
        ...


class SeriesReads:
    """The reads of a store, for a class that offers :class:`SeriesCellsView`'s lookups: both
    stores inherit them, so neither can answer differently."""

    __slots__ = ()

    def realtime(self, account_id: int, now_ns: int) -> tuple[AggValue, Period]:
        """The unfiltered aggregate of the period containing ``now_ns``, with its alert flags."""
        return series_realtime(cast(SeriesCellsView, self), account_id, now_ns)

    def query(
        self,
        account_id: int,
        start: int,
        end: int,
        filters: Mapping[str, str],
        group_by: Sequence[str],
        fetch_events: FetchEvents,
    ) -> tuple[AggValue, list[GroupValue]]:
        """The aggregate over ``[start, end)`` after ``filters``, and one per ``group_by`` group."""
        return series_query(
            cast(SeriesCellsView, self), account_id, start, end, filters, group_by, fetch_events
        )


def series_realtime(view: SeriesCellsView, account_id: int, now_ns: int) -> tuple[AggValue, Period]:
    """The unfiltered aggregate of the period containing ``now_ns``, with its alert flags."""
    spec = view.spec
    p_start, p_end = spec.periods.period_of(now_ns)
    found = view.total(account_id, p_start)
    if found is None:
        return agg_value(spec.agg_type, empty_cell()), Period(p_start, p_end)
    cell, flags = found
    return agg_value(spec.agg_type, cell, flags if spec.thresholds else 0), Period(p_start, p_end)


def series_query(
    view: SeriesCellsView,
    account_id: int,
    start: int,
    end: int,
    filters: Mapping[str, str],
    group_by: Sequence[str],
    fetch_events: FetchEvents,
) -> tuple[AggValue, list[GroupValue]]:
    """The aggregate over ``[start, end)`` after ``filters``, and one per ``group_by`` group."""
    spec = view.spec
    p_start, p_end = spec.periods.period_of(start)
    exact = p_start == start and p_end == end

    # Which slots answer: the total when unfiltered, else the account's matching combinations.
    combos = view.combos
    group_of: dict[int, tuple[str, ...]] = {}
    if filters or group_by:
        used = view.slots_of(account_id)
        selected = [s for s in used if combos.matches(s - 1, filters)] if filters else list(used)
        if group_by:
            projection = combos.projection(group_by)
            group_of = {s: projection[s - 1] for s in selected}
        main_slots = selected if filters else [0]
    else:
        main_slots = [0]
    wanted = set(main_slots) | set(group_of)

    # Whole buckets, merged per slot by the store (in time order: the cheap "last" scan applies).
    raw: list[tuple[int, int, int]] = []
    spans: list[tuple[int, int]] = []
    if exact:
        segments: Segments = [(PERIOD_LEVEL, [p_start])]
    else:
        # Clipping changes no answer (no event lies outside) but bounds the walk. Inside folded
        # hours it clips to whole hours: an edge it made there would be read from the log (every
        # record of the account's hour) where the hour cell answers.
        first, last = view.first_minute * MINUTE, (view.last_minute + 1) * MINUTE
        folded = view.folded_minute * MINUTE
        if first < folded:
            first -= first % HOUR
        if last <= folded:
            last += -last % HOUR
        start = max(start, first)
        end = min(end, last)
        plan = plan_range(start, end, spec.periods if spec.long_periods else None)
        raw = plan.raw
        segments = plan.segments
        if start < view.folded_minute * MINUTE:
            segments, raw, spans = _split_folded(segments, raw, view.folded_minute)
    merged: dict[int, list[int]] = {}
    if segments:
        for slot in wanted:
            cell = view.merged(account_id, slot, segments)
            if cell is not None:
                merged[slot] = cell

    # Partial minutes at the edges: fold the raw events of the records that fed those minutes.
    with_sum = spec.agg_type is AggType.SUM
    main_raw: list[int] | None = None
    group_raw: dict[tuple[str, ...], list[int]] = {}
    # Whole minutes of folded hours come back as cells where no row's properties are needed.
    whole_minutes: list[list[int]] | None = None if group_of or filters else []
    if raw or spans:
        main_set = set(main_slots)
        rows = _edge_rows(view, account_id, raw, fetch_events)
        if spans:  # the records of those hours, found by the partition's event index
            rows += fetch_events(None, account_id, spec.code, spans, whole_minutes)
        for _, value, t, props, op, offset in rows:
            if group_of or filters:
                combo = combos.find(props)
                slot = -1 if combo is None else combo + 1
                group = group_of.get(slot)
                if group is not None:
                    cell = group_raw.get(group)
                    if cell is None:
                        cell = group_raw[group] = empty_cell()
                    fold_row(cell, value, t, op, offset, with_sum)
                if filters and slot not in main_set:
                    continue
            if main_raw is None:
                main_raw = empty_cell()
            fold_row(main_raw, value, t, op, offset, with_sum)

    # The few per-slot results merged into each answer.
    agg = spec.agg_type
    parts = [merged[slot] for slot in main_slots if slot in merged]
    if main_raw is not None:
        parts.append(main_raw)
    if whole_minutes:
        parts += whole_minutes
    main = merge_cells(parts)
    flags = 0
    if exact and not filters and spec.thresholds:
        found = view.total(account_id, p_start)
        flags = found[1] if found is not None else 0
    groups: list[GroupValue] = []
    if group_by:
        by_group: dict[tuple[str, ...], list[list[int]]] = {}
        for slot, group in group_of.items():
            if slot in merged:
                by_group.setdefault(group, []).append(merged[slot])
        for group, cell in group_raw.items():
            by_group.setdefault(group, []).append(cell)
        groups = [
            GroupValue(dict(zip(group_by, group, strict=True)), agg_value(agg, merge_cells(by_group[group])))
            for group in sorted(by_group)
        ]
    return agg_value(agg, main, flags), groups


def _split_folded(
    segments: Segments, raw: list[tuple[int, int, int]], folded: int
) -> tuple[Segments, list[tuple[int, int, int]], list[tuple[int, int]]]:
    """The plan without the minutes below ``folded`` (no cells there), and those minutes' time
    spans (raw windows and whole minutes alike), to be read from the log."""
    spans = [(lo, hi) for minute, lo, hi in raw if minute < folded]
    raw = [window for window in raw if window[0] >= folded]
    kept: Segments = []
    for level, buckets in segments:
        if level == 0 and buckets[0] < folded:
            # Minute buckets are consecutive; a run may straddle the folded hour's end.
            n = next((i for i, minute in enumerate(buckets) if minute >= folded), len(buckets))
            spans.append((buckets[0] * MINUTE, (buckets[n - 1] + 1) * MINUTE))
            buckets = buckets[n:]
            if not buckets:
                continue
        kept.append((level, buckets))
    return kept, raw, spans


def _edge_rows(
    view: SeriesCellsView, account_id: int, raw: list[tuple[int, int, int]], fetch_events: FetchEvents
) -> list[AppliedRow]:
    """The account's events inside the raw windows, read back from the records that hold them."""
    refs: list[int] = []
    for minute, _, _ in raw:
        refs.extend(r for r in view.minute_positions(account_id, minute) if r not in refs)
    if not refs:
        return []
    return fetch_events(refs, account_id, view.spec.code, [(lo, hi) for _, lo, hi in raw])
