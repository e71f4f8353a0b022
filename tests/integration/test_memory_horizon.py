"""The memory horizon changes where ListEvents positions live and which minute cells are kept,
never an answer.

Two in-process nodes take the same operations: one with a one-hour memory horizon (aged hours go
to index runs on disk, their minute cells are folded), the reference with none (everything in
memory). After every step, every account's ``index.hours`` over the whole time line and a
sub-range, every ``ListEvents`` page (small pages, so tokens continue across hours held in runs
and in memory) and range queries of every aggregation type with edges inside hours (read back from
the log on the aged side: whole minutes folded into cells once per record, partial ones row by
row), filtered and grouped too, are equal. Hypothesis
draws the events (hours of event time from now back to 8 hours ago, so some land in hours already
handed to a run: late events), the clock's advances, snapshots (where hours age) and restarts.
Deterministic tests then pin what the runs do: memory given up, runs bounded in number, a
damaged, missing or foreign run making recovery replay the log (never a wrong answer), runs not
listed by the snapshot deleted at recovery. Both engines.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import AggType, Client, DimensionFilter, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow, StoredEvent
from node.aggregation.snapshot_data import pack
from node.index_runs import MAX_RUNS
from node.node import Node, NodeConfig
from tests.engines import ENGINES

SEC = 1_000_000_000
MINUTE = 60 * SEC
HOUR = 60 * MINUTE
T0 = 1_772_323_200 * SEC + 7 * MINUTE
PARTITIONS = 2
ACCOUNTS = range(1, 7)
EVER = (0, 2**62)
METRICS = (
    Metric("calls", AggType.SUM, filters=(DimensionFilter("region", ("eu", "us")),)),
    Metric("n", AggType.COUNT),
    Metric("peak", AggType.MAX),
    Metric("last", AggType.LATEST),
)
REGIONS = ("eu", "us")


@dataclass
class SetClock:
    now: int

    def now_ns(self) -> int:
        return self.now


class Side:
    """One node of the pair, reopened on the same directory by :meth:`restart`."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node = Node(config)

    async def restart(self) -> None:
        await self.node.close()
        self.node = Node(self.config)

    def hours(self, account: int, start: int, end: int) -> list[tuple[int, list[int]]]:
        partition = self.node.served(partition_of(account, PARTITIONS))
        assert partition is not None
        return list(partition.index.hours(account, start, end))

    async def pages(self, account: int, start: int, end: int) -> list[tuple[list[StoredEvent], str]]:
        out: list[tuple[list[StoredEvent], str]] = []
        token = ""
        while True:
            page, token = await self.node.list_events(
                partition_of(account, PARTITIONS), account, start, end, "", 3, token
            )
            out.append((page, token))
            if not token:
                return out


async def _pair(root: Path, engine: str, clock: SetClock) -> tuple[Side, Side]:
    sides = []
    for name, horizon in (("aged", HOUR), ("reference", 0)):
        config = NodeConfig(
            root / name, partitions=PARTITIONS, clock=clock, engine=engine, memory_horizon_ns=horizon
        )
        side = Side(config)
        client = await Client.in_process(side.node, metric_lookup=side.node.metric_of)
        for metric in METRICS:
            await client.metrics.create(metric)
        sides.append(side)
    return sides[0], sides[1]


async def _ingest(sides: tuple[Side, Side], rows: list[EventRow]) -> None:
    parts: dict[int, list[EventRow]] = {}
    for row in rows:
        parts.setdefault(partition_of(row[0], PARTITIONS), []).append(row)
    for side in sides:
        await side.node.ingest(list(parts.items()), False, "")


async def _assert_same(aged: Side, reference: Side, clock: SetClock) -> None:
    ranges = (EVER, (clock.now - 5 * HOUR - 17 * MINUTE, clock.now - HOUR + 3 * MINUTE))
    for account in ACCOUNTS:
        for start, end in ranges:
            assert aged.hours(account, start, end) == reference.hours(account, start, end)
            assert await aged.pages(account, start, end) == await reference.pages(account, start, end)
    # Edges inside hours (off minute boundaries too), one range inside one hour, the whole line.
    hour = clock.now // HOUR * HOUR
    queries = (
        (hour - 5 * HOUR - 17 * MINUTE + 1_234, clock.now - HOUR + 3 * MINUTE + 77),
        (hour - 3 * HOUR + 10 * MINUTE + 5, hour - 3 * HOUR + 50 * MINUTE),
        (hour - 8 * HOUR, hour - 2 * HOUR + 30 * MINUTE),
        (1, 2**62),
    )
    for account in ACCOUNTS:
        p = partition_of(account, PARTITIONS)
        for metric in METRICS:
            for start, end in queries:
                shapes: list[tuple[dict[str, str], list[str]]] = [({}, [])]
                if metric.filters:
                    shapes += [({"region": "eu"}, []), ({}, ["region"])]
                for filters, group_by in shapes:
                    answers = [
                        await side.node.query(p, account, metric.code, start, end, 0, filters, group_by)
                        for side in (aged, reference)
                    ]
                    assert answers[0] == answers[1], (metric.code, start, end, filters, group_by)


_events = st.lists(
    st.tuples(
        st.sampled_from(ACCOUNTS),
        st.integers(0, 8),
        st.integers(0, 59),
        st.sampled_from(METRICS),
        st.booleans(),  # a REMOVE, where the metric takes one
    ),
    min_size=1,
    max_size=8,
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), _events),
        st.tuples(st.just("advance"), st.integers(1, 150)),
        st.tuples(st.just("snapshot"), st.none()),
        st.tuples(st.just("restart"), st.none()),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_steps)
def test_answers_are_the_same_with_and_without_the_horizon(
    engine: str, steps: list[tuple[str, object]]
) -> None:
    asyncio.run(_run_steps(engine, steps))


async def _run_steps(engine: str, steps: list[tuple[str, object]]) -> None:
    clock = SetClock(T0)
    with tempfile.TemporaryDirectory() as root:
        sides = await _pair(Path(root), engine, clock)
        n = 0
        try:
            for op, arg in steps:
                if op == "ingest":
                    assert isinstance(arg, list)
                    rows: list[EventRow] = []
                    for account, hours_ago, minute, metric, remove in arg:
                        t = (clock.now // HOUR - hours_ago) * HOUR + minute * MINUTE + n
                        props = {"region": REGIONS[n % 2]} if metric.filters else None
                        op = 2 if remove and metric.agg_type in (AggType.SUM, AggType.COUNT) else 1
                        rows.append((account, metric.code, 1 + n % 5, t, props, op, f"e{n}"))
                        n += 1
                    await _ingest(sides, rows)
                elif op == "advance":
                    assert isinstance(arg, int)
                    clock.now += arg * MINUTE
                elif op == "snapshot":
                    for side in sides:
                        for partition in side.node.partitions:
                            await partition.snapshot()
                else:
                    for side in sides:
                        await side.restart()
                await _assert_same(*sides, clock)
        finally:
            for side in sides:
                await side.node.close()


def _runs_on_disk(side: Side) -> list[Path]:
    return sorted(side.config.data_dir.glob("partitions/*/index/run-*.umx"))


async def _hours_of_load(
    sides: tuple[Side, Side], clock: SetClock, hours: int, *, snapshot: bool = True
) -> None:
    """An event of every account in every hour, then (snapshot) a snapshot an hour, for ``hours``."""
    for h in range(hours):
        rows = [(a, "calls", a, clock.now + a, None, 1, f"h{h}-a{a}") for a in ACCOUNTS]
        await _ingest(sides, rows)
        clock.now += HOUR
        if snapshot:
            for side in sides:
                for partition in side.node.partitions:
                    await partition.snapshot()


@pytest.mark.parametrize("engine", ENGINES)
async def test_aged_hours_leave_memory_and_runs_stay_bounded(tmp_path: Path, engine: str) -> None:
    clock = SetClock(T0)
    aged, reference = sides = await _pair(tmp_path, engine, clock)
    try:
        await _hours_of_load(sides, clock, 3 * MAX_RUNS)
        partition = aged.node.served(0)
        assert partition is not None
        held = partition.index.to_snapshot(partition.events.end_position)
        in_memory = {hour for _, hours in msgpack.unpackb(pack(held)) for hour, _ in hours}
        # Hours that ended more than the horizon ago are on disk only: at most the last two
        # hours of event time (the one in progress, the one the horizon has not passed) remain.
        assert in_memory and max(in_memory) - min(in_memory) <= 1
        runs = _runs_on_disk(aged)
        assert 0 < len(runs) <= MAX_RUNS * PARTITIONS
        assert not _runs_on_disk(reference)
        await _assert_same(aged, reference, clock)
        await aged.restart()  # the snapshot lists the runs: loaded, nothing replayed into memory
        assert _runs_on_disk(aged) == runs
        await _assert_same(aged, reference, clock)
    finally:
        for side in sides:
            await side.node.close()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("damage", ["bit flip", "truncated", "missing", "another partition's"])
async def test_an_unusable_run_makes_recovery_replay_the_log(
    tmp_path: Path, engine: str, damage: str
) -> None:
    clock = SetClock(T0)
    aged, reference = sides = await _pair(tmp_path, engine, clock)
    try:
        await _hours_of_load(sides, clock, 4)
        await aged.node.close()
        runs = _runs_on_disk(aged)
        victim = next(r for r in runs if "/0000/" in r.as_posix())
        if damage == "bit flip":
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0x10
            victim.write_bytes(bytes(data))
        elif damage == "truncated":
            victim.write_bytes(victim.read_bytes()[:-9])
        elif damage == "missing":
            victim.unlink()
        else:
            other = next(r for r in runs if "/0001/" in r.as_posix())
            victim.write_bytes(other.read_bytes())
        aged.node = Node(aged.config)
        # Partition 0 replayed its whole log (its runs all deleted); partition 1 kept its runs.
        assert not list((aged.config.data_dir / "partitions/0000/index").iterdir())
        assert list((aged.config.data_dir / "partitions/0001/index").iterdir())
        await _assert_same(aged, reference, clock)
        await _hours_of_load(sides, clock, 3)  # and the next hand-overs write runs again
        assert list((aged.config.data_dir / "partitions/0000/index").iterdir())
        await _assert_same(aged, reference, clock)
    finally:
        for side in sides:
            await side.node.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_runs_no_snapshot_lists_are_deleted_at_recovery(tmp_path: Path, engine: str) -> None:
    """A run written after the last stored snapshot (a crash between the two) is deleted, and
    replay puts its positions back in memory."""
    clock = SetClock(T0)
    aged, reference = sides = await _pair(tmp_path, engine, clock)
    try:
        await _hours_of_load(sides, clock, 4)
        await aged.node.close()
        kept = _runs_on_disk(aged)
        # The state of a crash after a run was written but before the snapshot listing it: an
        # earlier snapshot with a later run beside it.
        partition_dir = aged.config.data_dir / "partitions/0000"
        earlier = (partition_dir / "snapshot.msgpack").read_bytes()
        aged.node = Node(aged.config)
        await _hours_of_load(sides, clock, 2)
        await aged.node.close()
        (partition_dir / "snapshot.msgpack").write_bytes(earlier)
        later = [r for r in sorted(set(_runs_on_disk(aged)) - set(kept)) if "/0000/" in r.as_posix()]
        assert later
        aged.node = Node(aged.config)
        assert not any(r.exists() for r in later)
        await _assert_same(aged, reference, clock)
    finally:
        for side in sides:
            await side.node.close()
