"""A snapshot this version cannot read is ignored: recovery replays the log to the same state."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgpack

from cluster_client import AggType, Client, Metric, Period
from cluster_client.types import EventRow
from node.node import Node, NodeConfig

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
