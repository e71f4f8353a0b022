"""SegmentLog: framing, segments, recovery of torn tails, group commit, truncation; every test on
each engine's log tail (``node.log_tail`` and the extension's)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import filesystem_sync, segment_log
from node.partition_engine import partition_engine
from node.segment_log import SegmentLog
from tests.engines import ENGINES
from tests.segment_files import records_length

HEADER = 8


def payload(i: int, size: int) -> bytes:
    """Deterministic, record-specific bytes of the given size."""
    seed = i.to_bytes(4, "little") + b"\xa5"
    return (seed * (size // len(seed) + 1))[:size]


def frame(data: bytes) -> int:
    return HEADER + len(data)


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the file syncs the log makes (the fds it syncs), still syncing for real."""
    calls: list[int] = []
    real = segment_log._fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(segment_log, "_fsync", counting)
    return calls


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture(autouse=True, params=ENGINES)
def log_tail(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine whose log tail the logs of a test get: ``SegmentLog.open`` defaults to it."""
    defaults = vars(SegmentLog)["open"].__func__.__kwdefaults__
    monkeypatch.setitem(defaults, "new_tail", partition_engine(request.param).new_log_tail)
    return str(request.param)


# ---------------------------------------------------------------- appends, reads, flushes


async def test_append_and_read_in_buffer(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)
    records = [payload(i, size) for i, size in enumerate([10, 0, 3000, 1])]
    positions = [log.append(r) for r in records]
    assert positions == [0, 18, 26, 3034]
    assert log.end_position == 3043 == log.size_bytes
    assert (log.written_position, log.durable_position) == (0, 0)
    assert records_length(log_dir / f"{0:020d}.seg") == 0  # append does not touch the OS
    assert [log.read(p) for p in positions] == records
    await log.close()


async def test_read_after_flush(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)
    records = [payload(i, 100 * i) for i in range(5)]
    positions = [log.append(r) for r in records]
    await log.flush()
    assert log.durable_position == log.written_position == log.end_position
    assert records_length(log_dir / f"{0:020d}.seg") == log.end_position
    assert [log.read(p) for p in positions] == records
    big = payload(99, 200_000)  # larger than read()'s read-ahead
    pos = log.append(big)
    await log.flush()
    assert log.read(pos) == big
    await log.close()


async def test_flush_without_fsync_writes_but_is_not_durable(log_dir: Path, fsync_calls: list[int]) -> None:
    log = SegmentLog.open(log_dir)
    fsync_calls.clear()
    log.append(b"abc")
    await log.flush(fsync=False)
    assert log.written_position == log.end_position == 11
    assert log.durable_position == 0
    assert fsync_calls == []
    await log.flush()
    assert log.durable_position == 11
    assert len(fsync_calls) == 1
    await log.close()


async def test_flush_with_nothing_appended_is_a_no_op(log_dir: Path, fsync_calls: list[int]) -> None:
    log = SegmentLog.open(log_dir)
    fsync_calls.clear()
    await log.flush()
    await log.flush(fsync=False)
    log.append(b"x")
    await log.flush()
    n = len(fsync_calls)
    await log.flush()
    await log.flush(fsync=False)
    assert len(fsync_calls) == n == 1
    await log.close()


async def test_read_rejects_positions_that_are_not_record_starts(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)
    a = log.append(payload(1, 50))
    log.append(payload(2, 50))
    await log.flush()
    c = log.append(payload(3, 50))  # buffered
    for bad in (-1, a + 1, a + 9, c + 3, log.end_position, log.end_position + 100):
        with pytest.raises(ValueError):
            log.read(bad)
    await log.close()


async def test_oversized_append_is_rejected(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)

    class Huge(bytes):
        def __len__(self) -> int:
            return 1 << 32

    with pytest.raises(ValueError, match="4 GiB"):
        log.append(Huge(b"x"))
    assert log.end_position == 0
    await log.close()


# ---------------------------------------------------------------- segments and scanning


async def test_segments_roll_over_and_scan_in_order(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=100)
    sizes = [10, 40, 40, 0, 95, 200, 3, 60, 60, 1]  # 95 and 200 do not fit any segment
    records = [payload(i, s) for i, s in enumerate(sizes)]
    positions = [log.append(r) for r in records]
    # Logical segments exist before any write.
    assert log.segment_count == 6  # [18 48] [48 8] [103] [208] [11 68] [68 9] (frame sizes)
    await log.flush()
    files = seg_files(log_dir)
    bases = [int(f.name[:-4]) for f in files]
    assert [f.name for f in files] == [f"{b:020d}.seg" for b in bases]
    assert len(bases) == log.segment_count == 6
    assert bases[0] == log.first_position == 0
    # Contiguous positions; a segment exceeds segment_bytes only when it holds one oversized record.
    for i, f in enumerate(files):
        end = bases[i + 1] if i + 1 < len(bases) else log.end_position
        assert records_length(f) == end - bases[i]
        held = [p for p in positions if bases[i] <= p < end]
        assert held and held[0] == bases[i]
        if end - bases[i] > 100:
            assert len(held) == 1
    assert list(log.scan()) == list(zip(positions, records, strict=True))
    assert list(log.scan(positions[5])) == list(zip(positions[5:], records[5:], strict=True))
    assert list(log.scan(log.end_position)) == []
    await log.close()


async def test_a_framed_append_writes_what_append_writes(log_dir: Path) -> None:
    """``append_frame`` (a record the caller framed, as the native engine does) gives the same
    positions, segments and bytes as ``append`` of its payload."""
    sizes = [10, 40, 40, 0, 95, 200, 3, 60, 60, 1]
    records = [payload(i, s) for i, s in enumerate(sizes)]
    logs = [SegmentLog.open(log_dir / name, segment_bytes=100) for name in ("plain", "framed")]
    plain = [logs[0].append(r) for r in records]
    framed = [
        logs[1].append_frame(struct.pack("<II", len(r), segment_log._crc(len(r), r)) + r) for r in records
    ]
    assert framed == plain
    for log in logs:
        await log.flush()
    assert [f.read_bytes() for f in seg_files(log_dir / "framed")] == [
        f.read_bytes() for f in seg_files(log_dir / "plain")
    ]
    assert list(logs[1].scan()) == list(zip(plain, records, strict=True))
    for log in logs:
        await log.close()


async def test_scan_includes_buffered_records_and_ignores_later_appends(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=64)
    expected = []
    for i in range(20):
        data = payload(i, i * 3)
        expected.append((log.append(data), data))
        if i == 11:
            await log.flush()
    it = log.scan()
    first = next(it)
    log.append(b"appended during the scan")
    await log.flush()  # moves the buffered records to disk under the suspended scan
    assert [first, *it] == expected
    await log.close()


async def test_scan_rejects_a_start_that_is_not_a_boundary(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)
    log.append(payload(1, 30))
    await log.flush()
    with pytest.raises(ValueError):
        log.scan(5)
    with pytest.raises(ValueError):
        log.scan(log.end_position + 1)
    await log.close()


async def test_scan_with_records_larger_than_the_read_chunk(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_log, "_READ_CHUNK", 32)
    log = SegmentLog.open(log_dir, segment_bytes=500)
    records = [payload(i, s) for i, s in enumerate([0, 5, 24, 25, 100, 7, 1000, 31, 2])]
    positions = [log.append(r) for r in records]
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=500)  # recovery reads in 32-byte chunks too
    assert log.end_position == positions[-1] + frame(records[-1])
    assert list(log.scan()) == list(zip(positions, records, strict=True))
    await log.close()


async def test_scan_detects_corruption_after_open(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)
    pos = [log.append(payload(i, 40)) for i in range(3)]
    await log.flush()
    _flip_byte(log_dir / f"{0:020d}.seg", pos[1] + HEADER + 3)
    with pytest.raises(OSError, match="checksum"):
        list(log.scan())
    with pytest.raises(ValueError):
        log.read(pos[1])
    await log.close()


# ---------------------------------------------------------------- reopening and recovery


async def test_reopen_gives_same_records_at_same_positions(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=300)
    records = [payload(i, (i * 37) % 150) for i in range(40)]
    positions = [log.append(r) for r in records]
    await log.flush()
    log.append(b"buffered at close")  # close flushes it
    positions.append(log.end_position - frame(b"buffered at close"))
    records.append(b"buffered at close")
    count, end = log.segment_count, log.end_position
    await log.close()

    log = SegmentLog.open(log_dir, segment_bytes=300)
    assert (log.segment_count, log.end_position) == (count, end)
    assert log.durable_position == log.written_position == end
    assert list(log.scan()) == list(zip(positions, records, strict=True))
    assert [log.read(p) for p in positions] == records
    pos = log.append(b"after reopen")
    assert pos == end
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=300)
    assert log.read(pos) == b"after reopen"
    await log.close()


async def test_open_creates_directory_and_first_segment(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    log = SegmentLog.open(directory)
    assert [f.name for f in seg_files(directory)] == [f"{0:020d}.seg"]
    assert (log.end_position, log.durable_position, log.first_position) == (0, 0, 0)
    assert (log.segment_count, log.size_bytes) == (1, 0)
    assert list(log.scan()) == []
    await log.close()


async def test_open_and_close_release_every_fd(log_dir: Path) -> None:
    before = open_fds()
    log = SegmentLog.open(log_dir, segment_bytes=50)
    for i in range(20):
        log.append(payload(i, 30))
        if i % 3 == 0:
            await log.flush(fsync=i % 2 == 0)
    list(log.scan())
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=50)
    log.read(0)
    log.close_sync()
    assert open_fds() == before


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def _write_records(directory: Path, n: int, size: int = 60, segment_bytes: int = 64 << 20) -> list[int]:
    log = SegmentLog.open(directory, segment_bytes=segment_bytes)
    positions = [log.append(payload(i, size)) for i in range(n)]
    log.close_sync()
    return positions


TORN_TAILS: dict[str, Callable[[Path, list[int]], int]] = {}


def torn(name: str) -> Callable[[Callable[[Path, list[int]], int]], Callable[[Path, list[int]], int]]:
    def register(damage: Callable[[Path, list[int]], int]) -> Callable[[Path, list[int]], int]:
        TORN_TAILS[name] = damage
        return damage

    return register


# Each damage function returns how many of the written records must survive.


@torn("garbage appended")
def _garbage(path: Path, positions: list[int]) -> int:
    with path.open("ab") as f:
        f.write(b"\x07\x00\x00\x00garbage")  # length 7, a CRC, no matching payload
    return len(positions)


@torn("absurd length")
def _absurd(path: Path, positions: list[int]) -> int:
    with path.open("ab") as f:
        f.write(struct.pack("<II", 0xFFFFFFF0, 0) + b"x" * 100)
    return len(positions)


@torn("partial header")
def _partial_header(path: Path, positions: list[int]) -> int:
    with path.open("ab") as f:
        f.write(b"\x05\x00\x00")
    return len(positions)


@torn("record cut mid-payload")
def _cut(path: Path, positions: list[int]) -> int:
    os.truncate(path, positions[-1] + HEADER + 17)
    return len(positions) - 1


@torn("record cut mid-header")
def _cut_header(path: Path, positions: list[int]) -> int:
    os.truncate(path, positions[-1] + 5)
    return len(positions) - 1


@torn("byte flipped in last payload")
def _flipped(path: Path, positions: list[int]) -> int:
    _flip_byte(path, positions[-1] + HEADER + 30)
    return len(positions) - 1


@torn("well-formed record with a wrong crc")
def _wrong_crc(path: Path, positions: list[int]) -> int:
    with path.open("ab") as f:
        f.write(struct.pack("<II", 3, zlib.crc32(b"abc") ^ 1) + b"abc")
    return len(positions)


@pytest.mark.parametrize("damage", list(TORN_TAILS), ids=list(TORN_TAILS))
async def test_torn_tail_is_cut_at_open(log_dir: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    positions = _write_records(log_dir, 10)
    good_size = positions[-1] + frame(payload(9, 60))
    path = log_dir / f"{0:020d}.seg"
    keep = TORN_TAILS[damage](path, positions)
    damaged_size = path.stat().st_size
    expected_end = positions[keep] if keep < len(positions) else good_size

    with caplog.at_level(logging.WARNING, logger="node.segment_log"):
        log = SegmentLog.open(log_dir)
    assert f"cut {damaged_size - expected_end} bytes" in caplog.text
    assert log.end_position == log.durable_position == expected_end == records_length(path)
    assert [p for p, _ in log.scan()] == positions[:keep]
    assert [log.read(p) for p in positions[:keep]] == [payload(i, 60) for i in range(keep)]
    new = log.append(b"after recovery")
    assert new == expected_end
    await log.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="node.segment_log"):
        log = SegmentLog.open(log_dir)
    assert caplog.text == ""
    assert [p for p, _ in log.scan()] == [*positions[:keep], new]
    assert log.read(new) == b"after recovery"
    await log.close()


async def test_corrupt_record_in_a_middle_segment_deletes_later_segments(
    log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    positions = _write_records(log_dir, 12, size=40, segment_bytes=100)  # 2 records per segment
    files = seg_files(log_dir)
    assert len(files) == 6
    middle = files[2]
    base = int(middle.name[:-4])
    second_in_middle = base + frame(payload(0, 40))
    _flip_byte(middle, second_in_middle - base + HEADER + 1)

    with caplog.at_level(logging.WARNING, logger="node.segment_log"):
        log = SegmentLog.open(log_dir, segment_bytes=100)
    assert "checksum mismatch" in caplog.text
    assert "deleted 3 later segment(s)" in caplog.text
    assert seg_files(log_dir) == files[:3]
    assert log.end_position == second_in_middle
    assert [p for p, _ in log.scan()] == [p for p in positions if p < second_in_middle]
    # Appending continues in the cut segment, and survives a reopen.
    assert log.append(b"z" * 40) == second_in_middle
    assert log.append(b"y" * 40) == second_in_middle + 48  # rolls over
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=100)
    assert log.segment_count == 4
    assert [d for _, d in log.scan()][-2:] == [b"z" * 40, b"y" * 40]
    await log.close()


async def test_segment_that_does_not_continue_the_log_is_deleted(
    log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    positions = _write_records(log_dir, 10, size=40, segment_bytes=100)
    files = seg_files(log_dir)
    files[2].unlink()  # a gap: segment 3 no longer follows segment 1
    with caplog.at_level(logging.WARNING, logger="node.segment_log"):
        log = SegmentLog.open(log_dir, segment_bytes=100)
    assert "does not continue the log" in caplog.text
    assert seg_files(log_dir) == files[:2]
    base2 = int(files[2].name[:-4])
    assert log.end_position == base2
    assert [p for p, _ in log.scan()] == [p for p in positions if p < base2]
    await log.close()


async def test_whole_first_segment_corrupt_leaves_an_empty_log(log_dir: Path) -> None:
    _write_records(log_dir, 3, size=40, segment_bytes=100)
    _flip_byte(log_dir / f"{0:020d}.seg", HEADER + 2)
    log = SegmentLog.open(log_dir, segment_bytes=100)
    assert (log.end_position, log.segment_count) == (0, 1)
    assert log.append(b"fresh") == 0
    await log.close()


# ---------------------------------------------------------------- group commit


async def test_concurrent_flushes_share_fsyncs(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog.open(log_dir)
    calls: list[int] = []
    real = segment_log._fsync

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(segment_log, "_fsync", slow_fsync)

    async def writer(i: int) -> tuple[int, bytes]:
        data = payload(i, 100 + i)
        pos = log.append(data)
        await log.flush()
        assert log.durable_position >= pos + frame(data)
        return pos, data

    results = await asyncio.gather(*(writer(i) for i in range(50)))
    assert 1 <= len(calls) <= 3
    assert log.durable_position == log.end_position
    await log.close()
    log = SegmentLog.open(log_dir)
    assert list(log.scan()) == sorted(results)
    await log.close()


class BlockingFsync:
    """Once armed, an fsync that waits for the gate; lets a test hold a round in flight."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.armed = False
        self.calls = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, fd: int) -> None:
        if not self.armed:
            self.real(fd)
            return
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(10)
        self.real(fd)

    async def wait_entered(self) -> None:
        for _ in range(1000):
            if self.entered.is_set():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("fsync was never called")


@pytest.fixture
def blocking_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockingFsync]:
    blocker = BlockingFsync(segment_log._fsync)
    monkeypatch.setattr(segment_log, "_fsync", blocker)
    yield blocker
    blocker.gate.set()


async def test_rounds_in_flight_and_next(log_dir: Path, blocking_fsync: BlockingFsync) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=200)
    blocking_fsync.armed = True
    first = [log.append(payload(i, 50)) for i in range(3)]
    round1 = asyncio.create_task(log.flush())
    await blocking_fsync.wait_entered()
    # A caller already covered by the round in flight just waits for it.
    covered = asyncio.create_task(log.flush())
    covered_fsync_false = asyncio.create_task(log.flush(fsync=False))
    # Records in flight and new buffered ones (rolling into a new segment) are all readable.
    later = [log.append(payload(10 + i, 50)) for i in range(3)]
    assert log.segment_count == 2
    assert [log.read(p) for p in first] == [payload(i, 50) for i in range(3)]
    assert [p for p, _ in log.scan()] == first + later
    late1 = asyncio.create_task(log.flush(fsync=False))
    late2 = asyncio.create_task(log.flush())
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in (round1, covered, covered_fsync_false, late1, late2))
    with pytest.raises(RuntimeError, match="in flight"):
        log.truncate(first[1])
    blocking_fsync.gate.set()
    await asyncio.gather(round1, covered, covered_fsync_false, late1, late2)
    # One round, one sync, for the first three callers; one more for both late callers (their records
    # all went to the new segment, so the already-synced first segment is not synced again).
    assert blocking_fsync.calls == 2
    assert log.durable_position == log.end_position
    await log.close()


async def test_cancelled_waiter_does_not_cancel_the_round(
    log_dir: Path, blocking_fsync: BlockingFsync
) -> None:
    log = SegmentLog.open(log_dir)
    blocking_fsync.armed = True
    log.append(b"one")
    waiter = asyncio.create_task(log.flush())
    await blocking_fsync.wait_entered()
    other = asyncio.create_task(log.flush())
    await asyncio.sleep(0)
    waiter.cancel()
    blocking_fsync.gate.set()
    await other
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert log.durable_position == log.end_position
    await log.close()


async def test_a_cancelled_waiter_of_the_next_round_leaves_that_round_to_the_others(
    log_dir: Path, blocking_fsync: BlockingFsync
) -> None:
    log = SegmentLog.open(log_dir)
    blocking_fsync.armed = True
    log.append(b"one")
    first = asyncio.create_task(log.flush())
    await blocking_fsync.wait_entered()
    log.append(b"two")  # beyond the round in flight: its waiters join the next round
    gone, stays = asyncio.create_task(log.flush()), asyncio.create_task(log.flush())
    await asyncio.sleep(0)
    gone.cancel()
    blocking_fsync.gate.set()
    await asyncio.gather(first, stays)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert blocking_fsync.calls == 2  # the next round still ran, for the waiter left
    assert log.durable_position == log.end_position
    await log.close()


async def test_durability_covers_segments_rolled_over_without_fsync(
    log_dir: Path, fsync_calls: list[int]
) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=100)
    fsync_calls.clear()
    for i in range(4):
        log.append(payload(i, 40))  # two segments
    await log.flush(fsync=False)
    assert fsync_calls == []
    await log.flush()
    assert len(set(fsync_calls)) == 2  # the rolled-over segment and the active one
    await log.close()


async def test_a_synced_round_closes_the_writable_fds_of_the_segments_it_filled(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=100)
    before = open_fds()
    for i in range(20):
        log.append(payload(i, 40))  # two records a segment: every other append starts one
        await log.flush()
    assert len(seg_files(log_dir)) == 10
    assert open_fds() == before  # the active segment's writable fd alone, as at the start
    await log.close()


async def test_failed_fsync_fails_waiters_and_the_log(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog.open(log_dir)
    ok = log.append(b"durable")
    await log.flush()
    durable = log.durable_position
    fds_open = open_fds()

    def broken(fd: int) -> None:
        time.sleep(0.002)
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(segment_log, "_fsync", broken)

    async def writer(i: int) -> None:
        log.append(payload(i, 10))
        await log.flush()

    results = await asyncio.gather(*(writer(i) for i in range(10)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert log.durable_position == durable  # never reports durability it does not have
    with pytest.raises(OSError) as raised:
        log.append(b"more")
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError):
        await log.flush(fsync=False)
    with pytest.raises(OSError):
        log.read(ok)
    with pytest.raises(OSError):
        log.scan()
    with pytest.raises(OSError):
        log.truncate(0)
    with pytest.raises(OSError):
        await log.close()
    assert open_fds() < fds_open  # fds released anyway
    await log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        log.append(b"x")


async def test_failed_write_fails_the_log(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog.open(log_dir)

    def no_space(fd: int, data: memoryview, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_log, "_write_all_at", no_space)
    log.append(b"x")
    with pytest.raises(OSError) as raised:
        await log.flush(fsync=False)
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as raised:
        log.append(b"y")
    assert raised.value.errno == errno.ENOSPC
    assert log.written_position == log.durable_position == 0
    with pytest.raises(OSError):
        log.close_sync()


async def test_a_sync_round_writes_on_the_loop_thread_and_syncs_in_the_executor(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=256)
    log.append(payload(0, 100))
    await log.flush()  # the first segment file exists from here on
    writes: list[int] = []
    syncs: list[int] = []
    real_write, real_fsync = segment_log._write_all_at, segment_log._fsync

    def tracking_write(fd: int, data: memoryview, offset: int) -> None:
        writes.append(threading.get_ident())
        real_write(fd, data, offset)

    def tracking_fsync(fd: int) -> None:
        syncs.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(segment_log, "_write_all_at", tracking_write)
    monkeypatch.setattr(segment_log, "_fsync", tracking_fsync)
    loop_thread = threading.get_ident()
    log.append(payload(1, 50))
    await log.flush()
    assert writes == [loop_thread] and len(syncs) == 1 and syncs[0] != loop_thread
    writes.clear()
    log.append(payload(2, 200))  # rolls over: the new segment file is created (and written) in the executor
    await log.flush()
    assert writes and loop_thread not in writes
    monkeypatch.undo()
    await log.close()
    reopened = SegmentLog.open(log_dir, segment_bytes=256)
    assert [d for _, d in reopened.scan()] == [payload(0, 100), payload(1, 50), payload(2, 200)]
    await reopened.close()


async def test_a_failed_write_on_the_loop_thread_fails_the_round_and_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single, grouped, other = (SegmentLog.open(tmp_path / name) for name in ("single", "grouped", "other"))
    for log in (single, grouped, other):
        log.append(b"durable")
        await log.flush()

    def no_space(fd: int, data: memoryview, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_log, "_write_all_at", no_space)
    single.append(b"lost")
    with pytest.raises(OSError) as raised:  # a SYNC caller's own round
        await single.flush()
    assert raised.value.errno == errno.ENOSPC
    grouped.append(b"lost")
    job = grouped.start_round()  # a tick's round: the write fails here, the error is the round's
    assert job is not None
    monkeypatch.undo()
    other.append(b"kept")
    other_job = other.start_round()
    assert other_job is not None
    errors = segment_log.run_rounds([job, other_job])
    assert isinstance(errors[0], OSError) and errors[0].errno == errno.ENOSPC and errors[1] is None
    grouped.finish_round(job, errors[0])
    other.finish_round(other_job, errors[1])
    for failed in (single, grouped):
        with pytest.raises(OSError):
            failed.append(b"more")
        assert failed.durable_position == failed.written_position == frame(b"durable")
    assert other.durable_position == other.end_position
    await other.close()
    for failed in (single, grouped):
        with pytest.raises(OSError):
            await failed.close()


# ---------------------------------------------------------------- truncation


async def test_truncate_in_buffer(log_dir: Path, fsync_calls: list[int]) -> None:
    log = SegmentLog.open(log_dir)
    positions = [log.append(payload(i, 20)) for i in range(5)]
    log.truncate(positions[3])
    assert log.end_position == log.durable_position == log.written_position == positions[3]
    assert fsync_calls
    assert [p for p, _ in log.scan()] == positions[:3]
    assert log.append(b"replacement") == positions[3]
    await log.close()
    log = SegmentLog.open(log_dir)
    assert [d for _, d in log.scan()] == [payload(0, 20), payload(1, 20), payload(2, 20), b"replacement"]
    await log.close()


async def test_truncate_on_disk_across_segments(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=100)
    positions = [log.append(payload(i, 40)) for i in range(9)]  # segments of 2 records
    await log.flush()
    log.append(b"still buffered")
    files = seg_files(log_dir)
    assert len(files) == 5
    log.truncate(positions[3])  # second record of the second segment
    assert seg_files(log_dir) == files[:2]
    assert log.segment_count == 2
    assert log.end_position == log.durable_position == positions[3]
    assert (log_dir / f"{positions[2]:020d}.seg").stat().st_size == positions[3] - positions[2]
    with pytest.raises(ValueError):
        log.read(positions[3])
    assert log.append(b"new") == positions[3]
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=100)
    assert [p for p, _ in log.scan()] == positions[:4]
    assert log.read(positions[3]) == b"new"
    await log.close()


async def test_truncate_at_a_segment_base_removes_that_segment(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=100)
    positions = [log.append(payload(i, 40)) for i in range(6)]
    await log.flush()
    log.truncate(positions[2])  # the base of the second segment
    assert [f.name for f in seg_files(log_dir)] == [f"{0:020d}.seg"]
    assert log.end_position == positions[2]
    assert log.append(payload(2, 40)) == positions[2]  # rolls over to the same base again
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=100)
    assert [p for p, _ in log.scan()] == positions[:3]
    await log.close()


async def test_truncate_to_zero_and_invalid_positions(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=100)
    positions = [log.append(payload(i, 40)) for i in range(5)]
    await log.flush()
    for bad in (positions[1] + 1, -1, log.end_position + 1):
        with pytest.raises(ValueError):
            log.truncate(bad)
    assert log.end_position == positions[-1] + 48
    log.truncate(log.end_position)  # no-op
    log.truncate(0)
    assert (log.end_position, log.segment_count, log.size_bytes) == (0, 1, 0)
    assert [f.name for f in seg_files(log_dir)] == [f"{0:020d}.seg"]
    assert list(log.scan()) == []
    await log.close()
    log = SegmentLog.open(log_dir, segment_bytes=100)
    assert log.end_position == 0
    await log.close()


async def test_truncate_during_scan(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir)
    positions = [log.append(payload(i, 10)) for i in range(5)]
    await log.flush()
    # The recovery pattern: cut at a record found by a scan, then stop iterating.
    for pos, _ in log.scan():
        if pos == positions[2]:
            log.truncate(pos)
            break
    assert log.end_position == positions[2]
    # Resuming a scan after a truncate is refused.
    it = log.scan()
    next(it)
    log.truncate(positions[1])
    with pytest.raises(RuntimeError, match="truncated"):
        next(it)
    await log.close()


def test_close_sync_without_a_loop(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=64)
    records = [payload(i, 30) for i in range(6)]
    positions = [log.append(r) for r in records]
    log.close_sync()
    log.close_sync()
    with pytest.raises(RuntimeError):
        log.read(0)
    log = SegmentLog.open(log_dir, segment_bytes=64)
    assert list(log.scan()) == list(zip(positions, records, strict=True))
    log.close_sync()


async def test_async_context_manager(log_dir: Path) -> None:
    async with SegmentLog.open(log_dir) as log:
        log.append(b"x")
    log = SegmentLog.open(log_dir)
    assert log.read(0) == b"x"
    await log.close()


# ---------------------------------------------------------------- model-based


_OPS = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 5000)),
    st.tuples(st.just("append"), st.integers(0, 40)),
    st.tuples(st.just("flush"), st.integers(0, 1)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("crash"), st.integers(0, 1_000_000)),
)


def _crash(log: SegmentLog, choice: int) -> int:
    """Simulate a kill -9 plus lost unsynced data: drop the buffer, cut the files anywhere between
    the durable and the written position (sometimes leaving later segment files behind, as a file
    system may, and sometimes the cut file's reserved size, its lost data reading as zeros), and
    return the cut position."""
    durable, written = log.durable_position, log.written_position
    log._release()  # abandon the object without flushing (test-only use of a private method)
    cut = durable + choice % (written - durable + 1)
    leave_later_files = choice % 2 == 1
    keep_size = choice % 3 == 2
    truncated = False
    paths = seg_files(log.directory)
    bases = [int(path.name[:-4]) for path in paths]
    for path, base, end in zip(paths, bases, [*bases[1:], written], strict=True):
        if base <= cut < end or (base == cut == end):
            size = path.stat().st_size
            os.truncate(path, cut - base)
            if keep_size:
                os.truncate(path, size)
            truncated = True
        elif base > cut and not (leave_later_files and truncated):
            path.unlink()
    return cut


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(_OPS, max_size=40),
    segment_bytes=st.sampled_from([1, 64, 1000, 9000]),
    read_chunk=st.sampled_from([64, 1 << 20]),
)
def test_model(ops: list[tuple[str, int]], segment_bytes: int, read_chunk: int) -> None:
    async def run(directory: Path) -> None:
        log = SegmentLog.open(directory, segment_bytes=segment_bytes)
        model: list[tuple[int, bytes]] = []
        for n, (op, arg) in enumerate(ops):
            if op == "append":
                data = payload(n, arg)
                model.append((log.append(data), data))
            elif op == "flush":
                await log.flush(fsync=bool(arg))
            elif op == "reopen":
                await log.close()
                log = SegmentLog.open(directory, segment_bytes=segment_bytes)
            elif op == "crash":
                cut = _crash(log, arg)
                model = [(p, d) for p, d in model if p + frame(d) <= cut]
                log = SegmentLog.open(directory, segment_bytes=segment_bytes)
            else:
                k = arg % (len(model) + 1)
                log.truncate(model[k][0] if k < len(model) else log.end_position)
                del model[k:]
            expected_end = model[-1][0] + frame(model[-1][1]) if model else 0
            assert log.end_position == expected_end
        assert list(log.scan()) == model
        await log.close()
        log = SegmentLog.open(directory, segment_bytes=segment_bytes)
        assert list(log.scan()) == model
        assert [log.read(p) for p, _ in model] == [d for _, d in model]
        assert log.size_bytes == sum(frame(d) for _, d in model)
        await log.close()

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(segment_log, "_READ_CHUNK", read_chunk):
        asyncio.run(run(Path(tmp) / "log"))


def test_zero_filled_tail_is_not_taken_for_records(tmp_path: Path) -> None:
    log = SegmentLog.open(tmp_path / "log")
    log.append(b"kept")
    log.close_sync()
    (segment,) = sorted((tmp_path / "log").glob("*.seg"))
    with open(segment, "ab") as f:
        f.write(b"\x00" * 4096)  # what some file systems leave after a power loss
    reopened = SegmentLog.open(tmp_path / "log")
    assert [payload for _, payload in reopened.scan()] == [b"kept"]
    reopened.close_sync()


# ---------------------------------------------------------------- space reserved ahead of the records


async def test_the_active_segment_is_reserved_ahead_and_reopens_where_its_records_end(
    log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = SegmentLog.open(log_dir)
    first = [log.append(payload(i, 100)) for i in range(3)]
    await log.flush()
    path = log_dir / f"{0:020d}.seg"
    end = log.end_position
    reserved = segment_log._RESERVE_BYTES  # at open, and plenty left past the records since
    assert path.stat().st_size == reserved
    assert path.read_bytes()[end:] == bytes(reserved - end)  # what reserved space reads as
    await log.close()
    with caplog.at_level(logging.WARNING, logger="node.segment_log"):
        log = SegmentLog.open(log_dir)
    assert caplog.text == ""  # reserved space is not damage: nothing cut, nothing said
    assert log.end_position == end and path.stat().st_size == reserved
    later = [log.append(payload(i, 100)) for i in range(3, 5)]
    assert later[0] == end
    await log.flush()  # written where the records end, not after the reserved space
    await log.close()
    log = SegmentLog.open(log_dir)
    assert list(log.scan()) == [(p, payload(i, 100)) for i, p in enumerate(first + later)]
    await log.close()


async def test_a_round_reserves_again_only_when_the_reserved_space_runs_low(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserved: list[tuple[int, int]] = []
    real = segment_log._reserve

    def tracking(fd: int, offset: int, length: int) -> None:
        reserved.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(segment_log, "_reserve", tracking)
    monkeypatch.setattr(segment_log, "_RESERVE_BYTES", 4096)
    monkeypatch.setattr(segment_log, "_RESERVE_AHEAD", 1024)
    log = SegmentLog.open(log_dir, segment_bytes=10_000)
    for i in range(100):
        log.append(payload(i, 92))  # 100-byte frames
        await log.flush()
    # Reserved at open, then by each round that left fewer than 1,024 bytes past its records, and
    # never past the segment's size.
    assert reserved == [(0, 4096), (3100, 4096), (6200, 3800)]
    assert (log_dir / f"{0:020d}.seg").stat().st_size == 10_000
    await log.close()


async def test_a_full_segment_s_unused_space_is_never_read_whatever_it_holds(log_dir: Path) -> None:
    log = SegmentLog.open(log_dir, segment_bytes=350)
    positions = []
    for i in range(7):  # segments of 300, 300 and 100, each reserved while it was the active one
        positions.append(log.append(payload(i, 92)))
        await log.flush()
    await log.close()
    first, second, _ = seg_files(log_dir)
    assert first.stat().st_size == second.stat().st_size == 350  # 50 bytes reserved, never used
    for full in (first, second):
        with full.open("r+b") as f:
            f.seek(300)
            f.write(b"\x07\x00\x00\x00not-a-record")  # say, a disk that scribbled there
    log = SegmentLog.open(log_dir, segment_bytes=350)
    assert list(log.scan()) == [(p, payload(i, 92)) for i, p in enumerate(positions)]
    assert [int(p.name[:-4]) for p in seg_files(log_dir)] == [0, 300, 600]
    await log.close()


async def test_a_stale_record_past_a_torn_one_is_cut_and_never_read_back(
    log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash can keep a later page of unsynced records and lose an earlier one: the records
    after the hole must go with it, or a record written over the hole later could end where the
    stale one starts, and a restart would read it back as the next record."""
    log = SegmentLog.open(log_dir)
    a, b, c = (log.append(payload(i, 60)) for i in range(3))
    log.close_sync()
    path = log_dir / f"{0:020d}.seg"
    with path.open("r+b") as f:
        f.seek(b)
        f.write(bytes(c - b))  # b's bytes lost, c's kept
    with caplog.at_level(logging.WARNING, logger="node.segment_log"):
        log = SegmentLog.open(log_dir)
    assert "checksum mismatch" in caplog.text
    assert log.end_position == b
    assert log.append(payload(9, 60)) == b  # ends exactly where c starts
    log.close_sync()
    log = SegmentLog.open(log_dir)
    assert list(log.scan()) == [(a, payload(0, 60)), (b, payload(9, 60))]
    log.close_sync()


async def test_without_reservation_a_segment_file_is_its_records(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_log, "_RESERVE_BYTES", 0)
    log = SegmentLog.open(log_dir, segment_bytes=350)
    for i in range(7):
        log.append(payload(i, 92))
    await log.close()
    assert [p.stat().st_size for p in seg_files(log_dir)] == [300, 300, 100]


# ---------------------------------------------------------------- grouped rounds (the node's tick)


async def test_grouped_rounds_serve_waiters_that_arrive_while_in_flight(tmp_path: Path) -> None:
    logs = [SegmentLog.open(tmp_path / f"log{i}") for i in range(3)]
    assert logs[0].start_round() is None  # nothing pending
    positions = [log.append(payload(i, 50)) for i, log in enumerate(logs)]
    rounds = [(log, log.start_round()) for log in logs[:2]]
    assert all(job is not None for _, job in rounds)
    assert logs[0].start_round() is None  # a round is in flight: it covers the log
    waiter = asyncio.create_task(logs[0].flush())  # a SYNC caller arriving meanwhile
    late = logs[1].append(payload(9, 50))  # appended after the round was taken
    late_waiter = asyncio.create_task(logs[1].flush())
    await asyncio.sleep(0)
    assert not waiter.done()
    errors = await asyncio.get_running_loop().run_in_executor(
        None, segment_log.run_rounds, [job for _, job in rounds if job is not None]
    )
    assert errors == [None, None]
    for (log, job), exc in zip(rounds, errors, strict=True):
        assert job is not None
        log.finish_round(job, exc)
    await asyncio.wait_for(waiter, 5)
    await asyncio.wait_for(late_waiter, 5)  # served by the round queued after the grouped one
    assert logs[1].durable_position == logs[1].end_position > late
    assert logs[2].durable_position < logs[2].end_position  # not in the group: still pending
    for log in logs:
        await log.close()
    reopened = [SegmentLog.open(tmp_path / f"log{i}") for i in range(3)]
    assert [log.read(p) for log, p in zip(reopened, positions, strict=True)] == [
        payload(i, 50) for i in range(3)
    ]
    for log in reopened:
        await log.close()


async def test_a_failed_round_in_a_group_fails_only_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = SegmentLog.open(tmp_path / "good"), SegmentLog.open(tmp_path / "bad")
    good.append(b"kept")
    bad.append(b"lost")
    rounds = [(good, good.start_round()), (bad, bad.start_round())]
    bad_fd = next(iter(bad._wfds.values()))
    real = segment_log._fsync

    def failing_for_bad(fd: int) -> None:
        if fd == bad_fd:
            raise OSError(errno.EIO, "simulated I/O error")
        real(fd)

    monkeypatch.setattr(segment_log, "_fsync", failing_for_bad)
    errors = segment_log.run_rounds([job for _, job in rounds if job is not None])
    assert errors[0] is None and isinstance(errors[1], OSError)
    for (log, job), exc in zip(rounds, errors, strict=True):
        assert job is not None
        log.finish_round(job, exc)
    await check_only_the_bad_log_failed(good, bad)


async def check_only_the_bad_log_failed(good: SegmentLog, bad: SegmentLog) -> None:
    """After a group's round failed on ``bad`` alone: ``good`` is durable and closes, ``bad`` refuses
    appends and its close reports the failure."""
    assert good.durable_position == good.end_position
    with pytest.raises(OSError):
        bad.append(b"more")
    await good.close()
    with pytest.raises(OSError):
        await bad.close()


async def test_rounds_on_one_filesystem_are_made_durable_by_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = [SegmentLog.open(tmp_path / f"log{i}", segment_bytes=256) for i in range(3)]
    positions = [[log.append(payload(i * 10 + k, 100)) for k in range(4)] for i, log in enumerate(logs)]
    real_syncfs = filesystem_sync.syncfs
    calls: list[int] = []

    def counting(fd: int) -> None:
        calls.append(fd)
        if filesystem_sync.syncfs_supported():
            real_syncfs(fd)
        else:  # a system without syncfs (the node never uses this path there): sync everything
            os.sync()

    def no_fsync(fd: int) -> None:
        raise AssertionError("a log fsynced on its own although syncfs covered it")

    monkeypatch.setattr(filesystem_sync, "syncfs", counting)
    monkeypatch.setattr(segment_log, "_fsync", no_fsync)
    monkeypatch.setattr(segment_log, "_fsync_dir", no_fsync)  # new segments' entries too
    observed: list[float] = []
    other: list[float] = []  # a second histogram, like the alert logs' beside the event logs'
    for log in logs[:2]:
        log.on_sync = observed.append
    logs[2].on_sync = other.append
    rounds = [(log, log.start_round()) for log in logs]
    jobs = [job for _, job in rounds if job is not None]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        errors = segment_log.run_rounds_on_filesystem(jobs, fd)
    finally:
        os.close(fd)
    assert errors == [None, None, None] and len(calls) == 1
    for (log, job), exc in zip(rounds, errors, strict=True):
        assert job is not None
        log.finish_round(job, exc)
        assert log.durable_position == log.end_position
    # One syncfs: one observation in each histogram whose logs it made durable.
    assert len(observed) == 1 and other == observed
    monkeypatch.undo()
    for log in logs:
        await log.close()
    reopened = [SegmentLog.open(tmp_path / f"log{i}", segment_bytes=256) for i in range(3)]
    for i, log in enumerate(reopened):
        assert len(list((tmp_path / f"log{i}").glob("*.seg"))) > 1  # segments rolled over
        assert [log.read(p) for p in positions[i]] == [payload(i * 10 + k, 100) for k in range(4)]
        await log.close()
