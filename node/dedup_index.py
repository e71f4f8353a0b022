"""The dedup index of one partition: which (account, metric, key) pairs were stored recently.

Keys are 64-bit BLAKE2b digests, so every entry has the same small size whatever the event id's
length; the index remembers each key's offset (a duplicate answers with the original's offset) and
forgets keys older than the window, by arrival time. It is rebuilt from the log on recovery, so it
survives restarts exactly like the aggregates.
"""

from __future__ import annotations

import hashlib
from array import array

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
"""Initial table capacity (a power of two): 16 KiB per partition before the first growth."""

_MAX_LOAD_NUM, _MAX_LOAD_DEN = 3, 5
"""The table grows (doubles) before live keys exceed 3/5 of its slots."""

_SNAPSHOT_TAG = "dedup-oa-1"
"""First element of the current snapshot format (the older format is a list of per-record lists)."""

_COMPACT_MIN = 4096
"""The expiry queues are compacted once this many (and over a quarter of) their entries are spent."""


def _capacity_for(n: int) -> int:
    cap = _EMPTY_TABLE_SLOTS
    while n * _MAX_LOAD_DEN > cap * _MAX_LOAD_NUM:
        cap *= 2
    return cap


def _zeros(n: int) -> array[int]:
    return array("Q", bytes(8 * n))


class DedupIndex:
    """Key digest → offset, for keys whose record arrived within ``window_ns``.

    Layout (about 35-45 bytes per live key instead of ~115 for a dict of Python ints):

    * an open-addressing hash table in two parallel ``array('Q')`` columns, ``_keys`` and
      ``_offs``, with linear probing from slot ``key & mask`` (keys are BLAKE2b digests, so their
      low bits are already uniform). A slot is empty iff its offset is 0 (offsets are positive), so
      every 64-bit key, 0 included, is stored as itself: no reserved key values, no remapping, no
      extra collisions. Deletion shifts the rest of the probe run back (no tombstones), so a table
      that stops growing never rehashes; it doubles when live keys would exceed 3/5 of the slots
      and never shrinks.
    * the expiry FIFO: every ``add`` call is a group (arrival time, number of keys) in
      ``_g_arrival``/``_g_size``, its keys appended to ``_q_keys``; spent prefixes are cut off
      by compaction.
    * ``_superseded``: key → how many older FIFO occurrences of a key that is live are stale
      (the key was added again while live, which the partition never does, or twice in one call).
      Invariant: every live key occurs ``1 + _superseded.get(key, 0)`` times in the FIFO and only
      its newest occurrence is current; expiring a stale occurrence just decrements the count, so
      expiry never forgets a newer entry of the same key. A key re-added after it expired is a
      fresh entry.
    """

    __slots__ = (
        "_g_arrival",
        "_g_head",
        "_g_size",
        "_keys",
        "_live",
        "_mask",
        "_offs",
        "_q_head",
        "_q_keys",
        "_superseded",
        "window_ns",
    )

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._keys = _zeros(_EMPTY_TABLE_SLOTS)
        self._offs = _zeros(_EMPTY_TABLE_SLOTS)
        self._mask = _EMPTY_TABLE_SLOTS - 1
        self._live = 0
        self._superseded: dict[int, int] = {}
        # Arrival times are non-decreasing per partition, so expiry consumes groups from the head.
        self._g_arrival = array("q")
        self._g_size = array("Q")
        self._g_head = 0
        self._q_keys = array("Q")
        self._q_head = 0

    def __len__(self) -> int:
        return self._live

    def get(self, key: int) -> int | None:
        """The offset stored under ``key``, if it is still in the window."""
        keys = self._keys
        offs = self._offs
        mask = self._mask
        i = key & mask
        while True:
            off = offs[i]
            if not off:
                return None
            if keys[i] == key:
                return off
            i = (i + 1) & mask

    def add(self, arrival_ns: int, keys: list[int], offsets: list[int]) -> None:
        """Remember ``keys[i] → offsets[i]`` as arrived at ``arrival_ns``."""
        if len(keys) != len(offsets):
            raise ValueError("keys and offsets differ in length")
        if not keys:
            return
        # Validate everything before touching the table: array() rejects values outside 0..2**64-1.
        new_keys = array("Q", keys)
        array("Q", offsets)
        if min(offsets) < 1:
            raise ValueError("offsets must be positive")
        if (self._live + len(keys)) * _MAX_LOAD_DEN > len(self._keys) * _MAX_LOAD_NUM:
            self._rehash(_capacity_for(self._live + len(keys)))
        kcol = self._keys
        offs = self._offs
        mask = self._mask
        added = 0
        for key, off in zip(keys, offsets, strict=True):
            i = key & mask
            while True:
                if not offs[i]:
                    kcol[i] = key
                    offs[i] = off
                    added += 1
                    break
                if kcol[i] == key:
                    offs[i] = off
                    superseded = self._superseded
                    superseded[key] = superseded.get(key, 0) + 1
                    break
                i = (i + 1) & mask
        self._live += added
        self._q_keys.extend(new_keys)
        self._g_arrival.append(arrival_ns)
        self._g_size.append(len(keys))

    def expire(self, now_ns: int) -> int:
        """Forget keys that arrived before ``now_ns - window``; returns how many were forgotten."""
        cutoff = now_ns - self.window_ns
        g_arrival = self._g_arrival
        g_size = self._g_size
        g_head = self._g_head
        q_head = self._q_head
        n_groups = len(g_arrival)
        start = q_head
        while g_head < n_groups and g_arrival[g_head] < cutoff:
            q_head += g_size[g_head]
            g_head += 1
        if q_head == start:
            return 0
        before = self._live
        superseded = self._superseded
        remove = self._remove
        for key in self._q_keys[start:q_head]:
            if superseded:
                stale = superseded.get(key)
                if stale is not None:
                    if stale == 1:
                        del superseded[key]
                    else:
                        superseded[key] = stale - 1
                    continue
            remove(key)
        self._g_head = g_head
        self._q_head = q_head
        self._compact()
        return before - self._live

    def to_snapshot(self) -> list[object]:
        """A msgpack-serialisable copy: the table columns and the expiry FIFO as packed arrays."""
        return [
            _SNAPSHOT_TAG,
            self._keys.tobytes(),
            self._offs.tobytes(),
            self._g_arrival[self._g_head :].tobytes(),
            self._g_size[self._g_head :].tobytes(),
            self._q_keys[self._q_head :].tobytes(),
            [[k, n] for k, n in self._superseded.items()],
        ]

    @classmethod
    def from_snapshot(cls, window_ns: int, data: list[object]) -> DedupIndex:
        """Rebuild an index saved by :meth:`to_snapshot`, by this or by the previous version."""
        if data and data[0] == _SNAPSHOT_TAG:
            return cls._from_table_snapshot(window_ns, data)
        return cls._from_record_snapshot(window_ns, data)

    # ------------------------------------------------------------------ internals

    def _remove(self, key: int) -> None:
        """Delete ``key`` if present, shifting later entries of its probe run back into the hole."""
        kcol = self._keys
        offs = self._offs
        mask = self._mask
        i = key & mask
        while True:
            if not offs[i]:
                return
            if kcol[i] == key:
                break
            i = (i + 1) & mask
        self._live -= 1
        j = i
        while True:
            j = (j + 1) & mask
            off = offs[j]
            if not off:
                break
            k = kcol[j]
            # The entry at j may fill the hole at i unless its home slot lies cyclically in (i, j].
            if (j - (k & mask)) & mask >= (j - i) & mask:
                kcol[i] = k
                offs[i] = off
                i = j
        kcol[i] = 0
        offs[i] = 0

    def _rehash(self, capacity: int) -> None:
        """Move every live entry into fresh columns of ``capacity`` slots (a power of two)."""
        kcol = _zeros(capacity)
        offs = _zeros(capacity)
        mask = capacity - 1
        for key, off in zip(self._keys, self._offs, strict=True):
            if off:
                i = key & mask
                while offs[i]:
                    i = (i + 1) & mask
                kcol[i] = key
                offs[i] = off
        self._keys = kcol
        self._offs = offs
        self._mask = mask

    def _compact(self) -> None:
        if self._q_head >= _COMPACT_MIN and self._q_head * 4 >= len(self._q_keys):
            del self._q_keys[: self._q_head]
            self._q_head = 0
        if self._g_head >= _COMPACT_MIN and self._g_head * 4 >= len(self._g_arrival):
            del self._g_arrival[: self._g_head]
            del self._g_size[: self._g_head]
            self._g_head = 0

    @classmethod
    def _from_table_snapshot(cls, window_ns: int, data: list[object]) -> DedupIndex:
        _, key_bytes, off_bytes, arrival_bytes, size_bytes, queue_bytes, superseded = data
        index = cls(window_ns)
        columns = []
        for raw, code in (
            (key_bytes, "Q"),
            (off_bytes, "Q"),
            (arrival_bytes, "q"),
            (size_bytes, "Q"),
            (queue_bytes, "Q"),
        ):
            if not isinstance(raw, bytes) or len(raw) % 8:
                raise ValueError("dedup snapshot: bad packed array")
            column = array(code)
            column.frombytes(raw)
            columns.append(column)
        kcol, offs, g_arrival, g_size, q_keys = columns
        capacity = len(kcol)
        if capacity != len(offs) or capacity < 1 or capacity & (capacity - 1):
            raise ValueError("dedup snapshot: bad table size")
        if len(g_arrival) != len(g_size) or sum(g_size) != len(q_keys):
            raise ValueError("dedup snapshot: bad expiry queue")
        if not isinstance(superseded, list):
            raise ValueError("dedup snapshot: bad superseded counts")
        stale = {int(k): int(n) for k, n in superseded}
        live = capacity - offs.count(0)
        if live + sum(stale.values()) != len(q_keys):
            raise ValueError("dedup snapshot: table and expiry queue disagree")
        index._keys, index._offs, index._mask, index._live = kcol, offs, capacity - 1, live
        index._g_arrival, index._g_size, index._q_keys = g_arrival, g_size, q_keys
        index._superseded = stale
        return index

    @classmethod
    def _from_record_snapshot(cls, window_ns: int, data: list[object]) -> DedupIndex:
        """The previous format: per record ``[arrival, keys, offsets]``, offset 0 = already forgotten."""
        index = cls(window_ns)
        groups: list[tuple[int, list[int], list[int]]] = []
        total = 0
        for record in data:
            if not isinstance(record, (list, tuple)) or len(record) != 3:
                raise ValueError("dedup snapshot: bad record entry")
            arrival, key_bytes, offset_bytes = record
            if not isinstance(key_bytes, bytes) or not isinstance(offset_bytes, bytes):
                raise ValueError("dedup snapshot: bad packed array")
            keys = array("Q")
            keys.frombytes(key_bytes)
            offs = array("Q")
            offs.frombytes(offset_bytes)
            if len(keys) != len(offs):
                raise ValueError("dedup snapshot: keys and offsets differ in length")
            kept = [(k, o) for k, o in zip(keys, offs, strict=True) if o]
            groups.append((int(arrival), [k for k, _ in kept], [o for _, o in kept]))
            total += len(kept)
        index._rehash(_capacity_for(total))
        for arrival, keys_kept, offs_kept in groups:
            index.add(arrival, keys_kept, offs_kept)
        return index
