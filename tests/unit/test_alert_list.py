"""A partition's alert list (``node.alert_list``): every alert reads back exactly as appended,
whether it is still in memory or has left it and is read from the alert log, and so does every
alert of a list restored from the index a snapshot holds.

Against the plain model (a list of ``Alert`` objects built from the same alert-log rows), on a
real segment log holding the records: every index, negative index, slice and offset list, with
random record sizes, random in-memory bounds and random publish points, values at and past the
int64 edges (kept in the side table while in memory), and the bytes an alert costs in memory and
once it has left it, measured with tracemalloc at stated generous bounds.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.types import Alert
from node.aggregation.snapshot_data import pack
from node.alert_list import AlertList
from node.records import AlertIndex, AlertRecord, decode_alert_record, encode_alert_record
from node.segment_log import SegmentLog

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

ints = st.one_of(
    st.integers(-5, 5),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, INT64_MAX + 1, UINT64_MAX, 0]),
)
rows = st.tuples(
    ints,
    st.sampled_from(["calls", "bytes", "é"]),
    st.sampled_from(["every", "first", ""]),
    ints,
    ints,
    ints,
    ints,
    ints,
    ints,
)

Row = tuple[object, ...]


@pytest.fixture
def alert_log(tmp_path: Path) -> Iterator[SegmentLog]:
    log = SegmentLog.open(tmp_path / "alerts")
    yield log
    log.close_sync()


def model(partition: int, appended: list[Row]) -> list[Alert]:
    return [Alert(*row, partition, i + 1) for i, row in enumerate(appended)]  # type: ignore[arg-type]


def append_record(alerts: AlertList, log: SegmentLog, record: list[Row]) -> list[Alert]:
    """Append ``record``'s rows as one alert record, as a partition does; returns the alerts."""
    position = log.append(encode_alert_record(AlertRecord(1, len(alerts) + 1, [list(r) for r in record])))
    first = len(alerts) + 1
    for row in record:
        alerts.append(row, position)
    return alerts.between(first, len(alerts))


def restored(alerts: AlertList, log: SegmentLog, partition: int, in_memory: int) -> AlertList:
    """A list restored, as recovery does, from the index ``alerts.to_snapshot()`` gives (packed
    and read back) and the records holding the alerts it keeps in memory."""
    positions, accounts = msgpack.unpackb(pack(list(alerts.to_snapshot())))
    copy = AlertList(partition, log, in_memory)
    first = copy.restore(AlertIndex(positions, [(a, o) for a, o in accounts]), len(alerts))
    if first is not None:
        for position, payload in log.scan(first):
            _, first_alert, rows = decode_alert_record(payload)
            copy.refill(position, first_alert, rows)
    assert copy.refilled
    copy.release(len(copy))
    assert copy.in_memory == min(len(alerts), in_memory)
    return copy


def check_reads(alerts: AlertList, want: list[Alert]) -> None:
    n = len(want)
    assert len(alerts) == n
    assert [alerts[i] for i in range(n)] == want
    assert [alerts[-i - 1] for i in range(n)] == want[::-1]
    for lo in range(n + 2):
        for hi in range(lo, n + 2):
            assert alerts[lo:hi] == want[lo:hi]
            if lo < hi <= n:  # what subscriptions filter on, of the alerts of offsets lo + 1..hi
                some = want[lo:hi]
                assert alerts.filter_keys(lo + 1, hi) == (
                    {a.account_id for a in some},
                    {a.metric_code for a in some},
                    {a.threshold_code for a in some},
                )
    assert alerts.get_many(range(1, n + 1)) == want
    assert alerts.get_many(range(n, 0, -3)) == want[::-3]


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.lists(rows, min_size=1, max_size=4), max_size=14),
    partition=st.integers(0, 63),
    in_memory=st.integers(0, 6),
    publish=st.lists(st.booleans(), min_size=14, max_size=14),
)
def test_every_alert_reads_back_as_appended(
    records: list[list[Row]], partition: int, in_memory: int, publish: list[bool]
) -> None:
    with TemporaryDirectory() as tmp:
        log = SegmentLog.open(Path(tmp) / "alerts")
        try:
            alerts = AlertList(partition, log, in_memory)
            appended: list[Row] = []
            published = 0
            for record, publish_now in zip(records, publish, strict=False):
                want = model(partition, appended + record)
                assert append_record(alerts, log, record) == want[len(appended) :]
                appended += record
                if publish_now:
                    published = len(appended)
                    alerts.release(published)
                # Never fewer than the bound, nor any alert not yet published, in memory.
                assert alerts.in_memory >= min(len(appended), max(in_memory, len(appended) - published))
                check_reads(alerts, want)
            again = restored(alerts, log, partition, in_memory)
            check_reads(again, model(partition, appended))
            for account in {row[0] for row in appended}:
                assert list(again.offsets_of(account)) == list(alerts.offsets_of(account))  # type: ignore[arg-type]
        finally:
            log.close_sync()


def test_a_snapshot_index_holds_what_was_appended_before_its_capture(alert_log: SegmentLog) -> None:
    # Positions in blocks of 2**15 (three here); alerts appended after the capture are left out.
    n = 70_000
    alerts = AlertList(3, alert_log, 4)
    records = [append_row(alert_log, i) for i in range(n + 10)]
    for i in range(n):
        alerts.append(_row(i), records[i])
        alerts.release(i + 1)
    index = alerts.to_snapshot()
    for i in range(n, n + 10):
        alerts.append(_row(i), records[i])
    positions, accounts = msgpack.unpackb(pack(list(index)))
    assert [len(block) for block in positions] == [8 << 15, 8 << 15, 8 * (n - (2 << 15))]
    copy = AlertList(3, alert_log, 4)
    first = copy.restore(AlertIndex(positions, [(a, o) for a, o in accounts]), n)
    assert first == records[n - 4]
    for position, payload in alert_log.scan(first):
        _, first_alert, rows = decode_alert_record(payload)
        if first_alert > n:
            break
        copy.refill(position, first_alert, rows)
    assert copy.refilled and len(copy) == n and copy.in_memory == 4
    for account in {_row(i)[0] for i in range(n + 10)}:
        offsets = list(alerts.offsets_of(account))  # type: ignore[arg-type]
        assert list(copy.offsets_of(account)) == [o for o in offsets if o <= n]  # type: ignore[arg-type]
    sample = [1, 2, 32_768, 32_769, 65_536, 65_537, n - 4, n - 3, n]
    assert copy.get_many(sample) == alerts.get_many(sample)


def test_old_alerts_leave_memory_in_blocks_and_read_back_from_the_log(alert_log: SegmentLog) -> None:
    alerts = AlertList(5, alert_log, 16)  # blocks of 16 // 8 + 1 = 3
    appended: list[Row] = []
    for i in range(100):
        record: list[Row] = [(i, "calls", "every", 10, i + 1, 10 * i, 0, i, i + 1)] * (1 + i % 3)
        append_record(alerts, alert_log, record)
        appended += record
        alerts.release(len(appended))
        assert min(len(appended), 16) <= alerts.in_memory < 16 + 3
    check_reads(alerts, model(5, appended))


def test_a_wide_value_reads_back_after_it_left_memory(alert_log: SegmentLog) -> None:
    alerts = AlertList(0, alert_log, 0)
    wide: Row = (1, "calls", "every", 10, UINT64_MAX, INT64_MIN, 0, 5, 6)
    append_record(alerts, alert_log, [wide, (2, "calls", "every", 10, 1, 10, 0, 5, 6)])
    assert alerts[0] == Alert(*wide, 0, 1)  # type: ignore[arg-type]
    alerts.release(2)
    assert alerts.in_memory == 0
    assert alerts[0] == Alert(*wide, 0, 1)  # type: ignore[arg-type]


def test_an_index_past_either_end_raises_index_error(alert_log: SegmentLog) -> None:
    alerts = AlertList(0, alert_log, 10)
    append_record(alerts, alert_log, [(1, "calls", "every", 10, 1, 10, 0, 5, 6)])
    for index in (1, -2):
        with pytest.raises(IndexError):
            alerts[index]


def _row(i: int) -> Row:
    return (1000 + i % 977, "calls", "every", 1_000_000, i + 1, 10**9 + i, 10**18, 10**18 + i, 10**18 + 2 * i)


def append_row(log: SegmentLog, i: int) -> int:
    return log.append(encode_alert_record(AlertRecord(1, i + 1, [list(_row(i))])))


@pytest.mark.parametrize(("in_memory", "bound"), [(10**9, 100), (1_000, 20)])
def test_bytes_an_alert_costs(alert_log: SegmentLog, in_memory: int, bound: float) -> None:
    # In memory: 8 bytes per int field, 4 for the codes' id, 8 for the record's log position and
    # 4 for its offset in its account's list (plus array over-allocation): ~84 bytes (a Python
    # Alert object with its ints is ~400). Once it has left memory only the position and the
    # account offset are kept: 12 bytes, plus the 977 accounts' arrays of ~51 offsets each
    # (their headers and spare room: ~5 bytes an alert here, less with more alerts an account).
    n = 50_000
    alerts = AlertList(3, alert_log, in_memory)
    records = [append_row(alert_log, i) for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            alerts.append(_row(i), records[i])
            alerts.release(i + 1)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / n < bound, f"{grown / n:.1f} bytes an alert"
    assert alerts[n - 1] == Alert(*_row(n - 1), 3, n)  # type: ignore[arg-type]
    assert alerts[0] == Alert(*_row(0), 3, 1)  # type: ignore[arg-type]
