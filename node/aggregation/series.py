"""Bucketed aggregates of one COUNT, SUM, MAX or LATEST metric in one partition.

Every statistic of these types merges (counts and sums add, max and "last by (time, offset)" take
the larger), so an account's events are pre-aggregated into cells at four levels: UTC minute, hour
and day buckets and the metric's own periods. ``levels[level][slot]`` is one flat dict per level and
slot, keyed by :mod:`.keys`. Slot 0 holds the account's unfiltered total; a metric with declared
dimensions also keeps slot ``1 + c`` for each combination ``c`` (filters and group-by read those,
unfiltered queries and thresholds read the total, so they never merge per combination). Minute
cells of slot 0 end with the positions of the log records that fed them (one slot: an int, or a
packed array once several records did, :mod:`.positions`): the raw edges of a range are read back
through those. Period cells of slot 0 end with the alert state (:mod:`.thresholds`).

Minute cells of hours older than the memory horizon are folded away (:meth:`SeriesStore.fold_minutes`,
every slot, positions included): their hour, day and period cells already hold every event, and a
range edge inside a folded hour is read from the log through the event index instead
(:mod:`.series_reads`). A late event into a folded hour updates the coarser cells only.

Memory: one flat dict per level (not a dict per account) and list cells keep an account with a
single event at ~930 bytes (tracemalloc; 4 cells, 4 dict entries, packed-int keys); a dimensioned
metric stores its combinations' cells besides the total, about twice that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from cluster_client.types import AggType

from .cells import (
    COUNT,
    LAST_OFFSET,
    LAST_TIME,
    LAST_VALUE,
    MAX,
    N_STATS,
    SUM,
    merge_cells,
    pack_cells,
    unpack_cells,
)
from .combos import Combos
from .grid import DAY, HOUR, MINUTE, N_GRID_LEVELS, PERIOD_LEVEL
from .keys import buckets_below, grid_base, grid_bucket, join_keys, period_key, split_keys
from .positions import positions_of, tail_positions, widened, with_packed_tail
from .series_reads import SeriesReads
from .snapshot_data import Chunked, Deferred
from .spec import AlertRow, AppliedRow, MetricSpec
from .thresholds import alert_slots, evaluate
from .untracked import untracked

__all__ = ["SeriesStore"]

_REMOVE = 2
_NO_MINUTE = 1 << 62  # above any minute index
_NO_RUN: list[int] = []  # placeholder: never merged into, the run key (-1, ...) matches no row
_MINUTES_PER_HOUR = HOUR // MINUTE
_MINUTES_PER_DAY = DAY // MINUTE
_VALUE_SLOT = {AggType.COUNT: COUNT, AggType.SUM: SUM, AggType.MAX: MAX, AggType.LATEST: LAST_VALUE}

Cells = dict[int, list[int]]


class SeriesStore(SeriesReads):
    """Pre-aggregated cells of one non-COUNT_UNIQUE metric, for every account of a partition."""

    __slots__ = (
        "_saved",
        "account_slots",
        "combos",
        "first_minute",
        "folded_minute",
        "last_minute",
        "levels",
        "spec",
    )

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.combos = Combos(spec.dims)
        self.levels: list[list[Cells]] = [[{}] for _ in range(N_GRID_LEVELS + 1)]
        self.account_slots: dict[int, list[int]] = {}
        """Dimensioned metrics only: the combination slots each account has events in."""
        self.first_minute = _NO_MINUTE
        self.last_minute = -1
        """The minutes of the earliest and latest events of any account: ranges are clipped to them,
        so an "all time" query walks the buckets of the data, not of 500 years."""
        self.folded_minute = 0
        """Minutes below this (the first minute of an hour) are folded: no minute cells, any slot."""
        self._saved: list[list[Cells]] | None = None
        """While a snapshot packs: per level and slot, the value at capture of each cell changed
        since (copy-on-write; see :meth:`to_snapshot`)."""

    # ------------------------------------------------------------------------------------ apply

    def apply(self, rows: Sequence[AppliedRow], ref: int) -> list[AlertRow]:
        """Apply one log record's rows of this metric (offset order); return the alerts they fire."""
        if not rows:
            return []
        spec = self.spec
        period_of = spec.periods.period_of
        with_sum = spec.agg_type is AggType.SUM
        thresholds = bool(spec.thresholds)
        value_slot = _VALUE_SLOT[spec.agg_type]
        extra = alert_slots(spec)
        dimensioned = bool(spec.dims)
        combo_of = self.combos.id_of
        totals = self.levels[PERIOD_LEVEL][0]
        saved = self._saved
        saved_totals = None if saved is None else saved[PERIOD_LEVEL][0]
        alerts: list[AlertRow] = []
        p_start = p_end = 0
        # Phase 1, per event: with thresholds, the period total (they compare the value right after
        # each event); and deltas: the rows of one (account, minute, slot, period) folded into one
        # cell before any bucket is touched. Without dimensions, runs of consecutive rows are
        # enough (a record's rows of one account are mostly close in time); with them, a dict,
        # since combinations interleave.
        accounts: list[int] = []  # (dimensioned metrics only)
        slots: list[int] = []  # (dimensioned metrics only)
        minute_keys: list[int] = []
        hour_keys: list[int] = []
        day_keys: list[int] = []
        period_keys: list[int] = []
        deltas: list[list[int]] = []
        lo_minute, hi_minute = _NO_MINUTE, -1  # the record's
        by_key: dict[tuple[int, int, int, int], list[int]] = {}
        run = _NO_RUN
        run_account = run_minute = run_start = -1
        slot = 0
        for account, value, t, props, op, offset in rows:
            if not p_start <= t < p_end:
                p_start, p_end = period_of(t)
            add = op != _REMOVE
            sv = value if with_sum else 0
            # The cell update below and the run update further down are the same fold, written
            # out twice on purpose: this loop runs per event, and a helper call would cost more
            # than the fold itself.
            if thresholds:
                key = period_key(account, p_start)
                cell = totals.get(key)
                if cell is None:
                    cell = untracked(
                        [1, sv, value, t, offset, value, *extra] if add else [-1, -sv, 0, 0, 0, 0, *extra]
                    )
                    totals[key] = cell
                else:
                    if saved_totals is not None and key not in saved_totals:
                        saved_totals[key] = cell[:]
                    if add:
                        # Rows come in offset order: a later row wins a tie on time.
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
                evaluate(spec, cell, N_STATS, cell[value_slot], account, p_start, t, alerts)
            minute = t // MINUTE
            if dimensioned:
                slot = combo_of(props) + 1
                group_key = (account, minute, slot, p_start)
                found = by_key.get(group_key)
                if found is None:
                    run_account = -1  # forces the "new delta" branch below
                else:
                    run = found
                    run_account, run_minute, run_start = account, minute, p_start
            if minute == run_minute and account == run_account and p_start == run_start:
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
            run = [1, sv, value, t, offset, value] if add else [-1, -sv, 0, 0, 0, 0]
            run_account, run_minute, run_start = account, minute, p_start
            if dimensioned:
                by_key[group_key] = run
                accounts.append(account)
                slots.append(slot)
            # The run's keys at every level, computed here: key lists built in later passes cost
            # a comprehension each, which dominated the small per-partition records of a batch.
            base = grid_base(account)
            minute_keys.append(base + minute)
            hour_keys.append(base + minute // _MINUTES_PER_HOUR)
            day_keys.append(base + minute // _MINUTES_PER_DAY)
            period_keys.append(period_key(account, p_start))
            if minute < lo_minute:
                lo_minute = minute
            if minute > hi_minute:
                hi_minute = minute
            deltas.append(run)

        # Phase 2, per level: one tight loop each, no call per cell.
        if lo_minute < self.first_minute:
            self.first_minute = lo_minute
        if hi_minute > self.last_minute:
            self.last_minute = hi_minute
        levels = self.levels
        folded = self.folded_minute if lo_minute < self.folded_minute else 0
        total_minute_keys, minute_deltas = minute_keys, deltas
        if folded:  # late events into folded hours: their coarser cells only
            total_minute_keys, minute_deltas = _unfolded(minute_keys, deltas, folded)
        if saved is not None:
            _save_originals(levels[0][0], total_minute_keys, saved[0][0], _minute_copy)
            _save_originals(levels[1][0], hour_keys, saved[1][0])
            _save_originals(levels[2][0], day_keys, saved[2][0])
            if not thresholds:  # with them, phase 1 saved the period cells before changing them
                _save_originals(totals, period_keys, saved[PERIOD_LEVEL][0])
        _merge_minutes(levels[0][0], total_minute_keys, minute_deltas, ref)
        _merge_all(levels[1][0], hour_keys, deltas)
        _merge_all(levels[2][0], day_keys, deltas)
        if not thresholds:
            _merge_all(totals, period_keys, deltas)
        if dimensioned:
            self._apply_combinations(
                accounts, slots, period_keys, minute_keys, hour_keys, day_keys, deltas, folded
            )
        return alerts

    def _apply_combinations(
        self,
        accounts: list[int],
        slots: list[int],
        period_keys: list[int],
        minute_keys: list[int],
        hour_keys: list[int],
        day_keys: list[int],
        deltas: list[list[int]],
        folded: int,
    ) -> None:
        """Merge deltas into their combination's buckets (dimensioned metrics only); ``folded``: the
        folded minute if some deltas fall below it (their minute cells are skipped), else 0."""
        levels = self.levels
        top = max(slots)
        while len(levels[0]) <= top:
            for level in levels:
                level.append({})
        minute_cells, hour_cells, day_cells, period_cells = levels
        saved = self._saved
        if saved is not None:
            for level, saved_level, keys in zip(
                levels, saved, (minute_keys, hour_keys, day_keys, period_keys), strict=True
            ):
                by_slot: dict[int, list[int]] = {}
                for slot, key in zip(slots, keys, strict=True):
                    if slot < len(saved_level):  # a slot added since the capture is not in it
                        by_slot.setdefault(slot, []).append(key)
                for slot, slot_keys in by_slot.items():
                    _save_originals(level[slot], slot_keys, saved_level[slot])
        account_slots = self.account_slots
        # One pass, a call per cell: grouping by slot first costs more for the small records of
        # realtime ingestion (a few rows over many combinations) than it saves on big ones.
        for i, slot in enumerate(slots):
            delta = deltas[i]
            if not folded or grid_bucket(minute_keys[i]) >= folded:
                _merge_one(minute_cells[slot], minute_keys[i], delta)
            _merge_one(hour_cells[slot], hour_keys[i], delta)
            _merge_one(day_cells[slot], day_keys[i], delta)
            if _merge_one(period_cells[slot], period_keys[i], delta):
                used = account_slots.setdefault(accounts[i], [])
                if slot not in used:
                    used.append(slot)

    # ---------------------------------------------------------------------------------- folding

    def fold_minutes(self, minute: int) -> int:
        """Drop every slot's minute cells below ``minute`` (the first minute of an hour; their
        record positions with them) and create none there from now on; return how many were
        dropped. Never while a snapshot is being packed (the caller's rule: see
        ``PartitionAggregates.fold_steps``)."""
        if minute <= self.folded_minute:
            return 0
        if self._saved is not None:
            raise ValueError("cannot fold minute cells while a snapshot is being packed")
        self.folded_minute = minute
        dropped = 0
        for cells in self.levels[0]:
            # Deleted in place (a new dict of the rest took 4x longer): the dict compacts at its
            # next resize, which the new minutes bring.
            below = buckets_below(cells, minute)
            for key in below:
                del cells[key]
            dropped += len(below)
        return dropped

    # ------------------------------------------------------------------------------------ reads

    # The lookups of :class:`.series_reads.SeriesCellsView`.

    def slots_of(self, account_id: int) -> Sequence[int]:
        return self.account_slots.get(account_id, [])

    def merged(self, account_id: int, slot: int, segments: list[tuple[int, list[int]]]) -> list[int] | None:
        cells: list[list[int]] = []
        base = grid_base(account_id)
        for level, idx in segments:
            if level == PERIOD_LEVEL:
                keys = [period_key(account_id, s) for s in idx]
            else:
                keys = [base + i for i in idx]
            cells.extend([c for c in map(self.levels[level][slot].get, keys) if c is not None])
        return merge_cells(cells, latest_last=True) if cells else None

    def total(self, account_id: int, period_start: int) -> tuple[list[int], int] | None:
        cell = self.levels[PERIOD_LEVEL][0].get(period_key(account_id, period_start))
        if cell is None:
            return None
        return cell[:N_STATS], cell[N_STATS] if self.spec.thresholds else 0

    def minute_positions(self, account_id: int, minute: int) -> Sequence[int]:
        cell = self.levels[0][0].get(grid_base(account_id) + minute)
        return () if cell is None else tail_positions(cell, N_STATS)

    # --------------------------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, object]:
        """Plain data (ints, strings, lists) that :meth:`from_snapshot` rebuilds this store from.

        Each (level, slot) dict goes as columns: account ids, bucket indexes (period starts for
        the period level), cells, and the positions of cells packed as strings (sums past 64 bits),
        computed when packed (:mod:`.snapshot_data`).

        Only the key lists are copied now. The cells are copy-on-write until
        :meth:`release_snapshot`: ingestion saves a cell's value before its first change, and the
        packer reads each captured key's saved value if it has one, else the live cell. Copying
        every cell here took ~0.6 µs per cell on the loop (memory-bound: a cell and its ints are
        scattered objects), 150-300 ms for a partition of 250,000 events, and cells accumulate
        with the history kept. One snapshot of a store at a time (the partition serialises them).
        """
        saved: list[list[Cells]] = [[{} for _ in level] for level in self.levels]
        self._saved = saved
        levels = [
            [
                Deferred(
                    _columns,
                    list(cells),
                    cells,
                    saved[number][slot],
                    number == PERIOD_LEVEL,
                    number == slot == 0,
                )
                for slot, cells in enumerate(level)
            ]
            for number, level in enumerate(self.levels)
        ]
        return {
            "combos": self.combos.to_snapshot(),
            "extent": [self.first_minute, self.last_minute],
            "levels": levels,
            "account_slots": [[account, slots[:]] for account, slots in self.account_slots.items()],
            "folded": self.folded_minute,
        }

    def release_snapshot(self) -> None:
        """End the copy-on-write of :meth:`to_snapshot` (its data is packed, or abandoned)."""
        self._saved = None

    @classmethod
    def from_snapshot(cls, spec: MetricSpec, data: Mapping[str, object]) -> SeriesStore:
        """Rebuild a store saved by :meth:`to_snapshot` for the same metric generation."""
        store = cls(spec)
        store.combos = Combos(spec.dims, cast("list[list[str]]", data["combos"]))
        saved = cast("list[list[list[list[Any]]]]", data["levels"])
        store.levels = [
            [
                dict(
                    zip(
                        join_keys(accounts, second, number == PERIOD_LEVEL),
                        map(untracked, _unpacked(unpack_cells(cells, big), number == slot == 0)),
                        strict=True,
                    )
                )
                for slot, (accounts, second, cells, big) in enumerate(level)
            ]
            for number, level in enumerate(saved)
        ]
        store.first_minute, store.last_minute = (int(m) for m in cast("list[int]", data["extent"]))
        slots = cast("list[list[Any]]", data["account_slots"])
        store.account_slots = {int(a): [int(s) for s in used] for a, used in slots}
        store.fold_minutes(int(cast("int", data["folded"])))
        return store


def _columns(keys: list[int], live: Cells, saved: Cells, periods: bool, minutes: bool) -> list[object]:
    """One (level, slot) dict's snapshot columns: accounts, buckets, packed cells, big positions.

    The cells are read a chunk at a time as they are packed, each as it was at capture: its saved
    value if ingestion has changed it since, else the live cell (unchanged since the capture). The
    total's minute cells (``minutes``) go with their record positions spread out as ints after the
    statistics, the format they have always had in snapshots.
    """
    accounts, second = split_keys(keys, periods)
    big: list[int] = []

    def chunk(lo: int, hi: int) -> list[Any]:
        cells = [saved.get(key) or live[key] for key in keys[lo:hi]]
        if minutes:
            cells = [[*cell[:N_STATS], *tail_positions(cell, N_STATS)] for cell in cells]
        packed, big_here = pack_cells(cells)
        big.extend(lo + i for i in big_here)
        return packed

    return [accounts, second, Chunked(len(keys), chunk), Deferred(list, big)]


def _unfolded(keys: list[int], deltas: list[list[int]], folded: int) -> tuple[list[int], list[list[int]]]:
    """The minute keys at or after minute ``folded``, and their deltas."""
    kept = [i for i, key in enumerate(keys) if grid_bucket(key) >= folded]
    return [keys[i] for i in kept], [deltas[i] for i in kept]


def _save_originals(
    cells: Cells, keys: list[int], saved: Cells, copy: Callable[[list[int]], list[int]] = list.copy
) -> None:
    """Copy-on-write for a snapshot being packed: save the value of each existing cell of ``keys``
    that has not been saved since the capture, before it changes (a cell created since the
    capture is not in the snapshot, and needs nothing)."""
    get = cells.get
    for key in keys:
        if key not in saved:
            cell = get(key)
            if cell is not None:
                saved[key] = copy(cell)


def _minute_copy(cell: list[Any]) -> list[Any]:
    """A copy of a total's minute cell that later appends to its positions do not reach."""
    refs = cell[N_STATS]
    return [*cell[:N_STATS], refs if isinstance(refs, int) else refs[:]]


def _unpacked(cells: list[list[int]], minutes: bool) -> list[list[int]]:
    """Cells read from a snapshot, the total's minute cells with their positions packed again."""
    if minutes:
        for cell in cells:
            with_packed_tail(cell, N_STATS)
    return cells


def _merge_all(cells: Cells, keys: list[int], deltas: list[list[int]]) -> None:
    """Merge each delta into its key's cell."""
    get = cells.get
    for key, delta in zip(keys, deltas, strict=True):
        cell = get(key)
        if cell is None:
            cells[key] = untracked(delta[:])  # a copy: one delta feeds several levels
            continue
        cell[COUNT] += delta[COUNT]
        cell[SUM] += delta[SUM]
        if delta[MAX] > cell[MAX]:
            cell[MAX] = delta[MAX]
        # A full (time, offset) comparison: with dimensions, the total's cells take one delta per
        # combination, and those deltas' offsets interleave.
        if delta[LAST_TIME] > cell[LAST_TIME] or (
            delta[LAST_TIME] == cell[LAST_TIME] and delta[LAST_OFFSET] > cell[LAST_OFFSET]
        ):
            cell[LAST_TIME] = delta[LAST_TIME]
            cell[LAST_OFFSET] = delta[LAST_OFFSET]
            cell[LAST_VALUE] = delta[LAST_VALUE]


def _merge_one(cells: Cells, key: int, delta: list[int]) -> bool:
    """:func:`_merge_all` for one cell; True if the cell is new."""
    cell = cells.get(key)
    if cell is None:
        cells[key] = untracked(delta[:])
        return True
    cell[COUNT] += delta[COUNT]
    cell[SUM] += delta[SUM]
    if delta[MAX] > cell[MAX]:
        cell[MAX] = delta[MAX]
    if delta[LAST_TIME] > cell[LAST_TIME] or (
        delta[LAST_TIME] == cell[LAST_TIME] and delta[LAST_OFFSET] > cell[LAST_OFFSET]
    ):
        cell[LAST_TIME] = delta[LAST_TIME]
        cell[LAST_OFFSET] = delta[LAST_OFFSET]
        cell[LAST_VALUE] = delta[LAST_VALUE]
    return False


def _merge_minutes(cells: Cells, keys: list[int], deltas: list[list[int]], ref: int) -> None:
    """:func:`_merge_all` for the total's minute cells, which also list the records feeding them."""
    get = cells.get
    for key, delta in zip(keys, deltas, strict=True):
        cell = get(key)
        if cell is None:
            cells[key] = untracked([*delta, ref])
            continue
        cell[COUNT] += delta[COUNT]
        cell[SUM] += delta[SUM]
        if delta[MAX] > cell[MAX]:
            cell[MAX] = delta[MAX]
        if delta[LAST_TIME] > cell[LAST_TIME] or (
            delta[LAST_TIME] == cell[LAST_TIME] and delta[LAST_OFFSET] > cell[LAST_OFFSET]
        ):
            cell[LAST_TIME] = delta[LAST_TIME]
            cell[LAST_OFFSET] = delta[LAST_OFFSET]
            cell[LAST_VALUE] = delta[LAST_VALUE]
        # The records that fed the cell (inline: this loop runs per cell of every record).
        refs: Any = cell[N_STATS]
        if type(refs) is int:
            if refs != ref:
                cast("list[Any]", cell)[N_STATS] = positions_of((refs, ref))
        elif refs[-1] != ref:
            try:
                refs.append(ref)
            except OverflowError:  # the first position past 32 bits
                cast("list[Any]", cell)[N_STATS] = widened(refs, ref)
