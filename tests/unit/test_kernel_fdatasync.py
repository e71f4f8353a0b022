"""The kernel's asynchronous fdatasync (node/kernel_fdatasync.py) and the log rounds it takes.

A round that only has to fdatasync its active segment is handed to the kernel (no executor
thread) when no other sync is there; every other round, and every round while ``_fsync`` is
replaced, stays on the executor.
Whatever path a round takes, a waiter returns only once ``durable_position`` covers its record.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from node import kernel_fdatasync, segment_log
from node.kernel_fdatasync import KernelFdatasync
from node.segment_log import SegmentLog


@pytest.fixture
def kernel() -> Iterator[KernelFdatasync]:
    opened = KernelFdatasync.open(depth=8)
    if opened is None:
        # The fallback is the executor, which every other log test covers; this module is about
        # the kernel path, which this machine (another OS or architecture) does not have.
        pytest.fail("this suite runs on Linux x86_64/aarch64, which has AIO fdatasync")
    yield opened
    opened.close()


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts the rounds handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Iterator[CountingExecutor]:
    pool = CountingExecutor()
    yield pool
    pool.shutdown(wait=True)


async def test_a_sync_of_a_file_completes_on_the_loop(tmp_path: Path, kernel: KernelFdatasync) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 100)
        done: asyncio.Future[OSError | None] = asyncio.get_running_loop().create_future()
        assert kernel.submit(fd, lambda error, _seconds: done.set_result(error))
        assert kernel.in_flight == 1
        assert await asyncio.wait_for(done, 10) is None
        assert kernel.in_flight == 0
    finally:
        os.close(fd)


async def test_many_syncs_in_flight_each_complete_once(tmp_path: Path, kernel: KernelFdatasync) -> None:
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(6)]
    results: list[tuple[int, OSError | None]] = []
    try:
        for i, fd in enumerate(fds):
            os.write(fd, b"y" * (10 + i))
            assert kernel.submit(fd, lambda error, _seconds, i=i: results.append((i, error)))
        async with asyncio.timeout(10):
            while kernel.in_flight:
                await asyncio.sleep(0.001)
        assert sorted(results, key=lambda r: r[0]) == [(i, None) for i in range(6)]
    finally:
        for fd in fds:
            os.close(fd)


async def test_close_waits_for_the_syncs_in_flight(tmp_path: Path) -> None:
    kernel = KernelFdatasync.open(depth=4)
    assert kernel is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    results: list[OSError | None] = []
    try:
        os.write(fd, b"z")
        assert kernel.submit(fd, lambda error, _seconds: results.append(error))
        kernel.close()  # before the loop could read the eventfd: the completion runs here
        assert results == [None]
        kernel.close()  # twice is harmless
        assert not kernel.submit(fd, lambda error, _seconds: results.append(error))
    finally:
        os.close(fd)


async def test_a_file_that_cannot_be_synced_asynchronously_is_refused_for_good(
    kernel: KernelFdatasync,
) -> None:
    read, write = os.pipe()  # a pipe has no fsync: the kernel refuses the request outright
    try:
        assert not kernel.submit(write, lambda error, _seconds: None)
        assert kernel.in_flight == 0
    finally:
        os.close(read)
        os.close(write)
    # Refused as a kind the kernel cannot do: later requests go to the threads without asking.
    assert not kernel.submit(0, lambda error, _seconds: None)


async def test_a_round_of_the_active_segment_goes_to_the_kernel_and_acks_after_it(
    tmp_path: Path, kernel: KernelFdatasync, executor: CountingExecutor
) -> None:
    log = SegmentLog.open(tmp_path / "log", executor=executor, kernel_sync=kernel)
    observed: list[float] = []
    log.on_sync = observed.append
    end = log.append(b"event") + 8 + 5
    waiter = asyncio.create_task(log.wait_durable(end))
    await asyncio.sleep(0)  # the round starts: its sync is in the kernel, the record not yet durable
    assert kernel.in_flight == 1 and log.durable_position < end and not waiter.done()
    await asyncio.wait_for(waiter, 10)
    # The waiter returned after the kernel's completion was taken, never before.
    assert kernel.in_flight == 0
    assert log.durable_position == end == log.end_position
    assert executor.submitted == 0
    assert len(observed) == 1 and observed[0] > 0
    await log.close()
    reopened = SegmentLog.open(tmp_path / "log")
    assert list(reopened.scan()) == [(0, b"event")]
    await reopened.close()


async def test_rounds_that_create_a_segment_or_run_with_a_replaced_fsync_use_the_executor(
    tmp_path: Path, kernel: KernelFdatasync, executor: CountingExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SegmentLog.open(tmp_path / "log", segment_bytes=64, executor=executor, kernel_sync=kernel)
    log.append(b"a" * 40)
    await log.flush()
    assert executor.submitted == 0  # the active segment alone: the kernel
    log.append(b"b" * 40)  # rolls over: a new segment file (a directory update) is the thread's
    await log.flush()
    assert executor.submitted == 1
    synced: list[int] = []
    real = segment_log._fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(segment_log, "_fsync", counting)
    log.append(b"c")
    await log.flush()
    assert executor.submitted == 2 and len(synced) == 1  # the replaced fsync was the one called
    assert log.durable_position == log.end_position
    await log.close()


async def test_a_round_started_while_another_sync_is_in_the_kernel_goes_to_the_executor(
    tmp_path: Path, kernel: KernelFdatasync, executor: CountingExecutor
) -> None:
    first, second = (
        SegmentLog.open(tmp_path / name, executor=executor, kernel_sync=kernel) for name in ("a", "b")
    )
    first.append(b"one")
    second.append(b"two")
    # Both rounds start in the same loop step: the first one's sync is still in the kernel.
    await asyncio.wait_for(asyncio.gather(first.flush(), second.flush()), 10)
    assert executor.submitted == 1
    assert first.durable_position == first.end_position and second.durable_position == second.end_position
    await first.close()
    await second.close()


# ---------------------------------------------------------------- waiting on the loop's CPU


class FakePeek:
    """The loop's epoll ``poll`` as ``wait_on_cpu`` sees it: empty for ``idle`` calls, then ready."""

    def __init__(self, idle: int) -> None:
        self.idle = idle
        self.calls: list[tuple[float, int]] = []

    def __call__(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        self.calls.append((timeout, maxevents))
        return [] if len(self.calls) <= self.idle else [(99, select.EPOLLIN)]


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    counted: list[None] = []
    monkeypatch.setattr(os, "sched_yield", lambda: counted.append(None))
    return counted


def spinning_kernel(spin_ns: int, poll: FakePeek, ready: collections.deque[object]) -> KernelFdatasync:
    opened = KernelFdatasync.open(depth=4, spin_ns=spin_ns)
    assert opened is not None
    opened._peek = (poll, ready)
    return opened


def test_the_wait_yields_until_a_descriptor_of_the_loop_is_ready(yields: list[None]) -> None:
    poll = FakePeek(idle=3)
    kernel = spinning_kernel(10**10, poll, collections.deque())
    kernel.wait_on_cpu()
    # Peeked without waiting (timeout 0) and without taking more than one event, each miss yielded.
    assert poll.calls == [(0, 1)] * 4
    assert len(yields) == 3
    kernel.close()


async def test_a_sync_that_finishes_during_the_wait_is_taken_by_it(tmp_path: Path) -> None:
    poll = FakePeek(idle=10**9)  # nothing else ever gets ready: only the sync can end the wait
    kernel = spinning_kernel(10 * 10**9, poll, collections.deque())
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    results: list[OSError | None] = []
    try:
        os.write(fd, b"v")
        assert kernel.submit(fd, lambda error, _seconds: results.append(error))
        kernel._peek = (poll, collections.deque())  # submit bound the real loop's: the fake again
        kernel.wait_on_cpu()
        assert results == [None] and kernel.in_flight == 0  # its ``then`` ran in the wait
        await asyncio.sleep(0.01)  # the eventfd the sync also rang finds nothing left to take
        assert results == [None]
    finally:
        os.close(fd)
        kernel.close()


@pytest.mark.parametrize("why", ["off", "callbacks ready", "slow disk", "another loop"])
def test_the_loop_sleeps_instead_when(why: str, yields: list[None]) -> None:
    poll = FakePeek(idle=10**9)
    ready: collections.deque[object] = collections.deque([object()] if why == "callbacks ready" else [])
    kernel = spinning_kernel(0 if why == "off" else 10**10, poll, ready)
    if why == "slow disk":
        kernel._typical_ns = 10**10 + 1  # this disk's syncs outlast the budget
    if why == "another loop":
        kernel._peek = None  # a loop without an epoll selector
    kernel.wait_on_cpu()
    assert poll.calls == [] and yields == []
    kernel.close()


def test_the_wait_ends_after_its_budget_when_nothing_gets_ready(yields: list[None]) -> None:
    poll = FakePeek(idle=10**9)
    kernel = spinning_kernel(2_000_000, poll, collections.deque())  # 2 ms
    kernel.wait_on_cpu()
    # Every peek found nothing: each was followed by a yield but the last, which met the deadline.
    assert poll.calls and len(yields) == len(poll.calls) - 1
    kernel.close()


async def test_the_peek_is_the_running_loops_epoll_and_ready_queue() -> None:
    loop = asyncio.get_running_loop()
    peek = kernel_fdatasync._idle_peek(loop)
    assert peek is not None
    poll, ready = peek
    assert ready is loop._ready  # type: ignore[attr-defined]
    assert poll.__self__ is loop._selector._selector  # type: ignore[attr-defined]


async def test_syncs_teach_the_kernel_how_long_this_disk_takes(tmp_path: Path) -> None:
    kernel = KernelFdatasync.open(depth=4, spin_ns=10**9)
    assert kernel is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert kernel._typical_ns == 0
        for _ in range(3):
            os.write(fd, b"w")
            done: asyncio.Future[OSError | None] = asyncio.get_running_loop().create_future()
            assert kernel.submit(fd, lambda error, _seconds, done=done: done.set_result(error))
            kernel.wait_on_cpu()
            assert await asyncio.wait_for(done, 10) is None
        assert kernel._typical_ns > 0
    finally:
        os.close(fd)
        kernel.close()


@pytest.mark.parametrize("spin_ns", [0, 10**9], ids=["sleeping", "on the cpu"])
async def test_a_sync_callers_round_acks_after_its_sync_whichever_way_the_loop_waits(
    tmp_path: Path, executor: CountingExecutor, spin_ns: int
) -> None:
    kernel = KernelFdatasync.open(depth=4, spin_ns=spin_ns)
    assert kernel is not None
    log = SegmentLog.open(tmp_path / "log", executor=executor, kernel_sync=kernel)
    try:
        for i in range(20):
            end = log.append(b"e%d" % i) + 8 + len(b"e%d" % i)
            await asyncio.wait_for(log.wait_durable(end), 10)
            assert log.durable_position == end == log.end_position and kernel.in_flight == 0
        assert executor.submitted == 0
    finally:
        await log.close()
        kernel.close()
    reopened = SegmentLog.open(tmp_path / "log")
    assert [payload for _, payload in reopened.scan()] == [b"e%d" % i for i in range(20)]
    await reopened.close()


async def test_concurrent_sync_callers_all_ack_while_the_loop_waits_on_its_cpu(
    tmp_path: Path, executor: CountingExecutor
) -> None:
    # Callers that arrive while a round is in flight queue the next one, which a completion starts
    # (inside the wait or the eventfd's read): every caller must still be woken once its record is
    # durable, none stranded behind a completion the other path took.
    kernel = KernelFdatasync.open(depth=8, spin_ns=10**9)
    assert kernel is not None
    log = SegmentLog.open(tmp_path / "log", executor=executor, kernel_sync=kernel)

    async def caller(c: int) -> None:
        for i in range(10):
            payload = b"c%d-%d" % (c, i)
            end = log.append(payload) + 8 + len(payload)
            await log.wait_durable(end)
            assert log.durable_position >= end
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(asyncio.gather(*(caller(c) for c in range(8))), 30)
        assert log.durable_position == log.end_position and kernel.in_flight == 0
    finally:
        await log.close()
        kernel.close()
    reopened = SegmentLog.open(tmp_path / "log")
    assert sorted(payload for _, payload in reopened.scan()) == sorted(
        b"c%d-%d" % (c, i) for c in range(8) for i in range(10)
    )
    await reopened.close()
