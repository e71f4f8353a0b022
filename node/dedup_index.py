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

_MOVE_SLOTS = 4096
"""Old-table slots each ``add`` moves while the table grows (about 1 ms of work)..."""

_MOVE_SLOTS_PER_KEY = 4
"""...or this many per key it adds, if more: the move ends before the new table fills."""

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


def _stored(keys: array[int], offs: array[int], cap: int, key: int) -> int:
    """The offset column's value for ``key`` in a table (0: the key is not in it)."""
    i = key % cap
    while True:
        stored = offs[i]
        if not stored or keys[i] == key:
            return stored
        i = (i + 1) % cap


def _insert_absent(keys: array[int], offs: array[int], cap: int, key: int, stored: int) -> int:
    """Put ``key`` with ``stored`` in a table unless the key is there already; 1 if it was put."""
    i = key % cap
    while True:
        if not offs[i]:
            keys[i] = key
            offs[i] = stored
            return 1
        if keys[i] == key:
            return 0
        i = (i + 1) % cap


def _unpacked(raw: object, code: str) -> array[int]:
    column = array(code)
    # bytes read back from a file, or the native engine's captured column (a memoryview of bytes)
    if not isinstance(raw, bytes | memoryview) or len(raw) % column.itemsize:
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

    Growth is incremental: the full table becomes the read-only ``_old_*`` table and each later
    ``add`` moves the next few thousand of its slots (at least 4 per key added, so the move ends
    long before the new table fills). Meanwhile ``get`` looks in the new table, then the old one,
    and ``add`` first pulls its keys' old entries across, so every key has one current entry.
    A partition of a million keys used to stop for ~0.5 s at each doubling; now each ``add``
    pays ~1 ms at most. ``expire``'s shrink, ``to_snapshot`` and the rare 64-bit widening finish
    a move at once (a partition's snapshot first drives it to its end with ``advance_growth``).
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
        "_old_base",
        "_old_cap",
        "_old_keys",
        "_old_next",
        "_old_offs",
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
        self._old_keys: array[int] | None = None
        self._old_offs: array[int] | None = None
        self._old_cap = 0
        self._old_base = 0
        self._old_next = 0
        """First slot of the old table not moved yet."""

    def __len__(self) -> int:
        return self._live

    @property
    def memory_bytes(self) -> int:
        """Bytes the index holds: its five columns as allocated, spare capacity included."""
        columns = (self._keys, self._offs, self._g_arrival, self._g_first, self._g_live)
        old = () if self._old_keys is None or self._old_offs is None else (self._old_keys, self._old_offs)
        return sum(sys.getsizeof(column) for column in (*columns, *old))

    @property
    def growing(self) -> bool:
        """Whether an incremental growth is under way (an old table is still being moved)."""
        return self._old_keys is not None

    def advance_growth(self) -> None:
        """Move the next few thousand slots of a growth under way (about 1 ms), as an ``add`` does:
        a snapshot drives a growth to its end in steps like this instead of finishing it at once
        (tens of ms for a table of a few hundred thousand slots)."""
        if self._old_keys is not None:
            self._move(_MOVE_SLOTS)

    def get(self, key: int) -> int | None:
        """The offset stored under ``key``, if it is still in the window."""
        stored = _stored(self._keys, self._offs, self._cap, key)
        if not stored:
            return None if self._old_keys is None else self._old_get(key)
        off = stored + self._base
        return off if off >= self._floor else None

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
        if last - self._base > _U32_MAX and self._offs.typecode == "I":
            self._rehash(_capacity_for(self._live + n), last)
        elif (self._used + n) * _MAX_LOAD_DEN > self._cap * _MAX_LOAD_NUM:
            self._finish_move()
            self._start_move(_capacity_for(self._live + n), last)
        if self._old_keys is not None:
            self._move(max(_MOVE_SLOTS, _MOVE_SLOTS_PER_KEY * n))
            if self._old_keys is not None:
                for key in keys:
                    self._pull(key)
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
        if self._live * _SHRINK_BELOW < self._cap > _EMPTY_TABLE_SLOTS and self._old_keys is None:
            self._rehash(_capacity_for(self._live), self._last)
        if head >= _COMPACT_MIN and head * 4 >= n_groups:
            del g_arrival[:head]
            del self._g_first[:head]
            del g_live[:head]
            self._g_head = 0
        return forgotten

    def to_snapshot(self) -> list[object]:
        """A msgpack-serialisable copy: the table and the live groups as packed arrays."""
        self._finish_move()
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
        if not (
            isinstance(base, int) and isinstance(floor, int) and isinstance(last, int)
            and 0 <= base < floor <= last + 1
        ):  # fmt: skip
            raise ValueError("dedup snapshot: bad base or floor")
        used = capacity - offs.count(0)
        if used == capacity:
            # Never written (a table is rebuilt long before it fills), and a lookup of a key not
            # in it would probe forever.
            raise ValueError("dedup snapshot: table has no empty slot")
        live = sum(g_live)
        if live > used:  # the groups own live entries of the table, each once
            raise ValueError("dedup snapshot: bad groups")
        index = cls(window_ns)
        index._keys, index._offs, index._cap, index._base = kcol, offs, capacity, base
        index._live, index._used = live, used
        index._floor, index._last = floor, last
        index._g_arrival, index._g_first, index._g_live = g_arrival, g_first, g_live
        return index

    # ------------------------------------------------------------------ internals

    def _rehash(self, capacity: int, last: int) -> None:
        """Rebuild into ``capacity`` slots at once (dropping expired entries)."""
        self._finish_move()
        self._start_move(capacity, last)
        self._finish_move()

    def _start_move(self, capacity: int, last: int) -> None:
        """Make the table the old one and start an empty one of ``capacity`` slots.

        The new base sits just below the floor; the offset column is 32-bit unless the offsets up
        to ``last`` would not fit.
        """
        self._old_keys, self._old_offs = self._keys, self._offs
        self._old_cap, self._old_base, self._old_next = self._cap, self._base, 0
        self._base = self._floor - 1
        self._keys = _zeros("Q", capacity)
        self._offs = _zeros("I" if last - self._base <= _U32_MAX else "Q", capacity)
        self._cap = capacity
        self._used = 0

    def _move(self, slots: int) -> None:
        """Move the live entries of the old table's next ``slots`` slots (unless their key is
        already in the new table, pulled or re-added); drop the old table once all are moved."""
        old_keys, old_offs = self._old_keys, self._old_offs
        assert old_keys is not None and old_offs is not None
        start = self._old_next
        end = min(start + slots, self._old_cap)
        kcol = self._keys
        offs = self._offs
        cap = self._cap
        floor = self._floor - self._old_base  # as stored in the old table
        shift = self._old_base - self._base
        used = 0
        for key, stored in zip(old_keys[start:end], old_offs[start:end], strict=True):
            if stored >= floor:
                used += _insert_absent(kcol, offs, cap, key, stored + shift)
        self._used += used
        self._old_next = end
        if end == self._old_cap:
            self._old_keys = self._old_offs = None

    def _finish_move(self) -> None:
        if self._old_keys is not None:
            self._move(self._old_cap)

    def _old_get(self, key: int) -> int | None:
        """The old table's live offset for ``key`` (the new table has no entry for it)."""
        assert self._old_keys is not None and self._old_offs is not None
        stored = _stored(self._old_keys, self._old_offs, self._old_cap, key)
        if not stored:
            return None
        off = stored + self._old_base
        return off if off >= self._floor else None

    def _pull(self, key: int) -> None:
        """Move ``key``'s old live entry (if any) into the new table, unless it has one already."""
        off = self._old_get(key)
        if off is not None:
            self._used += _insert_absent(self._keys, self._offs, self._cap, key, off - self._base)
