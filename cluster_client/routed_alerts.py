"""One alert stream over a routed cluster that follows each partition to its owner.

The stream asks each owning node for its partitions' alerts and merges them. It keeps, per
partition, the offset of the last alert it handed out (or the position a node's heartbeat said its
scan had reached), and when a partition moves (the map changed, or a node's stream broke or ended)
it closes that node's stream and opens the partition on its owner from exactly that position: an
alert offset means the same alert on every owner, so nothing is skipped, and an alert at or below
the position is never handed out twice. Request errors (unknown codes, offsets past the log) are
raised when the stream first opens; after that every failure is retried, with backoff, for as long
as the consumer listens. Not here: the SDK's local buffer and resume tokens (:mod:`.subscription`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .errors import InvalidArgumentError, OutOfRangeError, UnimeterError
from .node_api import AlertStreamItem, NodeApi
from .subscription import close_stream, resubscribe_bounds
from .topology import Topology

__all__ = ["routed_alert_stream"]

log = logging.getLogger(__name__)

_FATAL_ON_OPEN = (InvalidArgumentError, OutOfRangeError)


@dataclass(eq=False)
class _Group:
    """One node's stream of some partitions, and the task pumping it into the merge queue."""

    node: NodeApi
    partitions: list[int]
    task: asyncio.Task[None] | None = None
    started: bool = False
    closed: bool = False
    bounds: Iterator[float] = field(default_factory=resubscribe_bounds)


@dataclass(frozen=True, slots=True)
class _Moved:
    """The partition map changed."""


@dataclass(frozen=True, slots=True)
class _Reopen:
    """Time to open these partitions again, on their owners as the map now says."""

    partitions: list[int]
    bounds: Iterator[float]


_Message = tuple[_Group, AlertStreamItem | BaseException | None] | _Moved | _Reopen


async def routed_alert_stream(
    topology: Topology,
    since_offsets: dict[int, int],
    from_beginning: bool,
    filters: tuple[list[int], list[str], list[str]],
) -> AsyncIterator[AlertStreamItem]:
    """Every partition's matching alerts, following moves; the first item is a heartbeat with
    every partition's start position (it comes once every partition's stream is open), later
    heartbeats carry every partition's position."""
    queue: asyncio.Queue[_Message] = asyncio.Queue(maxsize=256)
    positions = dict(since_offsets)
    groups: list[_Group] = []
    timers: set[asyncio.Task[None]] = set()

    def open_group(node: NodeApi, partitions: list[int], bounds: Iterator[float]) -> _Group:
        since = {p: positions[p] for p in partitions if p in positions}
        group = _Group(node, partitions, bounds=bounds)

        def subscribe() -> AsyncIterator[AlertStreamItem]:
            return node.subscribe_alerts(partitions, since, from_beginning, *filters)

        group.task = asyncio.get_running_loop().create_task(_pump(group, subscribe, queue))
        groups.append(group)
        return group

    def open_partitions(partitions: Sequence[int], bounds: Iterator[float]) -> list[_Group]:
        by_node: dict[int, tuple[NodeApi, list[int]]] = {}
        homeless: list[int] = []
        for p in sorted(partitions):
            node = topology.owner_or_none(p)
            if node is None:
                homeless.append(p)
            else:
                by_node.setdefault(id(node), (node, []))[1].append(p)
        if homeless:
            reopen_later(homeless, bounds, refresh=True)
        return [open_group(node, ps, bounds) for node, ps in by_node.values()]

    async def close_group(group: _Group) -> None:
        group.closed = True
        groups.remove(group)
        if group.task is not None:
            group.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await group.task

    def reopen_later(partitions: list[int], bounds: Iterator[float], *, refresh: bool) -> None:
        async def wait_then_reopen() -> None:
            await asyncio.sleep(random.uniform(0, next(bounds)))
            if refresh:
                with contextlib.suppress(UnimeterError):
                    await topology.refresh()
            await queue.put(_Reopen(partitions, bounds))

        timer = asyncio.get_running_loop().create_task(wait_then_reopen())
        timers.add(timer)
        timer.add_done_callback(timers.discard)

    async def watch_moves() -> None:
        while True:
            version = topology.version
            await topology.wait_changed(version)
            await queue.put(_Moved())

    def take_positions(offsets: dict[int, int], partitions: list[int]) -> None:
        for p in partitions:
            o = offsets.get(p)
            if o is not None and o > positions.get(p, -1):
                positions[p] = o

    # Where each partition starts: its since offset, its first alert, or (the live tail) the
    # position the first heartbeat of its owner's stream reports.
    if from_beginning:
        positions.update({p: 0 for p in range(topology.partitions) if p not in positions})
    unplaced = set(range(topology.partitions)) - set(positions)
    watcher = asyncio.get_running_loop().create_task(watch_moves())
    try:
        # Opening: every node's first item is a heartbeat with its start positions, or the
        # request's error, which is the caller's to see. A stream that cannot open (its node
        # gone, its partition moving) is opened again on the owner, until every partition has a
        # start position. Alerts that come meanwhile are held.
        waiting: set[_Group] | None = set(open_partitions(range(topology.partitions), resubscribe_bounds()))
        held: list[AlertStreamItem] = []
        while True:
            if waiting is not None and not waiting and not unplaced:
                waiting = None
                yield AlertStreamItem(None, dict(positions))
                for early in held:
                    if _is_new(early, positions):
                        yield early
                held.clear()
            message = await queue.get()
            if isinstance(message, _Moved):
                for group in list(groups):
                    if any(topology.owner_or_none(p) is not group.node for p in group.partitions):
                        await close_group(group)
                        reopened = open_partitions(group.partitions, resubscribe_bounds())
                        if waiting is not None and group in waiting:
                            waiting.discard(group)
                            waiting.update(reopened)
                continue
            if isinstance(message, _Reopen):
                reopened = open_partitions(message.partitions, message.bounds)
                if waiting is not None:
                    waiting.update(reopened)
                continue
            group, item = message
            if group.closed:
                continue
            if waiting is not None:
                waiting.discard(group)
            if item is None or isinstance(item, BaseException):
                if not isinstance(item, Exception | None):
                    raise item
                if waiting is not None and isinstance(item, _FATAL_ON_OPEN) and not group.started:
                    raise item
                _log_interruption(group, item)
                await close_group(group)
                reopen_later(group.partitions, group.bounds, refresh=True)
            elif item.alert is None:
                if not group.started:
                    group.started = True
                    group.bounds = resubscribe_bounds()  # open again: the next break waits little
                take_positions(item.offsets, group.partitions)
                unplaced.difference_update(item.offsets)
                if waiting is None:
                    yield AlertStreamItem(None, dict(positions))
            elif waiting is not None:
                held.append(item)
            elif _is_new(item, positions):
                yield item
    finally:
        watcher.cancel()
        for timer in list(timers):
            timer.cancel()
        for group in list(groups):
            await close_group(group)
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _is_new(item: AlertStreamItem, positions: dict[int, int]) -> bool:
    """Whether ``item``'s alert is past its partition's position (which it then becomes)."""
    alert = item.alert
    assert alert is not None
    if alert.offset <= positions.get(alert.partition, -1):
        return False
    positions[alert.partition] = alert.offset
    return True


def _log_interruption(group: _Group, error: BaseException | None) -> None:
    reason = error.message if isinstance(error, UnimeterError) else repr(error) if error else "it ended"
    log.info(
        "alert stream of partitions %s on %r interrupted (%s); reopening",
        group.partitions,
        group.node,
        reason,
    )


async def _pump(
    group: _Group, subscribe: Callable[[], AsyncIterator[AlertStreamItem]], queue: asyncio.Queue[_Message]
) -> None:
    """Move the stream's items into the merge queue, then its end (None) or its failure (an
    in-process node refuses a request when it is made, a remote one at the first item)."""
    stream: AsyncIterator[AlertStreamItem] | None = None
    try:
        stream = subscribe()
        async for item in stream:
            await queue.put((group, item))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put((group, exc))
    else:
        await queue.put((group, None))
    finally:
        if stream is not None:
            await close_stream(stream)
