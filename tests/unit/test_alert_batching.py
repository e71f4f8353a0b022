"""AlertSubscribe's batched mode over a stream of items: grouping, order, errors, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cluster_client.errors import UnavailableError
from cluster_client.node_api import AlertStreamItem
from cluster_client.types import Alert
from service.alert_batching import batched_alert_responses


def alert(offset: int) -> AlertStreamItem:
    return AlertStreamItem(Alert(7, "gb", "every_10", 10, offset, 10 * offset, 0, 1, 2, 0, offset), {})


def heartbeat(offset: int) -> AlertStreamItem:
    return AlertStreamItem(None, {0: offset})


async def stream_of(
    items: list[AlertStreamItem], error: Exception | None = None
) -> AsyncIterator[AlertStreamItem]:
    for item in items:
        yield item
    if error is not None:
        raise error


def shapes(responses: list[object]) -> list[object]:
    out: list[object] = []
    for r in responses:
        kind = r.WhichOneof("kind")  # type: ignore[attr-defined]
        if kind == "batch":
            out.append([a.offset for a in r.batch.alerts])  # type: ignore[attr-defined]
        else:
            out.append(("heartbeat", dict(r.heartbeat.offsets)))  # type: ignore[attr-defined]
    return out


async def collect(stream: AsyncIterator[object]) -> list[object]:
    async with asyncio.timeout(5):
        return [r async for r in stream]


async def test_ready_alerts_share_messages_a_heartbeat_ends_a_batch_and_order_is_kept() -> None:
    items = [heartbeat(0), *map(alert, range(1, 6)), heartbeat(5), alert(6), *map(alert, range(7, 12))]
    got = shapes(await collect(batched_alert_responses(stream_of(items), 3)))
    flat = [o for s in got if isinstance(s, list) for o in s]
    assert flat == list(range(1, 12))  # every alert once, in order
    assert got[0] == ("heartbeat", {0: 0})
    assert all(len(s) <= 3 for s in got if isinstance(s, list))
    beat = got.index(("heartbeat", {0: 5}))  # nothing after the heartbeat was sent before it
    assert [o for s in got[:beat] if isinstance(s, list) for o in s] == [1, 2, 3, 4, 5]


async def test_an_error_of_the_stream_is_raised_after_the_items_before_it() -> None:
    responses = []
    failing = stream_of([alert(1), alert(2)], UnavailableError("node gone", retry_after_seconds=0.1))
    with pytest.raises(UnavailableError):
        async with asyncio.timeout(5):
            async for response in batched_alert_responses(failing, 10):
                responses.append(response)
    assert shapes(responses) == [[1, 2]] or shapes(responses) == [[1], [2]]


async def test_closing_the_responses_closes_the_stream_and_stops_reading() -> None:
    closed = asyncio.Event()
    produced = 0

    async def endless() -> AsyncIterator[AlertStreamItem]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield alert(produced)
                await asyncio.sleep(0)
        finally:
            closed.set()

    responses = batched_alert_responses(endless(), 4)
    first = await anext(responses)
    assert first.batch.alerts[0].offset == 1
    await responses.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(closed.wait(), 5)
    stopped_at = produced
    await asyncio.sleep(0.05)
    assert produced == stopped_at
    assert stopped_at <= 1 + 4 * 2 + 1  # read ahead by at most two messages' worth
