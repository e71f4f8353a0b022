"""Bucketed aggregates of one COUNT, SUM, MAX or LATEST metric in one partition.

Every statistic of these types merges (counts and sums add, max and "last by (time, offset)" take
the larger), so an account's events are pre-aggregated into cells at four levels: UTC minute, hour
and day buckets and the metric's own periods. ``levels[level][slot]`` is one flat dict per level and
slot, keyed by :mod:`.keys`. Slot 0 holds the account's unfiltered total; a metric with declared
dimensions also keeps slot ``1 + c`` for each combination ``c`` (filters and group-by read those,
unfiltered queries and thresholds read the total, so they never merge per combination). Minute
cells of slot 0 end with the refs of the log records that fed them: the raw edges of a range are
read back through those. Period cells of slot 0 end with the alert state (:mod:`.thresholds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from cluster_client.types import AggType, AggValue, GroupValue, Period

from .cells import (
    COUNT,
    LAST_OFFSET,
    LAST_TIME,
    LAST_VALUE,
    MAX,
    N_STATS,
    SUM,
    agg_value,
    empty_cell,
    fold_row,
    merge_cells,
    pack_cell,
    unpack_cell,
)
from .combos import Combos
from .grid import DAY, HOUR, MINUTE, N_GRID_LEVELS, PERIOD_LEVEL, plan_range
from .keys import grid_base, period_key, split_grid_key, split_period_key
from .spec import AlertRow, AppliedRow, FetchEvents, MetricSpec
from .thresholds import alert_slots, evaluate

__all__ = ["SeriesStore"]

_REMOVE = 2
_MINUTES_PER_HOUR = HOUR // MINUTE
_MINUTES_PER_DAY = DAY // MINUTE
_VALUE_SLOT = {AggType.COUNT: COUNT, AggType.SUM: SUM, AggType.MAX: MAX, AggType.LATEST: LAST_VALUE}

Cells = dict[int, list[int]]


class SeriesStore:
    """Pre-aggregated cells of one non-COUNT_UNIQUE metric, for every account of a partition."""

    __slots__ = ("account_slots", "combos", "levels", "spec")

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.combos = Combos(spec.dims)
        self.levels: list[list[Cells]] = [[{}] for _ in range(N_GRID_LEVELS + 1)]
        self.account_slots: dict[int, list[int]] = {}
        """Dimensioned metrics only: the combination slots each account has events in."""

    # ------------------------------------------------------------------------------------ apply

    def apply(self, rows: Sequence[AppliedRow], ref: int) -> list[AlertRow]:
        """Apply one log record's rows of this metric (offset order); return the alerts they fire."""
        spec = self.spec
        period_of = spec.periods.period_of
        with_sum = spec.agg_type is AggType.SUM
        thresholds = bool(spec.thresholds)
        value_slot = _VALUE_SLOT[spec.agg_type]
        extra = alert_slots(spec)
        dimensioned = bool(spec.dims)
        combo_of = self.combos.id_of
        totals = self.levels[PERIOD_LEVEL][0]
        flush = self._flush
        alerts: list[AlertRow] = []
        p_start = p_end = 0
        # Consecutive rows of one (account, minute, slot, period) fold into one delta cell before any
        # bucket dict is touched: a record's rows of one account are mostly near each other in time.
        run: list[int] | None = None
        run_account = run_minute = run_slot = run_period = -1
        for account, value, t, props, op, offset in rows:
            if not p_start <= t < p_end:
                p_start, p_end = period_of(t)
            slot = combo_of(props) + 1 if dimensioned else 0
            add = op != _REMOVE
            sv = value if with_sum else 0
            # The period total is updated per event: thresholds see the value right after each one.
            # Rows arrive in offset order, so a later row wins a tie on time ("last" below).
            key = period_key(account, p_start)
            cell = totals.get(key)
            if cell is None:
                cell = [1, sv, value, t, offset, value, *extra] if add else [-1, -sv, 0, 0, 0, 0, *extra]
                totals[key] = cell
            elif add:
                cell[COUNT] += 1
                cell[SUM] += sv
                if value > cell[MAX]:
                    cell[MAX] = value
                if t >= cell[LAST_TIME]:
                    cell[LAST_TIME] = t
                    cell[LAST_OFFSET] = offset
                    cell[LAST_VALUE] = value
            else:
                cell[COUNT] -= 1
                cell[SUM] -= sv
            if thresholds:
                evaluate(spec, cell, N_STATS, cell[value_slot], account, p_start, t, alerts)
            minute = t // MINUTE
            if run is not None and (
                minute == run_minute and account == run_account and slot == run_slot and p_start == run_period
            ):
                if add:
                    run[COUNT] += 1
                    run[SUM] += sv
                    if value > run[MAX]:
                        run[MAX] = value
                    if t >= run[LAST_TIME]:
                        run[LAST_TIME] = t
                        run[LAST_OFFSET] = offset
                        run[LAST_VALUE] = value
                else:
                    run[COUNT] -= 1
                    run[SUM] -= sv
                continue
            if run is not None:
                flush(run_account, run_minute, run_slot, run_period, run, ref)
            run = [1, sv, value, t, offset, value] if add else [-1, -sv, 0, 0, 0, 0]
            run_account, run_minute, run_slot, run_period = account, minute, slot, p_start
        if run is not None:
            flush(run_account, run_minute, run_slot, run_period, run, ref)
        return alerts

    def _flush(self, account: int, minute: int, slot: int, p_start: int, delta: list[int], ref: int) -> None:
        """Merge a delta cell into the account's buckets (total, and its combination's if any)."""
        levels = self.levels
        base = grid_base(account)
        minute_key = base + minute
        hour_key = base + minute // _MINUTES_PER_HOUR
        day_key = base + minute // _MINUTES_PER_DAY
        cells = levels[0][0]
        cell = cells.get(minute_key)
        if cell is None:
            cells[minute_key] = [*delta, ref]
        else:
            _merge_into(cell, delta)
            if cell[-1] != ref:
                cell.append(ref)
        _add(levels[1][0], hour_key, delta)
        _add(levels[2][0], day_key, delta)
        if slot:
            while len(levels[0]) <= slot:
                for level in levels:
                    level.append({})
            _add(levels[0][slot], minute_key, delta)
            _add(levels[1][slot], hour_key, delta)
            _add(levels[2][slot], day_key, delta)
            periods = levels[PERIOD_LEVEL][slot]
            key = period_key(account, p_start)
            cell = periods.get(key)
            if cell is None:
                periods[key] = delta[:]
                used = self.account_slots.get(account)
                if used is None:
                    self.account_slots[account] = [slot]
                elif slot not in used:
                    used.append(slot)
            else:
                _merge_into(cell, delta)

    # ------------------------------------------------------------------------------------ reads

    def realtime(self, account_id: int, now_ns: int) -> tuple[AggValue, Period]:
        """The unfiltered aggregate of the period containing ``now_ns``, with its alert flags."""
        spec = self.spec
        p_start, p_end = spec.periods.period_of(now_ns)
        cell = self.levels[PERIOD_LEVEL][0].get(period_key(account_id, p_start))
        if cell is None:
            return agg_value(spec.agg_type, empty_cell()), Period(p_start, p_end)
        flags = cell[N_STATS] if spec.thresholds else 0
        return agg_value(spec.agg_type, cell, flags), Period(p_start, p_end)

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
        spec = self.spec
        levels = self.levels
        p_start, p_end = spec.periods.period_of(start)
        exact = p_start == start and p_end == end

        # Which slots answer: the total when unfiltered, else the account's matching combinations.
        combos = self.combos
        group_of: dict[int, tuple[str, ...]] = {}
        if filters or group_by:
            used = self.account_slots.get(account_id, [])
            selected = [s for s in used if combos.matches(s - 1, filters)] if filters else list(used)
            if group_by:
                projection = combos.projection(group_by)
                group_of = {s: projection[s - 1] for s in selected}
            main_slots = selected if filters else [0]
        else:
            selected = []
            main_slots = [0]
        wanted = set(main_slots) | set(group_of)

        # Whole buckets: one key list per segment, shared by every slot.
        found: dict[int, list[list[int]]] = {slot: [] for slot in wanted}
        raw: list[tuple[int, int, int]] = []
        if exact:
            segments = [(PERIOD_LEVEL, [period_key(account_id, p_start)])]
        else:
            plan = plan_range(start, end, spec.periods if spec.long_periods else None)
            raw = plan.raw
            base = grid_base(account_id)
            segments = [
                (level, [period_key(account_id, s) for s in idx])
                if level == PERIOD_LEVEL
                else (level, [base + i for i in idx])
                for level, idx in plan.segments
            ]
        for slot, cells in found.items():
            for level, keys in segments:
                cells.extend([c for c in map(levels[level][slot].get, keys) if c is not None])

        # Partial minutes at the edges: fold the raw events of the records that fed those minutes.
        with_sum = spec.agg_type is AggType.SUM
        main_raw: list[int] | None = None
        group_raw: dict[tuple[str, ...], list[int]] = {}
        if raw:
            main_set = set(main_slots)
            for _, value, t, props, op, offset in self._edge_rows(account_id, raw, fetch_events):
                if group_of or filters:
                    slot = combos.id_of(props) + 1
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

        agg = spec.agg_type
        main_cells = [c for slot in main_slots for c in found[slot]]
        main = merge_cells(main_cells, latest_last=len(main_slots) == 1)
        if main_raw is not None:
            main = merge_cells([main, main_raw])
        flags = 0
        if exact and not filters and spec.thresholds:
            total = levels[PERIOD_LEVEL][0].get(period_key(account_id, p_start))
            flags = total[N_STATS] if total is not None else 0
        groups: list[GroupValue] = []
        if group_by:
            by_group: dict[tuple[str, ...], list[list[int]]] = {}
            for slot, group in group_of.items():
                cells = found[slot]
                if cells:
                    by_group.setdefault(group, []).extend(cells)
            for group in group_raw:
                by_group.setdefault(group, [])
            for group in sorted(by_group):
                cell = merge_cells(by_group[group])
                extra = group_raw.get(group)
                if extra is not None:
                    cell = merge_cells([cell, extra])
                groups.append(GroupValue(dict(zip(group_by, group, strict=True)), agg_value(agg, cell)))
        return agg_value(agg, main, flags), groups

    def _edge_rows(
        self, account_id: int, raw: list[tuple[int, int, int]], fetch_events: FetchEvents
    ) -> list[AppliedRow]:
        """The account's events inside the raw windows, read back from the records that hold them."""
        minutes = self.levels[0][0]
        base = grid_base(account_id)
        refs: list[int] = []
        for minute, _, _ in raw:
            cell = minutes.get(base + minute)
            if cell is not None:
                refs.extend(r for r in cell[N_STATS:] if r not in refs)
        if not refs:
            return []
        rows = fetch_events(refs, account_id, self.spec.code)
        if len(raw) == 1:
            lo, hi = raw[0][1], raw[0][2]
            return [r for r in rows if lo <= r[2] < hi]
        return [r for r in rows if any(lo <= r[2] < hi for _, lo, hi in raw)]

    # --------------------------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, object]:
        """Plain data (ints, strings, lists) that :meth:`from_snapshot` rebuilds this store from."""
        levels: list[list[list[object]]] = []
        for number, level in enumerate(self.levels):
            split = split_period_key if number == PERIOD_LEVEL else split_grid_key
            levels.append([[[*split(key), pack_cell(cell)] for key, cell in slot.items()] for slot in level])
        return {
            "combos": self.combos.to_snapshot(),
            "levels": levels,
            "account_slots": [[account, slots] for account, slots in self.account_slots.items()],
        }

    @classmethod
    def from_snapshot(cls, spec: MetricSpec, data: Mapping[str, object]) -> SeriesStore:
        """Rebuild a store saved by :meth:`to_snapshot` for the same metric generation."""
        store = cls(spec)
        store.combos = Combos(spec.dims, cast("list[list[str]]", data["combos"]))
        saved = cast("list[list[list[list[Any]]]]", data["levels"])
        levels: list[list[Cells]] = []
        for number, level in enumerate(saved):
            join = period_key if number == PERIOD_LEVEL else _grid_key
            levels.append([{join(a, i): unpack_cell(c) for a, i, c in slot} for slot in level])
        store.levels = levels
        slots = cast("list[list[Any]]", data["account_slots"])
        store.account_slots = {int(a): [int(s) for s in used] for a, used in slots}
        return store


def _grid_key(account_id: int, index: int) -> int:
    return grid_base(account_id) + index


def _merge_into(cell: list[int], delta: list[int]) -> None:
    """Merge ``delta`` (events newer in offset than any in ``cell``) into ``cell`` in place."""
    cell[COUNT] += delta[COUNT]
    cell[SUM] += delta[SUM]
    if delta[MAX] > cell[MAX]:
        cell[MAX] = delta[MAX]
    # delta's offsets are all newer, so it wins a tie on time; offset 0 means it holds no ADD.
    if delta[LAST_OFFSET] and delta[LAST_TIME] >= cell[LAST_TIME]:
        cell[LAST_TIME] = delta[LAST_TIME]
        cell[LAST_OFFSET] = delta[LAST_OFFSET]
        cell[LAST_VALUE] = delta[LAST_VALUE]


def _add(cells: Cells, key: int, delta: list[int]) -> None:
    cell = cells.get(key)
    if cell is None:
        cells[key] = delta[:]
    else:
        _merge_into(cell, delta)
