"""``unimeter_native.valid_prefix`` against ``node.segment_log.valid_prefix``, the recovery scan
of a segment file, and ``unimeter_native.crc32`` against ``zlib.crc32``, a snapshot file's
checksum. The scans: for random logs (empty records, records past the Python scan's read chunk,
records past the native one's) damaged every way a crash or a disk can (cut anywhere, a byte
flipped anywhere, zeros or junk appended), both give the same length of the valid prefix and
the same reason for the rest, whatever the Python scan's chunk size. Collected only where the
extension is built (tests/conftest.py)."""

from __future__ import annotations

import errno
import os
import random
import zlib
from pathlib import Path
from unittest import mock

import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st

from node import segment_log
from node.partition_engine import PYTHON, partition_engine
from node.segment_log import SegmentLog

_HEADER = 8

payloads = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"", b"\x00" * 8, b"x" * 70_000]),  # empty, zero-like, past a 64 KiB chunk
    ),
    max_size=12,
)
damage = st.tuples(st.sampled_from(["none", "cut", "flip", "zeros", "junk"]), st.integers(0, 10**6))


def _segment(directory: Path, records: list[bytes]) -> bytes:
    """The bytes SegmentLog writes for ``records`` (one segment)."""
    log = SegmentLog.open(directory)
    for record in records:
        log.append(record)
    end = log.end_position
    log.close_sync()
    (segment,) = directory.glob("*.seg")
    return segment.read_bytes()[:end]  # without the space reserved past the records


def _damaged(data: bytes, how: tuple[str, int]) -> bytes:
    """``data`` cut at, flipped at or followed by something chosen by ``n``."""
    kind, n = how
    if kind == "cut":
        return data[: n % (len(data) + 1)]
    if kind == "flip" and data:
        i = n % len(data)
        return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]
    if kind == "zeros":
        return data + b"\x00" * (1 + n % 5000)
    if kind == "junk":
        return data + random.Random(n).randbytes(1 + n % 40)
    return data


def _scans(path: Path) -> list[tuple[int, str | None]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        answers = [unimeter_native.valid_prefix(fd, size), segment_log.valid_prefix(fd, size)]
        with mock.patch.object(segment_log, "_READ_CHUNK", 32):
            answers.append(segment_log.valid_prefix(fd, size))
        return answers
    finally:
        os.close(fd)


@settings(max_examples=300, deadline=None)
@given(records=payloads, how=damage)
def test_both_scans_find_the_same_valid_prefix_and_reason(
    tmp_path_factory: pytest.TempPathFactory, records: list[bytes], how: tuple[str, int]
) -> None:
    directory = tmp_path_factory.mktemp("log")
    data = _damaged(_segment(directory, records), how)
    path = directory / "damaged"
    path.write_bytes(data)
    native, python, python_small_chunks = _scans(path)
    assert native == python == python_small_chunks
    good, reason = native
    assert (reason is None) == (good == len(data))


def test_a_frame_past_the_native_read_chunk_is_read_whole(tmp_path: Path) -> None:
    records = [b"a", b"b" * (3 << 20), b"c"]
    path = tmp_path / "big"
    path.write_bytes(_segment(tmp_path / "log", records))
    size = path.stat().st_size
    assert _scans(path) == [(size, None)] * 3
    last = size - _HEADER - 1
    path.write_bytes(path.read_bytes()[: size - 1])  # the last frame's payload cut
    assert _scans(path) == [(last, "record length 1 runs past the end of the segment")] * 3
    path.write_bytes(path.read_bytes()[: last + 7])  # ... and its header
    assert _scans(path) == [(last, "segment file ends inside a record header")] * 3


def test_an_unreadable_descriptor_is_an_os_error_on_both() -> None:
    read, write = os.pipe()
    os.close(write)
    os.close(read)  # a descriptor number that is no longer open
    for scan in (unimeter_native.valid_prefix, segment_log.valid_prefix):
        with pytest.raises(OSError) as raised:
            scan(read, 100)
        assert raised.value.errno == errno.EBADF


def test_each_engine_opens_its_logs_with_its_own_scan() -> None:
    assert PYTHON.valid_prefix is segment_log.valid_prefix
    assert partition_engine("native").valid_prefix is unimeter_native.valid_prefix


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=5000), value=st.integers(0, 2**32 - 1), start=st.integers(0, 50))
def test_the_native_crc32_is_zlibs(data: bytes, value: int, start: int) -> None:
    view = memoryview(data)[start:]  # a snapshot's body is a view of its file's bytes
    assert unimeter_native.crc32(view, value) == zlib.crc32(view, value)
    assert unimeter_native.crc32(bytearray(data)) == zlib.crc32(data)


def test_each_engine_checks_snapshots_with_its_own_crc32() -> None:
    assert PYTHON.crc32 is zlib.crc32
    assert partition_engine("native").crc32 is unimeter_native.crc32
