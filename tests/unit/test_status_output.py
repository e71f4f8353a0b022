"""``unimeter status``'s summary and node table for a cluster the single-node tests cannot build:
partitions without an owner, and several nodes."""

from __future__ import annotations

from service.commands.status import _nodes, _summary
from unimeter.v1 import cluster_service_pb2 as cs


def test_partitions_per_owner_and_the_unowned_ones() -> None:
    infos = [
        cs.PartitionInfo(partition=0, owner_node_id="a", last_offset=10, last_alert_offset=1),
        cs.PartitionInfo(partition=1, owner_node_id="b", last_offset=30, last_alert_offset=0),
        cs.PartitionInfo(partition=2, owner_node_id="", last_offset=0, last_alert_offset=0),
        cs.PartitionInfo(partition=3, owner_node_id="a", last_offset=0, last_alert_offset=2),
    ]
    nodes = [
        cs.NodeInfo(node_id="a", node_addr="10.0.0.1:7000", grpc_addr="10.0.0.1:50051", alive=True),
        cs.NodeInfo(node_id="b", node_addr="10.0.0.2:7000", grpc_addr="", alive=False),
    ]
    response = cs.GetClusterStatusResponse(partitions=4, backend="nats", nodes=nodes, partition_infos=infos)
    assert _summary(response).splitlines() == [
        "backend     nats",
        "partitions  4",
        "events      40",
        "alerts      3",
        "busiest     partition 1: 30 events (75%)",
        "unowned     1 of 4 partitions: their accounts cannot be served",
    ]
    assert _nodes(nodes, infos).splitlines() == [
        "NODE_ID     NODE_ADDR      GRPC_ADDR       ALIVE  PARTITIONS  EVENTS  ALERTS",
        "a           10.0.0.1:7000  10.0.0.1:50051  yes             2      10       3",
        "b           10.0.0.2:7000  -               no              1      30       0",
        "(no owner)  -              -               -               1       0       0",
    ]
