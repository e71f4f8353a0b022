"""Which log records hold an account's events, by hour of event time, for ListEvents.

A page of ListEvents reads only the records of the hours it covers, never the whole log: the
index maps account → hour → record positions (each position once per hour, in append order).

Memory: one entry per (record, account, hour), which under load spread over many accounts is about
one per stored event, for as long as the process runs. Positions are kept packed in ``array``\\s,
4 bytes each while they fit in 32 bits (a partition's first 4 GiB of log), 8 bytes after, never
as Python ints in lists (8 bytes a slot, plus the int itself when nothing else shares it).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from .aggregation.snapshot_data import Chunked
from .aggregation.untracked import untracked

__all__ = ["HOUR_NS", "EventIndex"]

HOUR_NS = 3_600_000_000_000

_NARROW_MAX = 0xFFFF_FFFF  # the largest position an array('I') holds

# An account's hours: most accounts have events in one hour only (a new account, an account that
# sends rarely), kept as ``(hour, refs)`` (~180 B less than a dict); a second hour turns it into
# ``{hour: refs}``.
_Hours = dict[int, "array[int]"] | tuple[int, "array[int]"]


class EventIndex:
    """account → {hour → record positions (an array, ascending)}."""

    __slots__ = ("_accounts",)

    def __init__(self) -> None:
        self._accounts: dict[int, _Hours] = {}

    def add(self, record_ref: int, account_hours: Iterable[tuple[int, int]]) -> None:
        """Note that ``record_ref`` holds events of these distinct (account, hour of event time) pairs."""
        accounts = self._accounts
        for account, hour in account_hours:
            hours = accounts.get(account)
            if hours is None:
                accounts[account] = (hour, _refs_of([record_ref]))
                continue
            if isinstance(hours, tuple):
                only, refs = hours
                if only == hour:
                    if refs[-1] != record_ref:
                        wider = _append(refs, record_ref)
                        if wider is not refs:
                            accounts[account] = (hour, wider)
                    continue
                hours = accounts[account] = {only: refs}
            found = hours.get(hour)
            if found is None:
                hours[hour] = _refs_of([record_ref])
            elif found[-1] != record_ref:
                wider = _append(found, record_ref)
                if wider is not found:
                    hours[hour] = wider

    def hours(self, account: int, start: int, end: int) -> Iterator[tuple[int, list[int]]]:
        """(hour, record positions) of ``account`` overlapping ``[start, end)``, in hour order."""
        first, last = start // HOUR_NS, (end - 1) // HOUR_NS
        for hour, refs in _items(self._accounts.get(account)):
            if first <= hour <= last:
                yield hour, refs.tolist()

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
                index._accounts[int(account)] = (int(hour), _refs_of(refs))
            else:
                index._accounts[int(account)] = {int(h): _refs_of(refs) for h, refs in hours}
        return index


def _refs_of(refs: list[int]) -> array[int]:
    """Ascending positions as the narrowest array that holds them."""
    return untracked(array("I" if refs[-1] <= _NARROW_MAX else "q", refs))


def _append(refs: array[int], ref: int) -> array[int]:
    """``refs`` with ``ref`` (larger than all) appended: ``refs`` itself, or a wider copy once a
    position no longer fits in 32 bits."""
    if ref > _NARROW_MAX and refs.typecode == "I":
        refs = untracked(array("q", refs))
    refs.append(ref)
    return refs


def _items(hours: _Hours | None) -> list[tuple[int, array[int]]]:
    """An account's (hour, refs), in hour order."""
    if hours is None:
        return []
    if isinstance(hours, tuple):
        return [hours]
    return sorted(hours.items())
