"""Snapshots hold the alert index, so recovery reads only the alert log's tail (docs/design.md,
"Alerts in memory and on disk").

A node keeping few alerts in memory and a reference node that never restarts get the same random
ingest calls (thresholds firing on every event, several accounts, two partitions), on every
engine. Hypothesis places snapshots and restarts among them; a restart is a crash's recovery: the
node is closed, then the snapshot taken at the last snapshot step is put back (or none, if there
was none), so recovery loads it and replays the logs past it. Some restarts also lose the alert
records past that snapshot (a crash before they were durable, the events being so), which
recovery regenerates; some put the snapshot back in the layout of the previous version (no alert
index: the whole alert log is read). After every restart, every ListAlerts page of every account,
from every offset of its alerts and at random page sizes, and a subscription of every partition
from random offsets, read exactly what the reference's read.

Then deterministic tests: recovery reads no alert record but those holding the alerts kept in
memory and those past the snapshot (counted through the log's ``scan`` and ``read``), where the
previous version's snapshot read them all; and a snapshot whose alert index does not match the
log is dropped for a full read, never trusted.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import Client
from cluster_client.partitioning import partition_of
from cluster_client.types import Alert, EventRow
from node.node import Node, NodeConfig
from node.records import decode_snapshot
from node.segment_log import SegmentLog
from tests.engines import Target, over_targets
from tests.integration.helpers import T0
from tests.integration.test_alerts_beyond_memory import ACCOUNTS, METRIC, PARTITIONS, UNBOUNDED
from tests.reliability.test_clock_jumps import SetClock

calls = st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(10, 40)), min_size=1, max_size=6)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), calls),
        st.tuples(st.just("snapshot"), st.none()),
        # (what the crash lost of the alert log, in the previous version's layout, since fractions)
        st.tuples(
            st.just("restart"),
            st.tuples(
                st.booleans(),
                st.sampled_from([False, False, True]),
                st.lists(st.floats(0, 1), min_size=2, max_size=2),
            ),
        ),
    ),
    min_size=8,
    max_size=25,
)


def _partition_dirs(root: Path) -> list[Path]:
    return [root / "partitions" / f"{p:04d}" for p in range(PARTITIONS)]


def _open(target: Target, root: Path, clock: SetClock, in_memory: int) -> Node:
    config = NodeConfig(
        root, partitions=PARTITIONS, clock=clock, alerts_in_memory=in_memory, heartbeat_interval=3600
    )
    return target.make_node(config)


def _previous_version(snapshot: bytes) -> bytes:
    """The same snapshot as the previous version wrote it: no alert index."""
    state = msgpack.unpackb(snapshot[:-4], strict_map_key=False)
    assert state["v"] == 3
    del state["alert_index"]
    state["v"] = 2 if state.get("index_runs") else 1
    body = msgpack.packb(state)
    return body + zlib.crc32(body).to_bytes(4, "little")


async def _pages(node: Node, account: int, after: int, page_size: int) -> list[list[Alert]]:
    p = partition_of(account, len(node.partitions))
    pages: list[list[Alert]] = []
    while True:
        page, more = await node.list_alerts(p, account, after, page_size)
        pages.append(page)
        if not more:
            return pages
        after = page[-1].offset


async def _subscribed(node: Node, partition: int, since: int) -> list[Alert]:
    """Every alert of ``partition`` a subscription from offset ``since`` reads."""
    published = node.partitions[partition].published_alert_offset
    stream = node.subscribe_alerts([partition], {partition: since}, False, [], [], [])
    got: list[Alert] = []
    try:
        async with asyncio.timeout(10):
            while len(got) < published - since:
                item = await anext(stream)
                if item.alert is not None:
                    got.append(item.alert)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return got


async def _assert_reads_alike(node: Node, reference: Node, fractions: list[float], page_size: int) -> None:
    for n in (node, reference):
        for partition in n.partitions:
            await partition.flush()
    for p in range(PARTITIONS):
        want = reference.partitions[p].alerts[:]
        assert node.partitions[p].alerts[:] == want
        assert node.partitions[p].published_alert_offset == len(want)
        for fraction in fractions:
            since = round(fraction * len(want))
            assert await _subscribed(node, p, since) == want[since:]
    for account in ACCOUNTS:
        p = partition_of(account, PARTITIONS)
        offsets = [a.offset for a in reference.partitions[p].alerts[:] if a.account_id == account]
        for after in (0, *offsets):
            assert await _pages(node, account, after, page_size) == await _pages(
                reference, account, after, page_size
            )


@over_targets
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bound=st.sampled_from([0, 1, 3]),
    plan=steps,
    page_size=st.integers(1, 4),
)
def test_recovery_from_the_alert_index_reads_as_a_node_that_never_restarted(
    target: Target, bound: int, plan: list[tuple[str, Any]], page_size: int
) -> None:
    root = Path(tempfile.mkdtemp(prefix="unimeter-alert-index-"))
    try:
        asyncio.run(_scenario(target, root, bound, plan, page_size))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _scenario(
    target: Target, root: Path, bound: int, plan: list[tuple[str, Any]], page_size: int
) -> None:
    clock = SetClock(T0)
    reference = _open(target, root / "reference", clock, UNBOUNDED)
    node = _open(target, root / "node", clock, bound)
    saved: list[bytes | None] = [None] * PARTITIONS
    """Each partition's snapshot as of the last snapshot step: what a crash recovers from."""
    try:
        for n in (reference, node):
            await n.start()
            await (await Client.in_process(n, metric_lookup=n.metric_of)).metrics.create(METRIC)
        for i, (op, arg) in enumerate(plan):
            if op == "ingest":
                clock.now += 1_000_000
                parts: dict[int, list[EventRow]] = {}
                for j, (account, value) in enumerate(arg):
                    row: EventRow = (account, "calls", value, T0 + i, None, 1, f"{i}-{j}")
                    parts.setdefault(partition_of(account, PARTITIONS), []).append(row)
                for n in (reference, node):
                    await n.ingest(sorted(parts.items()), False, f"call-{i}")
            elif op == "snapshot":
                for p, partition in enumerate(node.partitions):
                    await partition.snapshot()
                    saved[p] = (_partition_dirs(root / "node")[p] / "snapshot.msgpack").read_bytes()
            else:
                lose_alert_tail, previous_version, fractions = arg
                await node.close()
                for directory, snapshot in zip(_partition_dirs(root / "node"), saved, strict=True):
                    path = directory / "snapshot.msgpack"
                    if snapshot is None:
                        path.unlink()
                        continue
                    path.write_bytes(_previous_version(snapshot) if previous_version else snapshot)
                    if lose_alert_tail:
                        alerts = SegmentLog.open(directory / "alerts")
                        alerts.truncate(decode_snapshot(snapshot).alert_position)
                        alerts.close_sync()
                node = _open(target, root / "node", clock, bound)
                await node.start()
                await _assert_reads_alike(node, reference, fractions, page_size)
        await _assert_reads_alike(node, reference, [0.0, 0.5], page_size)
    finally:
        await node.close()
        await reference.close()


class _Counted:
    """The alert records read from alert logs (their positions), through ``SegmentLog.scan`` and
    ``SegmentLog.read``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read: set[int] = set()
        scan, read = SegmentLog.scan, SegmentLog.read
        counted = self

        def counting_scan(log: SegmentLog, start_position: int = 0) -> Iterator[tuple[int, bytes]]:
            records = scan(log, start_position)
            if log._dir.name != "alerts":  # type: ignore[attr-defined]
                return records
            return counted._count(records)

        def counting_read(log: SegmentLog, position: int) -> bytes:
            if log._dir.name == "alerts":  # type: ignore[attr-defined]
                counted.read.add(position)
            return read(log, position)

        monkeypatch.setattr(SegmentLog, "scan", counting_scan)
        monkeypatch.setattr(SegmentLog, "read", counting_read)

    def _count(self, records: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
        for position, record in records:
            self.read.add(position)
            yield position, record


IN_MEMORY = 5


def _config(root: Path) -> NodeConfig:
    return NodeConfig(
        root, partitions=1, alerts_in_memory=IN_MEMORY, heartbeat_interval=3600, memory_horizon_ns=0
    )


async def _node_with_a_tail(root: Path, target: Target) -> tuple[Node, list[Alert], int, int]:
    """A one-partition node's 300 alerts (an alert record per event), 240 of them before its
    snapshot; closed, with that snapshot put back (a crash's state). Returns its alerts, the alert
    records past the snapshot and those holding its newest IN_MEMORY alerts."""
    node = target.make_node(_config(root))
    await node.start()
    await (await Client.in_process(node, metric_lookup=node.metric_of)).metrics.create(METRIC)
    (partition,) = node.partitions
    i = 0
    snapshot = b""
    while len(partition.alerts) < 300:
        # Each event crosses one multiple of 10 (and the third of an account 25 too): one alert
        # record each, of one alert once past the first few.
        await node.ingest([(0, [(1 + i % 3, "calls", 10, T0 + i, None, 1, f"e{i}")])], True, "")
        i += 1
        if len(partition.alerts) == 240 and partition.records_since_snapshot:
            await partition.snapshot()
            snapshot = (root / "partitions" / "0000" / "snapshot.msgpack").read_bytes()
    alerts = partition.alerts[:]
    state = decode_snapshot(snapshot)
    assert state.alert_count == 240
    records = sorted({p for p, _ in partition.alert_log.scan()})
    tail = sum(1 for p in records if p >= state.alert_position)
    newest = len({partition.alerts._positions[o - 1] for o in range(241 - IN_MEMORY, 241)})  # type: ignore[attr-defined]
    await node.close()
    (root / "partitions" / "0000" / "snapshot.msgpack").write_bytes(snapshot)
    return node, alerts, tail, newest


@over_targets
async def test_recovery_reads_only_the_alert_records_past_the_snapshot_and_those_kept_in_memory(
    tmp_path: Path, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, alerts, tail, newest = await _node_with_a_tail(tmp_path, target)
    assert tail >= 40 and newest >= 3
    config = _config(tmp_path)
    snapshot = (tmp_path / "partitions" / "0000" / "snapshot.msgpack").read_bytes()
    for previous_version, wanted in ((False, tail + newest), (True, None)):
        (tmp_path / "partitions" / "0000" / "snapshot.msgpack").write_bytes(
            _previous_version(snapshot) if previous_version else snapshot
        )
        with monkeypatch.context() as patch:
            counted = _Counted(patch)
            node = target.make_node(config)
            read = len(counted.read)
        try:
            (partition,) = node.partitions
            everything = len({p for p, _ in partition.alert_log.scan()})
            # The previous version's snapshot reads every record; this one's, far fewer.
            assert read == (wanted if wanted is not None else everything)
            assert everything > 2 * (tail + newest)
            assert partition.alerts.in_memory == IN_MEMORY
            assert partition.alerts[:] == alerts
            assert await _pages(node, 2, 0, 7) == await _pages_of(alerts, 2, 7)
        finally:
            await node.close()


async def _pages_of(alerts: list[Alert], account: int, page_size: int) -> list[list[Alert]]:
    of_account = [a for a in alerts if a.account_id == account]
    return [of_account[i : i + page_size] for i in range(0, len(of_account), page_size)] or [[]]


def _with_index(snapshot: bytes, change: Any) -> bytes:
    state = msgpack.unpackb(snapshot[:-4], strict_map_key=False)
    change(state["alert_index"])
    body = msgpack.packb(state)
    return body + zlib.crc32(body).to_bytes(4, "little")


def _shift_last_position(index: list[Any]) -> None:
    positions = bytearray(b"".join(index[0]))
    positions[-8] += 1  # the last alert's record placed a byte off
    index[0] = [bytes(positions)]


def _drop_an_offset(index: list[Any]) -> None:
    index[1][0][1] = index[1][0][1][4:]  # the accounts' offsets no longer count every alert


def _move_the_oldest_alert_in_memory(index: list[Any]) -> None:
    # Its record is where recovery starts reading: the newest alert's record instead, which does
    # not hold it, so the alerts to keep in memory are not all found.
    positions = bytearray(b"".join(index[0]))
    positions[(240 - IN_MEMORY) * 8 : (241 - IN_MEMORY) * 8] = positions[-8:]
    index[0] = [bytes(positions[:80]), bytes(positions[80:])]  # blocks of any size read back


@over_targets
@pytest.mark.parametrize("damage", [_shift_last_position, _drop_an_offset, _move_the_oldest_alert_in_memory])
async def test_an_alert_index_the_log_does_not_match_is_dropped_for_a_full_read(
    tmp_path: Path, target: Target, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, alerts, _, _ = await _node_with_a_tail(tmp_path, target)
    path = tmp_path / "partitions" / "0000" / "snapshot.msgpack"
    path.write_bytes(_with_index(path.read_bytes(), damage))
    node = target.make_node(_config(tmp_path))
    try:
        (partition,) = node.partitions
        assert "reading the whole alert log" in caplog.text
        assert partition.alerts[:] == alerts
        for account in (1, 2, 3):
            assert await _pages(node, account, 0, 6) == await _pages_of(alerts, account, 6)
    finally:
        await node.close()
