"""The reference page's billing-enforcement scenario, end to end with the Python SDK.

A metric with `free_tier_exceeded` at 10,000 and `hard_cap` at 100,000; services ingest until the
subscriber marks an account over its cap; the subscriber is restarted from persisted offsets, the
server is SIGKILLed and restarted in the middle. At the end every crossing in the alert log was
seen by a subscriber at least once, and nothing was seen that is not in the log.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from cluster_client import (
    AggType,
    Alert,
    AlertThreshold,
    Client,
    DeliveryMode,
    Event,
    Metric,
    Period,
    UnimeterError,
)
from tests.process import ServeProcess, start_serve

pytestmark = pytest.mark.crash

T0 = 19_980 * 86_400 * 1_000_000_000
ACCOUNTS = list(range(100, 110))
STEP = 700  # usage units per event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Enforcer:
    """The subscriber of the reference page: marks accounts over their cap, persists offsets."""

    def __init__(self) -> None:
        self.over_cap: set[int] = set()
        self.seen: dict[tuple[int, int], Alert] = {}
        self.persisted: dict[int, int] = {}

    async def run(self, client: Client, stop: asyncio.Event) -> None:
        async with client.alerts.subscribe(since_offsets=self.persisted or None, from_beginning=True) as sub:
            reader = asyncio.ensure_future(anext(sub))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if reader in done:
                        alert = reader.result()
                        self.seen[(alert.partition, alert.offset)] = alert
                        if alert.threshold_code == "hard_cap":
                            self.over_cap.add(alert.account_id)
                        self.persisted = sub.offsets()
                        reader = asyncio.ensure_future(anext(sub))
                    if stopper in done:
                        self.persisted = sub.offsets()
                        return
            finally:
                reader.cancel()
                stopper.cancel()


async def ingest_until_capped(client: Client, enforcer: Enforcer, counter: list[int], budget: int) -> None:
    for _ in range(budget):
        live = [a for a in ACCOUNTS if a not in enforcer.over_cap]
        if not live:
            return
        n = counter[0]
        counter[0] += 1
        events = [
            Event(
                account_id=a,
                metric_code="api_usage",
                value=STEP,
                time_unix_nano=T0 + n * 1000 + i,
                event_id=f"{n}-{a}",
            )
            for i, a in enumerate(live)
        ]
        try:
            await client.ingest(events, delivery=DeliveryMode.SYNC, timeout=5)
        except UnimeterError:
            await asyncio.sleep(0.05)  # the server is restarting: try again (same ids: no double count)
            counter[0] -= 1
        await asyncio.sleep(0.002)


async def test_free_tier_and_hard_cap_enforced_across_subscriber_and_server_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    node_addr = f"127.0.0.1:{port}"
    server: ServeProcess = start_serve(data, "--node-addr", node_addr, "--partitions", "8")
    enforcer = Enforcer()
    counter = [0]
    try:
        client = await Client.connect([node_addr])
        await client.metrics.create(
            Metric(
                code="api_usage",
                agg_type=AggType.SUM,
                thresholds=(
                    AlertThreshold("free_tier_exceeded", 10_000),
                    AlertThreshold("hard_cap", 100_000),
                ),
            )
        )
        stop = asyncio.Event()
        sub_task = asyncio.create_task(enforcer.run(client, stop))
        await ingest_until_capped(client, enforcer, counter, budget=40)
        # The subscriber restarts from its persisted offsets.
        stop.set()
        await asyncio.wait_for(sub_task, 10)
        stop = asyncio.Event()
        sub_task = asyncio.create_task(enforcer.run(client, stop))
        await ingest_until_capped(client, enforcer, counter, budget=30)
        # The server dies and comes back on the same address; ingest and the subscription resume.
        server.kill9()
        server = start_serve(data, "--node-addr", node_addr)
        await ingest_until_capped(client, enforcer, counter, budget=400)
        async with asyncio.timeout(20):
            while enforcer.over_cap != set(ACCOUNTS):
                await asyncio.sleep(0.05)
        truth: dict[tuple[int, int], Alert] = {}
        for a in ACCOUNTS:
            alerts, more = await client.list_alerts(a, 0, page_size=100)
            assert not more
            assert [x.threshold_code for x in alerts] == ["free_tier_exceeded", "hard_cap"], a
            truth.update({(x.partition, x.offset): x for x in alerts})
            usage = await client.query(a, "api_usage", Period(T0, T0 + 30 * 86_400 * 1_000_000_000))
            assert (
                100_000 <= usage.value.sum < 100_000 + 10 * STEP
            )  # the cap held within the in-flight batches
        async with asyncio.timeout(10):
            while set(enforcer.seen) != set(truth):
                assert set(enforcer.seen) <= set(truth), "a subscriber saw an alert that is not in the log"
                await asyncio.sleep(0.05)
        assert {k: v for k, v in enforcer.seen.items()} == truth
        stop.set()
        await asyncio.wait_for(sub_task, 10)
        await client.close()
    finally:
        if server.proc.poll() is None:
            server.kill9()
