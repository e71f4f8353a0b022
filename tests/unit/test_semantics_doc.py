"""Every worked example of docs/semantics.md, run against a real node (in process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cluster_client import (
    AggType,
    AggValue,
    AlertThreshold,
    Client,
    DimensionFilter,
    Event,
    Metric,
    OperationType,
    Period,
    PeriodType,
)
from cluster_client.periods import PeriodCalculator
from node.node import Node, NodeConfig

SEC = 1_000_000_000
T = 19_980 * 86_400 * SEC  # the start of a default 30-day FIXED period
END = T + 30 * 86_400 * SEC
REMOVE = OperationType.REMOVE


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    node = Node(NodeConfig(tmp_path / "data", partitions=4))
    await node.start()
    try:
        yield await Client.in_process(node, metric_lookup=node.metric_of)
    finally:
        await node.close()


async def run(client: Client, metric: Metric, *events: tuple[int, int, OperationType]) -> AggValue:
    await client.metrics.create(metric)
    await client.ingest(
        [Event(42, metric.code, value, T + sec * SEC, operation=op) for value, sec, op in events]
    )
    return (await client.query(42, metric.code, Period(T, END))).value


ADD = OperationType.ADD


async def test_count(client: Client) -> None:
    v = await run(client, Metric("api_calls"), (1, 1, ADD), (1, 2, ADD), (1, 3, ADD), (1, 4, REMOVE))
    assert (v.value, v.count, v.max, v.last_value, v.sum) == (2, 2, 1, 1, 0)


async def test_sum_and_exact_range(client: Client) -> None:
    m = Metric("gb", AggType.SUM)
    v = await run(client, m, (10, 1, ADD), (20, 2, ADD), (5, 3, REMOVE), (40, 4, ADD))
    assert (v.value, v.sum, v.count, v.max, v.last_value) == (65, 65, 2, 40, 40)
    r = (await client.query(42, "gb", Period(T + 2 * SEC, T + 4 * SEC))).value
    assert (r.sum, r.count, r.max, r.last_value) == (15, 0, 20, 20)


async def test_max(client: Client) -> None:
    v = await run(client, Metric("builds", AggType.MAX), (7, 3, ADD), (9, 1, ADD), (4, 2, ADD))
    assert (v.value, v.max, v.count, v.last_value) == (9, 9, 3, 7)


async def test_latest_tie_goes_to_the_higher_offset(client: Client) -> None:
    v = await run(client, Metric("plan", AggType.LATEST), (7, 3, ADD), (9, 1, ADD), (4, 3, ADD))
    assert (v.value, v.last_value) == (4, 4)


async def test_count_unique_and_carry_over(client: Client) -> None:
    v = await run(
        client,
        Metric("seats", AggType.COUNT_UNIQUE),
        (1, 1, ADD), (2, 2, ADD), (1, 3, ADD), (2, 4, REMOVE), (3, 5, REMOVE),
    )  # fmt: skip
    assert (v.value, v.unique_count, v.count) == (1, 1, 1)
    month = Metric("seats_billed", AggType.COUNT_UNIQUE, PeriodType.CALENDAR, carry_over=True)
    await client.metrics.create(month)
    jan = int(datetime(2026, 1, 10).timestamp()) * SEC
    await client.ingest([Event(42, "seats_billed", 7, jan), Event(42, "seats_billed", 8, jan + SEC)])
    feb = Period(int(datetime(2026, 2, 1, tzinfo=ZoneInfo("UTC")).timestamp()) * SEC,
                 int(datetime(2026, 3, 1, tzinfo=ZoneInfo("UTC")).timestamp()) * SEC)  # fmt: skip
    assert (await client.query(42, "seats_billed", feb)).value.unique_count == 2


def _local(zone: str, *args: int) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(zone)).timestamp()) * SEC  # type: ignore[misc]


def test_period_table() -> None:
    noon_utc = _local("UTC", 2026, 3, 8, 12)
    assert PeriodCalculator(PeriodType.FIXED, fixed_period_seconds=3600).period_of(noon_utc) == (
        noon_utc,
        noon_utc + 3600 * SEC,
    )
    berlin = PeriodCalculator(PeriodType.CALENDAR, billing_cycle_day=15, time_zone="Europe/Berlin")
    assert berlin.period_of(_local("Europe/Berlin", 2026, 3, 8, 12)) == (
        _local("Europe/Berlin", 2026, 2, 15),
        _local("Europe/Berlin", 2026, 3, 15),
    )
    ny = PeriodCalculator(PeriodType.DAY, time_zone="America/New_York")
    start, end = ny.period_of(_local("America/New_York", 2026, 3, 8, 12))
    assert (start, end - start) == (_local("America/New_York", 2026, 3, 8), 23 * 3600 * SEC)
    week = PeriodCalculator(PeriodType.WEEK)
    assert week.period_of(noon_utc) == (_local("UTC", 2026, 3, 2), _local("UTC", 2026, 3, 9))


async def test_filters_and_groups(client: Client) -> None:
    m = Metric(
        "compute",
        AggType.SUM,
        filters=(
            DimensionFilter("provider", ("aws", "gcp", "azure")),
            DimensionFilter("region", ("us-east", "us-west", "europe")),
        ),
    )
    await client.metrics.create(m)
    rows = [({"provider": "aws", "region": "us-east"}, 10), ({"provider": "aws", "region": "europe"}, 20),
            ({"provider": "gcp", "region": "europe"}, 40), ({"provider": "gcp"}, 80)]  # fmt: skip
    await client.ingest([Event(42, "compute", v, T + i, props) for i, (props, v) in enumerate(rows)])
    q = client.query
    assert (await q(42, "compute", Period(T, END))).value.sum == 150
    assert (await q(42, "compute", Period(T, END), filters={"provider": "aws"})).value.sum == 30
    both = await q(42, "compute", Period(T, END), filters={"provider": "gcp", "region": "europe"})
    assert both.value.sum == 40
    grouped = await q(42, "compute", Period(T, END), group_by=["region"])
    assert [(g.key, g.value.sum) for g in grouped.groups] == [
        ({"region": ""}, 80),
        ({"region": "europe"}, 60),
        ({"region": "us-east"}, 10),
    ]


async def _alerts(client: Client, n: int) -> list[tuple[str, int, int]]:
    async with asyncio.timeout(5):
        while True:
            alerts, _ = await client.list_alerts(42)
            if len(alerts) >= n:
                return [(a.threshold_code, a.multiple, a.value_at_cross) for a in alerts]
            await asyncio.sleep(0.01)


async def test_one_shot_and_recurring_thresholds(client: Client) -> None:
    await client.metrics.create(Metric("calls", thresholds=(AlertThreshold("free_tier_exceeded", 3),)))
    await client.ingest([Event(42, "calls", 1, T + i) for i in range(5)])
    await client.ingest([Event(42, "calls", 1, T + 10 + i, operation=REMOVE) for i in range(3)])
    await client.ingest([Event(42, "calls", 1, T + 20)])
    assert await _alerts(client, 2) == [("free_tier_exceeded", 1, 3), ("free_tier_exceeded", 1, 3)]
    await client.metrics.create(Metric("gb", AggType.SUM, thresholds=(AlertThreshold("every_10", 10, True),)))
    await client.ingest([Event(42, "gb", v, T + i) for i, v in enumerate([9, 1, 25])])
    assert (await _alerts(client, 4))[2:] == [("every_10", 1, 10), ("every_10", 3, 35)]
