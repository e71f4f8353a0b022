"""A partition handed over (released cleanly) while its alerts are not yet published: the release
flushes it, which publishes them, and that must not reach the node's alert streams, which no longer
know the partition (it raised KeyError there: in the hand-over's snapshot, which was then not
written and the next owner replayed more of the stream, or in a flush tick, cut short for the
node's other partitions)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cluster_client import AggType, AlertThreshold, Metric
from cluster_client.partitioning import partition_of
from node.node import Node, NodeConfig
from tests.integration.helpers import T0

PARTITIONS = 2


async def test_a_clean_release_with_unpublished_alerts_publishes_them_without_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(NodeConfig(tmp_path / "data", partitions=PARTITIONS, flush_interval=0.002))
    await node.start()
    try:
        await node.create_metric(
            Metric("gb", AggType.SUM, thresholds=(AlertThreshold("every_1", 1, recurring=True),))
        )
        p = partition_of(1, PARTITIONS)
        await node.ingest([(p, [(1, "gb", 1, T0, None, 1, "e1")])], False, "b1")
        partition = next(x for x in node.partitions if x.number == p)
        assert (len(partition.alerts), partition.published_alert_offset) == (1, 0)
        await node.release_partition(p, clean=True)
        assert partition.published_alert_offset == 1
        # The publish once the release had flushed the partition raised KeyError in the streams.
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert [x.number for x in node.partitions] == [1 - p]
    finally:
        await node.close()
