"""The dedup index of one partition: which (account, metric, key) pairs were stored recently.

Keys are 64-bit BLAKE2b digests, so every entry has the same small size whatever the event id's
length; the index remembers each key's offset (a duplicate answers with the original's offset) and
forgets keys older than the window, by arrival time. It is rebuilt from the log on recovery, so it
survives restarts exactly like the aggregates.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_right

import msgpack

__all__ = ["DedupIndex", "derived_key", "event_key"]

_blake = hashlib.blake2b


def event_key(account_id: int, metric_code: str, generation: int, event_id: str) -> int:
    """Digest of an explicit ``event_id``."""
    raw = f"{account_id}\x00{metric_code}\x00{generation}\x00i\x00{event_id}".encode()
    return int.from_bytes(_blake(raw, digest_size=8).digest(), "little")


def derived_key(
    account_id: int,
    metric_code: str,
    generation: int,
    time_ns: int,
    value: int,
    operation: int,
    properties: dict[str, str] | None,
) -> int:
    """Digest of ``(time, value, operation, properties)`` for an event with its own time and no id."""
    props = sorted(properties.items()) if properties else ()
    raw = msgpack.packb((account_id, metric_code, generation, "d", time_ns, value, operation, props))
    return int.from_bytes(_blake(raw, digest_size=8).digest(), "little")


_EMPTY_TABLE_SLOTS = 1024
"""Smallest table capacity: 12 KiB per partition."""

_MAX_LOAD_NUM, _MAX_LOAD_DEN = 3, 5
"""The table is rebuilt before its used slots (live and expired entries) pass 3/5 of it."""

_REBUILT_LOAD_NUM, _REBUILT_LOAD_DEN = 3, 10
"""A rebuilt table holds its live keys at 3/10 load: a table that grows doubles."""

_SHRINK_BELOW = 16
"""``expire`` rebuilds a table smaller once fewer than 1/16 of its slots hold live keys."""

_U32_MAX = 2**32 - 1

_SNAPSHOT_TAG = "dedup-lazy-1"
"""First element of the snapshot format; any other format is refused (recovery replays the log)."""

_COMPACT_MIN = 4096
"""The group columns are compacted once this many (and over a quarter of) their entries are spent."""


def _capacity_for(n: int) -> int:
    return max(_EMPTY_TABLE_SLOTS, -(-n * _REBUILT_LOAD_DEN // _REBUILT_LOAD_NUM))


def _zeros(code: str, n: int) -> array[int]:
    column = array(code)
    column.frombytes(bytes(column.itemsize * n))
    return column


def _unpacked(raw: object, code: str) -> array[int]:
    column = array(code)
    if not isinstance(raw, bytes) or len(raw) % column.itemsize:
        raise ValueError("dedup snapshot: bad packed array")
    column.frombytes(raw)
    return column


class DedupIndex:
    """Key digest → offset, for keys whose record arrived within ``window_ns``.

    Layout: 12 bytes per table slot and nothing else per key (20-40 bytes per live key):

    * an open-addressing hash table in two parallel columns with linear probing from slot
      ``key % capacity`` (keys are BLAKE2b digests, so they are already uniform): ``_keys``, the
      64-bit keys as themselves (0 included), and ``_offs``, each offset minus ``_base`` as a 32-bit
      ``array('I')``. A slot is empty iff its stored offset is 0: ``_base`` stays below every
      offset the table holds. A rebuild moves ``_base`` up to just below the live offsets and
      widens the column to 64 bits only if they span more than 2³² (billions of events in one
      window of one partition).
    * expiry without a per-key queue: a partition assigns offsets in arrival order, so the keys
      older than the window are exactly those whose offset is below ``_floor``, the first offset of
      the oldest ``add`` call (a *group*) still in the window. Such an entry is *expired*: ``get``
      does not see it, an ``add`` of the same key overwrites it, an ``add`` of another key passing
      it on its probe run takes its slot, and a rebuild drops it. ``expire`` only moves ``_floor``.
    * per group: arrival time, first offset, and how many of the table's live entries it owns
      (``_g_live``; a key re-added while live moves to its new group), so ``len`` and the count
      ``expire`` returns are exact without scanning the table.

    The table is rebuilt when its used slots (live and expired) would pass 3/5 of it, at the
    capacity that holds the live keys at 3/10 load: it doubles while the window fills and keeps
    its size once expiry balances arrivals. ``expire`` shrinks it when live keys fall below 1/16.
    """

    __slots__ = (
        "_base",
        "_cap",
        "_floor",
        "_g_arrival",
        "_g_first",
        "_g_head",
        "_g_live",
        "_keys",
        "_last",
        "_live",
        "_offs",
        "_used",
        "window_ns",
    )

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._keys = _zeros("Q", _EMPTY_TABLE_SLOTS)
        self._offs = _zeros("I", _EMPTY_TABLE_SLOTS)
        self._cap = _EMPTY_TABLE_SLOTS
        self._base = 0
        self._live = 0
        self._used = 0
        self._floor = 1
        self._last = 0
        self._g_arrival = array("q")
        self._g_first = array("Q")
        self._g_live = array("Q")
        self._g_head = 0

    def __len__(self) -> int:
        return self._live

    @property
    def memory_bytes(self) -> int:
        """Bytes the index holds: its five columns as allocated, spare capacity included."""
        columns = (self._keys, self._offs, self._g_arrival, self._g_first, self._g_live)
        return sum(sys.getsizeof(column) for column in columns)

    def get(self, key: int) -> int | None:
        """The offset stored under ``key``, if it is still in the window."""
        keys = self._keys
        offs = self._offs
        cap = self._cap
        i = key % cap
        while True:
            stored = offs[i]
            if not stored:
                return None
            if keys[i] == key:
                off = stored + self._base
                return off if off >= self._floor else None
            i = (i + 1) % cap

    def add(self, arrival_ns: int, keys: list[int], offsets: list[int]) -> None:
        """Remember ``keys[i] → offsets[i]`` as arrived at ``arrival_ns``.

        Calls come in arrival order, and each call's offsets are above every earlier call's.
        """
        if len(keys) != len(offsets):
            raise ValueError("keys and offsets differ in length")
        if not keys:
            return
        # Validate everything before touching the table: array() rejects values outside 0..2**64-1.
        array("Q", keys)
        array("Q", offsets)
        first = min(offsets)
        last = max(offsets)
        if first <= self._last:
            raise ValueError("offsets must be positive and above every earlier add's offsets")
        n = len(keys)
        if (self._used + n) * _MAX_LOAD_DEN > self._cap * _MAX_LOAD_NUM or (
            last - self._base > _U32_MAX and self._offs.typecode == "I"
        ):
            self._rehash(_capacity_for(self._live + n), last)
        g_first = self._g_first
        g_live = self._g_live
        g_head = self._g_head
        self._g_arrival.append(arrival_ns)
        g_first.append(first)
        g_live.append(n)
        kcol = self._keys
        offs = self._offs
        cap = self._cap
        base = self._base
        floor = self._floor - base  # as stored
        new = 0
        used = 0
        for key, off in zip(keys, offsets, strict=True):
            i = key % cap
            reuse = -1
            while True:
                old = offs[i]
                if not old:
                    if reuse < 0:
                        used += 1
                    else:
                        i = reuse
                    kcol[i] = key
                    offs[i] = off - base
                    new += 1
                    break
                if kcol[i] == key:
                    offs[i] = off - base
                    if old >= floor:  # still live: its older group no longer owns it
                        g_live[bisect_right(g_first, old + base, g_head) - 1] -= 1
                    else:
                        new += 1
                    break
                if reuse < 0 and old < floor:
                    reuse = i
                i = (i + 1) % cap
        self._live += new
        self._used += used
        self._last = last

    def expire(self, now_ns: int) -> int:
        """Forget keys that arrived before ``now_ns - window``; returns how many were forgotten."""
        cutoff = now_ns - self.window_ns
        g_arrival = self._g_arrival
        g_live = self._g_live
        head = self._g_head
        n_groups = len(g_arrival)
        forgotten = 0
        while head < n_groups and g_arrival[head] < cutoff:
            forgotten += g_live[head]
            head += 1
        if head == self._g_head:
            return 0
        self._floor = self._g_first[head] if head < n_groups else self._last + 1
        self._live -= forgotten
        self._g_head = head
        if self._live * _SHRINK_BELOW < self._cap > _EMPTY_TABLE_SLOTS:
            self._rehash(_capacity_for(self._live), self._last)
        if head >= _COMPACT_MIN and head * 4 >= n_groups:
            del g_arrival[:head]
            del self._g_first[:head]
            del g_live[:head]
            self._g_head = 0
        return forgotten

    def to_snapshot(self) -> list[object]:
        """A msgpack-serialisable copy: the table and the live groups as packed arrays."""
        head = self._g_head
        return [
            _SNAPSHOT_TAG,
            self._keys.tobytes(),
            self._offs.typecode,
            self._offs.tobytes(),
            self._base,
            self._g_arrival[head:].tobytes(),
            self._g_first[head:].tobytes(),
            self._g_live[head:].tobytes(),
            self._floor,
            self._last,
        ]

    @classmethod
    def from_snapshot(cls, window_ns: int, data: list[object]) -> DedupIndex:
        """Rebuild an index saved by :meth:`to_snapshot`; ValueError for anything else."""
        if not isinstance(data, list) or len(data) != 10 or data[0] != _SNAPSHOT_TAG:
            raise ValueError("dedup snapshot: not this version's format")
        _, key_bytes, code, off_bytes, base, arrival_bytes, first_bytes, live_bytes, floor, last = data
        if code not in ("I", "Q"):
            raise ValueError("dedup snapshot: bad offset column type")
        kcol = _unpacked(key_bytes, "Q")
        offs = _unpacked(off_bytes, str(code))
        g_arrival = _unpacked(arrival_bytes, "q")
        g_first = _unpacked(first_bytes, "Q")
        g_live = _unpacked(live_bytes, "Q")
        capacity = len(kcol)
        if capacity != len(offs) or capacity < 1:
            raise ValueError("dedup snapshot: bad table size")
        if not len(g_arrival) == len(g_first) == len(g_live):
            raise ValueError("dedup snapshot: bad groups")
        if not isinstance(base, int) or not isinstance(floor, int) or not isinstance(last, int):
            raise ValueError("dedup snapshot: bad base or floor")
        if not 0 <= base < floor <= last + 1:
            raise ValueError("dedup snapshot: bad base or floor")
        index = cls(window_ns)
        index._keys, index._offs, index._cap, index._base = kcol, offs, capacity, base
        index._live, index._used = sum(g_live), capacity - offs.count(0)
        index._floor, index._last = floor, last
        index._g_arrival, index._g_first, index._g_live = g_arrival, g_first, g_live
        return index

    # ------------------------------------------------------------------ internals

    def _rehash(self, capacity: int, last: int) -> None:
        """Move the live entries into fresh columns of ``capacity`` slots, dropping expired ones.

        The new base sits just below the floor; the offset column is 32-bit unless the offsets up
        to ``last`` would not fit.
        """
        base = self._floor - 1
        kcol = _zeros("Q", capacity)
        offs = _zeros("I" if last - base <= _U32_MAX else "Q", capacity)
        shift = self._base - base
        floor = self._floor - self._base  # as stored in the old column
        for key, stored in zip(self._keys, self._offs, strict=True):
            if stored >= floor:
                i = key % capacity
                while offs[i]:
                    i = (i + 1) % capacity
                kcol[i] = key
                offs[i] = stored + shift
        self._keys = kcol
        self._offs = offs
        self._cap = capacity
        self._base = base
        self._used = self._live
