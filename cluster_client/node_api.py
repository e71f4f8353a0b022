"""The seam between the client core and a node.

``node.Node`` implements this protocol in-process (called directly, nothing encoded);
``RemoteNode`` implements it over the node protocol. The client core only ever sees a ``NodeApi``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .types import Alert, EventRow, Metric, QueryResult, StoredEvent

__all__ = ["AlertStreamItem", "ClusterStatus", "IngestOutcome", "NodeApi", "NodeInfo", "PartitionInfo"]


@dataclass(slots=True)
class IngestOutcome:
    """A partition batch's result: each row's offset (a duplicate's points at the original).

    A value: never changed once made. Not frozen, because a frozen dataclass is built through
    ``object.__setattr__`` at 2.4 times the cost, and a request makes one per partition part.
    ``offsets`` is a list, or on the native engine a ``unimeter_native.UintList`` (a read-only
    sequence of ints held natively, equal to the list of the same ints)."""

    offsets: Sequence[int]
    n_duplicates: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the topology describes it."""

    node_id: str
    node_addr: str
    grpc_addr: str
    alive: bool


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A partition's owner and positions."""

    partition: int
    owner_node_id: str
    last_offset: int
    last_alert_offset: int
    lease_epoch: int = 0
    """Fencing epoch of the owner's lease; 0 where partitions have no leases (embedded)."""
    lag: int = 0
    """Records of the partition's event log in the replicated log that its owner has not applied
    (0 when caught up, and always on the embedded backend)."""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Nodes, partition owners and offsets."""

    partitions: int
    backend: str
    nodes: tuple[NodeInfo, ...]
    partition_infos: tuple[PartitionInfo, ...]


@dataclass(frozen=True, slots=True)
class AlertStreamItem:
    """One item of a node's alert stream: an alert, or (``alert is None``) a heartbeat of offsets."""

    alert: Alert | None
    offsets: dict[int, int]


class NodeApi(Protocol):
    """What a node offers the client core. Every method may raise a ``UnimeterError``."""

    async def cluster_status(self) -> ClusterStatus:
        """Nodes, partition owners and offsets as this node sees them."""
        ...

    async def create_metric(self, metric: Metric) -> Metric:
        """Register a metric (validated); returns it with defaults and create time."""
        ...

    async def get_metric(self, code: str) -> Metric:
        """One metric, or NotFoundError."""
        ...

    async def list_metrics(self) -> list[Metric]:
        """Every metric, by code."""
        ...

    async def delete_metric(self, code: str) -> None:
        """Remove a metric from ingestion and queries, or NotFoundError."""
        ...

    async def ingest(
        self,
        parts: Sequence[tuple[int, Sequence[EventRow]]],
        sync: bool,
        batch_id: str,
        *,
        validated: bool = False,
    ) -> list[IngestOutcome]:
        """Store each (partition, rows) part atomically; one request per node carries all its partitions.

        ``batch_id`` ("" for none) makes a retry of the same request return the original outcomes.
        With ``sync`` it returns only once every part is durable. ``validated`` lets an in-process
        caller that checked the rows against this very node's registry skip the second check; a
        remote node ignores it and always validates.
        """
        ...

    async def query_realtime(self, partition: int, account_id: int, metric_code: str) -> QueryResult:
        """The aggregate of the metric's current period."""
        ...

    async def query(
        self,
        partition: int,
        account_id: int,
        metric_code: str,
        start: int,
        end: int,
        selector: int,
        filters: dict[str, str],
        group_by: list[str],
    ) -> QueryResult:
        """The aggregate over ``[start, end)`` or the period ``selector`` names (0: none)."""
        ...

    async def list_events(
        self,
        partition: int,
        account_id: int,
        start: int,
        end: int,
        metric_code: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[StoredEvent], str]:
        """One page of an account's events in ``[start, end)`` and the next page's token ("" at the end)."""
        ...

    async def list_alerts(
        self, partition: int, account_id: int, after_offset: int, page_size: int
    ) -> tuple[list[Alert], bool]:
        """The account's alerts after ``after_offset``; the flag says whether more follow."""
        ...

    def subscribe_alerts(
        self,
        partitions: list[int],
        since_offsets: dict[int, int],
        from_beginning: bool,
        account_ids: list[int],
        metric_codes: list[str],
        threshold_codes: list[str],
    ) -> AsyncIterator[AlertStreamItem]:
        """Matching alerts of ``partitions`` in offset order per partition, with heartbeats when idle."""
        ...
