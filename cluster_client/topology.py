"""Which node owns each partition, and a NodeApi to reach it.

An in-process topology wraps one local node; a remote one is fetched from any of several seeds and
refreshed when a call finds a partition without a reachable owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from .errors import UnavailableError, UnimeterError
from .node_api import ClusterStatus, NodeApi
from .partitioning import partition_of

__all__ = ["Topology"]

log = logging.getLogger(__name__)

RemoteFactory = Callable[[str], NodeApi]


class Topology:
    """Partition → owning node, with one NodeApi per node."""

    def __init__(
        self, partitions: int, owners: list[NodeApi | None], nodes: dict[str, NodeApi], *, remote: bool
    ) -> None:
        self.partitions = partitions
        self.remote = remote
        self._owners = owners
        self.nodes = nodes
        self._account_partition: dict[int, int] = {}

    @classmethod
    async def local(cls, node: NodeApi) -> Topology:
        """A topology of one in-process node owning every partition."""
        status = await node.cluster_status()
        return cls(
            status.partitions, [node] * status.partitions, {status.nodes[0].node_id: node}, remote=False
        )

    @classmethod
    async def from_seeds(cls, seeds: Sequence[str], connect: RemoteFactory) -> Topology:
        """Ask each seed in turn for the cluster status until one answers."""
        errors: list[str] = []
        for seed in seeds:
            api = connect(seed)
            try:
                status = await api.cluster_status()
            except UnimeterError as exc:
                errors.append(f"{seed}: {exc.message}")
                continue
            return cls.from_status(status, connect, {seed: api})
        raise UnavailableError(f"no seed answered: {'; '.join(errors) or 'no seeds given'}")

    @classmethod
    def from_status(
        cls, status: ClusterStatus, connect: RemoteFactory, known: dict[str, NodeApi]
    ) -> Topology:
        """Build a topology from a cluster status, reusing already-open node APIs by address."""
        by_id: dict[str, NodeApi] = {}
        for info in status.nodes:
            if info.node_addr:
                by_id[info.node_id] = known.get(info.node_addr) or connect(info.node_addr)
        owners: list[NodeApi | None] = [None] * status.partitions
        for p in status.partition_infos:
            owners[p.partition] = by_id.get(p.owner_node_id)
        return cls(status.partitions, owners, by_id, remote=True)

    def partition_of(self, account_id: int) -> int:
        """The partition of ``account_id`` (memoised: the hot path asks per event)."""
        cache = self._account_partition
        p = cache.get(account_id)
        if p is None:
            if len(cache) > 1_000_000:
                cache.clear()
            p = cache[account_id] = partition_of(account_id, self.partitions)
        return p

    def owner(self, partition: int) -> NodeApi:
        """The node owning ``partition``, or UnavailableError."""
        node = self._owners[partition]
        if node is None:
            raise UnavailableError(f"partition {partition} has no reachable owner", retry_after_seconds=0.2)
        return node

    def any_node(self) -> NodeApi:
        """Some node, for cluster-wide calls (metrics, status)."""
        for node in self.nodes.values():
            return node
        raise UnavailableError("no node is known")

    async def close(self) -> None:
        """Close remote connections (in-process nodes are closed by their owner)."""
        if self.remote:
            closers = [getattr(n, "close", None) for n in self.nodes.values()]
            await asyncio.gather(*(c() for c in closers if c is not None), return_exceptions=True)
