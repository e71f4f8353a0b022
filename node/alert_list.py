"""A partition's alerts in memory, packed: ~70 bytes an alert instead of ~360 for an Alert object.

Alerts are kept for as long as the process runs (ListAlerts and subscriptions read any of them by
offset), so they grow with the alerts fired since the start. Each one is stored as int64 columns
(``array('q')``) plus an id into a table of its (metric, threshold) codes, and turned back into an
:class:`~cluster_client.types.Alert` when it is read. A value outside int64 (a uint64 sum, say) is
kept exactly in a side table, so nothing read back ever differs from what was appended. This is
not the alert log: the log on disk is the truth, this is its in-memory read cache, rebuilt on
recovery.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any, overload

from cluster_client.types import Alert

__all__ = ["AlertList"]

# Row layout of an alert as the alert log stores it (records.AlertRecord rows).
_ACCOUNT, _METRIC, _THRESHOLD, _TH_VALUE, _MULTIPLE, _VALUE, _PERIOD, _EVENT_T, _RECORD_T = range(9)
_INT_FIELDS = (_ACCOUNT, _TH_VALUE, _MULTIPLE, _VALUE, _PERIOD, _EVENT_T, _RECORD_T)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_WIDE = 0  # stored in a column when the value itself lives in ``_wide``


class AlertList:
    """The alerts of one partition, offsets 1..len; ``[i]`` is the alert of offset ``i + 1``."""

    __slots__ = ("_code_ids", "_codes", "_columns", "_kinds", "_partition", "_wide")

    def __init__(self, partition: int) -> None:
        self._partition = partition
        self._columns = [array("q") for _ in _INT_FIELDS]
        self._kinds = array("I")  # index into _codes
        self._codes: list[tuple[str, str]] = []
        self._code_ids: dict[tuple[str, str], int] = {}
        self._wide: dict[tuple[int, int], int] = {}
        """(column, index) → a value outside int64, for the rare alert that has one."""

    def append(self, row: Sequence[Any]) -> Alert:
        """Add the alert of offset ``len(self) + 1`` from its alert-log row; returns it."""
        index = len(self._kinds)
        for column, field in zip(self._columns, _INT_FIELDS, strict=True):
            value = row[field]
            if _INT64_MIN <= value <= _INT64_MAX:
                column.append(value)
            else:
                column.append(_WIDE)
                self._wide[(field, index)] = value
        codes = (row[_METRIC], row[_THRESHOLD])
        kind = self._code_ids.get(codes)
        if kind is None:
            kind = self._code_ids[codes] = len(self._codes)
            self._codes.append(codes)
        self._kinds.append(kind)
        return self._alert(index)

    def __len__(self) -> int:
        return len(self._kinds)

    @overload
    def __getitem__(self, index: int) -> Alert: ...
    @overload
    def __getitem__(self, index: slice) -> list[Alert]: ...
    def __getitem__(self, index: int | slice) -> Alert | list[Alert]:
        if isinstance(index, slice):
            return [self._alert(i) for i in range(*index.indices(len(self._kinds)))]
        if index < 0:
            index += len(self._kinds)
        if not 0 <= index < len(self._kinds):
            raise IndexError("alert index out of range")
        return self._alert(index)

    def _alert(self, index: int) -> Alert:
        values = [column[index] for column in self._columns]
        if self._wide:
            for i, field in enumerate(_INT_FIELDS):
                if values[i] == _WIDE:
                    values[i] = self._wide.get((field, index), _WIDE)
        account, th_value, multiple, value, period, event_t, record_t = values
        metric, threshold = self._codes[self._kinds[index]]
        return Alert(
            account, metric, threshold, th_value, multiple, value, period, event_t, record_t,
            self._partition, index + 1,
        )  # fmt: skip
