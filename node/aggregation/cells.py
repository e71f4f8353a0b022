"""The statistics cell: the one mergeable unit every bucket, period and edge fold is made of.

A cell is a plain ``list[int]``, the cheapest mutable record Python has (a one-event cell is 104
bytes): ``[count, sum, max, last_time, last_offset, last_value]``. ``max`` and the
``last_*`` triple cover ADD events only; ``last_offset == 0`` means "no ADD yet" (offsets start at
1), which also makes an empty cell lose every (time, offset) comparison. Cells may carry extra slots
after the sixth (record refs on finest buckets, alert state on period totals); the functions here
read only the first six. This module also turns a cell into the public :class:`AggValue`, which is
where the int64 limits of the API are enforced.
"""

from __future__ import annotations

from operator import itemgetter

from cluster_client.errors import FieldViolation, OutOfRangeError
from cluster_client.types import AggType, AggValue

__all__ = [
    "COUNT",
    "LAST_OFFSET",
    "LAST_TIME",
    "LAST_VALUE",
    "MAX",
    "N_STATS",
    "SUM",
    "agg_value",
    "empty_cell",
    "fold_row",
    "merge_cells",
    "pack_cells",
    "unpack_cells",
]

COUNT, SUM, MAX, LAST_TIME, LAST_OFFSET, LAST_VALUE = range(6)
N_STATS = 6
REMOVE = 2  # OperationType.REMOVE, as the int the hot path compares with

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_count = itemgetter(COUNT)
_sum = itemgetter(SUM)
_max = itemgetter(MAX)
_last = itemgetter(LAST_TIME, LAST_OFFSET)


def empty_cell() -> list[int]:
    """A cell of no events."""
    return [0, 0, 0, 0, 0, 0]


def fold_row(cell: list[int], value: int, t: int, op: int, offset: int, with_sum: bool) -> None:
    """Apply one event to ``cell`` in place, wherever it falls in (time, offset) order."""
    if op == REMOVE:
        cell[COUNT] -= 1
        if with_sum:
            cell[SUM] -= value
        return
    cell[COUNT] += 1
    if with_sum:
        cell[SUM] += value
    if value > cell[MAX]:
        cell[MAX] = value
    if t > cell[LAST_TIME] or (t == cell[LAST_TIME] and offset > cell[LAST_OFFSET]):
        cell[LAST_TIME] = t
        cell[LAST_OFFSET] = offset
        cell[LAST_VALUE] = value


def merge_cells(cells: list[list[int]], latest_last: bool = False) -> list[int]:
    """The cell of the union of the events of ``cells`` (a fresh list; ``cells`` may be empty).

    With ``latest_last`` the caller promises ``cells`` are in time order and do not overlap in time,
    so the last ADD is found by scanning back from the end instead of comparing every cell.
    """
    if not cells:
        return empty_cell()
    if len(cells) == 1:
        return cells[0][:N_STATS]
    # The map/itemgetter reductions run in C: a month-long range merges ~200 cells per series.
    if latest_last:
        last = cells[-1]
        if not last[LAST_OFFSET]:
            for cell in reversed(cells):
                if cell[LAST_OFFSET]:
                    last = cell
                    break
    else:
        last = max(cells, key=_last)
    return [
        sum(map(_count, cells)),
        sum(map(_sum, cells)),
        max(map(_max, cells)),
        last[LAST_TIME],
        last[LAST_OFFSET],
        last[LAST_VALUE],
    ]


def agg_value(agg_type: AggType, cell: list[int], alert_flags: int = 0) -> AggValue:
    """The public aggregate of ``cell`` for a metric of ``agg_type``.

    Raises OutOfRangeError when ``count``, ``sum`` or ``value`` (int64 in the API) does not fit:
    sums are exact and never wrap (docs/semantics.md).
    """
    count, total, top, last_time, _, last_value = cell[:N_STATS]
    unique = 0
    if agg_type is AggType.COUNT:
        value = count
    elif agg_type is AggType.SUM:
        value = total
    elif agg_type is AggType.MAX:
        value = top
    elif agg_type is AggType.LATEST:
        value = last_value
    else:
        value = unique = count
    for name, stat in (("sum", total), ("count", count), ("value", value)):
        if not _INT64_MIN <= stat <= _INT64_MAX:
            raise OutOfRangeError(
                f"the aggregate's {name} ({stat}) does not fit in a signed 64-bit integer",
                reason="AGGREGATE_OVERFLOW",
                violations=[FieldViolation("value", f"{name} {stat} is outside the int64 range")],
            )
    return AggValue(
        value=value,
        count=count,
        sum=total,
        max=top,
        last_value=last_value,
        last_event_time_unix_nano=last_time,
        unique_count=unique,
        alert_flags=alert_flags,
    )


_WIRE_MIN = -(1 << 63)
_WIRE_MAX = (1 << 64) - 1


def pack_cells(cells: list[list[int]]) -> tuple[list[list[int] | list[str]], list[int]]:
    """``cells`` as msgpack carries them, and the positions of those written as decimal strings.

    Only a sum can outgrow msgpack's 64-bit ints (times, offsets and values are uint64, counts are
    bounded by the log, alert multiples by the sum), and that is rare: those cells go as strings.
    """
    big = [i for i, cell in enumerate(cells) if not _WIRE_MIN <= cell[SUM] <= _WIRE_MAX]
    if not big:
        return list(cells), big
    packed: list[list[int] | list[str]] = list(cells)
    for i in big:
        packed[i] = [str(x) for x in cells[i]]
    return packed, big


def unpack_cells(packed: list[list[int]], big: list[int]) -> list[list[int]]:
    """The cells :func:`pack_cells` packed (``packed`` is modified and returned)."""
    for i in big:
        packed[i] = [int(x) for x in packed[i]]
    return packed
