"""``unimeter status``: the deployment's nodes, partition owners and log offsets."""

from __future__ import annotations

from unimeter.v1 import cluster_service_pb2 as cs

from .connection import Api
from .output import key_values, print_json, print_stdout, table, to_plain

__all__ = ["status"]


def status(api: Api, *, as_json: bool) -> int:
    """Show GetClusterStatus as a summary and two tables."""
    response = api.cluster.GetClusterStatus(cs.GetClusterStatusRequest(), timeout=api.timeout)
    if as_json:
        print_json(to_plain(response))
        return 0
    infos = response.partition_infos
    summary = key_values(
        [
            ("backend", response.backend),
            ("partitions", response.partitions),
            ("events", sum(p.last_offset for p in infos)),
            ("alerts", sum(p.last_alert_offset for p in infos)),
        ]
    )
    nodes = table(
        ["NODE_ID", "NODE_ADDR", "GRPC_ADDR", "ALIVE"],
        [
            [n.node_id, n.node_addr or "-", n.grpc_addr or "-", "yes" if n.alive else "no"]
            for n in response.nodes
        ],
    )
    partitions = table(
        ["PARTITION", "OWNER", "LAST_OFFSET", "LAST_ALERT_OFFSET"],
        [[p.partition, p.owner_node_id or "-", p.last_offset, p.last_alert_offset] for p in infos],
    )
    print_stdout(f"{summary}\n\n{nodes}\n\n{partitions}")
    return 0
