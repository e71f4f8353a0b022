"""node.tick_writes: a flush tick's rounds written and synced by the native worker, which needs
no GIL, their outcomes taken on the event loop when its eventfd rings. Collected only where the
extension is built (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
import unimeter_native as native

from node import segment_log
from node.segment_log import SegmentLog
from node.tick_writes import TickWrites
from tests.unit.test_segment_log import check_only_the_bad_log_failed

pytestmark = pytest.mark.timeout(30)


def payload(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


async def opened(tmp_path: Path, n: int) -> list[SegmentLog]:
    logs = [SegmentLog.open(tmp_path / f"log{i}", segment_bytes=256) for i in range(n)]
    for log in logs:
        log.append(payload(0, 100))
        await log.flush()  # each log's first segment file exists from here on
    return logs


async def run_tick(
    ticks: TickWrites, jobs: list[segment_log._Job]
) -> tuple[list[BaseException | None], bool]:
    outcome: asyncio.Future[tuple[list[BaseException | None], bool]] = (
        asyncio.get_running_loop().create_future()
    )
    assert ticks.run(jobs, lambda errors, synced: outcome.set_result((errors, synced)))
    return await asyncio.wait_for(outcome, 10)


async def test_a_ticks_rounds_are_written_synced_and_finished_on_the_loop(tmp_path: Path) -> None:
    logs = await opened(tmp_path, 3)
    positions = [[log.append(payload(i * 10 + k, 40)) for k in range(2)] for i, log in enumerate(logs)]
    observed: list[float] = []
    logs[0].on_sync = logs[1].on_sync = observed.append
    jobs = [job for log in logs if (job := log.start_round(defer_write=True)) is not None]
    assert len(jobs) == 3 and not any(job.written for job in jobs)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    ticks = TickWrites(native.TickWriter(), fd)
    try:
        for i, log in enumerate(logs):  # in flight, not yet written: read from the round's buffer
            assert [log.read(p) for p in positions[i]] == [payload(i * 10 + k, 40) for k in range(2)]
        errors, synced = await run_tick(ticks, jobs)
    finally:
        ticks.close()
        os.close(fd)
    assert errors == [None, None, None] and synced
    for log, job in zip(logs, jobs, strict=True):
        log.finish_round(job, None)
        assert log.durable_position == log.written_position == log.end_position
        await log.close()
    assert len(observed) == 1 and observed[0] > 0  # one syncfs: one observation per histogram
    for i in range(3):
        reopened = SegmentLog.open(tmp_path / f"log{i}", segment_bytes=256)
        assert [reopened.read(p) for p in positions[i]] == [payload(i * 10 + k, 40) for k in range(2)]
        await reopened.close()


async def test_a_failed_write_fails_its_round_alone(tmp_path: Path) -> None:
    good, bad = await opened(tmp_path, 2)
    for log in (good, bad):
        log.append(b"tick")
    jobs = [job for log in (good, bad) if (job := log.start_round(defer_write=True)) is not None]
    read_only = os.open(next((tmp_path / "log1").glob("*.seg")), os.O_RDONLY)
    jobs[1].wfds = {base: read_only for base in jobs[1].wfds}  # its write now fails with EBADF
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    ticks = TickWrites(native.TickWriter(), fd)
    try:
        errors, synced = await run_tick(ticks, jobs)
    finally:
        ticks.close()
        os.close(fd)
        os.close(read_only)
    assert errors[0] is None and synced
    assert isinstance(errors[1], OSError) and errors[1].errno == errno.EBADF
    good.finish_round(jobs[0], errors[0])
    bad.finish_round(jobs[1], errors[1])
    await check_only_the_bad_log_failed(good, bad)


async def test_a_failed_syncfs_leaves_each_round_to_its_own_fsync(tmp_path: Path) -> None:
    logs = await opened(tmp_path, 2)
    for log in logs:
        log.append(b"tick")
    jobs = [job for log in logs if (job := log.start_round(defer_write=True)) is not None]
    ticks = TickWrites(native.TickWriter(), 1 << 20)  # a descriptor no file holds: syncfs fails
    try:
        errors, synced = await run_tick(ticks, jobs)
    finally:
        ticks.close()
    assert errors == [None, None] and not synced
    assert all(job.written and job.sync_seconds is None for job in jobs)
    errors = segment_log.run_rounds(jobs)  # what the backend does next, in a thread
    assert errors == [None, None]
    for log, job in zip(logs, jobs, strict=True):
        log.finish_round(job, None)
        assert log.durable_position == log.end_position
        await log.close()


async def test_a_tick_that_creates_a_segment_file_is_left_to_the_thread(tmp_path: Path) -> None:
    (log,) = await opened(tmp_path, 1)
    log.append(payload(1, 300))  # past the 256-byte segment: the round creates a file
    job = log.start_round(defer_write=True)
    assert job is not None and job.new_bases
    ticks = TickWrites(native.TickWriter(), -1)
    try:
        assert not ticks.run([job], lambda errors, synced: None)
    finally:
        ticks.close()
    assert segment_log.run_rounds([job]) == [None]
    log.finish_round(job, None)
    assert log.durable_position == log.end_position
    await log.close()


async def test_closing_hands_queued_ticks_their_outcomes(tmp_path: Path) -> None:
    logs = await opened(tmp_path, 2)
    outcomes: list[tuple[list[BaseException | None], bool]] = []
    ticks = TickWrites(native.TickWriter(), -1)
    for log in logs:
        log.append(b"tick")
        job = log.start_round(defer_write=True)
        assert job is not None
        assert ticks.run([job], lambda errors, synced: outcomes.append((errors, synced)))
    ticks.close()  # the worker finishes the queued ticks first
    assert outcomes == [([None], True), ([None], True)]
