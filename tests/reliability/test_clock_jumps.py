"""The node's wall clock jumping back and forward, against a model of the rule in docs/reliability.md.

A node is driven in-process with a clock the test moves (``NodeConfig.clock``); its background loops
are not started, so dedup expiry happens exactly where the test calls ``Node.expire`` (the
maintenance loop's step). The rule checked: each partition's arrival time is the clock never moving
back (``max(clock, last arrival)``); it stamps events sent without a time and alert record times,
and a dedup key is forgotten only once the clock is past its arrival plus the window. So offsets only
grow, a backward jump never forgets a key early, a forward jump counts as time that passed, and a
threshold crossing fires once. Runs on every target of ``tests.engines``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import AggType, AlertThreshold, Client, Metric, Period
from cluster_client.partitioning import partition_of
from cluster_client.types import Alert, EventRow, OperationType, StoredEvent
from node.dedup_index import derived_key, event_key
from node.node import Node, NodeConfig
from tests.engines import Target, over_targets
from tests.reference_model import ReferenceModel

SEC = 1_000_000_000
HOUR = 3600 * SEC
WINDOW = 600 * SEC
T = 1_772_323_200 * SEC  # 2026-03-01T00:00Z, the start of an hour
PARTITIONS = 2
ACCOUNTS = (1, 2, 3)
INT64_MAX = 2**63 - 1
ADD, REMOVE = OperationType.ADD, OperationType.REMOVE

METRICS = (
    Metric(
        "calls",
        AggType.COUNT,
        fixed_period_seconds=3600,
        thresholds=(AlertThreshold("third", 3), AlertThreshold("every_4", 4, recurring=True)),
    ),
    Metric(
        "bytes", AggType.SUM, fixed_period_seconds=3600, thresholds=(AlertThreshold("every_50", 50, True),)
    ),
)


@dataclass
class SetClock:
    """A wall clock the test sets."""

    now: int

    def now_ns(self) -> int:
        return self.now


async def open_node(target: Target, data_dir: Path, clock: SetClock) -> tuple[Node, Client]:
    """A node of ``target`` on ``data_dir`` with ``clock`` (no background loops), and a client of it."""
    node = target.make_node(
        NodeConfig(data_dir, partitions=PARTITIONS, dedup_window_seconds=WINDOW / SEC, clock=clock)
    )
    return node, await Client.in_process(node, metric_lookup=node.metric_of)


@asynccontextmanager
async def running(target: Target, data_dir: Path, clock: SetClock) -> AsyncIterator[tuple[Node, Client]]:
    """:func:`open_node`, closed at the end."""
    node, client = await open_node(target, data_dir, clock)
    try:
        yield node, client
    finally:
        await node.close()


async def create_metrics(client: Client) -> dict[str, int]:
    """Create :data:`METRICS`; their generations by code."""
    return {m.code: (await client.metrics.create(m)).create_time_unix_nano for m in METRICS}


def row(account: int, code: str, value: int = 1, t: int = 0, op: int = ADD, event_id: str = "") -> EventRow:
    return (account, code, value, t, None, op, event_id)


async def stored_events(client: Client) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    for account in ACCOUNTS:
        token = ""
        while True:
            page, token = await client.list_events(account, 0, INT64_MAX, page_size=1000, page_token=token)
            out.extend(page)
            if not token:
                break
    return sorted(out, key=lambda e: (e.partition, e.offset))


async def all_alerts(client: Client) -> list[Alert]:
    out: list[Alert] = []
    for account in ACCOUNTS:
        after, more = 0, True
        while more:
            page, more = await client.list_alerts(account, after, page_size=1000)
            out.extend(page)
            after = page[-1].offset if page else after
    return sorted(out, key=lambda a: (a.partition, a.offset))


# ------------------------------------------------------------------------------ the rule, by example


@over_targets
async def test_a_backward_jump_keeps_every_key_and_stamps_no_earlier_time(
    target: Target, tmp_path: Path
) -> None:
    clock = SetClock(T + 30 * SEC)
    async with running(target, tmp_path / "data", clock) as (node, client):
        await create_metrics(client)
        first = await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)
        clock.now -= 2 * HOUR
        second = await client.ingest_rows([row(1, "calls")], sync=True)
        assert second.offsets[0] > first.offsets[0]
        node.expire()
        # The key of "a" is still there: the clock went back, the arrival of "a" did not.
        again = await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)
        assert (again.n_stored, again.n_duplicates, again.offsets) == (0, 1, first.offsets)
        # The unstamped event got the partition's arrival time, not the earlier clock.
        times = [e.time_unix_nano for e in await stored_events(client)]
        assert times == [T + 30 * SEC, T + 30 * SEC]
        # Forgotten only once the clock is past the arrival plus the window.
        clock.now = T + 30 * SEC + WINDOW
        node.expire()
        assert (await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)).n_duplicates == 1
        clock.now += 1
        node.expire()
        assert (await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)).n_stored == 1


@over_targets
async def test_a_forward_jump_counts_as_time_that_passed(target: Target, tmp_path: Path) -> None:
    clock = SetClock(T)
    async with running(target, tmp_path / "data", clock) as (node, client):
        await create_metrics(client)
        await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)
        clock.now += WINDOW // 2
        node.expire()
        assert (await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)).n_duplicates == 1
        clock.now += WINDOW  # past the window by the jumped clock: "a" is forgotten
        node.expire()
        assert (await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)).n_stored == 1
        # ... and the jump back that may follow forgets nothing more and reorders nothing.
        clock.now = T
        node.expire()
        last = await client.ingest_rows([row(1, "calls", event_id="a")], sync=True)
        assert last.n_duplicates == 1
        assert [e.offset for e in await stored_events(client)] == [1, 2]


@over_targets
async def test_a_threshold_crossing_fires_once_whatever_the_clock_does(
    target: Target, tmp_path: Path
) -> None:
    clock = SetClock(T + 10 * SEC)
    async with running(target, tmp_path / "data", clock) as (node, client):
        await create_metrics(client)
        await client.ingest_rows([row(1, "calls"), row(1, "calls")], sync=True)
        for jump in (-2 * HOUR, 2 * HOUR + 5 * SEC, -30 * 24 * HOUR, -1):
            clock.now += jump
            node.expire()
            await client.ingest_rows([row(1, "calls")], sync=True)
        alerts = await all_alerts(client)
        # All six events are stamped in the first hour (the 3rd at T+10s although the clock read 2
        # hours earlier, the 4th at T+15s): "third" fired once, "every_4" once.
        assert [
            (a.threshold_code, a.multiple, a.value_at_cross, a.period_start_unix_nano) for a in alerts
        ] == [
            ("third", 1, 3, T),
            ("every_4", 1, 4, T),
        ]
        assert [a.record_time_unix_nano for a in alerts] == [T + 10 * SEC, T + 15 * SEC]


# --------------------------------------------------------------------------- random jumps and ingests


@dataclass
class ClockModel:
    """The rule of docs/reliability.md per partition: arrival, dedup keys by arrival, next offset."""

    generations: dict[str, int]
    last_arrival: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    keys: dict[int, dict[int, tuple[int, int]]] = field(default_factory=lambda: defaultdict(dict))
    next_offset: dict[int, int] = field(default_factory=lambda: defaultdict(lambda: 1))
    stored: list[tuple[int, int, EventRow]] = field(default_factory=list)
    """(partition, offset, row as stored) of every stored event."""

    def ingest(self, rows: Sequence[EventRow], now: int) -> list[int]:
        """The offsets the node must answer for ``rows`` at clock ``now``."""
        offsets = [0] * len(rows)
        by_partition: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_partition[partition_of(r[0], PARTITIONS)].append(i)
        for p, indexes in by_partition.items():
            arrival = max(now, self.last_arrival[p])
            in_batch: dict[int, int] = {}
            stored_here = False
            for i in indexes:
                account, code, value, t, props, op, event_id = rows[i]
                gen = self.generations[code]
                key = (
                    event_key(account, code, gen, event_id)
                    if event_id
                    else derived_key(account, code, gen, t, value, op, props)
                    if t
                    else None
                )
                if key is not None:
                    original = in_batch.get(key) or self.keys[p].get(key, (0, 0))[1]
                    if original:
                        offsets[i] = original
                        continue
                    in_batch[key] = self.next_offset[p]
                offsets[i] = self.next_offset[p]
                self.stored.append((p, offsets[i], (account, code, value, t or arrival, props, op, event_id)))
                self.next_offset[p] += 1
                stored_here = True
            if stored_here:  # a part of only duplicates appends no record and moves no arrival
                self.last_arrival[p] = arrival
            for key, offset in in_batch.items():
                self.keys[p][key] = (arrival, offset)
        return offsets

    def expire(self, now: int) -> None:
        for keys in self.keys.values():
            for key in [k for k, (arrival, _) in keys.items() if arrival < now - WINDOW]:
                del keys[key]


JUMPS = st.sampled_from(
    [-30 * 24 * HOUR, -2 * WINDOW, -WINDOW - 1, -SEC, 1, SEC, WINDOW // 2, WINDOW + 1, HOUR]
)
EVENTS = st.tuples(
    st.sampled_from(ACCOUNTS),
    st.sampled_from([m.code for m in METRICS]),
    st.integers(1, 30),
    st.sampled_from([0, 0, T + 5 * SEC, T - HOUR])
    | st.integers(0, 3 * 3600).map(lambda s: T - HOUR + s * SEC),
    st.sampled_from([ADD, ADD, REMOVE]),
    st.sampled_from(["", "", "a", "b", "c", "d"]),
).map(lambda e: row(e[0], e[1], e[2], e[3], e[4], e[5]))
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("jump"), JUMPS | st.integers(-2 * HOUR, 2 * HOUR)),
        st.tuples(st.just("ingest"), st.lists(EVENTS, min_size=1, max_size=6)),
        st.just(("expire",)),
        st.just(("restart",)),
    ),
    min_size=1,
    max_size=30,
)


@over_targets
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_random_clock_jumps_between_ingests_match_the_model(target: Target, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    data_dir = Path(tempfile.mkdtemp(prefix="unimeter-clock-"))
    try:
        asyncio.run(_scenario(target, data_dir, steps))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _scenario(target: Target, data_dir: Path, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    clock = SetClock(T + 1800 * SEC)
    node, client = await open_node(target, data_dir, clock)
    try:
        model = ClockModel(await create_metrics(client))
        for step in steps:
            if step[0] == "jump":
                clock.now += step[1]
            elif step[0] == "expire":
                node.expire()
                model.expire(clock.now)
            elif step[0] == "restart":
                await node.close()
                node, client = await open_node(target, data_dir, clock)
            else:
                rows = step[1]
                want = model.ingest(rows, clock.now)
                got = await client.ingest_rows(rows, sync=True)
                assert got.offsets == want, (step, clock.now)
        await _check_against_the_model(client, model)
    finally:
        await node.close()


async def _check_against_the_model(client: Client, model: ClockModel) -> None:
    stored = await stored_events(client)
    assert [
        (e.partition, e.offset, (e.account_id, e.metric_code, e.value, e.time_unix_nano, e.properties or None,
                                 e.operation, e.event_id))
        for e in stored
    ] == sorted(model.stored, key=lambda s: (s[0], s[1]))  # fmt: skip
    reference = ReferenceModel(METRICS)
    reference.ingest(
        (e.account_id, e.metric_code, e.value, e.time_unix_nano, e.properties, e.operation, e.offset)
        for e in stored
    )
    alerts = await all_alerts(client)
    for p in range(PARTITIONS):
        mine = [a for a in alerts if a.partition == p]
        assert [a.offset for a in mine] == list(range(1, len(mine) + 1))
        times = [a.record_time_unix_nano for a in mine]
        assert times == sorted(times)  # record times follow the arrival clock, never back
    crossings = defaultdict(list)
    for a in alerts:
        crossings[(a.account_id, a.metric_code, a.threshold_code, a.period_start_unix_nano)].append(
            a.multiple
        )
    for key, multiples in crossings.items():
        if any(
            m.code == key[1] and th.code == key[2] and th.recurring for m in METRICS for th in m.thresholds
        ):
            assert multiples == sorted(set(multiples)), key  # a recurring multiple never fires twice
    got_alerts = [
        (a.account_id, a.metric_code, a.threshold_code, a.threshold_value, a.multiple, a.value_at_cross,
         a.period_start_unix_nano, a.event_time_unix_nano)
        for a in alerts
    ]  # fmt: skip
    want_alerts = reference.alerts()
    for account in ACCOUNTS:
        for metric in METRICS:
            which = (account, metric.code)
            assert [x for x in got_alerts if x[:2] == which] == [x for x in want_alerts if x[:2] == which], (
                which
            )
            hours = {e.time_unix_nano // HOUR * HOUR for e in stored if e.account_id == account}
            for start in sorted(hours):
                result = await client.query(account, metric.code, Period(start, start + HOUR))
                want, _ = reference.query(account, metric.code, start, start + HOUR)
                assert result.value == want, (account, metric.code, start)
