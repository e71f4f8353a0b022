"""``RemoteNode``: the ``NodeApi`` of a node in another process, reached over the node protocol.

Each method sends the NodeApi call's arguments in signature order (converted by the type codecs of
:mod:`.wire`) on one shared :class:`~.node_connection.NodeConnection`, and decodes the answer back
into the plain types. The connection opens on first use and is reopened on the next call after it
drops; a call never retries (a request may have been carried out before the drop, and retrying is
the client core's decision, with its batch ids and deadlines). Alert subscriptions each get a
connection of their own, so a slow subscriber's backpressure never stalls the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from ssl import SSLContext
from typing import Any, TypeVar

from .errors import InternalError, UnavailableError
from .node_api import AlertStreamItem, ClusterStatus, IngestOutcome, NodeApi
from .node_connection import NodeConnection
from .types import Alert, EventRow, Metric, QueryResult, StoredEvent
from .wire import (
    DEFAULT_MAX_FRAME_BYTES,
    ProtocolError,
    alert_stream_item_from_wire,
    alerts_page_from_wire,
    cluster_status_from_wire,
    events_page_from_wire,
    ingest_outcomes_from_wire,
    metric_from_wire,
    metric_to_wire,
    metrics_from_wire,
    query_result_from_wire,
)

__all__ = ["RemoteNode", "split_address"]

_T = TypeVar("_T")


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` as ``(host, port)``; ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"node address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class RemoteNode(NodeApi):
    """A node at ``address`` (``host:port`` of its node-protocol server)."""

    def __init__(
        self,
        address: str,
        *,
        connect_timeout: float = 5.0,
        call_timeout: float | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        hello_info: dict[str, Any] | None = None,
        ssl: SSLContext | None = None,
        cluster_secret: str | bytes | None = None,
    ) -> None:
        """``connect_timeout`` bounds each connect and hello; ``call_timeout`` (None: no bound of
        its own, the caller's deadline applies) bounds each call; ``ssl`` connects over TLS;
        ``cluster_secret`` is proved to nodes that require it (and required of them)."""
        self.address = address
        self._host, self._port = split_address(address)
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._max_frame_bytes = max_frame_bytes
        self._hello_info = hello_info
        self._ssl = ssl
        self._cluster_secret = cluster_secret
        self._conn: NodeConnection | None = None
        self._connecting: asyncio.Task[NodeConnection] | None = None
        self._stream_conns: set[NodeConnection] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"RemoteNode({self.address!r})"

    async def close(self) -> None:
        """Close every connection; later calls fail with UnavailableError."""
        self._closed = True
        if self._connecting is not None:
            # Not cancelled: its waiters would see CancelledError. It notices _closed and closes
            # what it opened; waiting for it leaves no connection behind.
            await asyncio.wait([self._connecting])
        conns = [c for c in (self._conn, *self._stream_conns) if c is not None]
        self._conn = None
        await asyncio.gather(*(c.close() for c in conns))

    # NodeApi ---------------------------------------------------------------------------------------

    async def cluster_status(self) -> ClusterStatus:
        """Nodes, partition owners and offsets as this node sees them."""
        return self._decode(
            "cluster_status", cluster_status_from_wire, await self._call("cluster_status", ())
        )

    async def create_metric(self, metric: Metric) -> Metric:
        """Register a metric (validated); returns it with defaults and create time."""
        raw = await self._call("create_metric", (metric_to_wire(metric),))
        return self._decode("create_metric", metric_from_wire, raw)

    async def get_metric(self, code: str) -> Metric:
        """One metric, or NotFoundError."""
        return self._decode("get_metric", metric_from_wire, await self._call("get_metric", (code,)))

    async def list_metrics(self) -> list[Metric]:
        """Every metric, by code."""
        return self._decode("list_metrics", metrics_from_wire, await self._call("list_metrics", ()))

    async def delete_metric(self, code: str) -> None:
        """Remove a metric from ingestion and queries, or NotFoundError."""
        await self._call("delete_metric", (code,))

    async def ingest(
        self,
        parts: Sequence[tuple[int, Sequence[EventRow]]],
        sync: bool,
        batch_id: str,
        *,
        validated: bool = False,
    ) -> list[IngestOutcome]:
        """Store each (partition, rows) part atomically on the node (which always validates them)."""
        # Rows go out as they are: msgpack packs the tuples as arrays with no per-row work here. A
        # native engine's batch (unimeter_native.EventBatch) goes as the row tuples it stands for.
        wire_parts = [(p, rows if isinstance(rows, list) else list(rows)) for p, rows in parts]
        raw = await self._call("ingest", (wire_parts, sync, batch_id))
        return self._decode("ingest", ingest_outcomes_from_wire, raw)

    async def query_realtime(self, partition: int, account_id: int, metric_code: str) -> QueryResult:
        """The aggregate of the metric's current period."""
        raw = await self._call("query_realtime", (partition, account_id, metric_code))
        return self._decode("query_realtime", query_result_from_wire, raw)

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
        raw = await self._call(
            "query", (partition, account_id, metric_code, start, end, selector, filters, group_by)
        )
        return self._decode("query", query_result_from_wire, raw)

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
        """One page of an account's events in ``[start, end)`` and the next page's token."""
        raw = await self._call(
            "list_events", (partition, account_id, start, end, metric_code, page_size, page_token)
        )
        return self._decode("list_events", events_page_from_wire, raw)

    async def list_alerts(
        self, partition: int, account_id: int, after_offset: int, page_size: int
    ) -> tuple[list[Alert], bool]:
        """The account's alerts after ``after_offset``; the flag says whether more follow."""
        raw = await self._call("list_alerts", (partition, account_id, after_offset, page_size))
        return self._decode("list_alerts", alerts_page_from_wire, raw)

    def subscribe_alerts(
        self,
        partitions: list[int],
        since_offsets: dict[int, int],
        from_beginning: bool,
        account_ids: list[int],
        metric_codes: list[str],
        threshold_codes: list[str],
    ) -> AsyncIterator[AlertStreamItem]:
        """Matching alerts of ``partitions`` in offset order per partition, with heartbeats when idle.

        Nothing is sent until the first item is awaited; closing the iterator ends the node's side.
        """
        args = (partitions, since_offsets, from_beginning, account_ids, metric_codes, threshold_codes)
        return self._subscribe(args)

    # internals -------------------------------------------------------------------------------------

    async def _subscribe(self, args: Sequence[Any]) -> AsyncIterator[AlertStreamItem]:
        conn = await self._open()
        if self._closed:  # close() ran while we were connecting
            await conn.close()
            raise UnavailableError(f"{self!r} is closed")
        self._stream_conns.add(conn)
        try:
            async with contextlib.aclosing(conn.stream("subscribe_alerts", args)) as items:
                async for raw in items:
                    yield self._decode("subscribe_alerts", alert_stream_item_from_wire, raw)
        finally:
            self._stream_conns.discard(conn)
            await conn.close()

    async def _call(self, method: str, args: Sequence[Any]) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._reconnect()
        return await conn.call(method, args, timeout=self._call_timeout)

    async def _reconnect(self) -> NodeConnection:
        # Callers that find the connection dead at the same time share one connect attempt (and its
        # failure), so a down node costs one connect timeout, not one per waiting call.
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._connect_shared())
            task.add_done_callback(_consume_exception)
        # shield: one caller's cancellation must not abort the attempt the others wait on.
        return await asyncio.shield(task)

    async def _connect_shared(self) -> NodeConnection:
        try:
            conn = await self._open()
            if self._closed:  # close() ran while we were connecting
                await conn.close()
                raise UnavailableError(f"{self!r} is closed")
            self._conn = conn
            return conn
        finally:
            self._connecting = None

    async def _open(self) -> NodeConnection:
        if self._closed:
            raise UnavailableError(f"{self!r} is closed")
        return await NodeConnection.connect(
            self._host,
            self._port,
            timeout=self._connect_timeout,
            max_frame_bytes=self._max_frame_bytes,
            hello_info=self._hello_info,
            ssl=self._ssl,
            cluster_secret=self._cluster_secret,
        )

    def _decode(self, method: str, decode: Callable[[object], _T], raw: object) -> _T:
        try:
            return decode(raw)
        except ProtocolError as exc:
            # Not the caller's bad argument (ProtocolError is an InvalidArgumentError): a node bug.
            raise InternalError(
                f"node {self.address} sent a malformed {method} answer: {exc.message}"
            ) from exc


def _consume_exception(task: asyncio.Task[NodeConnection]) -> None:
    # Every waiter gets the failure through shield(); this only stops asyncio from logging it again
    # when all of them were cancelled before it came.
    if not task.cancelled():
        task.exception()
