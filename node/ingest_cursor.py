"""Where a partition's ingest stands: its last offset, the last arrival time it stamped, and the
records it has logged since its last snapshot.

The partition owns one and reads it (queries answer its last offset, snapshots keep it, recovery
sets it); a partition part's ingest step moves it on. The native engine has the same object in
Rust (``unimeter_native.IngestCursor``, native/src/py_ingest_cursor.rs), which its ``PartIngest``
moves on without a Python step; this class is the Python engine's. Both are three numbers, kept
by the same rules (``node.partition_engine.stepwise_ingest`` is the reference of those rules).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Cursor", "IngestCursor"]


class Cursor(Protocol):
    """What a partition and its ingest step read and set (this module's class or the extension's)."""

    last_offset: int
    last_arrival: int
    records: int


class IngestCursor:
    """A new partition's: nothing logged yet."""

    __slots__ = ("last_arrival", "last_offset", "records")

    def __init__(self) -> None:
        self.last_offset = 0
        """The offset of the partition's last stored event (0: none yet)."""
        self.last_arrival = 0
        """The arrival time stamped on the last record logged: the next is never earlier, so that
        arrival times (and the dedup window they decide) never go back when the clock does."""
        self.records = 0
        """Records logged since the last snapshot (recovery's replay count, then each new one)."""
