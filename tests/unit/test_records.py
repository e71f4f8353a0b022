"""Record formats: the bytes of every version-1 record and snapshot stay what they were, round
trip through their decoders, and anything malformed is refused with RecordFormatError only."""

from __future__ import annotations

import contextlib
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.aggregation.snapshot_data import pack
from node.records import (
    AlertIndex,
    AlertRecord,
    EventRecord,
    RecordFormatError,
    Snapshot,
    decode_alert_record,
    decode_event_record,
    decode_snapshot,
    encode_alert_record,
    encode_event_record,
    encode_snapshot,
)

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
offsets = st.integers(min_value=0, max_value=2**63 - 1)
codes = st.text(min_size=1, max_size=12)
props = st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
event_rows = st.tuples(offsets, codes, ints, offsets, props, st.integers(0, 3), st.text(max_size=10))
alert_rows = st.tuples(offsets, codes, codes, ints, ints, ints, ints, ints, ints).map(list)


@st.composite
def event_records(draw: st.DrawFn) -> EventRecord:
    rows = draw(st.lists(event_rows, max_size=20))
    return EventRecord(
        first_offset=draw(offsets),
        batch_id=draw(st.text(max_size=10)),
        arrival=draw(offsets),
        generations=draw(st.dictionaries(codes, offsets, max_size=3)),
        rows=rows,
        stamped=draw(st.lists(st.integers(0, 50), max_size=5)),
        n_requested=draw(offsets),
        duplicates=draw(st.lists(st.lists(offsets, min_size=2, max_size=2), max_size=5)),
    )


@settings(max_examples=200, deadline=None)
@given(event_records())
def test_an_event_record_is_the_positional_array_it_always_was_and_reads_back(record: EventRecord) -> None:
    data = encode_event_record(record)
    legacy = [
        1,
        record.first_offset,
        record.batch_id,
        record.arrival,
        record.generations,
        [list(r) for r in record.rows],
        record.stamped,
        record.n_requested,
        record.duplicates,
    ]
    assert data == msgpack.packb(legacy)
    back = decode_event_record(data)
    assert back.rows == tuple(record.rows)
    assert (back.first_offset, back.batch_id, back.arrival, back.generations, back.n_requested) == (
        record.first_offset,
        record.batch_id,
        record.arrival,
        record.generations,
        record.n_requested,
    )
    assert list(back.stamped) == record.stamped
    assert [list(d) for d in back.duplicates] == record.duplicates
    assert encode_event_record(back) == data


@settings(max_examples=200, deadline=None)
@given(offsets, offsets, st.lists(alert_rows, max_size=10))
def test_an_alert_record_is_the_positional_array_it_always_was_and_reads_back(
    event_first: int, first_alert: int, rows: list[list[object]]
) -> None:
    data = encode_alert_record(AlertRecord(event_first, first_alert, rows))
    assert data == msgpack.packb([event_first, first_alert, rows])
    assert decode_alert_record(data) == AlertRecord(event_first, first_alert, rows)


def _snapshot() -> Snapshot:
    return Snapshot(
        partition=3,
        event_position=4096,
        last_offset=120,
        last_arrival=1_772_323_200_000_000_000,
        alert_position=77,
        alert_count=2,
        aggregates={"any": [1, 2]},
        dedup=["dedup-x", b"\x00" * 8],
        index=[[5, [[1, 0, 40]]]],
        batches=[("b1", 10, [1, 2, 3], 0), ("b2", 11, [4, 2], 1)],
    )


async def test_a_snapshot_is_the_map_it_always_was_and_reads_back() -> None:
    snapshot = _snapshot()
    data = b"".join(await encode_snapshot(snapshot))
    legacy = {
        "v": 1,
        "partition": 3,
        "event_pos": 4096,
        "last_offset": 120,
        "last_arrival": 1_772_323_200_000_000_000,
        "alert_pos": 77,
        "alert_count": 2,
        "aggregates": {"any": [1, 2]},
        "dedup": ["dedup-x", b"\x00" * 8],
        "index": [[5, [[1, 0, 40]]]],
        "batches": [["b1", 10, [1, 2, 3], 0], ["b2", 11, [4, 2], 1]],
    }
    body = pack(legacy)
    assert data == body + zlib.crc32(body).to_bytes(4, "little")  # the map, then its CRC-32
    assert decode_snapshot(data) == snapshot


async def test_a_snapshot_with_the_alert_index_is_version_3_and_reads_back() -> None:
    # Alerts 1 and 2 in the alert record at 40; account 7 has alert 1, account 9 alert 2.
    positions = [(40).to_bytes(8, "little"), (40).to_bytes(8, "little")]  # blocks of any size
    accounts = [(7, (1).to_bytes(4, "little")), (9, (2).to_bytes(4, "little"))]
    snapshot = _snapshot()
    snapshot.alert_index = AlertIndex(positions, accounts)
    snapshot.index_runs = [("run-1", 64, 5)]
    data = b"".join(await encode_snapshot(snapshot))
    state = msgpack.unpackb(data[:-4], strict_map_key=False)
    assert state["v"] == 3
    assert state["alert_index"] == [positions, [[7, b"\x01\0\0\0"], [9, b"\x02\0\0\0"]]]
    assert state["index_runs"] == [["run-1", 64, 5]]
    assert decode_snapshot(data) == snapshot
    snapshot.index_runs = []  # version 3 relies on runs or not
    data = b"".join(await encode_snapshot(snapshot))
    assert "index_runs" not in msgpack.unpackb(data[:-4], strict_map_key=False)
    assert decode_snapshot(data) == snapshot


def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


async def test_a_snapshot_with_any_bit_flipped_is_refused() -> None:
    data = b"".join(await encode_snapshot(_snapshot()))
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RecordFormatError, match="checksum mismatch"):
            decode_snapshot(bytes(flipped))
    for cut in range(len(data)):
        with pytest.raises(RecordFormatError, match="checksum mismatch"):
            decode_snapshot(data[:cut])


_GOOD_EVENT = [1, 1, "", 5, {"calls": 1}, [[7, "calls", 2, 3, None, 1, "e"]], [], 1, []]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb(_GOOD_EVENT)[:-3], "not valid msgpack"),
        (msgpack.packb(_GOOD_EVENT) + b"\x00", "not valid msgpack"),
        (msgpack.packb({"v": 1}), "not an array of 9"),
        (msgpack.packb(_GOOD_EVENT[:8]), "not an array of 9"),
        (msgpack.packb([2, *_GOOD_EVENT[1:]]), "version 2 is not 1"),
        (msgpack.packb([True, *_GOOD_EVENT[1:]]), "version True is not 1"),
        (msgpack.packb([1, "1", *_GOOD_EVENT[2:]]), "header fields"),
        (msgpack.packb([*_GOOD_EVENT[:4], {"calls": "1"}, *_GOOD_EVENT[5:]]), "generations"),
        (msgpack.packb([*_GOOD_EVENT[:5], [[7, "calls", 2, 3, None, 1]], *_GOOD_EVENT[6:]]), "7 fields"),
        (msgpack.packb([*_GOOD_EVENT[:5], [[7, "calls", "2", 3, None, 1, ""]], *_GOOD_EVENT[6:]]), "types"),
        (msgpack.packb([*_GOOD_EVENT[:5], [[7, "calls", 2, 3, {"k": 1}, 1, ""]], *_GOOD_EVENT[6:]]), "types"),
        (msgpack.packb([*_GOOD_EVENT[:5], "rows", *_GOOD_EVENT[6:]]), "rows are not a list"),
        (msgpack.packb([*_GOOD_EVENT[:6], [1.5], *_GOOD_EVENT[7:]]), "stamped"),
        (msgpack.packb([*_GOOD_EVENT[:8], [[1]]]), "duplicates"),
    ],
)
def test_a_malformed_event_record_is_refused_saying_why(payload: bytes, why: str) -> None:
    with pytest.raises(RecordFormatError, match=why):
        decode_event_record(payload)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x93\x01", "not valid msgpack"),
        (msgpack.packb([1, 2]), "not an array of 3"),
        (msgpack.packb([1, 2, {}]), "header fields"),
        (msgpack.packb([1, 2, [[1, "m", "t", 1, 1, 1, 1, 1]]]), "not an alert"),
        (msgpack.packb([1, 2, [[1, "m", "t", 1, 1, 1, 1, 1, "x"]]]), "not an alert"),
    ],
)
def test_a_malformed_alert_record_is_refused_saying_why(payload: bytes, why: str) -> None:
    with pytest.raises(RecordFormatError, match=why):
        decode_alert_record(payload)


async def test_a_malformed_snapshot_is_refused_saying_why() -> None:
    good = msgpack.unpackb(b"".join(await encode_snapshot(_snapshot()))[:-4], strict_map_key=False)

    def with_alert_index(index: object) -> bytes:
        return _with_crc(msgpack.packb({**good, "v": 3, "alert_index": index}))

    cases: list[tuple[bytes, str]] = [
        (_with_crc(b"\xdf"), "not valid msgpack"),
        (_with_crc(msgpack.packb([1])), "not a map"),
        (_with_crc(msgpack.packb({**good, "v": 4})), "version 4 is not 1, 2 or 3"),
        (_with_crc(msgpack.packb({**good, "v": 3})), "alert index is not"),
        (with_alert_index([[b"\0" * 8], []]), "alert index is not"),  # 2 alerts, 1 position
        (with_alert_index([b"\0" * 16, []]), "alert index is not"),  # not in blocks
        (with_alert_index([[b"\0" * 16], [[7]]]), "alert index is not"),
        (with_alert_index([[b"\0" * 16], [[7, 1]]]), "alert index is not"),
        (_with_crc(msgpack.packb({**good, "v": 2})), "index runs are not a list"),
        (_with_crc(msgpack.packb({**good, "v": 2, "index_runs": []})), "index runs are not a list"),
        (_with_crc(msgpack.packb({**good, "v": 2, "index_runs": [["r", 1]]})), "index runs are not a list"),
        (_with_crc(msgpack.packb({k: v for k, v in good.items() if k != "dedup"})), "lacks dedup"),
        (_with_crc(msgpack.packb({**good, "event_pos": "0"})), "not integers"),
        (_with_crc(msgpack.packb({**good, "batches": [["b", 1, [1], 0, 9]]})), "batch entry"),
        (msgpack.packb(good), "checksum mismatch"),
    ]
    for payload, why in cases:
        with pytest.raises(RecordFormatError, match=why):
            decode_snapshot(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_record_format_error(data: bytes) -> None:
    for decode in (decode_event_record, decode_alert_record, decode_snapshot):
        with contextlib.suppress(RecordFormatError):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(event_records(), st.data())
def test_a_damaged_valid_record_decodes_or_raises_record_format_error(
    record: EventRecord, data: st.DataObject
) -> None:
    raw = bytearray(encode_event_record(record))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    try:
        back = decode_event_record(bytes(raw))
    except RecordFormatError:
        return
    assert all(len(row) == 7 for row in back.rows)
