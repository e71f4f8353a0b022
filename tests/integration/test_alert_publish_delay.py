"""``NodeStats.alert_publish_delay`` (``unimeter_alert_publish_delay_seconds``): each alert that
ingest logs observes, once, the time by the node's clock from its batch's arrival to its
publication. Real nodes on real disks; the clock is set by the test, and where a test needs the
clock to move while an alert waits for its publication, the urgent group's completion (committed
for real) is held until the test releases it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Client, Metric
from cluster_client.partitioning import partition_of
from node.node import Node, NodeConfig
from node.stats import ALERT_DELAY_BUCKETS
from tests.engines import ENGINES

pytestmark = pytest.mark.timeout(30)

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z, the events' time
ARRIVAL = T0 + 3_600 * 1_000_000_000  # the node's clock when the batches arrive
PARTITIONS = 4
TWO_CAPS = Metric("calls", AggType.SUM, thresholds=(AlertThreshold("ten", 10), AlertThreshold("twenty", 20)))


@dataclass
class SetClock:
    now: int

    def now_ns(self) -> int:
        return self.now


def account_in(partition: int) -> int:
    return next(a for a in range(1, 10_000) if partition_of(a, PARTITIONS) == partition)


def urgent_completions_held(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], None]]:
    """Urgent (not background) group commits of ``node`` run for real, but each one's completion
    waits in the returned list until the test calls it."""
    held: list[Callable[[], None]] = []
    real = node.backend.commit_group

    def holding(partitions: Sequence[int], *, background: bool, then: Callable[[], None]) -> None:
        real(partitions, background=background, then=then if background else lambda: held.append(then))

    monkeypatch.setattr(node.backend, "commit_group", holding)
    return held


async def published(node: Node, alerts: int, held: list[Callable[[], None]]) -> None:
    """Release held completions until ``alerts`` alerts are published over the node (5 s at most)."""
    async with asyncio.timeout(5):
        while sum(p.published_alert_offset for p in node.partitions) < alerts:
            while held:
                held.pop(0)()
            await asyncio.sleep(0.002)


async def started_node(tmp_path: Path, clock: SetClock, engine: str = "python") -> tuple[Node, Client]:
    node = Node(NodeConfig(tmp_path / "data", partitions=PARTITIONS, clock=clock, engine=engine))
    await node.start()
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    await client.metrics.create(TWO_CAPS)
    return node, client


@pytest.mark.parametrize("engine", ENGINES)
async def test_each_alert_observes_the_time_from_its_batch_s_arrival_to_its_publication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """An ASYNC batch fires two alerts in one partition (one record) and one in another. The
    clock moves 7 ms while their urgent flush is in flight: three observations of 7 ms, one per
    alert, none before the publication. Either engine logs them."""
    clock = SetClock(ARRIVAL)
    node, client = await started_node(tmp_path, clock, engine)
    try:
        held = urgent_completions_held(node, monkeypatch)
        rows = [
            (account_in(0), "calls", 25, T0, None, 1, "both-caps"),
            (account_in(1), "calls", 10, T0, None, 1, "one-cap"),
        ]
        await client.ingest_rows(rows, sync=False)
        delays = node.stats.alert_publish_delay
        assert delays.count == 0  # logged, not published yet
        clock.now = ARRIVAL + 7_000_000
        await published(node, 3, held)
        assert delays.count == 3
        assert delays.sum == pytest.approx(3 * 0.007)
        by_bound = dict(delays.cumulative())
        assert (by_bound[0.005], by_bound[0.01], by_bound[float("inf")]) == (0, 3, 3)
        # Published once, observed once: later ticks and flushes add nothing.
        await client.ingest_rows([(account_in(2), "calls", 1, T0, None, 1, "no-cap")], sync=True)
        await asyncio.sleep(0.05)
        assert delays.count == 3
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_clock_that_went_back_counts_as_no_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SetClock(ARRIVAL)
    node, client = await started_node(tmp_path, clock)
    try:
        held = urgent_completions_held(node, monkeypatch)
        await client.ingest_rows([(account_in(0), "calls", 10, T0, None, 1, "one-cap")], sync=False)
        clock.now = ARRIVAL - 5_000_000_000
        await published(node, 1, held)
        delays = node.stats.alert_publish_delay
        assert (delays.count, delays.sum) == (1, 0.0)
        assert delays.cumulative()[0] == (ALERT_DELAY_BUCKETS[0], 1)
    finally:
        monkeypatch.undo()
        await node.close()


async def test_a_sync_batch_s_alerts_are_observed_when_its_wait_publishes_them(tmp_path: Path) -> None:
    """A SYNC call publishes its alerts once its own wait is over: observed then (the clock did
    not move: a delay of 0), and a restart does not observe them again."""
    clock = SetClock(ARRIVAL)
    node, client = await started_node(tmp_path, clock)
    try:
        await client.ingest_rows([(account_in(3), "calls", 20, T0, None, 1, "both-caps")], sync=True)
        assert node.partitions[3].published_alert_offset == 2
        delays = node.stats.alert_publish_delay
        assert (delays.count, delays.sum) == (2, 0.0)
    finally:
        await node.close()
    again = Node(NodeConfig(tmp_path / "data", partitions=PARTITIONS, clock=clock))
    await again.start()
    try:
        assert again.partitions[3].published_alert_offset == 2
        await asyncio.sleep(0.05)  # a few ticks
        assert again.stats.alert_publish_delay.count == 0
    finally:
        await again.close()
