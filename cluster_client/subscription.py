"""``AlertSubscription``: the SDK's alert stream with a bounded local buffer and exact resume.

The nodes never drop an alert: each subscription reads its own position in the alert logs. The
local buffer is bounded (default 64) so a slow consumer cannot grow memory without limit: when it
is full, the alert is counted in ``dropped()`` and the stream is re-opened from the last position
the buffer holds once the consumer has caught up, so the dropped alerts are fetched again from the
log. ``offsets()`` is the position of what the consumer has received (alerts and heartbeats), the
resume token to persist and pass back as ``since_offsets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence

from .errors import InvalidArgumentError, OutOfRangeError, UnimeterError
from .node_api import AlertStreamItem
from .retry import RESUBSCRIBE_MAX_BACKOFF, backoff_bounds
from .types import Alert

__all__ = ["AlertSubscription", "close_stream", "resubscribe_bounds"]

log = logging.getLogger(__name__)

StreamFactory = Callable[[dict[int, int], bool], AsyncIterator[AlertStreamItem]]

_FATAL = (InvalidArgumentError, OutOfRangeError)

RESUBSCRIBE_INITIAL_BACKOFF = 0.05
"""First bound, seconds, of the jittered wait before re-opening an interrupted stream."""


def resubscribe_bounds() -> Iterator[float]:
    """Bounds of the jittered waits between attempts to re-open an interrupted stream."""
    return backoff_bounds(RESUBSCRIBE_INITIAL_BACKOFF, RESUBSCRIBE_MAX_BACKOFF)


class AlertSubscription:
    """An async iterator of alerts. Use ``async with client.alerts.subscribe(...) as sub``."""

    def __init__(
        self,
        open_stream: StreamFactory,
        *,
        since_offsets: Mapping[int, int] | None,
        from_beginning: bool,
        buffer: int = 64,
    ) -> None:
        self._open_stream = open_stream
        self._from_beginning = from_beginning
        self._queue: asyncio.Queue[AlertStreamItem | BaseException] = asyncio.Queue(maxsize=buffer)
        # Position of the newest item put in the buffer, and of the newest item handed out.
        self._enqueued: dict[int, int] = dict(since_offsets or {})
        self._delivered: dict[int, int] = dict(since_offsets or {})
        self._dropped = 0
        self._room = asyncio.Event()  # set when the consumer has drained the buffer to half
        self._task: asyncio.Task[None] | None = None
        self._first_stream: AsyncIterator[AlertStreamItem] | None = None

    async def start(self) -> AlertSubscription:
        """Open the stream; request errors (unknown codes, bad offsets) are raised here."""
        stream = self._open_stream(dict(self._enqueued), self._from_beginning)
        first = await anext(stream)  # the node's first item is a heartbeat with the start positions
        self._accept(first)
        self._first_stream = stream
        self._task = asyncio.create_task(self._pump(), name="unimeter-alert-subscription")
        return self

    def offsets(self) -> dict[int, int]:
        """Partition → last alert offset the consumer has passed; persist it to resume."""
        return dict(self._delivered)

    def dropped(self) -> int:
        """Alerts that did not fit the local buffer (each is fetched again from the log)."""
        return self._dropped

    async def close(self) -> None:
        """Stop the stream."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> AlertSubscription:
        if self._task is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Alert]:
        return self

    async def __anext__(self) -> Alert:
        while True:
            item = await self._queue.get()
            if self._queue.qsize() <= self._queue.maxsize // 2:
                self._room.set()
            if isinstance(item, BaseException):
                raise item
            if item.alert is None:
                for p, o in item.offsets.items():
                    if o > self._delivered.get(p, -1):
                        self._delivered[p] = o
                continue
            alert = item.alert
            self._delivered[alert.partition] = alert.offset
            return alert

    def _accept(self, item: AlertStreamItem) -> bool:
        """Put an item in the buffer; False when it did not fit (an alert was dropped)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if item.alert is not None:
                self._dropped += 1
                return False
            return True  # a heartbeat that does not fit is simply superseded by a later one
        if item.alert is not None:
            self._enqueued[item.alert.partition] = item.alert.offset
        else:
            for p, o in item.offsets.items():
                if o > self._enqueued.get(p, -1):
                    self._enqueued[p] = o
        return True

    async def _pump(self) -> None:
        stream = self._first_stream
        bounds = resubscribe_bounds()
        while True:
            try:
                if stream is None:
                    stream = self._open_stream(dict(self._enqueued), False)
                async for item in stream:
                    bounds = resubscribe_bounds()
                    if not self._accept(item):
                        break  # re-open from the buffer's last position once there is room
                await close_stream(stream)
                stream = None
                if self._queue.qsize() > self._queue.maxsize // 2:
                    self._room.clear()
                    await self._room.wait()
            except asyncio.CancelledError:
                if stream is not None:
                    await close_stream(stream)
                raise
            except _FATAL as exc:
                await self._queue.put(exc)
                return
            except UnimeterError as exc:
                log.warning("alert stream interrupted (%s); resuming from %s", exc.message, self._enqueued)
                stream = None
                await asyncio.sleep(random.uniform(0, next(bounds)))


async def close_stream(stream: AsyncIterator[AlertStreamItem]) -> None:
    """Close an alert stream now (it may hold a subscriber slot), ignoring errors of the close."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def open_subscription(
    factory: Callable[..., AsyncIterator[AlertStreamItem]],
    *,
    account_ids: Sequence[int],
    metric_codes: Sequence[str],
    threshold_codes: Sequence[str],
    since_offsets: Mapping[int, int] | None,
    from_beginning: bool,
    buffer: int,
) -> AlertSubscription:
    """An AlertSubscription over ``factory`` (``Client.alert_stream``), not yet started."""

    def open_stream(since: dict[int, int], beginning: bool) -> AsyncIterator[AlertStreamItem]:
        return factory(
            account_ids=account_ids,
            metric_codes=metric_codes,
            threshold_codes=threshold_codes,
            since_offsets=since,
            from_beginning=beginning,
        )

    return AlertSubscription(
        open_stream, since_offsets=since_offsets, from_beginning=from_beginning, buffer=buffer
    )
