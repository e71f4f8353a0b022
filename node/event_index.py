"""Which log records hold an account's events, by hour of event time, for ListEvents.

A page of ListEvents reads only the records of the hours it covers, never the whole log: the
index maps account → hour → record positions (each position once per hour, in append order).

Memory: one entry per (record, account, hour), which under load spread over many accounts is about
one per stored event, for as long as the process runs; positions are packed
(:mod:`.aggregation.positions`), 4 bytes each under 4 GiB of log. :class:`EventIndex` is the Python
engine's; :class:`NativeEventIndex` wraps the native engine's (``unimeter_native.EventIndex``,
native/src/event_index.rs), which holds the same entries and writes the same snapshot lists.

Past the memory horizon, both hand the positions of aged hours over as run columns (``aged``),
then forget them (``drop_aged``) once ``node.index_runs`` has them on disk; ``hours`` then reads
those from the runs (``runs``) and the rest from memory, so every caller gets the same answer.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from cluster_client.types import EventRow

from .aggregation.positions import positions_of, widened
from .aggregation.snapshot_data import Chunked
from .index_run import RunColumns
from .index_runs import IndexRuns

__all__ = ["HOUR_NS", "EventIndex", "NativeEventIndex"]

HOUR_NS = 3_600_000_000_000

# An account's hours: most accounts have events in one hour only (a new account, an account that
# sends rarely), kept as ``(hour, refs)`` (~180 B less than a dict); a second hour turns it into
# ``{hour: refs}``.
_Hours = dict[int, "array[int]"] | tuple[int, "array[int]"]


class EventIndex:
    """account → {hour → record positions (an array, ascending)}."""

    __slots__ = ("_accounts", "runs")

    def __init__(self) -> None:
        self._accounts: dict[int, _Hours] = {}
        self.runs: IndexRuns | None = None
        """The partition's on-disk runs of aged hours, read by :meth:`hours` (None: none)."""

    def add(self, record_ref: int, account_hours: Iterable[tuple[int, int]]) -> None:
        """Note that ``record_ref`` holds events of these distinct (account, hour of event time) pairs."""
        accounts = self._accounts
        for account, hour in account_hours:
            hours = accounts.get(account)
            if hours is None:
                accounts[account] = (hour, positions_of([record_ref]))
                continue
            if isinstance(hours, tuple):
                only, refs = hours
                if only == hour:
                    if refs[-1] != record_ref:
                        try:
                            refs.append(record_ref)
                        except OverflowError:  # the first position past 32 bits
                            accounts[account] = (hour, widened(refs, record_ref))
                    continue
                hours = accounts[account] = {only: refs}
            found = hours.get(hour)
            if found is None:
                hours[hour] = positions_of([record_ref])
            elif found[-1] != record_ref:
                try:
                    found.append(record_ref)
                except OverflowError:
                    hours[hour] = widened(found, record_ref)

    def hours(self, account: int, start: int, end: int) -> Iterator[tuple[int, list[int]]]:
        """(hour, record positions) of ``account`` overlapping ``[start, end)``, in hour order (from
        memory and from the runs of aged hours)."""
        first, last = start // HOUR_NS, (end - 1) // HOUR_NS
        memory = (
            (hour, refs.tolist())
            for hour, refs in _items(self._accounts.get(account))
            if first <= hour <= last
        )
        runs = self.runs
        return iter(runs.joined(account, first, last, memory)) if runs else memory

    def aged(self, before: int, below: int) -> RunColumns:
        """The positions below ``below`` of every hour before ``before`` (hours since the epoch),
        as a run's columns. Nothing is removed: :meth:`drop_aged` does that once they are on disk."""
        accounts = self._accounts
        picked = [
            account
            for account, hours in accounts.items()
            if (hours[0] < before if isinstance(hours, tuple) else hours and min(hours) < before)
        ]
        columns = RunColumns.empty()
        for account in sorted(picked):
            for hour, refs in _items(accounts[account]):
                if hour >= before:
                    break
                n = bisect_left(refs, below)
                if n:
                    columns.append(account, hour, refs[:n])
        return columns

    def drop_aged(self, before: int, below: int) -> None:
        """Forget what :meth:`aged` gave for the same arguments (positions added since are at or
        past ``below`` and stay). An account keeps its place, with no hours if none is left, so
        snapshots list accounts in the same order as the native index's."""
        accounts = self._accounts
        for account, hours in accounts.items():  # values replaced, never keys added: safe
            if isinstance(hours, tuple):
                hour, refs = hours
                if hour < before:
                    left = _from(refs, below)
                    accounts[account] = {} if left is None else (hour, left)
                continue
            for hour in [h for h in hours if h < before]:
                left = _from(hours[hour], below)
                if left is None:
                    del hours[hour]
                else:
                    hours[hour] = left

    def to_snapshot(self, below: int) -> Chunked:
        """Snapshot data (:mod:`.aggregation.snapshot_data`) of the index as it is now, when every
        ref now is below ``below`` (the log's end) and every later one is not.

        Only the account list is copied now (C speed); each chunk of accounts is read when it is
        packed, and what was added since (refs at or past ``below``, appended in log order, and
        hours that hold only such refs) is cut off then. Copying every ref list at capture took
        ~11 ms on the loop for a partition of 250,000 events over 10,000 accounts. The format is
        plain lists of ints (``[[account, [[hour, [ref, ...]], ...]], ...]``), whatever the arrays.
        """
        accounts = list(self._accounts.items())

        def chunk(lo: int, hi: int) -> list[object]:
            out: list[object] = []
            for account, hours in accounts[lo:hi]:
                kept = []
                for hour, refs in _items(hours):
                    n = bisect_left(refs, below)
                    if n:
                        kept.append([hour, refs[:n].tolist()])
                out.append([account, kept])
            return out

        return Chunked(len(accounts), chunk)

    @classmethod
    def from_snapshot(cls, data: list[list[Any]]) -> EventIndex:
        """Rebuild an index saved by :meth:`to_snapshot`."""
        index = cls()
        for account, hours in data:
            if len(hours) == 1:
                ((hour, refs),) = hours
                index._accounts[int(account)] = (int(hour), positions_of(refs))
            else:
                index._accounts[int(account)] = {int(h): positions_of(refs) for h, refs in hours}
        return index


class NativeEventIndex:
    """The native engine's index: :class:`EventIndex`'s reads and snapshots, filled a whole record at
    a time by :meth:`add_record` (no (account, hour) object per event)."""

    __slots__ = ("_index", "add_record", "runs")

    def __init__(self, index: Any) -> None:
        self._index = index
        """A ``unimeter_native.EventIndex`` (the extension ships no type stubs)."""
        self.runs: IndexRuns | None = None
        """The partition's on-disk runs of aged hours, read by :meth:`hours` (None: none)."""
        # The Rust method itself, not a wrapper: it runs once per stored record.
        self.add_record: Callable[[int, Sequence[EventRow]], list[str]] = index.add_record
        """Index a stored record's rows (``(record_ref, rows)``); return their metric codes in order
        of first appearance."""

    @property
    def native(self) -> Any:
        """The ``unimeter_native.EventIndex`` itself (a partition part's native ingest fills it)."""
        return self._index

    def hours(self, account: int, start: int, end: int) -> Iterator[tuple[int, list[int]]]:
        """(hour, record positions) of ``account`` overlapping ``[start, end)``, in hour order (from
        memory and from the runs of aged hours)."""
        memory = self._index.hours(account, start, end)
        runs = self.runs
        if not runs:
            return iter(memory)
        return iter(runs.joined(account, start // HOUR_NS, (end - 1) // HOUR_NS, memory))

    def aged(self, before: int, below: int) -> RunColumns:
        """:meth:`EventIndex.aged`: the same columns, packed by the native index."""
        accounts, hours, ends, positions = self._index.aged(before, below)
        columns = RunColumns.empty()
        for column, raw in zip(
            (columns.accounts, columns.hours, columns.ends, columns.positions),
            (accounts, hours, ends, positions),
            strict=True,
        ):
            column.frombytes(raw)
        return columns

    def drop_aged(self, before: int, below: int) -> None:
        """:meth:`EventIndex.drop_aged`."""
        self._index.drop_aged(before, below)

    def to_snapshot(self, below: int) -> Chunked:
        """:meth:`EventIndex.to_snapshot`'s data for the same entries: nothing copied now, every
        account then indexed read as its chunk is packed, its positions at or past ``below`` cut."""
        return Chunked(len(self._index), partial(self._index.chunk, below), packed=True)

    @classmethod
    def from_snapshot(cls, index_type: Any, data: list[list[Any]]) -> NativeEventIndex:
        """Rebuild an index saved by either engine (``index_type`` is ``unimeter_native.EventIndex``)."""
        return cls(index_type.from_snapshot(data))


def _from(refs: array[int], below: int) -> array[int] | None:
    """The positions of ``refs`` at or past ``below``, or None if there are none."""
    n = bisect_left(refs, below)
    return None if n == len(refs) else positions_of(refs[n:]) if n else refs


def _items(hours: _Hours | None) -> list[tuple[int, array[int]]]:
    """An account's (hour, refs), in hour order."""
    if hours is None:
        return []
    if isinstance(hours, tuple):
        return [hours]
    return sorted(hours.items())
