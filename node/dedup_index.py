"""The dedup index of one partition: which (account, metric, key) pairs were stored recently.

Keys are 64-bit BLAKE2b digests, so every entry has the same small size whatever the event id's
length; the index remembers each key's offset (a duplicate answers with the original's offset) and
forgets keys older than the window, by arrival time. It is rebuilt from the log on recovery, so it
survives restarts exactly like the aggregates.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import deque

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


class DedupIndex:
    """Key digest → offset, for keys whose record arrived within ``window_ns``."""

    __slots__ = ("_by_arrival", "_offsets", "window_ns")

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._offsets: dict[int, int] = {}
        # One entry per stored record with keys: (arrival_ns, keys). Arrival times are
        # non-decreasing per partition, so expiry pops from the left only.
        self._by_arrival: deque[tuple[int, array[int]]] = deque()

    def __len__(self) -> int:
        return len(self._offsets)

    def get(self, key: int) -> int | None:
        """The offset stored under ``key``, if it is still in the window."""
        return self._offsets.get(key)

    def add(self, arrival_ns: int, keys: list[int], offsets: list[int]) -> None:
        """Remember ``keys[i] → offsets[i]`` as arrived at ``arrival_ns``."""
        if not keys:
            return
        self._offsets.update(zip(keys, offsets, strict=True))
        self._by_arrival.append((arrival_ns, array("Q", keys)))

    def expire(self, now_ns: int) -> int:
        """Forget keys that arrived before ``now_ns - window``; returns how many were forgotten."""
        cutoff = now_ns - self.window_ns
        by_arrival = self._by_arrival
        offsets = self._offsets
        dropped = 0
        while by_arrival and by_arrival[0][0] < cutoff:
            _, keys = by_arrival.popleft()
            for key in keys:
                offsets.pop(key, None)
            dropped += len(keys)
        return dropped

    def to_snapshot(self) -> list[object]:
        """A msgpack-serialisable copy: per record, arrival time, keys and offsets as packed arrays."""
        out: list[object] = []
        offsets = self._offsets
        for arrival, keys in self._by_arrival:
            live = array("Q", (offsets.get(k, 0) for k in keys))
            out.append([arrival, keys.tobytes(), live.tobytes()])
        return out

    @classmethod
    def from_snapshot(cls, window_ns: int, data: list[list[object]]) -> DedupIndex:
        """Rebuild an index saved by :meth:`to_snapshot`."""
        index = cls(window_ns)
        for arrival, key_bytes, offset_bytes in data:
            keys = array("Q")
            keys.frombytes(key_bytes)  # type: ignore[arg-type]
            offs = array("Q")
            offs.frombytes(offset_bytes)  # type: ignore[arg-type]
            index._offsets.update((k, o) for k, o in zip(keys, offs, strict=True) if o)
            index._by_arrival.append((int(arrival), keys))  # type: ignore[call-overload]
        return index
