"""Which node owns each partition, and one pooled NodeApi per node to reach it.

A local topology wraps one in-process node owning every partition (the embedded backend): it never
changes. A routed topology is the partition map of a cluster, learned from the status of any node
(seeds given to the SDK, or the node a server runs in together with its peers), with one connection
per node address kept across refreshes; the node a server runs in is called in process. The map is
refreshed when a call meets a node that does not own its partition (or straight from that node's
hint of the owner), periodically by :meth:`Topology.run_refresher`, and whenever the local node
says its leases changed. It is not for deciding who owns what: the nodes' leases do that; the map
only says where to go first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from .errors import UnavailableError, UnimeterError
from .node_api import ClusterStatus, NodeApi
from .partitioning import partition_of

__all__ = ["PARTITION_NOT_OWNED", "REFRESH_INTERVAL", "STATUS_TIMEOUT", "Topology"]

log = logging.getLogger(__name__)

RemoteFactory = Callable[[str], NodeApi]

STATUS_TIMEOUT = 2.0
"""Seconds a node gets to answer for the partition map before the next one is asked (a stopped
process, or one whose status waits on an unreachable NATS, must not hold every refresh up)."""

PARTITION_NOT_OWNED = "PARTITION_NOT_OWNED"
"""Reason of the error a node answers for a partition it does not serve (now)."""

REFRESH_INTERVAL = 2.0
"""Seconds between periodic refreshes of a routed map: a partition moved while nobody called it
(a rebalance, a takeover) is found within this long, so alert streams follow it."""


class Topology:
    """Partition → owning node, with one NodeApi per node."""

    def __init__(
        self,
        partitions: int,
        *,
        routed: bool,
        connect: RemoteFactory | None = None,
        local: NodeApi | None = None,
        local_id: str = "",
        seeds: Sequence[str] = (),
    ) -> None:
        """``routed``: calls may meet moved partitions, so the client core retries and refreshes;
        ``connect`` opens a node address; ``local``/``local_id``: the node of this process."""
        self.partitions = partitions
        self.routed = routed
        self._connect = connect
        self._local = local
        self._local_id = local_id
        self._seeds = list(seeds)
        self._owners: list[NodeApi | None] = [local if not routed else None] * partitions
        self._epochs = [0] * partitions
        self._pool: dict[str, NodeApi] = {}
        """Node address → its API: one connection per node, kept across refreshes."""
        self.nodes: dict[str, NodeApi] = {}
        """Node id → its API, for the nodes the latest status listed as alive."""
        self._account_partition: dict[int, int] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.version = 0
        """Bumped whenever some partition's owner changes in this map."""

    @classmethod
    async def local(cls, node: NodeApi) -> Topology:
        """A topology of one in-process node owning every partition."""
        status = await node.cluster_status()
        topology = cls(status.partitions, routed=False, local=node, local_id=status.nodes[0].node_id)
        topology.nodes = {status.nodes[0].node_id: node}
        return topology

    @classmethod
    async def in_cluster(
        cls, node: NodeApi, node_id: str, connect: RemoteFactory, *, peers: Sequence[str] = ()
    ) -> Topology:
        """The map of the cluster ``node`` (this process's node, ``node_id``) belongs to: its own
        partitions called in process, the others over the node protocol through ``connect``.
        ``peers``: node addresses also asked for the map when this node's status does not name
        every partition's owner."""
        status = await node.cluster_status()
        topology = cls(
            status.partitions, routed=True, connect=connect, local=node, local_id=node_id, seeds=peers
        )
        await topology._complete(status)
        return topology

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
                await _close(api)
                continue
            topology = cls(status.partitions, routed=True, connect=connect, seeds=seeds)
            topology._pool[seed] = api
            await topology._complete(status)
            return topology
        raise UnavailableError(f"no seed answered: {'; '.join(errors) or 'no seeds given'}")

    # ------------------------------------------------------------------ reading the map

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
        """The node owning ``partition`` as far as this map knows, or UnavailableError."""
        node = self._owners[partition]
        if node is None:
            raise UnavailableError(f"partition {partition} has no known owner", retry_after_seconds=0.2)
        return node

    def owner_or_none(self, partition: int) -> NodeApi | None:
        """The node owning ``partition`` as far as this map knows, None if no node is known."""
        return self._owners[partition]

    def is_local(self, node: NodeApi) -> bool:
        """Whether ``node`` is the in-process node."""
        return node is self._local

    def any_node(self) -> NodeApi:
        """Some node, for cluster-wide calls (metrics, status): this process's node if there is
        one, else the first alive node of the latest status."""
        if self._local is not None:
            return self._local
        for node in self.nodes.values():
            return node
        for node in self._pool.values():
            return node
        raise UnavailableError("no node is known")

    def demote(self, node: NodeApi) -> None:
        """Ask ``node`` last among the nodes for cluster-wide calls (it just failed one)."""
        for node_id, api in list(self.nodes.items()):
            if api is node:
                del self.nodes[node_id]
                self.nodes[node_id] = api

    async def wait_changed(self, version: int) -> None:
        """Return once the map's version is past ``version``."""
        while self.version <= version:
            await self._changed.wait()

    # ------------------------------------------------------------------ updating the map

    def apply(self, status: ClusterStatus) -> bool:
        """Take the owners a node's status names; True if any partition's owner changed.

        A partition's owner is only replaced by one holding a lease of the same or a later epoch
        (epochs increase across the cluster), so the stale view of a node that lost touch never
        undoes a newer one. A partition the status names no owner for keeps the owner it had.
        """
        if status.partitions != self.partitions:
            raise UnavailableError(
                f"a node reports {status.partitions} partitions, this client was set up with "
                f"{self.partitions}: a different cluster answered"
            )
        by_id: dict[str, NodeApi] = {}
        for info in status.nodes:
            api = self._api_of(info.node_id, info.node_addr)
            if api is not None:
                by_id[info.node_id] = api
                if info.alive:
                    self.nodes[info.node_id] = api
                else:
                    self.nodes.pop(info.node_id, None)
        changed = False
        for part in status.partition_infos:
            p = part.partition
            api = by_id.get(part.owner_node_id)
            if api is None or part.lease_epoch < self._epochs[p]:
                continue
            self._epochs[p] = part.lease_epoch
            if self._owners[p] is not api:
                self._owners[p] = api
                changed = True
        if changed:
            self._bump()
        return changed

    def follow_hint(self, partition: int, address: str) -> bool:
        """Point ``partition`` at the node at ``address`` (a node's hint of the owner); True if
        that changed the map."""
        api = self._local if self._local is not None and address == self._local_address() else None
        api = api or self._pooled(address)
        if api is None or self._owners[partition] is api:
            return False
        self._owners[partition] = api
        self._bump()
        return True

    async def refresh(self) -> bool:
        """Fetch the map from any node (this process's first, then the others, then the seeds);
        callers at the same moment share one fetch. True if an owner changed; UnavailableError
        if no node answered."""
        task = self._refreshing
        if task is None:
            task = self._refreshing = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._refreshed)
        version = self.version
        # shield: one caller's cancellation must not abort the fetch the others wait on.
        await asyncio.shield(task)
        return self.version != version

    def refresh_soon(self) -> None:
        """Start a refresh in the background (its failure is only logged)."""
        if self._refreshing is None:
            task = self._refreshing = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._refreshed)

    async def run_refresher(self, interval: float = REFRESH_INTERVAL) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except UnimeterError as exc:
                log.warning("partition map refresh failed: %s", exc.message)

    async def reroute(self, partitions: Sequence[int], exc: Exception) -> bool:
        """After ``exc`` failed a call for ``partitions``: update the map, True if it now points
        elsewhere (the caller retries at once instead of waiting the error's retry delay).

        A one-partition call told where the owner is goes there straight away and refreshes the
        map in the background; any other failure refreshes the map first."""
        if not self.routed:
            return False
        hint = getattr(exc, "owner_hint", None)
        moved = getattr(exc, "reason", "") == PARTITION_NOT_OWNED
        if hint and moved and len(partitions) == 1 and self.follow_hint(partitions[0], hint):
            self.refresh_soon()
            return True
        before = [self._owners[p] for p in partitions]
        try:
            await self.refresh()
        except UnimeterError as refresh_error:
            log.debug("partition map refresh failed: %s", refresh_error.message)
            return False
        return any(self._owners[p] is not b for p, b in zip(partitions, before, strict=True))

    async def close(self) -> None:
        """Close remote connections (the in-process node is closed by its owner)."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, UnimeterError):
                await self._refreshing
        await asyncio.gather(*(_close(n) for n in self._pool.values()), return_exceptions=True)
        self._pool.clear()

    # ------------------------------------------------------------------ internals

    async def _complete(self, status: ClusterStatus) -> None:
        """Take a first status, and ask the other nodes if it does not name every owner."""
        self.apply(status)
        if any(not p.owner_node_id for p in status.partition_infos):
            with contextlib.suppress(UnimeterError):
                await self.refresh()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _local_address(self) -> str:
        return str(getattr(self._local, "node_addr", "") or "")

    def _api_of(self, node_id: str, address: str) -> NodeApi | None:
        if self._local is not None and node_id == self._local_id:
            return self._local
        return self._pooled(address) if address else None

    def _pooled(self, address: str) -> NodeApi | None:
        api = self._pool.get(address)
        if api is None and self._connect is not None:
            api = self._pool[address] = self._connect(address)
        return api

    def _sources(self) -> list[NodeApi]:
        sources: list[NodeApi] = [self._local] if self._local is not None else []
        sources += [n for n in self.nodes.values() if n is not self._local]
        sources += [api for seed in self._seeds if (api := self._pooled(seed)) is not None]
        return list(dict.fromkeys(sources))

    async def _fetch(self) -> None:
        # Usually the first node's status names every partition's owner. One that names none for
        # some (it knows only its own, or a partition is between owners) sends the fetch on to
        # the next node, until every partition has been named or every node asked.
        errors: list[str] = []
        unnamed = set(range(self.partitions))
        answered = False
        for source in self._sources():
            try:
                async with asyncio.timeout(STATUS_TIMEOUT):  # not wait_for: see retry.py
                    status = await source.cluster_status()
            except TimeoutError:
                errors.append(f"{source!r} did not answer within {STATUS_TIMEOUT:.0f}s")
                continue
            except UnimeterError as exc:
                errors.append(exc.message)
                continue
            answered = True
            self.apply(status)
            unnamed -= {p.partition for p in status.partition_infos if p.owner_node_id}
            if not unnamed:
                return
        if not answered:
            raise UnavailableError(f"no node answered for the partition map: {'; '.join(errors)}")

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not task.cancelled() and task.exception() is not None:
            log.debug("partition map refresh failed: %s", task.exception())


async def _close(api: NodeApi) -> None:
    closer = getattr(api, "close", None)
    if closer is not None:
        await closer()
