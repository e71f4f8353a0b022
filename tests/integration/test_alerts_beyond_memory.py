"""Alerts past a partition's in-memory bound are read from its alert log, and nothing a reader
sees changes (docs/design.md, "Alerts in memory and on disk").

A node keeping only a few alerts per partition in memory (``alerts_in_memory`` 0 to 2) and a
reference node keeping them all get the same random ingest calls (SYNC and ASYNC, on one clock,
so their alerts are the same to the field) on every engine, with alert counts far above the
bound. Meanwhile subscriptions open at random offsets (some filtered on an account) and read a
random number of alerts after each call, so they cross the boundary between the part of the log
that left memory and the part in it while new alerts arrive. Each must have read exactly the
reference's alerts after its offset, in order, with no gap and no repeat; every ListAlerts page
of every account, at random page sizes and from random offsets, must equal the reference's; and
after a restart (with another bound, from the snapshots or from the logs alone) every answer is
the same again. Last, ``--alerts-in-memory`` from the flag or the environment reaches a real
server's partitions, whose ListAlerts pages read past the bound over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import AggType, AlertThreshold, Client, Metric
from cluster_client.node_api import AlertStreamItem
from cluster_client.partitioning import partition_of
from cluster_client.types import Alert, EventRow
from node import segment_log
from node.node import Node, NodeConfig
from service.config import add_serve_arguments, serve_config_from_args
from service.server import UnimeterServer
from tests.conftest import open_api, serve_config
from tests.engines import Target, over_targets
from tests.integration.helpers import T0, create_metric, ev, ingest
from tests.reliability.test_clock_jumps import SetClock
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import types_pb2 as t

PARTITIONS = 2
ACCOUNTS = range(1, 7)
UNBOUNDED = 10**9
METRIC = Metric(
    "calls",
    AggType.SUM,
    thresholds=(AlertThreshold("every_10", 10, recurring=True), AlertThreshold("at_25", 25)),
)

batches = st.lists(
    st.tuples(
        st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(10, 40)), min_size=1, max_size=8),
        st.booleans(),  # SYNC
    ),
    min_size=10,
    max_size=30,
)
subscriptions = st.lists(
    st.tuples(
        st.integers(0, 29),  # opened after this many calls
        st.sampled_from(range(PARTITIONS)),
        st.floats(0, 1),  # since offset, as a fraction of what is published then
        st.one_of(st.none(), st.sampled_from(ACCOUNTS)),  # account filter
        st.integers(0, 12),  # alerts read after each call
    ),
    max_size=4,
)


def open_node(target: Target, data_dir: Path, clock: SetClock, in_memory: int) -> Node:
    config = NodeConfig(
        data_dir, partitions=PARTITIONS, clock=clock, alerts_in_memory=in_memory, heartbeat_interval=3600
    )
    return target.make_node(config)


@dataclass
class Reader:
    """A subscription of the bounded node and what it read."""

    stream: AsyncIterator[AlertStreamItem]
    partition: int
    since: int
    account: int | None
    per_call: int
    got: list[Alert] = field(default_factory=list)

    def wanted(self, alerts: list[Alert]) -> list[Alert]:
        """What it must read of a partition's alerts ``alerts``."""
        return [a for a in alerts[self.since :] if self.account is None or a.account_id == self.account]

    async def read(self, available: int) -> None:
        """Read ``available`` alerts (skipping the position items)."""
        async with asyncio.timeout(10):
            while available:
                item = await anext(self.stream)
                if item.alert is not None:
                    self.got.append(item.alert)
                    available -= 1


async def everything(node: Node) -> list[object]:
    """Every ListAlerts answer worth comparing, and every partition's alerts as a subscription
    from the beginning reads them."""
    out: list[object] = []
    for account in ACCOUNTS:
        p = partition_of(account, PARTITIONS)
        out.append(await node.list_alerts(p, account, 0, 1000))
    for p in range(PARTITIONS):
        reader = Reader(node.subscribe_alerts([p], {}, True, [], [], []), p, 0, None, 0)
        await reader.read(node.partitions[p].published_alert_offset)
        out.append(reader.got)
        await reader.stream.aclose()  # type: ignore[attr-defined]
    return out


@over_targets
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bound=st.sampled_from([0, 1, 2]),
    calls=batches,
    subs=subscriptions,
    page_sizes=st.lists(st.integers(1, 5), min_size=len(ACCOUNTS), max_size=len(ACCOUNTS)),
    restart_bound=st.sampled_from([0, 2, UNBOUNDED]),
    replay=st.booleans(),
)
def test_bounded_alerts_read_as_if_all_were_in_memory(
    target: Target,
    bound: int,
    calls: list[tuple[list[tuple[int, int]], bool]],
    subs: list[tuple[int, int, float, int | None, int]],
    page_sizes: list[int],
    restart_bound: int,
    replay: bool,
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="unimeter-alerts-"))
    try:
        asyncio.run(_scenario(target, data_dir, bound, calls, subs, page_sizes, restart_bound, replay))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _scenario(
    target: Target,
    data_dir: Path,
    bound: int,
    calls: list[tuple[list[tuple[int, int]], bool]],
    subs: list[tuple[int, int, float, int | None, int]],
    page_sizes: list[int],
    restart_bound: int,
    replay: bool,
) -> None:
    clock = SetClock(T0)
    reference = open_node(target, data_dir / "reference", clock, UNBOUNDED)
    node = open_node(target, data_dir / "bounded", clock, bound)
    readers: list[Reader] = []
    try:
        for n in (reference, node):
            await n.start()
            await (await Client.in_process(n, metric_lookup=n.metric_of)).metrics.create(METRIC)
        for i, (events, sync) in enumerate(calls):
            for when, p, fraction, account, per_call in subs:
                if when == i:
                    since = round(fraction * node.partitions[p].published_alert_offset)
                    accounts = [account] if account else []
                    stream = node.subscribe_alerts([p], {p: since}, False, accounts, [], [])
                    readers.append(Reader(stream, p, since, account, per_call))
            clock.now += 1_000_000
            rows: list[EventRow] = [
                (a, "calls", v, T0 + j, None, 1, f"{i}-{j}") for j, (a, v) in enumerate(events)
            ]
            parts: dict[int, list[EventRow]] = {}
            for row in rows:
                parts.setdefault(partition_of(row[0], PARTITIONS), []).append(row)
            for n in (reference, node):
                await n.ingest(sorted(parts.items()), sync, f"call-{i}")
            for reader in readers:
                published = node.partitions[reader.partition].alerts[
                    : node.partitions[reader.partition].published_alert_offset
                ]
                available = len(reader.wanted(published)) - len(reader.got)
                await reader.read(min(reader.per_call, available))
        for n in (reference, node):
            for partition in n.partitions:
                await partition.flush()
        want = {p: reference.partitions[p].alerts[:] for p in range(PARTITIONS)}
        # Every event crosses a multiple of 10: at least 10 alerts, far above the bound.
        assert sum(map(len, want.values())) > 4 * bound
        for p, partition in enumerate(node.partitions):
            assert partition.alerts.in_memory <= bound + bound // 8 or partition.alerts.in_memory == len(
                want[p]
            )
        for reader in readers:
            expected = reader.wanted(want[reader.partition])
            await reader.read(len(expected) - len(reader.got))
            assert reader.got == expected
        for account, page_size in zip(ACCOUNTS, page_sizes, strict=True):
            p = partition_of(account, PARTITIONS)
            all_of_account = [a for a in want[p] if a.account_id == account]
            for start in (0, *(a.offset for a in all_of_account[::3])):
                pages: list[Alert] = []
                after = start
                while True:
                    page, more = await node.list_alerts(p, account, after, page_size)
                    assert page == (await reference.list_alerts(p, account, after, page_size))[0]
                    pages += page
                    if not more:
                        break
                    after = page[-1].offset
                assert pages == [a for a in all_of_account if a.offset > start]
        before = await everything(node)
        assert before == await everything(reference)
        for reader in readers:
            await reader.stream.aclose()  # type: ignore[attr-defined]
        readers.clear()
        await node.close()
        if replay:  # recovery from the logs alone, alerts included
            snapshots = list((data_dir / "bounded" / "partitions").glob("*/snapshot.msgpack"))
            assert len(snapshots) == PARTITIONS
            for snapshot in snapshots:
                snapshot.unlink()
        node = open_node(target, data_dir / "bounded", clock, restart_bound)
        await node.start()
        assert await everything(node) == before
    finally:
        for reader in readers:
            await reader.stream.aclose()  # type: ignore[attr-defined]
        await node.close()
        await reference.close()


def test_the_bound_comes_from_the_flag_or_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert serve_config_from_args(parser.parse_args([]), {}).alerts_in_memory == 10_000
    env = {"UNIMETER_ALERTS_IN_MEMORY": "0"}
    assert serve_config_from_args(parser.parse_args([]), env).alerts_in_memory == 0
    args = parser.parse_args(["--alerts-in-memory", "7"])
    assert serve_config_from_args(args, env).alerts_in_memory == 7
    with pytest.raises(SystemExit, match="--alerts-in-memory must not be negative"):
        serve_config_from_args(parser.parse_args(["--alerts-in-memory", "-1"]), {})


async def test_a_server_lists_alerts_past_its_bound_from_the_log(tmp_path: Path) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", partitions=1, alerts_in_memory=2))
    await server.start()
    try:
        assert server.node is not None
        api = await open_api(server)
        every = t.AlertThreshold(code="every_10", value=10, recurring=True)
        await create_metric(api, "gb", t.AGG_TYPE_SUM, thresholds=[every])
        for i in range(40):
            await ingest(api, ev(7, "gb", 10, time=T0 + i), sync=True)
        (partition,) = server.node.partitions
        assert (len(partition.alerts), partition.alerts.in_memory) == (40, 2)
        got: list[tuple[int, int]] = []
        after = 0
        while True:
            request = als.ListAlertsRequest(account_id=7, after_offset=after, page_size=7)
            page = await api.alerts.ListAlerts(request, timeout=5)
            got += [(a.offset, a.value_at_cross) for a in page.alerts]
            if not page.has_more:
                break
            after = page.alerts[-1].offset
        assert got == [(k, 10 * k) for k in range(1, 41)]
        await api.channel.close()
    finally:
        await server.stop(grace=1)


async def test_alerts_that_left_memory_are_not_read_from_a_failed_alert_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed log's content is no longer known: a read of an alert that left memory fails with
    # the log's error instead of answering from it, and the alerts still in memory are served.
    node = Node(NodeConfig(tmp_path / "data", partitions=1, alerts_in_memory=3, sync_filesystem=False))
    await node.start()
    try:
        every = AlertThreshold("every_10", 10, recurring=True)
        await node.create_metric(Metric("gb", AggType.SUM, thresholds=(every,)))
        for i in range(8):
            await node.ingest([(0, [(7, "gb", 10, T0 + i, None, 1, f"e{i}")])], True, "")
        (partition,) = node.partitions
        assert partition.alerts.in_memory == 3
        broken = set(partition.alert_log._wfds.values())  # type: ignore[attr-defined]
        real = segment_log._fsync

        def failing(fd: int) -> None:
            if fd in broken:
                raise OSError(errno.EIO, "simulated I/O error")
            real(fd)

        monkeypatch.setattr(segment_log, "_fsync", failing)
        with pytest.raises(OSError):
            await node.ingest([(0, [(7, "gb", 10, T0 + 8, None, 1, "e8")])], True, "")
        newest, _ = await node.list_alerts(0, 7, 5, 100)
        assert [a.offset for a in newest] == [6, 7, 8]
        with pytest.raises(OSError, match="simulated I/O error"):
            await node.list_alerts(0, 7, 0, 100)
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            await node.close()
