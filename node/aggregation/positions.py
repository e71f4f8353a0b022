"""Log record positions packed in arrays, for the in-memory indexes that keep one per stored event.

The ListEvents index and the minute cells (the records that fed each minute, for the raw edges of
range queries) keep record positions for as long as the process runs. As Python ints in lists each
costs an 8-byte slot plus the int object itself (28-32 bytes, shared by the few events of one
record when a batch is spread over many partitions). Packed, a position costs 4 bytes while it
fits in 32 bits (a partition's first 4 GiB of log) and 8 after, and no int object stays alive.
Arrays hold no references, so they are untracked by the cyclic GC (:mod:`.untracked`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from .untracked import untracked

__all__ = ["positions_of", "tail_positions", "widened", "with_packed_tail"]

_NARROW_MAX = 0xFFFF_FFFF  # the largest position an array('I') holds


def positions_of(refs: Sequence[int]) -> array[int]:
    """Ascending positions (at least one) as the narrowest array that holds them."""
    return untracked(array("I" if refs[-1] <= _NARROW_MAX else "q", refs))


def widened(refs: array[int], ref: int) -> array[int]:
    """A 64-bit copy of ``refs`` with ``ref`` appended: for the first position an ``array('I')``
    cannot hold (its ``append`` raised OverflowError)."""
    wide = untracked(array("q", refs))
    wide.append(ref)
    return wide


# A cell whose slot ``at`` (its last) holds the positions of the records that fed it: the one
# position as an int (no array header for the many cells fed by one record), else an array.


def tail_positions(cell: Sequence[Any], at: int) -> Sequence[int]:
    """The positions kept in ``cell[at]``, ascending."""
    refs = cell[at]
    return (refs,) if isinstance(refs, int) else refs


def with_packed_tail(flat: list[Any], at: int) -> list[Any]:
    """``flat`` (slots ``at`` onwards: positions, ascending, as ints) with them packed into slot
    ``at``: the shape the minute cells keep. ``flat`` is modified and returned."""
    if len(flat) > at + 1:
        flat[at:] = [positions_of(flat[at:])]
    return flat
