"""A partition's snapshot frees what it built as it goes: nothing is left for the cyclic garbage
collector, whose rare full collections are the only ones that would reach a whole round's
snapshots (docs/reliability.md, "Snapshot memory")."""

from __future__ import annotations

import gc
from pathlib import Path

import msgpack
import pytest

from cluster_client import AggType, Client, Metric
from cluster_client.types import EventRow
from node.node import Node, NodeConfig
from node.records import decode_snapshot
from tests.engines import ENGINES

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
ROWS: list[EventRow] = [
    (1 + n % 50, code, n, T0 + n * 1_000_000_000, None, 1, f"e{n}-{code}")
    for n in range(3000)
    for code in ("calls", "users")
]


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_snapshot_leaves_no_cyclic_garbage(tmp_path: Path, engine: str) -> None:
    node = Node(NodeConfig(tmp_path, partitions=1, engine=engine))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        await client.metrics.create(Metric("users", AggType.COUNT_UNIQUE))
        await client.ingest_rows(ROWS, sync=True)
        [partition] = node.partitions
        gc.collect()
        gc.disable()
        try:
            await partition.snapshot()
            assert gc.collect() == 0
        finally:
            gc.enable()
        stored = (tmp_path / "partitions" / "0000" / "snapshot.msgpack").read_bytes()
        snapshot = decode_snapshot(stored)
        assert snapshot.event_position == partition.events.end_position
        metrics = msgpack.unpackb(stored[:-4], strict_map_key=False)["aggregates"]["metrics"]
        assert sorted(m[0] for m in metrics) == ["calls", "users"]
    finally:
        await node.close()
