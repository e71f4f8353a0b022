"""A partition's alerts by offset and by account: the newest in memory, the older in the alert log.

ListAlerts and subscriptions read any alert by offset, for as long as the partition lives. Only
the newest ``in_memory`` alerts (plus up to an eighth more, so that dropping the oldest is an
occasional block move, not one per alert) are kept as packed int64 columns (``array('q')``) plus
an id into a table of their (metric, threshold) codes, ~70 bytes an alert; a value outside int64
(a uint64 sum, say) is kept exactly in a side table. Every alert also keeps the log position of
its alert record (8 bytes, ``array('Q')``), so an alert that left memory is one ``read`` of that
record away (on JetStream, records the node no longer holds are fetched first: :meth:`reading`):
a read returns exactly what was appended, wherever it comes from; and its offset in its account's
list (4 bytes, ``array('I')``), which ListAlerts bisects. Alerts not yet published (their records
may not be durable) never leave memory. This is not the alert log: the log is the truth, this is
its index and read cache, which a snapshot holds (:meth:`to_snapshot`) and recovery restores
(:meth:`restore`) or rebuilds from the log.
"""

from __future__ import annotations

import errno
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

from cluster_client.types import Alert

from .aggregation.snapshot_data import Chunked
from .record_log import RecordLog, RecordsNotLoaded, read_fetching
from .records import AlertIndex, decode_alert_record

__all__ = ["AlertList"]

_T = TypeVar("_T")

# Row layout of an alert as the alert log stores it (records.AlertRecord rows).
_ACCOUNT, _METRIC, _THRESHOLD, _TH_VALUE, _MULTIPLE, _VALUE, _PERIOD, _EVENT_T, _RECORD_T = range(9)
_INT_FIELDS = (_ACCOUNT, _TH_VALUE, _MULTIPLE, _VALUE, _PERIOD, _EVENT_T, _RECORD_T)
_ACCOUNT_COLUMN = _INT_FIELDS.index(_ACCOUNT)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_WIDE = 0  # stored in a column when the value itself lives in ``_wide``
_UINT32_MAX = 2**32 - 1
_NO_ALERTS = array("I")
_POSITIONS_PER_BLOCK = 1 << 15
"""Alerts' record positions in one ``bytes`` block of a snapshot (256 KiB): a snapshot packs a few
blocks between two turns of the event loop, however many alerts the partition has."""


class AlertList:
    """The alerts of one partition, offsets 1..len; ``[i]`` is the alert of offset ``i + 1``."""

    __slots__ = (
        "_base", "_by_account", "_code_ids", "_codes", "_columns", "_in_memory", "_kinds", "_loaded",
        "_log", "_partition", "_positions", "_slack", "_wide",
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
        self._by_account: dict[int, array[int]] = {}
        """Account → the offsets of its alerts, in order (``array('q')`` past 2**32 - 1 alerts)."""
        self._columns = [array("q") for _ in _INT_FIELDS]
        self._kinds = array("I")  # index into _codes
        self._codes: list[tuple[str, str]] = []
        self._code_ids: dict[tuple[str, str], int] = {}
        self._wide: dict[tuple[int, int], int] = {}
        """(column, offset) → a value outside int64, for the rare alert in memory that has one."""
        self._loaded: dict[int, bytes] = {}
        """Alert records fetched for the read :meth:`reading` runs now (empty between reads)."""

    def append(self, row: Sequence[Any], position: int) -> None:
        """Add the alert of offset ``len(self) + 1`` from its alert-log row, whose record is at
        ``position`` of the alert log. Nothing is built for it: a partition logs alerts on its
        ingest path, and reads them (``between``) only once a subscriber or a query asks."""
        offset = len(self._positions) + 1
        self._positions.append(position)
        account = row[_ACCOUNT]
        offsets = self._by_account.get(account)
        if offsets is None:
            offsets = self._by_account[account] = array("I")
        elif offset > _UINT32_MAX and offsets.typecode == "I":
            offsets = self._by_account[account] = array("q", offsets)  # 4 bytes an alert until then
        offsets.append(offset)
        self._hold(row, offset)

    def _hold(self, row: Sequence[Any], offset: int) -> None:
        """Keep the alert of ``offset`` (the one after those in memory) in memory, from its row."""
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

    def offsets_of(self, account: int) -> Sequence[int]:
        """The offsets of ``account``'s alerts, in order (a live array: do not change it)."""
        return self._by_account.get(account, _NO_ALERTS)

    def to_snapshot(self) -> AlertIndex:
        """The index of the alerts so far, for a snapshot: captured now without copying (the
        arrays only grow, so the part of each that the capture covers never changes; an account's
        widened array starts with the same offsets), packed as bytes later, while the alerts
        appended meanwhile are left out. The capture is the count and a list of the accounts."""
        count = len(self._positions)
        positions = self._positions
        by_account = self._by_account
        accounts = list(by_account)
        typecode = "I" if count <= _UINT32_MAX else "q"

        def blocks(lo: int, hi: int) -> list[bytes]:
            size = _POSITIONS_PER_BLOCK
            return [_little_endian(positions[b * size : min((b + 1) * size, count)]) for b in range(lo, hi)]

        def chunk(lo: int, hi: int) -> list[list[object]]:
            out: list[list[object]] = []
            for account in accounts[lo:hi]:
                offsets = by_account[account]
                kept = offsets[: bisect_right(offsets, count)]
                if kept.typecode != typecode:  # past 2**32 - 1 alerts: every account's are int64
                    kept = array(typecode, kept)
                out.append([account, _little_endian(kept)])
            return out

        n_blocks = -(-count // _POSITIONS_PER_BLOCK)
        return AlertIndex(
            Chunked(n_blocks, blocks),
            Chunked(len(accounts), chunk),
        )

    def restore(self, index: AlertIndex, count: int) -> int | None:
        """Take the index of alerts 1..``count`` from a snapshot, none of them in memory yet: the
        rows of the newest ``in_memory`` (at least the last, so that recovery checks the index
        against the log) are then given to :meth:`refill` from the records holding them, which
        start at the position returned (None: no alerts). ValueError if the index does not
        describe ``count`` alerts; the list is then unchanged."""
        if self._positions:
            raise ValueError("an alert list is restored before anything is appended")
        positions = array("Q")
        for block in index.positions:
            positions += _from_little_endian("Q", block)
        typecode = "I" if count <= _UINT32_MAX else "q"
        by_account = {account: _from_little_endian(typecode, raw) for account, raw in index.accounts}
        if len(positions) != count or sum(map(len, by_account.values())) != count:
            raise ValueError(f"the snapshot's alert index does not describe its {count} alerts")
        if any(not offsets or offsets[-1] > count for offsets in by_account.values()):
            raise ValueError(f"the snapshot's alert index has offsets past its {count} alerts")
        self._positions = positions
        self._by_account = by_account
        self._base = count - min(count, max(self._in_memory, 1))
        return positions[self._base] if count else None

    def refill(self, position: int, first_alert: int, rows: Sequence[Sequence[Any]]) -> None:
        """Put the alerts of the alert record at ``position`` (offsets ``first_alert`` on) that
        :meth:`restore` left to it in memory, in log order; ValueError if the record is not the
        one the index says holds them."""
        last = first_alert + len(rows) - 1
        if not rows or not 1 <= first_alert <= last <= len(self._positions):
            raise ValueError(f"alerts {first_alert} to {last} are not in the snapshot's alert index")
        if any(p != position for p in self._positions[first_alert - 1 : last]):
            raise ValueError(f"the snapshot's alert index puts alerts {first_alert}-{last} elsewhere")
        for i, row in enumerate(rows):
            offset = first_alert + i
            if offset == self._base + len(self._kinds) + 1:
                self._hold(row, offset)

    @property
    def refilled(self) -> bool:
        """Whether every alert :meth:`restore` left to :meth:`refill` was given to it."""
        return self._base + len(self._kinds) == len(self._positions)

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

    def filter_keys(self, first: int, last: int) -> tuple[set[int], set[str], set[str]]:
        """The accounts, metric codes and threshold codes of the alerts of offsets ``first`` to
        ``last`` (within 1..len): what subscriptions filter on. Read from the columns when the
        alerts are in memory, as just published ones are, without building them."""
        if first <= self._base or self._wide:  # left memory, or a value past int64 held: rare
            alerts = self.between(first, last)
            return (
                {a.account_id for a in alerts},
                {a.metric_code for a in alerts},
                {a.threshold_code for a in alerts},
            )
        lo, hi = first - self._base - 1, last - self._base
        kinds = [self._codes[kind] for kind in set(self._kinds[lo:hi])]
        return (
            set(self._columns[_ACCOUNT_COLUMN][lo:hi]),
            {metric for metric, _ in kinds},
            {threshold for _, threshold in kinds},
        )

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


def _little_endian(values: array[int]) -> bytes:
    """The bytes of ``values`` in the order snapshots store them, on any machine."""
    if sys.byteorder != "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_little_endian(typecode: str, raw: bytes) -> array[int]:
    """An array of ``typecode`` from bytes :func:`_little_endian` gave; ValueError if ``raw`` is
    not a whole number of them."""
    values = array(typecode)
    values.frombytes(raw)
    if sys.byteorder != "little":
        values.byteswap()
    return values
