"""A partition's alerts by offset: the newest packed in memory, the older read from the alert log.

ListAlerts and subscriptions read any alert by offset, for as long as the partition lives. Only
the newest ``in_memory`` alerts (plus up to an eighth more, so that dropping the oldest is an
occasional block move, not one per alert) are kept as packed int64 columns (``array('q')``) plus
an id into a table of their (metric, threshold) codes, ~70 bytes an alert; a value outside int64
(a uint64 sum, say) is kept exactly in a side table. Every alert also keeps the log position of
its alert record (8 bytes, ``array('Q')``), so an alert that left memory is one ``read`` of that
record away (on JetStream, records the node no longer holds are fetched first: :meth:`reading`):
a read returns exactly what was appended, wherever it comes from. Alerts not yet published (their
records may not be durable) never leave memory. This is not the alert log: the log is the truth,
this is its index and read cache, rebuilt on recovery.
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

from cluster_client.types import Alert

from .record_log import RecordLog, RecordsNotLoaded, read_fetching
from .records import decode_alert_record

__all__ = ["AlertList"]

_T = TypeVar("_T")

# Row layout of an alert as the alert log stores it (records.AlertRecord rows).
_ACCOUNT, _METRIC, _THRESHOLD, _TH_VALUE, _MULTIPLE, _VALUE, _PERIOD, _EVENT_T, _RECORD_T = range(9)
_INT_FIELDS = (_ACCOUNT, _TH_VALUE, _MULTIPLE, _VALUE, _PERIOD, _EVENT_T, _RECORD_T)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_WIDE = 0  # stored in a column when the value itself lives in ``_wide``


class AlertList:
    """The alerts of one partition, offsets 1..len; ``[i]`` is the alert of offset ``i + 1``."""

    __slots__ = (
        "_base", "_code_ids", "_codes", "_columns", "_in_memory", "_kinds", "_loaded", "_log",
        "_partition", "_positions", "_slack", "_wide",
    )  # fmt: skip

    def __init__(self, partition: int, log: RecordLog, in_memory: int) -> None:
        """``log``: the partition's alert log, which every appended alert's record is in;
        ``in_memory``: how many of the newest published alerts to keep in memory (at least)."""
        if in_memory < 0:
            raise ValueError("alerts in memory must be at least 0")
        self._partition = partition
        self._log = log
        self._in_memory = in_memory
        self._slack = in_memory // 8 + 1
        self._base = 0
        """Alerts 1..base have left memory; column index i holds the alert of offset base + i + 1."""
        self._positions = array("Q")
        """Log position of the record of every alert: index offset - 1."""
        self._columns = [array("q") for _ in _INT_FIELDS]
        self._kinds = array("I")  # index into _codes
        self._codes: list[tuple[str, str]] = []
        self._code_ids: dict[tuple[str, str], int] = {}
        self._wide: dict[tuple[int, int], int] = {}
        """(column, offset) → a value outside int64, for the rare alert in memory that has one."""
        self._loaded: dict[int, bytes] = {}
        """Alert records fetched for the read :meth:`reading` runs now (empty between reads)."""

    def append(self, row: Sequence[Any], position: int) -> Alert:
        """Add the alert of offset ``len(self) + 1`` from its alert-log row, whose record is at
        ``position`` of the alert log; returns it."""
        offset = len(self._positions) + 1
        for column, field in zip(self._columns, _INT_FIELDS, strict=True):
            value = row[field]
            if _INT64_MIN <= value <= _INT64_MAX:
                column.append(value)
            else:
                column.append(_WIDE)
                self._wide[(field, offset)] = value
        codes = (row[_METRIC], row[_THRESHOLD])
        kind = self._code_ids.get(codes)
        if kind is None:
            kind = self._code_ids[codes] = len(self._codes)
            self._codes.append(codes)
        self._kinds.append(kind)
        self._positions.append(position)
        return self._from_memory(offset)

    def release(self, through: int) -> None:
        """Alerts up to offset ``through`` are published (their records are durable): the oldest
        of them may leave memory, down to the newest ``in_memory``. They go in blocks of an eighth
        of the bound, so the columns' block move costs ~600 bytes an alert at the default."""
        held = len(self._kinds)
        drop = min(held - self._in_memory, through - self._base)
        if drop < self._slack:
            return
        for column in self._columns:
            del column[:drop]
        del self._kinds[:drop]
        self._base += drop
        if self._wide:
            self._wide = {key: v for key, v in self._wide.items() if key[1] > self._base}

    @property
    def in_memory(self) -> int:
        """Alerts held in memory now (the newest ones)."""
        return len(self._kinds)

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, index: int) -> Alert: ...
    @overload
    def __getitem__(self, index: slice) -> list[Alert]: ...
    def __getitem__(self, index: int | slice) -> Alert | list[Alert]:
        count = len(self._positions)
        if isinstance(index, slice):
            start, stop, step = index.indices(count)
            if step != 1:
                raise ValueError("alert slices take every alert (step 1)")
            return self.between(start + 1, stop)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("alert index out of range")
        return self.get_many([index + 1])[0]

    async def reading(self, read: Callable[[], _T]) -> _T:
        """``read()`` (``between``, ``get_many``, a slice) with the alert records it needs at
        hand: on a log whose older records live in a remote store (JetStream), those that left
        memory are fetched first (``read_fetching``). Each run of ``read()`` is one synchronous
        step, so the boundary between log and memory cannot move inside it."""
        loaded: dict[int, bytes] = {}
        self._loaded = loaded
        try:
            return await read_fetching(self._log, read, loaded)
        finally:
            self._loaded = {}

    def between(self, first: int, last: int) -> list[Alert]:
        """Alerts of offsets ``first`` to ``last`` (inclusive, within 1..len): the part that left
        memory from its records in the log (each read once), then the part in memory."""
        out: list[Alert] = []
        if first > last:
            return out
        on_disk_last = min(last, self._base)
        if first <= on_disk_last:
            positions = list(dict.fromkeys(self._positions[first - 1 : on_disk_last]))
            want = first
            for payload in self._records(positions):
                _, first_alert, rows = decode_alert_record(payload)
                if not first_alert <= want < first_alert + len(rows):
                    self._missing(want)
                stop = min(len(rows), on_disk_last - first_alert + 1)
                for i in range(want - first_alert, stop):
                    out.append(self._from_row(rows[i], want))
                    want += 1
            if want <= on_disk_last:
                self._missing(want)
        out.extend(self._from_memory(o) for o in range(max(first, self._base + 1), last + 1))
        return out

    def get_many(self, offsets: Iterable[int]) -> list[Alert]:
        """The alerts of ``offsets`` (each within 1..len), in their order: one read of the log per
        distinct record among those that left memory, none for the rest."""
        wanted = list(offsets)
        positions = list(dict.fromkeys(self._positions[o - 1] for o in wanted if o <= self._base))
        fetched = zip(positions, self._records(positions), strict=True)
        records = {position: decode_alert_record(record) for position, record in fetched}
        out: list[Alert] = []
        for offset in wanted:
            if offset > self._base:
                out.append(self._from_memory(offset))
                continue
            _, first_alert, rows = records[self._positions[offset - 1]]
            if not first_alert <= offset < first_alert + len(rows):
                self._missing(offset)
            out.append(self._from_row(rows[offset - first_alert], offset))
        return out

    def _records(self, positions: Sequence[int]) -> list[bytes]:
        """The alert records at ``positions``, or RecordsNotLoaded naming every one the log does not
        hold in memory (on the event loop, a remote store's), so one fetch brings them all."""
        out: list[bytes] = []
        missing: list[int] = []
        for position in positions:
            record = self._loaded.get(position)
            if record is None:
                try:
                    record = self._log.read(position)
                except RecordsNotLoaded:
                    missing.append(position)
                    continue
            out.append(record)
        if missing:
            raise RecordsNotLoaded(missing)
        return out

    def _missing(self, offset: int) -> None:
        raise OSError(
            errno.EIO,
            f"partition {self._partition}: alert {offset} is not in the alert log record it was "
            "appended in (the log changed under the node)",
        )

    def _from_row(self, row: Sequence[Any], offset: int) -> Alert:
        account, metric, threshold, th_value, multiple, value, period, event_t, record_t = row
        return Alert(
            account, metric, threshold, th_value, multiple, value, period, event_t, record_t,
            self._partition, offset,
        )  # fmt: skip

    def _from_memory(self, offset: int) -> Alert:
        index = offset - self._base - 1
        values = [column[index] for column in self._columns]
        if self._wide:
            for i, field in enumerate(_INT_FIELDS):
                if values[i] == _WIDE:
                    values[i] = self._wide.get((field, offset), _WIDE)
        account, th_value, multiple, value, period, event_t, record_t = values
        metric, threshold = self._codes[self._kinds[index]]
        return Alert(
            account, metric, threshold, th_value, multiple, value, period, event_t, record_t,
            self._partition, offset,
        )  # fmt: skip
