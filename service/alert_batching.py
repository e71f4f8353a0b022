"""AlertSubscribe's batched mode: the alerts that are ready together go out as one message.

grpc.aio writes one message at a time, and each write costs the event loop two hops (the write,
then its completion back from gRPC's poller thread). Under ingest load a hop waits behind ingest
slices, so a burst of ten alerts sent one per message reached the subscriber tens of milliseconds
after the first. Here a reader task takes items off the subscription while the previous message is
being written, and each write carries every alert that arrived meanwhile (up to the subscriber's
``max_alerts_per_message``). Order is kept: a heartbeat ends the batch before it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cluster_client.node_api import AlertStreamItem
from cluster_client.subscription import close_stream
from unimeter.v1 import alert_service_pb2

from .convert import alert_batch_response, alert_subscribe_item

__all__ = ["MAX_ALERTS_PER_MESSAGE", "batched_alert_responses"]

MAX_ALERTS_PER_MESSAGE = 1000
"""Largest ``max_alerts_per_message`` a subscriber may ask for."""

_READ_AHEAD_MESSAGES = 2
"""Items read ahead of the writer, in messages' worth: enough to fill the next message while one
is being written, and bounded so a slow subscriber is still served from the log, not from memory."""


class _End:
    """The subscription's stream ended (normally, or with ``error``)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def batched_alert_responses(
    stream: AsyncIterator[AlertStreamItem], limit: int
) -> AsyncIterator[alert_service_pb2.AlertSubscribeResponse]:
    """``stream``'s items as responses: runs of alerts as ``batch`` messages of 1 to ``limit``
    alerts, heartbeats as they are. An error of the stream is raised after the items before it."""
    items: asyncio.Queue[AlertStreamItem | _End] = asyncio.Queue(maxsize=limit * _READ_AHEAD_MESSAGES)

    async def read() -> None:
        try:
            async for item in stream:
                await items.put(item)
        except Exception as exc:  # handed to the writer, which raises it in order
            await items.put(_End(exc))
        else:
            await items.put(_End(None))

    reader = asyncio.create_task(read(), name="unimeter-alert-batch-reader")
    try:
        pending: AlertStreamItem | _End | None = None
        while True:
            item = pending if pending is not None else await items.get()
            pending = None
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            if item.alert is None:
                yield alert_subscribe_item(None, item.offsets)
                continue
            alerts = [item.alert]
            while len(alerts) < limit and not items.empty():
                nxt = items.get_nowait()
                if isinstance(nxt, _End) or nxt.alert is None:
                    pending = nxt
                    break
                alerts.append(nxt.alert)
            yield alert_batch_response(alerts)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await close_stream(stream)
