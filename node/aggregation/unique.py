"""COUNT_UNIQUE aggregates: member-level history, per-period set sizes kept incrementally.

A set does not merge like a sum (a member removed in one bucket and added in another is one member,
and "present" depends on its last operation), so buckets cannot answer it. Instead each account keeps,
per member, every operation it received as a flat list ``[time, offset, op_combo, ...]`` sorted by
(time, offset), with ``op_combo = combination << 1 | is_remove``. Ranges are answered exactly from
those histories; memory and range-query time grow with the number of distinct members and their
operations, which for seat-style metrics is small. For realtime reads and thresholds, each period
with events has a row ``[size, 0, max, last_time, last_offset, last_value, alert state...]`` (the
cell layout of :mod:`.cells`) updated per event: with ``carry_over`` the row describes the set after
every event before the period's end, otherwise the set of the period's own events.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any, cast

from .cells import COUNT, LAST_OFFSET, LAST_TIME, LAST_VALUE, MAX, N_STATS, empty_cell
from .combos import Combos
from .snapshot_data import Chunked
from .spec import AlertRow, AppliedRow, MetricSpec
from .thresholds import alert_slots, evaluate
from .unique_reads import Scan, UniqueReads
from .untracked import untracked

__all__ = ["UniqueStore"]

_REMOVE = 2


class _Account:
    """One account's members and period rows (``starts``, ``ends`` and ``rows`` run in parallel)."""

    __slots__ = ("ends", "members", "rows", "starts")

    def __init__(self) -> None:
        self.members: dict[int, list[int]] = {}
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.rows: list[list[int]] = []


class UniqueStore(UniqueReads):
    """COUNT_UNIQUE state of one metric, for every account of a partition."""

    __slots__ = ("_saved", "accounts", "combos", "spec")

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.combos = Combos(spec.dims)
        self.accounts: dict[int, _Account] = {}
        self._saved: dict[int, list[Any]] | None = None
        """While a snapshot packs: the snapshot entry, as at capture, of each account changed since
        (copy-on-write per account; see :meth:`to_snapshot`)."""

    # ------------------------------------------------------------------------------------ apply

    def apply(self, rows: Sequence[AppliedRow], ref: int) -> list[AlertRow]:
        """Apply one log record's rows of this metric (offset order); return the alerts they fire."""
        del ref  # histories answer every range: no raw edges to read back
        spec = self.spec
        period_of = spec.periods.period_of
        carry = spec.carry_over
        thresholds = bool(spec.thresholds)
        dimensioned = bool(spec.dims)
        combo_of = self.combos.id_of
        accounts = self.accounts
        saved = self._saved
        alerts: list[AlertRow] = []
        p_start = p_end = 0
        for account, member, t, props, op, offset in rows:
            if not p_start <= t < p_end:
                p_start, p_end = period_of(t)
            acc = accounts.get(account)
            if acc is None:
                acc = accounts[account] = _Account()
            elif saved is not None and account not in saved:
                saved[account] = _entry(account, acc)
            add = op != _REMOVE
            op_combo = (combo_of(props) << 1 if dimensioned else 0) | (not add)

            # Insert into the member's history after every op with time <= t (offset is the newest).
            history = acc.members.get(member)
            if history is None:
                acc.members[member] = untracked([t, offset, op_combo])
                prev_time = -1
                prev_add = False
                next_time = None
            else:
                i = len(history)
                while i and history[i - 3] > t:
                    i -= 3
                if i:
                    prev_time = history[i - 3]
                    prev_add = not history[i - 1] & 1
                else:
                    prev_time = -1
                    prev_add = False
                next_time = history[i] if i < len(history) else None
                history[i:i] = (t, offset, op_combo)

            j = _row_index(acc, p_start, p_end, carry, spec)
            row_list = acc.rows
            if carry:
                # The op changes the set at the end of every period from its own on, until the
                # member's next op (by time) takes over.
                delta = add - prev_add
                ends = acc.ends
                for k in range(j, len(row_list)):
                    if next_time is not None and next_time < ends[k]:
                        break
                    row_list[k][COUNT] += delta
                if add:
                    for k in range(j, len(row_list)):
                        _note_add(row_list[k], member, t, offset)
            else:
                if next_time is None or next_time >= p_end:
                    row_list[j][COUNT] += add - (prev_add and prev_time >= p_start)
                if add:
                    _note_add(row_list[j], member, t, offset)
            if thresholds:
                row = row_list[j]
                evaluate(spec, row, N_STATS, row[COUNT], account, p_start, t, alerts)
        return alerts

    # ------------------------------------------------------------------------------------ reads

    # The lookups of :class:`.unique_reads.UniqueSetsView`.

    def period_row(self, account_id: int, period_start: int) -> tuple[list[int], int]:
        acc = self.accounts.get(account_id)
        if acc is None:
            return empty_cell(), 0
        j = bisect_left(acc.starts, period_start)
        if j < len(acc.starts) and acc.starts[j] == period_start:
            row = acc.rows[j]
            return row[:N_STATS], row[N_STATS] if self.spec.thresholds else 0
        if self.spec.carry_over and j:
            # No event in this period: the set is the one at the end of the last period with events.
            return acc.rows[j - 1][:N_STATS], 0
        return empty_cell(), 0

    def scan(
        self, account_id: int, lo: int | None, end: int, wanted: list[bool], group_of: list[int | None]
    ) -> Scan | None:
        acc = self.accounts.get(account_id)
        if acc is None:
            return None
        main = empty_cell()
        groups: dict[int, list[int]] = {}
        for member, history in acc.members.items():
            main_last: bool | None = None
            group_last: dict[int, bool] = {}
            for i in range(0, len(history), 3):
                t = history[i]
                if t >= end:
                    break  # sorted by time
                if lo is not None and t < lo:
                    continue
                op_combo = history[i + 2]
                combo = op_combo >> 1
                if not wanted[combo]:
                    continue
                add = not op_combo & 1
                main_last = add
                if add:
                    _note_add_any(main, member, t, history[i + 1])
                group = group_of[combo]
                if group is not None:
                    group_last[group] = add
                    group_cell = groups.get(group)
                    if group_cell is None:
                        group_cell = groups[group] = empty_cell()
                    if add:
                        _note_add_any(group_cell, member, t, history[i + 1])
            if main_last:
                main[COUNT] += 1
            for group, present in group_last.items():
                if present:
                    groups[group][COUNT] += 1
        return main, list(groups.items())

    # --------------------------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, object]:
        """Data (:mod:`.snapshot_data`) that :meth:`from_snapshot` rebuilds this store from.

        Only the account list is copied now: until :meth:`release_snapshot`, an account's first
        change saves its entry as it was (ingestion mutates histories and rows in place), and the
        packer takes each captured account's saved entry if it has one, else builds it from the
        live account, unchanged since the capture. Copying every history at capture took
        120-230 ms on the loop for 10,000 accounts with 79,000 members.
        """
        saved: dict[int, list[Any]] = {}
        self._saved = saved
        keys = list(self.accounts)
        accounts = self.accounts

        def chunk(lo: int, hi: int) -> list[Any]:
            return [saved.get(a) or _entry(a, accounts[a]) for a in keys[lo:hi]]

        return {"combos": self.combos.to_snapshot(), "accounts": Chunked(len(keys), chunk)}

    def release_snapshot(self) -> None:
        """End the copy-on-write of :meth:`to_snapshot` (its data is packed, or abandoned)."""
        self._saved = None

    @classmethod
    def from_snapshot(cls, spec: MetricSpec, data: Mapping[str, object]) -> UniqueStore:
        """Rebuild a store saved by :meth:`to_snapshot` for the same metric generation."""
        store = cls(spec)
        store.combos = Combos(spec.dims, cast("list[list[str]]", data["combos"]))
        for account, members, periods in cast("list[list[Any]]", data["accounts"]):
            acc = store.accounts[int(account)] = _Account()
            acc.members = {int(m): untracked([int(x) for x in history]) for m, history in members}
            for s, e, row in periods:
                acc.starts.append(int(s))
                acc.ends.append(int(e))
                acc.rows.append(untracked([int(x) for x in row]))
        return store


def _entry(account: int, acc: _Account) -> list[Any]:
    """An account's snapshot entry: its members' histories and its period rows, copied."""
    return [
        account,
        [[member, history[:]] for member, history in acc.members.items()],
        [[s, e, row[:]] for s, e, row in zip(acc.starts, acc.ends, acc.rows, strict=True)],
    ]


def _row_index(acc: _Account, p_start: int, p_end: int, carry: bool, spec: MetricSpec) -> int:
    """Index of the account's row for the period, created (re-armed) if it has none yet."""
    starts = acc.starts
    n = len(starts)
    if n and starts[-1] == p_start:
        return n - 1  # the common case: the latest period
    j = bisect_left(starts, p_start)
    if j < n and starts[j] == p_start:
        return j
    # With carry_over a new period starts from the set at the end of the previous one with events
    # (no event lies between the two); otherwise from the empty set.
    stats = acc.rows[j - 1][:N_STATS] if carry and j else empty_cell()
    starts.insert(j, p_start)
    acc.ends.insert(j, p_end)
    acc.rows.insert(j, untracked(stats + alert_slots(spec)))
    return j


def _note_add(row: list[int], member: int, t: int, offset: int) -> None:
    """Fold an ADD whose offset is newer than every op the row has seen."""
    if member > row[MAX]:
        row[MAX] = member
    if t >= row[LAST_TIME]:
        row[LAST_TIME] = t
        row[LAST_OFFSET] = offset
        row[LAST_VALUE] = member


def _note_add_any(cell: list[int], member: int, t: int, offset: int) -> None:
    """Fold an ADD seen in any order."""
    if member > cell[MAX]:
        cell[MAX] = member
    if t > cell[LAST_TIME] or (t == cell[LAST_TIME] and offset > cell[LAST_OFFSET]):
        cell[LAST_TIME] = t
        cell[LAST_OFFSET] = offset
        cell[LAST_VALUE] = member
