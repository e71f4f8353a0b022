"""A group commit's rounds (a flush tick's, a SYNC batch's, an urgent alert flush's) written and
made durable by the native engine's worker, which never takes the GIL
(``native/src/tick_writer.rs``); their outcome is picked up on the event loop when the worker's
eventfd rings, as the kernel's fdatasync completions are (``node.kernel_fdatasync``).

From a Python thread, a tick's writes and its ``syncfs`` each first had to win the GIL from a
loop busy ingesting, so the writes ran on the loop (~6% of it under load) and the sync's thread
still waited twice; an alert's urgent flush, queued behind the tick round on its logs, waited
with it (docs/benchmarks-history.md, "A tick's page-cache writes off the loop thread"). Here nothing
waits for the GIL: the loop hands over the detached buffers and later finishes the rounds. Only
rounds that stay in their segment files go this way, and only where one ``syncfs`` makes the data
directory durable; a group with a round that creates a file goes to the thread as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from .segment_log import positioned_writes, written_elsewhere

__all__ = ["TickWrites"]

Finish = Callable[[list[BaseException | None], bool], None]
"""``(each round's error or None, synced)``: synced False means the ``syncfs`` failed, and the
rounds without an error still need their own fsyncs (``segment_log.run_rounds``)."""


class TickWrites:
    """The worker of one backend, and the ticks it has queued."""

    def __init__(self, writer: Any, filesystem_fd: int) -> None:
        self._writer = writer
        self._filesystem_fd = filesystem_fd
        self._queued: dict[int, tuple[list[Any], Finish]] = {}
        self._next_token = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, jobs: list[Any], finish: Finish) -> bool:
        """Queue ``jobs`` (rounds taken with ``start_round(defer_write=True)``); ``finish`` is
        called on the loop once they are written and synced. False, with nothing queued, if a
        round needs the thread (it creates a segment file)."""
        buffers = positioned_writes(jobs)
        if buffers is None:
            return False
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._writer.fileno(), self._collect)
        token = self._next_token = self._next_token + 1
        self._writer.submit(token, buffers, self._filesystem_fd)
        self._queued[token] = (jobs, finish)
        return True

    def _collect(self) -> None:
        for token, errnos, sync_errno, seconds in self._writer.done():
            jobs, finish = self._queued.pop(token)
            sync_error = OSError(sync_errno, os.strerror(sync_errno)) if sync_errno else None
            finish(written_elsewhere(jobs, errnos, sync_error, seconds), sync_error is None)

    def close(self) -> None:
        """Let the queued ticks finish, stop the worker, and hand the ticks their outcomes (the
        worker finishes every tick queued before it stops, so none is left without one)."""
        self._writer.stop()
        if self._loop is not None:
            self._loop.remove_reader(self._writer.fileno())
        self._collect()
