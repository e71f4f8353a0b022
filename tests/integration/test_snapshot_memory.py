"""A partition's snapshot holds one copy of its bytes and frees it as it goes: written to the file
piece by piece (the same bytes as one joined write), and nothing left for the cyclic garbage
collector, whose rare full collections are the only ones that would reach a whole round's
snapshots (docs/reliability.md, "Snapshot memory")."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest

from cluster_client import AggType, Client, Metric
from cluster_client.types import EventRow
from node.embedded_backend import SegmentPartitionStorage
from node.node import Node, NodeConfig
from node.records import Snapshot, decode_snapshot, encode_snapshot
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


async def test_the_snapshot_file_is_the_encoded_snapshot_written_piece_by_piece(tmp_path: Path) -> None:
    snapshot = Snapshot(
        partition=0,
        event_position=4096,
        last_offset=120,
        last_arrival=T0,
        alert_position=77,
        alert_count=2,
        aggregates={"cells": [[i, -i, 2**63 - 1 - i] for i in range(20_000)]},
        dedup=["dedup-x", bytes(range(256)) * 64],
        index=[[5, [[1, 0, 40]]]],
        batches=[("b1", 10, [1, 2, 3], 0)],
    )
    pieces = await encode_snapshot(snapshot)
    whole = b"".join(pieces)
    assert len(pieces) > 4
    with ThreadPoolExecutor(1) as executor:
        storage = SegmentPartitionStorage(tmp_path / "p", 1 << 20, executor)
        try:
            await storage.write_snapshot(pieces)
            stored = storage.read_snapshot()
        finally:
            storage.events.close_sync()
            storage.alerts.close_sync()
    assert stored is not None and stored[0] == whole
    assert decode_snapshot(stored[0]) == snapshot
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["alerts", "events", "snapshot.msgpack"]
