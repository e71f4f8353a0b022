"""The Python SDK's AlertSubscription: bounded buffer, dropped(), catch-up from the log, resume."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Client, DeliveryMode, Event, Metric
from node.node import Node, NodeConfig
from tests.process import start_serve

T0 = 19_980 * 86_400 * 1_000_000_000


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    node = Node(NodeConfig(tmp_path / "data", partitions=4, flush_interval=0.002))
    await node.start()
    try:
        c = await Client.in_process(node, metric_lookup=node.metric_of)
        await c.metrics.create(Metric("gb", AggType.SUM, thresholds=(AlertThreshold("every_1", 1, True),)))
        yield c
    finally:
        await node.close()


async def fire(client: Client, n: int, start: int = 0) -> None:
    """n alerts: every event raises account 7's sum by one multiple of the threshold."""
    for i in range(start, start + n):
        await client.ingest([Event(7, "gb", 1, T0 + i, event_id=f"e{i}")])


async def take(sub: AsyncIterator[object], n: int) -> list[object]:
    out = []
    async with asyncio.timeout(10):
        while len(out) < n:
            out.append(await anext(sub))
    return out


async def test_a_full_buffer_drops_locally_and_catches_up_from_the_log(client: Client) -> None:
    async with client.alerts.subscribe(buffer=4) as sub:
        await fire(client, 40)
        async with asyncio.timeout(10):
            while sub.dropped() == 0:
                await asyncio.sleep(0.01)
        got = await take(sub, 40)
        multiples = [a.multiple for a in got]  # type: ignore[attr-defined]
        # Nothing lost, nothing out of order: the dropped ones came back from the alert log.
        assert multiples == list(range(1, 41))
        assert sub.dropped() > 0
        partition = client.partition_of(7)
        assert sub.offsets()[partition] == 40


async def test_resume_from_offsets_delivers_exactly_what_follows(client: Client) -> None:
    async with client.alerts.subscribe() as sub:
        await fire(client, 5)
        first = await take(sub, 3)
        saved = sub.offsets()
    assert [a.multiple for a in first] == [1, 2, 3]  # type: ignore[attr-defined]
    await fire(client, 2, start=5)
    async with client.alerts.subscribe(since_offsets=saved) as resumed:
        rest = await take(resumed, 4)
        assert [a.multiple for a in rest] == [4, 5, 6, 7]  # type: ignore[attr-defined]
        assert resumed.dropped() == 0


async def test_filters_and_bad_requests(client: Client) -> None:
    from cluster_client import InvalidArgumentError, OutOfRangeError

    with pytest.raises(InvalidArgumentError) as bad:
        await client.alerts.subscribe(metric_codes=["nope"]).start()
    assert [v.field for v in bad.value.violations] == ["metric_codes[0]"]
    with pytest.raises(OutOfRangeError):
        await client.alerts.subscribe(since_offsets={0: 99}).start()
    async with client.alerts.subscribe(account_ids=[8]) as other:
        await fire(client, 2)
        await client.ingest([Event(8, "gb", 1, T0, event_id="x")])
        (alert,) = await take(other, 1)
        assert alert.account_id == 8  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stop", ["kill9", "terminate"])
async def test_a_subscription_survives_a_server_restart_with_every_alert_once(
    tmp_path: Path, stop: str
) -> None:
    node_addr = f"127.0.0.1:{free_port()}"
    extra = ("--node-addr", node_addr, "--partitions", "4", "--flush-interval-ms", "2")
    server = await asyncio.to_thread(start_serve, tmp_path / "data", *extra)
    client = await Client.connect([node_addr])
    try:
        await client.metrics.create(
            Metric("gb", AggType.SUM, thresholds=(AlertThreshold("every_1", 1, True),))
        )
        async with client.alerts.subscribe(account_ids=[7]) as sub:
            await fire_sync(client, 3)
            before = await take(sub, 3)
            await asyncio.to_thread(getattr(server, stop))
            server = await asyncio.to_thread(start_serve, tmp_path / "data", *extra)
            await fire_sync(client, 3, start=3)
            after = await take(sub, 3)
            # Nothing repeated: the next alert is the one of the next event, not an old one again.
            await fire_sync(client, 1, start=6)
            (last,) = await take(sub, 1)
        alerts = [*before, *after, last]
        assert [a.offset for a in alerts] == [1, 2, 3, 4, 5, 6, 7]  # type: ignore[attr-defined]
        assert [a.value_at_cross for a in alerts] == [1, 2, 3, 4, 5, 6, 7]  # type: ignore[attr-defined]
        assert sub.dropped() == 0
    finally:
        await client.close()
        await asyncio.to_thread(server.terminate)


async def fire_sync(client: Client, n: int, start: int = 0) -> None:
    """Like ``fire``, acknowledged only once fsynced (a SIGKILL loses none of them)."""
    for i in range(start, start + n):
        await client.ingest([Event(7, "gb", 1, T0 + i, event_id=f"e{i}")], delivery=DeliveryMode.SYNC)
