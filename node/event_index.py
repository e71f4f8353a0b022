"""Which log records hold an account's events, by hour of event time, for ListEvents.

A page of ListEvents reads only the records of the hours it covers, never the whole log: the
index maps account → hour → record positions (each position once per hour, in append order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .aggregation.untracked import untracked

__all__ = ["HOUR_NS", "EventIndex"]

HOUR_NS = 3_600_000_000_000


# An account's hours: most accounts have events in one hour only (a new account, an account that
# sends rarely), kept as one untracked list ``[hour, ref, ref, ...]`` (~100 B instead of ~290 B
# for a dict and a list); a second hour turns it into ``{hour: [refs]}``.
_Hours = dict[int, list[int]] | list[int]


class EventIndex:
    """account → {hour → [record positions]}."""

    __slots__ = ("_accounts",)

    def __init__(self) -> None:
        self._accounts: dict[int, _Hours] = {}

    def add(self, record_ref: int, account_hours: Iterable[tuple[int, int]]) -> None:
        """Note that ``record_ref`` holds events of these distinct (account, hour of event time) pairs."""
        accounts = self._accounts
        for account, hour in account_hours:
            hours = accounts.get(account)
            if hours is None:
                accounts[account] = untracked([hour, record_ref])
                continue
            if isinstance(hours, list):
                if hours[0] == hour:
                    if hours[-1] != record_ref:
                        hours.append(record_ref)
                    continue
                hours = accounts[account] = {hours[0]: untracked(hours[1:])}
            refs = hours.get(hour)
            if refs is None:
                hours[hour] = untracked([record_ref])
            elif refs[-1] != record_ref:
                refs.append(record_ref)

    def hours(self, account: int, start: int, end: int) -> Iterator[tuple[int, list[int]]]:
        """(hour, record positions) of ``account`` overlapping ``[start, end)``, in hour order."""
        first, last = start // HOUR_NS, (end - 1) // HOUR_NS
        for hour, refs in _items(self._accounts.get(account)):
            if first <= hour <= last:
                yield hour, refs

    def to_snapshot(self) -> list[object]:
        """A msgpack-serialisable copy (of the ref lists too: they grow in place)."""
        accounts = self._accounts
        return [[account, [[h, refs[:]] for h, refs in _items(hours)]] for account, hours in accounts.items()]

    @classmethod
    def from_snapshot(cls, data: list[list[Any]]) -> EventIndex:
        """Rebuild an index saved by :meth:`to_snapshot`."""
        index = cls()
        for account, hours in data:
            if len(hours) == 1:
                ((hour, refs),) = hours
                index._accounts[int(account)] = untracked([int(hour), *refs])
            else:
                index._accounts[int(account)] = {int(h): untracked(list(refs)) for h, refs in hours}
        return index


def _items(hours: _Hours | None) -> list[tuple[int, list[int]]]:
    """An account's (hour, refs), in hour order."""
    if not hours:
        return []
    if isinstance(hours, list):
        return [(hours[0], hours[1:])]
    return sorted(hours.items())
