"""A snapshot this version cannot read is ignored: recovery replays the log to the same state."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgpack

from cluster_client import AggType, AlertThreshold, Client, Metric, Period
from cluster_client.types import EventRow
from node.node import Node, NodeConfig
from node.segment_log import SegmentLog

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
DAY = Period(T0, T0 + 24 * 3600 * 1_000_000_000)
ROWS: list[EventRow] = [(1 + n % 7, "calls", n, T0 + n, None, 1, f"e{n}") for n in range(1, 301)]


def _downgrade_dedup_snapshots(directory: Path) -> None:
    for path in directory.rglob("snapshot.msgpack"):
        state = msgpack.unpackb(path.read_bytes()[:-4], strict_map_key=False)  # without its CRC
        state["dedup"] = ["dedup-oa-1", b"\0" * 8192, b"\0" * 8192, b"", b"", b"", []]  # the FIFO format
        packed = msgpack.packb(state)
        path.write_bytes(packed + zlib.crc32(packed).to_bytes(4, "little"))


async def test_an_old_dedup_snapshot_is_replaced_by_replaying_the_log(tmp_path: Path) -> None:
    node = Node(NodeConfig(tmp_path, partitions=2))
    await node.start()
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    await client.metrics.create(Metric("calls", AggType.SUM))
    first = await client.ingest_rows(ROWS, sync=True)
    await node.close()  # writes every partition's snapshot
    _downgrade_dedup_snapshots(tmp_path)

    node = Node(NodeConfig(tmp_path, partitions=2))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        again = await client.ingest_rows(ROWS, sync=True)
        assert (again.n_stored, again.n_duplicates) == (0, len(ROWS))
        assert again.offsets == first.offsets
        sums = {a: (await client.query(a, "calls", DAY)).value.sum for a in range(1, 8)}
        assert sums == {a: sum(n for n in range(1, 301) if 1 + n % 7 == a) for a in range(1, 8)}
    finally:
        await node.close()


async def test_records_written_by_hand_in_the_version_1_layout_are_replayed(tmp_path: Path) -> None:
    """The record formats are defined once (node/records.py) but their bytes are those every
    earlier version wrote: a log holding positional version-1 arrays opens and replays, and the
    alert regenerated from it reads back after another restart."""
    node = Node(NodeConfig(tmp_path, partitions=1))
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    await client.metrics.create(Metric("calls", AggType.SUM, thresholds=(AlertThreshold("cap", 10),)))
    generation = node._specs["calls"].generation
    await node.close()
    (tmp_path / "partitions" / "0000" / "snapshot.msgpack").unlink()
    events = SegmentLog.open(tmp_path / "partitions" / "0000" / "events")
    rows = [[7, "calls", 4, T0, None, 1, "a"], [7, "calls", 8, T0 + 1, {"k": "v"}, 1, "b"]]
    events.append(msgpack.packb([1, 1, "", T0, {"calls": generation}, rows, [], 3, [[2, 1]]]))
    events.close_sync()

    for _ in range(2):
        node = Node(NodeConfig(tmp_path, partitions=1))
        await node.start()
        try:
            client = await Client.in_process(node, metric_lookup=node.metric_of)
            assert (await client.query(7, "calls", DAY)).value.sum == 12
            [alert] = node.partitions[0].alerts
            assert (alert.offset, alert.threshold_code, alert.value_at_cross) == (1, "cap", 12)
            again = await client.ingest_rows([(7, "calls", 4, T0, None, 1, "a")], sync=True)
            assert (again.n_stored, again.n_duplicates, again.offsets) == (0, 1, [1])
        finally:
            await node.close()
