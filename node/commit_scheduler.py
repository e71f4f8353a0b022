"""The one owner of durability: when a node's partitions are made durable, and what follows.

Three kinds of request reach it: the periodic flush (every ``flush_interval`` it makes every dirty
partition durable, which is what makes ASYNC writes durable), an urgent flush (a batch that fired
alerts, so people wait for them), and a SYNC call's wait ("durable up to here" for the partitions
it wrote). Each turns into one group commit of the backend, which decides how (the embedded one:
grouped fsync rounds or one ``syncfs``); once a partition's logs are durable up to a mark, the
alerts counted in that mark are published. Not here: how a log becomes durable, and what a
partition stores. The policies and their measurements are in docs/design.md, "Durability and
group commit".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING

from .alert_stream import release
from .record_log import RecordBackend

if TYPE_CHECKING:
    from .partition import Partition

__all__ = ["CommitScheduler"]

log = logging.getLogger(__name__)

_NUMBER = attrgetter("number")

_BUSY_URGENT_SPACING = 0.004
"""While batches wait in line to be stored, an urgent group starts no sooner than this many
seconds after the one before it started (docs/design.md, "Durability and group commit")."""


class CommitScheduler:
    """Group commit for the partitions of one node over one backend, on one event loop."""

    def __init__(
        self, backend: RecordBackend, flush_interval: float, busy: Callable[[], bool] | None = None
    ) -> None:
        """``busy()``: whether batches wait in line to be stored now (never, if None)."""
        self._backend = backend
        self._interval = flush_interval
        self._busy = busy
        self._partitions: Mapping[int, Partition] = {}
        self._appended: set[Partition] = set()
        """The partitions the next tick looks at: appended to (or recovered, which may append)
        since the last tick, or left dirty by it. A tick costs what was written since the last
        one, not a look at every partition a node serves (64 by default, 100 times a second)."""
        self._flusher: asyncio.Task[None] | None = None
        self._urgent: set[asyncio.Task[None]] = set()
        self._urgent_partitions: set[int] = set()
        """Partitions an urgent alert flush is making durable, or will: the tick leaves their logs
        to it."""
        self._urgent_next: dict[Partition, None] | None = None
        """While an urgent group is in flight or waits for its start: the partitions of the next
        one, in arrival order (else None)."""
        self._urgent_started = -math.inf
        """When (the loop's clock) the last urgent group started."""
        self._urgent_start_timer: asyncio.TimerHandle | None = None
        """The start of an urgent group that waits for its spacing from the one before."""
        self._sync_waiters: list[asyncio.Future[None]] | None = None
        """While a SYNC calls' group commit is in flight: the waiters of the next one (else None)."""
        self._sync_next: set[int] = set()
        """The partitions of the next SYNC group: those of every call waiting for it."""
        self._closing = False

    def start(self, partitions: Mapping[int, Partition]) -> None:
        """Start the periodic flush of ``partitions`` by number (a live view: a node's partitions
        may come and go); the first tick looks at every one of them."""
        self._partitions = partitions
        self._appended.update(partitions.values())
        self._flusher = asyncio.create_task(self._flush_loop(), name="unimeter-flusher")

    async def close(self) -> None:
        """Stop the periodic flush and the urgent flushes' waits (their rounds finish on their
        own; closing the partitions makes everything durable)."""
        self._closing = True
        if self._urgent_start_timer is not None:  # closing the partitions makes them durable
            self._urgent_start_timer.cancel()
            self._urgent_start_timer = None
            waiting, self._urgent_next = self._urgent_next or {}, None
            self._urgent_partitions.difference_update(p.number for p in waiting)
        tasks = [*([self._flusher] if self._flusher is not None else []), *self._urgent]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def appended(self, partitions: Iterable[Partition]) -> None:
        """``partitions`` were appended to, or have just been recovered (which may append): the
        next tick makes whatever of them is not durable yet durable. Every append must say so,
        or its ASYNC write waits for the partition's next one."""
        self._appended.update(partitions)

    # ------------------------------------------------------------------ what callers wait for

    async def flush(self, partition: Partition, mark: tuple[int, int, int] | None = None) -> None:
        """Make everything ``partition`` appended so far (or up to ``mark``, a
        :meth:`Partition.flush_mark` taken earlier) durable, then publish the alerts the mark
        counts. Raises if one of its logs failed."""
        if mark is None:
            mark = partition.flush_mark()
        _, events_end, alerts_end = mark
        # Both logs at once (one hand-off to the fsync threads, not two in a row): an alert record
        # may reach the disk before its events, and recovery cuts any alert record whose events
        # did not make it. Publishing waits for both, so subscribers only see what survives.
        alerts = partition.alert_log
        if alerts.durable_position < alerts_end:
            await asyncio.gather(partition.events.wait_durable(events_end), alerts.wait_durable(alerts_end))
        else:
            await partition.events.wait_durable(events_end)  # the common SYNC case: no task per log
        partition.publish_durable(mark)

    async def make_durable(self, partitions: Sequence[Partition]) -> None:
        """A SYNC call's wait: what it wrote to every partition durable (and the alerts it counted
        published).

        One partition: its own flush. Several: one group commit for all their logs (shared with
        the SYNC calls around it, :meth:`_sync_group`), then for each partition its alerts
        published if the group covered it, else its own flush, which waits for a round already in
        flight, raises if its log failed, and publishes its alerts. The marks are taken first: a
        call waits for what it appended, never for what calls appended after it while its group
        was being synced. (Marks taken after the group, as they once were, asked for the later
        calls' records too: with a few SYNC callers storing at once, nearly every partition then
        took a round of its own, one fdatasync per log, where the group's one ``syncfs`` had
        covered the call.)"""
        if len(partitions) == 1:
            await self.flush(partitions[0])
            return
        marks = [partition.flush_mark() for partition in partitions]
        await self._sync_group(partitions)
        for partition, mark in zip(partitions, marks, strict=True):
            # Covered by the group (nearly always): published here, without a coroutine each.
            if not partition.publish_durable(mark):
                await self.flush(partition, mark)

    def flush_urgent(self, partitions: Sequence[Partition]) -> None:
        """Flush partitions that logged alerts now, and publish them; the tick skips them.

        One urgent group is in flight at a time. Partitions that ask meanwhile join the next
        group, which starts as the current one ends and covers them all: an ingest call asks
        after each slice of its batch that logged alerts, several times a batch, and a group
        each would be a ``syncfs`` each, queued one behind the other on the same worker anyway.

        While batches wait in line to be stored (``busy``), a group starts no sooner than
        ``_BUSY_URGENT_SPACING`` after the one before: the node is at its capacity then, every
        group is a round of Python on the loop the line waits for, and back to back (one every
        ~1.6 ms under the bench's alert load) they cost the line more than they saved the
        alerts, whose wait in the line is the larger part of theirs. An idle loop starts them at
        once.

        A group is one group commit for all its partitions' logs, whose completion publishes the
        alerts it covered right there, on the loop: no task, no hop between the fsync and the
        subscribers' wake-up. A partition one of whose logs was already being made durable (by
        a SYNC caller's round, the tick's) was left out of the group: a task waits for its flush,
        as a SYNC caller would, and publishes then.
        """
        following = self._urgent_next
        if following is None:
            self._start_urgent_group(partitions)
        else:
            following.update(dict.fromkeys(partitions))
            self._urgent_partitions.update(p.number for p in partitions)

    # ------------------------------------------------------------------ internals

    def _start_urgent_group(self, partitions: Sequence[Partition], *, spaced: bool = False) -> None:
        """Start the group of ``partitions`` now, or (unless ``spaced`` already) once it is
        ``_BUSY_URGENT_SPACING`` after the last one's start if batches wait in line."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self._urgent_started + _BUSY_URGENT_SPACING - now
        if not spaced and wait > 0 and self._busy is not None and self._busy():
            self._urgent_next = dict.fromkeys(partitions)  # the ones that ask meanwhile join it
            self._urgent_partitions.update(p.number for p in partitions)
            self._urgent_start_timer = loop.call_later(wait, self._start_spaced_urgent_group)
            return
        self._urgent_started = now
        self._urgent_next = {}
        numbers = [p.number for p in partitions]
        self._urgent_partitions.update(numbers)
        marks = [(p, p.flush_mark()) for p in partitions]

        def publish() -> None:
            following, self._urgent_next = self._urgent_next, None
            self._urgent_partitions.difference_update(numbers)
            waiting = [p for p, mark in marks if not p.publish_durable(mark)]
            if waiting and not self._closing:
                task = asyncio.create_task(self._publish_when_flushed(waiting))
                self._urgent.add(task)
                task.add_done_callback(self._urgent.discard)
            if not following:
                return
            if self._closing:  # closing the partitions makes them durable
                self._urgent_partitions.difference_update(p.number for p in following)
            else:
                self._start_urgent_group(list(following))

        try:
            self._backend.commit_group(numbers, background=False, then=publish)
        except Exception:  # not a log's I/O error (that fails the log, then `then` runs)
            # The tick, which makes every write durable and publishes what it covers, takes over
            # this group's partitions and the next's; the batch that asked is stored either way.
            log.exception("urgent flush not started; the next tick flushes its partitions")
            following, self._urgent_next = self._urgent_next or {}, None
            self._urgent_partitions.difference_update([*numbers, *(p.number for p in following)])
            self._appended.update([*partitions, *following])

    def _start_spaced_urgent_group(self) -> None:
        self._urgent_start_timer = None
        partitions, self._urgent_next = self._urgent_next or {}, None
        self._start_urgent_group(list(partitions), spaced=True)

    async def _sync_group(self, partitions: Sequence[Partition]) -> None:
        """Group commit across SYNC calls: one group at a time, and the calls that arrive while it
        is in flight wait for the next one, which starts as it ends and covers all their
        partitions (a group skips the logs that have a round in flight, so a call that started
        its own then had most of its partitions sync in rounds of their own, one per log).
        Cancelling a wait cancels only that waiter's future: the groups go on."""
        done = asyncio.get_running_loop().create_future()
        numbers = [p.number for p in partitions]
        if self._sync_waiters is None:
            self._sync_waiters = []
            self._start_sync_group(numbers, [done])
        else:
            self._sync_next.update(numbers)
            self._sync_waiters.append(done)
        await done

    def _start_sync_group(self, numbers: Sequence[int], waiters: list[asyncio.Future[None]]) -> None:
        try:
            self._backend.commit_group(
                numbers, background=False, then=partial(self._sync_group_done, waiters)
            )
        except Exception as exc:  # not a log's I/O error (that fails the log, then `then` runs)
            # Every caller of this group and of the next gets the error; none is left waiting.
            waiting, self._sync_waiters, self._sync_next = self._sync_waiters or [], None, set()
            for waiter in [*waiters, *waiting]:
                if not waiter.done():
                    waiter.set_exception(exc)

    def _sync_group_done(self, waiters: list[asyncio.Future[None]]) -> None:
        """A SYNC group is finished: release its callers, and start the next group if calls are
        waiting for one."""
        for waiter in waiters:
            release(waiter)
        following = self._sync_waiters
        if not following:
            self._sync_waiters = None
            return
        numbers = sorted(self._sync_next)
        self._sync_waiters, self._sync_next = [], set()
        self._start_sync_group(numbers, following)

    async def _commit_group(self, partitions: Sequence[Partition], *, background: bool) -> None:
        """The backend's group commit, waited for. Cancelling the wait cancels only this waiter's
        future: the commit goes on and finishes its logs."""
        done = asyncio.get_running_loop().create_future()
        self._backend.commit_group(
            [p.number for p in partitions], background=background, then=partial(release, done)
        )
        await done

    async def _publish_when_flushed(self, partitions: list[Partition]) -> None:
        results = await asyncio.gather(*(self.flush(p) for p in partitions), return_exceptions=True)
        for partition, exc in zip(partitions, results, strict=True):
            if isinstance(exc, BaseException):  # the failed log was counted and logged already
                log.warning("alerts of partition %d not published: %s", partition.number, exc)

    async def _flush_loop(self) -> None:
        # Ticks start at a fixed rate, not a fixed pause after the previous tick's fsyncs: an ASYNC
        # write waits at most one interval for a tick to take it (plus that tick's own fsync).
        loop = asyncio.get_running_loop()
        interval = self._interval
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick = max(next_tick + interval, loop.time())
            dirty = self._take_dirty()
            if dirty:
                try:
                    await self._flush_tick(dirty)
                except Exception:
                    # A log's I/O error fails that log inside its round; anything raised here is a
                    # bug elsewhere (say, in a publish callback), and must not stop the ticks that
                    # make every ASYNC write durable.
                    log.exception("flush tick failed; ticking on")

    def _take_dirty(self) -> list[Partition]:
        """The partitions this tick flushes, by number: those appended to since the last tick
        that are still served and dirty. One an urgent flush is making durable stays for the
        next tick."""
        served, urgent = self._partitions, self._urgent_partitions
        candidates, self._appended = self._appended, set()
        dirty = []
        for partition in candidates:
            if served.get(partition.number) is not partition or not partition.dirty:
                continue  # released, or made durable by a SYNC call, an urgent flush or a close
            if partition.number in urgent:
                self._appended.add(partition)
            else:
                dirty.append(partition)
        dirty.sort(key=_NUMBER)
        return dirty

    async def _flush_tick(self, partitions: list[Partition]) -> None:
        """Make the dirty partitions durable in the background lane, then publish their alerts.
        Logs already being made durable (by a SYNC caller's round, an urgent flush's) are left to
        it, and the next tick looks at their partitions again (as at every partition of a tick
        that raised): what they appended later, ingest has told it of already."""
        marks = [(p, p.flush_mark()) for p in partitions]
        try:
            await self._commit_group(partitions, background=True)
            for partition, mark in marks:
                if not partition.publish_durable(mark):
                    self._appended.add(partition)
        except BaseException:
            self._appended.update(partitions)
            raise
