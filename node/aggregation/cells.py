"""The statistics cell: the one mergeable unit every bucket, period and edge fold is made of.

A cell is a plain ``list[int]`` (no object per bucket beyond the list itself, see the memory notes in
``docs/design.md``): ``[count, sum, max, last_time, last_offset, last_value]``. ``max`` and the
``last_*`` triple cover ADD events only; ``last_offset == 0`` means "no ADD yet" (offsets start at
1), which also makes an empty cell lose every (time, offset) comparison. Cells may carry extra slots
after the sixth (record refs on finest buckets, alert state on period totals); the functions here
read only the first six. This module also turns a cell into the public :class:`AggValue`, which is
where the int64 limits of the API are enforced.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

from cluster_client.errors import FieldViolation, OutOfRangeError
from cluster_client.types import AggType, AggValue

from .spec import AppliedRow

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
    "fold_rows",
    "merge_cells",
    "pack_cell",
    "unpack_cell",
]

COUNT, SUM, MAX, LAST_TIME, LAST_OFFSET, LAST_VALUE = range(6)
N_STATS = 6
REMOVE = 2  # OperationType.REMOVE, as the int the hot path compares with

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_count = itemgetter(COUNT)
_sum = itemgetter(SUM)
_max = itemgetter(MAX)


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
        last = max(cells, key=_last_key)
    return [
        sum(map(_count, cells)),
        sum(map(_sum, cells)),
        max(map(_max, cells)),
        last[LAST_TIME],
        last[LAST_OFFSET],
        last[LAST_VALUE],
    ]


def _last_key(cell: list[int]) -> tuple[int, int]:
    return cell[LAST_TIME], cell[LAST_OFFSET]


def fold_rows(cell: list[int], rows: Iterable[AppliedRow], with_sum: bool) -> None:
    """Apply events to ``cell`` in place (any order)."""
    for _, value, t, _, op, offset in rows:
        fold_row(cell, value, t, op, offset, with_sum)


def agg_value(agg_type: AggType, cell: list[int], alert_flags: int = 0) -> AggValue:
    """The public aggregate of ``cell`` for a metric of ``agg_type``.

    Raises OutOfRangeError when ``count``, ``sum`` or ``value`` (int64 in the API) does not fit:
    sums are exact and never wrap (SPEC §2).
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


def pack_cell(cell: list[int]) -> list[int] | list[str]:
    """``cell`` as msgpack can carry it: as is, or all-decimal-strings when a sum outgrew 64 bits."""
    if min(cell) < _WIRE_MIN or max(cell) > _WIRE_MAX:
        return [str(x) for x in cell]
    return cell


def unpack_cell(data: list[int] | list[str]) -> list[int]:
    """The cell :func:`pack_cell` packed (a fresh list)."""
    return [int(x) for x in data]
