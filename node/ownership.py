"""What a node asks before it serves a partition: does it hold the partition now, in which epoch,
and who does if it does not; and what the rest of the cluster looks like.

With the embedded backend a node owns every partition of its data directory (its lock says so) and
has no ownership object. With a replicated backend ownership is a lease per partition
(``node.jetstream.leases``, assigned over the live nodes by ``node.jetstream.assignment``): a node
serves a partition only while its local deadline for the lease has not passed, so it stops before
the lease can expire anywhere else.
"""

from __future__ import annotations

from typing import Protocol

from cluster_client.errors import UnavailableError
from cluster_client.node_api import ClusterStatus

__all__ = ["PartitionOwnership", "not_owned"]

_RETRY_SECONDS = 1.0


class PartitionOwnership(Protocol):
    """The leases of the partitions a node serves."""

    def holds(self, partition: int) -> bool:
        """Whether this node may serve ``partition`` now."""

    def epoch(self, partition: int) -> int:
        """The fencing epoch of this node's lease on ``partition`` (0 if it never held it)."""

    def owner_addr(self, partition: int) -> str | None:
        """The node address of the node holding ``partition``'s lease, as far as this node knows
        (None: nobody holds it now, or the holder serves no node protocol)."""

    async def cluster_status(self, local: ClusterStatus) -> ClusterStatus:
        """The cluster-wide status, from ``local`` (this node and the partitions it serves)."""


def not_owned(partition: int, owner_addr: str | None = None) -> UnavailableError:
    """The retryable error for a partition this node does not hold (now); ``owner_addr``: the node
    address of the node holding it, when this node knows it (sent back as the error's hint)."""
    return UnavailableError(
        f"partition {partition} is not served by this node now: it does not hold the partition's "
        "lease (it could not renew it in time, or another node took it over)",
        reason="PARTITION_NOT_OWNED",
        retry_after_seconds=_RETRY_SECONDS,
        owner_hint=owner_addr,
    )
