"""``unimeter status``: the deployment's nodes, what each owns, and log offsets.

By default a summary that fits a terminal whatever the partition count: totals, the busiest
partition, and one row per node with the partitions it owns and their offsets. ``--partitions``
adds the table of every partition; ``--json`` prints the whole GetClusterStatus response.
"""

from __future__ import annotations

from collections.abc import Sequence

from unimeter.v1 import cluster_service_pb2 as cs

from .connection import Api
from .output import key_values, print_json, print_stdout, table, to_plain

__all__ = ["status"]

_NO_OWNER = "(no owner)"


def status(api: Api, *, as_json: bool, per_partition: bool = False) -> int:
    """Show GetClusterStatus as a summary and a table of nodes (and of partitions if asked)."""
    response = api.cluster.GetClusterStatus(cs.GetClusterStatusRequest(), timeout=api.timeout)
    if as_json:
        print_json(to_plain(response))
        return 0
    infos = response.partition_infos
    sections = [_summary(response), _nodes(response.nodes, infos)]
    if per_partition:
        sections.append(
            table(
                ["PARTITION", "OWNER", "LAST_OFFSET", "LAST_ALERT_OFFSET", "LEASE_EPOCH", "LAG"],
                [
                    [
                        p.partition,
                        p.owner_node_id or "-",
                        p.last_offset,
                        p.last_alert_offset,
                        p.lease_epoch or "-",
                        p.lag,
                    ]
                    for p in infos
                ],
            )
        )
    print_stdout("\n\n".join(sections))
    return 0


def _summary(response: cs.GetClusterStatusResponse) -> str:
    infos = response.partition_infos
    events = sum(p.last_offset for p in infos)
    rows: list[tuple[str, object]] = [
        ("backend", response.backend),
        *([("engine", response.engine)] if response.engine else []),  # servers before it: none
        ("partitions", response.partitions),
        ("events", events),
        ("alerts", sum(p.last_alert_offset for p in infos)),
    ]
    if events:
        # Accounts hash evenly over partitions; one far above 1/partitions is a very large account.
        busiest = max(infos, key=lambda p: p.last_offset)
        share = 100 * busiest.last_offset / events
        rows.append(
            ("busiest", f"partition {busiest.partition}: {busiest.last_offset} events ({share:.0f}%)")
        )
    lagging = [p for p in infos if p.lag]
    if lagging:
        # Partitions being loaded by a node that just took them over (see docs/operations.md).
        behind = sum(p.lag for p in lagging)
        rows.append(("lag", f"{behind} records of {len(lagging)} partitions not yet applied by their owner"))
    unowned = sum(1 for p in infos if not p.owner_node_id)
    if unowned:
        rows.append(("unowned", f"{unowned} of {len(infos)} partitions: their accounts cannot be served"))
    return key_values(rows)


def _nodes(nodes: Sequence[cs.NodeInfo], infos: Sequence[cs.PartitionInfo]) -> str:
    """One row per node (and one for partitions without an owner) with what it owns."""
    owned: dict[str, list[cs.PartitionInfo]] = {}
    for p in infos:
        owned.setdefault(p.owner_node_id or _NO_OWNER, []).append(p)
    rows = [
        [
            n.node_id,
            n.node_addr or "-",
            n.grpc_addr or "-",
            "yes" if n.alive else "no",
            *_totals(owned.get(n.node_id, [])),
        ]
        for n in nodes
    ]
    if _NO_OWNER in owned:
        rows.append([_NO_OWNER, "-", "-", "-", *_totals(owned[_NO_OWNER])])
    return table(["NODE_ID", "NODE_ADDR", "GRPC_ADDR", "ALIVE", "PARTITIONS", "EVENTS", "ALERTS"], rows)


def _totals(partitions: Sequence[cs.PartitionInfo]) -> list[int]:
    return [
        len(partitions),
        sum(p.last_offset for p in partitions),
        sum(p.last_alert_offset for p in partitions),
    ]
