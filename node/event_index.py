"""Which log records hold an account's events, by hour of event time, for ListEvents.

A page of ListEvents reads only the records of the hours it covers, never the whole log: the
index maps account → hour → record positions (each position once per hour, in append order).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from .aggregation.untracked import untracked

__all__ = ["HOUR_NS", "EventIndex"]

HOUR_NS = 3_600_000_000_000


class EventIndex:
    """account → {hour → [record positions]}."""

    __slots__ = ("_accounts",)

    def __init__(self) -> None:
        self._accounts: dict[int, dict[int, list[int]]] = {}

    def add(self, record_ref: int, account_hours: Iterable[tuple[int, int]]) -> None:
        """Note that ``record_ref`` holds events of these distinct (account, hour of event time) pairs."""
        accounts = self._accounts
        for account, hour in account_hours:
            hours = accounts.get(account)
            if hours is None:
                accounts[account] = {hour: untracked([record_ref])}
                continue
            refs = hours.get(hour)
            if refs is None:
                hours[hour] = untracked([record_ref])
            elif refs[-1] != record_ref:
                refs.append(record_ref)

    def hours(self, account: int, start: int, end: int) -> Iterator[tuple[int, list[int]]]:
        """(hour, record positions) of ``account`` overlapping ``[start, end)``, in hour order."""
        hours = self._accounts.get(account)
        if not hours:
            return
        keys = sorted(hours)
        first, last = start // HOUR_NS, (end - 1) // HOUR_NS
        for i in range(bisect_left(keys, first), len(keys)):
            hour = keys[i]
            if hour > last:
                break
            yield hour, hours[hour]

    def to_snapshot(self) -> list[object]:
        """A msgpack-serialisable copy (of the ref lists too: they grow in place)."""
        accounts = self._accounts
        return [[account, [[h, refs[:]] for h, refs in hours.items()]] for account, hours in accounts.items()]

    @classmethod
    def from_snapshot(cls, data: list[list[object]]) -> EventIndex:
        """Rebuild an index saved by :meth:`to_snapshot`."""
        index = cls()
        for account, hours in data:
            index._accounts[int(account)] = {int(h): untracked(list(refs)) for h, refs in hours}  # type: ignore[attr-defined,call-overload]
        return index
