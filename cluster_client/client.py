"""The Python SDK and routing core: ``Client``.

A client routes each account to its partition's owner, fans a batch out to the owning nodes in
parallel, retries retryable failures with backoff inside the caller's deadline (following a
partition to its new owner when it moved), and gives every event an id before its first try. It
talks to nodes only through ``NodeApi``: a node in the same process is called directly, remote
nodes through the node protocol. Where partitions live is :mod:`.topology`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

from .errors import (
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
    UnimeterError,
)
from .ids import uuid7
from .node_api import AlertStreamItem, ClusterStatus, IngestOutcome, NodeApi
from .retry import RetryPolicy, call_with_retries, deadline_after
from .routed_alerts import routed_alert_stream
from .subscription import AlertSubscription, open_subscription
from .topology import PARTITION_NOT_OWNED, REFRESH_INTERVAL, RemoteFactory, Topology
from .types import (
    Alert,
    DeliveryMode,
    Event,
    EventRow,
    IngestResult,
    Metric,
    Period,
    PeriodSelector,
    QueryResult,
    StoredEvent,
)
from .validation import check_account_id, validate_rows

__all__ = ["AlertsClient", "Client", "MetricsClient", "partition_batch"]

MetricLookup = Callable[[str], Metric | None]
MetricRefresh = Callable[[], Awaitable[None]]
T = TypeVar("T")
_ROWS = itemgetter(0)
"""A split's rows (``ingest_partitioned``), read in a C-level loop: 64 parts a 1000-event request."""


class MetricsClient:
    """``client.metrics``: the cluster-wide metric registry."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def create(self, metric: Metric, *, timeout: float | None = None) -> Metric:
        """Register a metric; AlreadyExistsError if the code is taken."""
        created = await self._client._any(lambda n: n.create_metric(metric), timeout)
        self._client._metric_cache[created.code] = created
        return created

    async def get(self, code: str, *, timeout: float | None = None) -> Metric:
        """One metric; NotFoundError if absent."""
        return await self._client._any(lambda n: n.get_metric(code), timeout)

    async def list(self, *, timeout: float | None = None) -> list[Metric]:
        """Every metric, ordered by code."""
        return await self._client._any(lambda n: n.list_metrics(), timeout)

    async def delete(self, code: str, *, timeout: float | None = None) -> None:
        """Delete a metric; NotFoundError if absent."""
        await self._client._any(lambda n: n.delete_metric(code), timeout)
        self._client._metric_cache.pop(code, None)


class AlertsClient:
    """``client.alerts``: alert history and resumable subscriptions."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def list(
        self, account_id: int, after_offset: int = 0, *, page_size: int = 100, timeout: float | None = None
    ) -> tuple[list[Alert], bool]:
        """The account's alerts after ``after_offset`` and whether more follow."""
        return await self._client.list_alerts(account_id, after_offset, page_size=page_size, timeout=timeout)

    def subscribe(
        self,
        *,
        account_ids: Sequence[int] = (),
        metric_codes: Sequence[str] = (),
        threshold_codes: Sequence[str] = (),
        since_offsets: Mapping[int, int] | None = None,
        from_beginning: bool = False,
        buffer: int = 64,
    ) -> AlertSubscription:
        """A subscription; use ``async with`` (or ``await sub.start()``) and iterate it."""
        return open_subscription(
            self._client.alert_stream,
            account_ids=account_ids,
            metric_codes=metric_codes,
            threshold_codes=threshold_codes,
            since_offsets=since_offsets,
            from_beginning=from_beginning,
            buffer=buffer,
        )


def partition_batch(
    rows: list[EventRow], metric_of: MetricLookup, partition_of: Callable[[int], int]
) -> dict[int, tuple[list[EventRow], list[int]]]:
    """Validate a whole batch, then split it: ``{partition: (rows, their indexes in the batch)}``
    in order of first appearance. InvalidArgumentError (one violation per bad event) if it is empty
    or any event is bad: then nothing is stored anywhere."""
    if not rows:
        raise InvalidArgumentError(
            "a batch needs at least one event", violations=[FieldViolation("events", "must not be empty")]
        )
    validate_rows(rows, metric_of)
    by_partition: dict[int, tuple[list[EventRow], list[int]]] = {}
    for i, row in enumerate(rows):
        p = partition_of(row[0])
        entry = by_partition.get(p)
        if entry is None:
            by_partition[p] = ([row], [i])
        else:
            entry[0].append(row)
            entry[1].append(i)
    return by_partition


PlaceOffsets = Callable[
    [int, Mapping[int, tuple[Sequence[EventRow], Sequence[int]]], Mapping[int, IngestOutcome]],
    tuple[Sequence[int], int],
]
"""``(n_events, by_partition, outcomes) -> (offsets, n_duplicates)``: :func:`request_offsets`, or
the native engine's ``unimeter_native.request_offsets``, which answers a ``UintList``."""


def request_offsets(
    n_events: int,
    by_partition: Mapping[int, tuple[Sequence[EventRow], Sequence[int]]],
    outcomes: Mapping[int, IngestOutcome],
) -> tuple[list[int], int]:
    """A request's offsets in request order, from its split (``{partition: (rows, request
    indexes)}``, each index once) and each partition's outcome, with its duplicate count.
    ValueError if a partition's offsets are not one per event of its split, or if the outcomes
    do not cover the request's events; IndexError for an index past them."""
    offsets = [0] * n_events
    n_dup = placed = 0
    for p, outcome in outcomes.items():
        n_dup += outcome.n_duplicates
        indexes, answered = by_partition[p][1], outcome.offsets
        if len(indexes) != len(answered):
            raise ValueError(f"partition {p} answered {len(answered)} offsets for {len(indexes)} events")
        placed += len(indexes)
        # A plain loop: twice as fast as map() over the list's __setitem__ on CPython 3.11.
        for i, offset in zip(indexes, answered, strict=True):
            offsets[i] = offset
    if placed != n_events:
        raise ValueError(f"the partitions answered for {placed} of the request's {n_events} events")
    return offsets, n_dup


class Client:
    """Unimeter client. Build with ``await Client.connect(seeds)`` or ``await Client.in_process(node)``."""

    def __init__(
        self,
        topology: Topology,
        *,
        retry: RetryPolicy | None = None,
        metric_lookup: MetricLookup | None = None,
        metric_refresh: MetricRefresh | None = None,
    ) -> None:
        self._topology = topology
        self._retry = retry or RetryPolicy()
        self._metric_lookup = metric_lookup
        self._metric_refresh = metric_refresh
        self._metric_cache: dict[str, Metric] = {}
        self.metrics = MetricsClient(self)
        self.alerts = AlertsClient(self)
        self._refresher: asyncio.Task[None] | None = None
        if topology.routed:
            self._refresher = asyncio.get_running_loop().create_task(
                topology.run_refresher(REFRESH_INTERVAL), name="unimeter-partition-map"
            )

    @classmethod
    async def in_process(
        cls,
        node: NodeApi,
        *,
        metric_lookup: MetricLookup | None = None,
        metric_refresh: MetricRefresh | None = None,
    ) -> Client:
        """A client calling ``node`` directly (no encoding); ``metric_lookup`` reads its registry,
        ``metric_refresh`` brings that up to date (asked before a batch is refused for a metric
        the lookup does not know: one created through another node a moment ago)."""
        return cls(await Topology.local(node), metric_lookup=metric_lookup, metric_refresh=metric_refresh)

    @classmethod
    async def in_cluster(
        cls,
        node: NodeApi,
        node_id: str,
        connect: RemoteFactory,
        *,
        peers: Sequence[str] = (),
        retry: RetryPolicy | None = None,
        metric_lookup: MetricLookup | None = None,
        metric_refresh: MetricRefresh | None = None,
    ) -> Client:
        """The client core of a node in a cluster: ``node`` (this process's, ``node_id``) serves
        its own partitions in process; the other nodes' are reached through ``connect`` (a node
        address → a ``RemoteNode``), one connection per node. Any call can be made through any
        node: it is routed to the partition's owner and follows it when it moves. ``peers``: other
        nodes' addresses to ask for the partition map where this node's status names no owner."""
        topology = await Topology.in_cluster(node, node_id, connect, peers=peers)
        return cls(topology, retry=retry, metric_lookup=metric_lookup, metric_refresh=metric_refresh)

    @classmethod
    async def connect(
        cls,
        seeds: Sequence[str],
        *,
        retry: RetryPolicy | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        cluster_secret: str | bytes | None = None,
    ) -> Client:
        """A client of the cluster reachable through any of ``seeds`` (``host:port`` node addresses).

        The partition map comes from the first seed that answers; the client then talks to every
        node directly (one connection each), follows partitions when they move, and keeps the
        seeds to fall back on if every node it knows stops answering.

        ``tls_ca`` (a PEM file of the CA that signed the nodes' certificates) connects over TLS
        with certificate and host name verification; ``ssl_context`` gives the TLS settings
        outright instead. ``cluster_secret`` is proved to nodes that require it.
        """
        from .remote_node import RemoteNode

        if tls_ca is not None and ssl_context is None:
            ssl_context = ssl.create_default_context(cafile=os.fspath(tls_ca))

        def node_at(address: str) -> RemoteNode:
            return RemoteNode(address, ssl=ssl_context, cluster_secret=cluster_secret)

        topology = await Topology.from_seeds(seeds, node_at)
        return cls(topology, retry=retry)

    async def close(self) -> None:
        """Stop refreshing the partition map and close connections to remote nodes."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self._topology.close()

    @property
    def topology(self) -> Topology:
        """Where this client sends each partition's calls."""
        return self._topology

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def partitions(self) -> int:
        """Number of partitions of the cluster."""
        return self._topology.partitions

    def partition_of(self, account_id: int) -> int:
        """The partition that owns ``account_id``."""
        return self._topology.partition_of(account_id)

    # ------------------------------------------------------------------ ingest

    async def ingest(
        self,
        events: Iterable[Event],
        *,
        delivery: DeliveryMode = DeliveryMode.ASYNC,
        timeout: float | None = None,
    ) -> IngestResult:
        """Store a batch. Events without ``event_id`` get a UUIDv7 first, so retries never double count."""
        batch = list(events)
        for event in batch:
            if not event.event_id:
                event.event_id = uuid7()
        sync = delivery == DeliveryMode.SYNC or any(e.delivery == DeliveryMode.SYNC for e in batch)
        return await self.ingest_rows([e.row() for e in batch], sync=sync, timeout=timeout)

    async def ingest_rows(
        self, rows: list[EventRow], *, sync: bool, timeout: float | None = None
    ) -> IngestResult:
        """Store a batch of hot-path rows as given (no ids added): validate all, fan out per node."""
        lookup = await self._metric_resolver(rows)
        try:
            by_partition = partition_batch(rows, lookup, self._topology.partition_of)
        except InvalidArgumentError:
            if self._metric_refresh is None:
                raise
            await self._metric_refresh()  # a metric created through another node a moment ago?
            by_partition = partition_batch(rows, lookup, self._topology.partition_of)
        return await self.ingest_partitioned(by_partition, len(rows), sync=sync, timeout=timeout)

    async def ingest_partitioned(
        self,
        by_partition: Mapping[int, tuple[Sequence[EventRow], Sequence[int]]],
        n_events: int,
        *,
        sync: bool,
        timeout: float | None = None,
        place_offsets: PlaceOffsets = request_offsets,
    ) -> IngestResult:
        """Store a batch already validated against :meth:`ingest_metric_lookup` and split by
        partition: ``{partition: (rows, their indexes in the batch)}``, ``n_events`` rows in all;
        ``place_offsets`` puts the partitions' offsets back in request order (the native engine
        gives its own, ``unimeter_native.request_offsets``).

        The second half of :meth:`ingest_rows`, for a caller that decodes, validates and splits a
        request itself (the native engine does all three in one pass over the request bytes, and
        gives each partition's rows as a native batch, which the in-process node reads in place;
        a remote owner is sent the rows it stands for, ``RemoteNode.ingest``).
        """
        topology = self._topology
        if not topology.routed:
            # One node owns everything: one request, no batch id, no retries (the hot path).
            node = topology.owner(0)
            ps = list(by_partition)
            parts = list(zip(ps, map(_ROWS, by_partition.values()), strict=True))
            validated = self._metric_lookup is not None
            outcomes = dict(zip(ps, await node.ingest(parts, sync, "", validated=validated), strict=True))
        else:
            outcomes = await self._ingest_routed(by_partition, sync, deadline_after(timeout, self._retry))
        try:
            offsets, n_dup = place_offsets(n_events, by_partition, outcomes)
        except (ValueError, IndexError) as exc:  # a node's answer that does not fit the request
            raise InternalError(str(exc)) from exc
        return IngestResult(n_events - n_dup, n_dup, offsets)

    def ingest_metric_lookup(self) -> MetricLookup:
        """What ingest validates metric codes against: the local node's registry, or else this
        client's cache of the cluster's metrics (see :meth:`refresh_metric_cache`)."""
        return self._metric_lookup if self._metric_lookup is not None else self._metric_cache.get

    async def refresh_metric_cache(self) -> bool:
        """Bring what ingest validates against up to date: the local node's registry when it is
        shared by several nodes (``metric_refresh``), else this client's cache of the cluster's
        metrics; False (nothing done) for a local registry no other node writes."""
        if self._metric_lookup is not None:
            if self._metric_refresh is None:
                return False
            await self._metric_refresh()
            return True
        for metric in await self.metrics.list():
            self._metric_cache[metric.code] = metric
        return True

    async def _ingest_routed(
        self,
        by_partition: Mapping[int, tuple[Sequence[EventRow], Sequence[int]]],
        sync: bool,
        deadline: float,
    ) -> dict[int, IngestOutcome]:
        """Send each owning node its partitions' rows in one request, all nodes in parallel; retry
        the partitions whose node failed retryably (moved, down, busy) on their owner as the map
        then says, until every partition is stored or the deadline passes.

        Every try carries the same batch id and the events their ids, so a part stored by a node
        that failed before answering (or by the owner a partition has since moved from) is
        recognised as a duplicate by the partition's owner, never stored twice."""
        topology = self._topology
        batch_id = uuid7()
        outcomes: dict[int, IngestOutcome] = {}
        # Validated against this node's own registry: no second check for the in-process part.
        validated = self._metric_lookup is not None

        async def send(node: NodeApi | None, partitions: list[int]) -> list[IngestOutcome]:
            if node is None:
                raise UnavailableError(
                    f"partition {partitions[0]} has no known owner", retry_after_seconds=0.2
                )
            parts = [(p, by_partition[p][0]) for p in partitions]
            return await node.ingest(parts, sync, batch_id, validated=validated and topology.is_local(node))

        failed: list[int] = []
        # A node refuses a whole request when one of its partitions has moved, without saying
        # which: the partitions of such a request are sent one per request from then on, so the
        # others are stored and the moved one's refusal carries its own owner hint.
        alone: set[int] = set()
        rerouted = [False]

        async def attempt(_left: float) -> None:
            groups: dict[tuple[int, int], tuple[NodeApi | None, list[int]]] = {}
            for p in by_partition:
                if p not in outcomes:
                    node = topology.owner_or_none(p)
                    groups.setdefault((id(node), p if p in alone else -1), (node, []))[1].append(p)
            calls = [send(node, ps) for node, ps in groups.values()]
            results = [await calls[0]] if len(calls) == 1 else await _gather_settled(calls)
            failed.clear()
            rerouted[0] = False
            error: Exception | None = None
            for (_, ps), result in zip(groups.values(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    failed.extend(ps)
                    if isinstance(result, UnimeterError) and result.reason == PARTITION_NOT_OWNED:
                        if len(ps) > 1:
                            alone.update(ps)
                            rerouted[0] = True
                        elif result.owner_hint:
                            rerouted[0] |= topology.follow_hint(ps[0], result.owner_hint)
                    # A failure no retry can mend is the one to report.
                    if error is None or not _retryable(result):
                        error = result
                else:
                    outcomes.update(zip(ps, result, strict=True))
            if error is not None:
                raise error

        async def reroute(exc: Exception) -> bool:
            if rerouted[0]:  # the next try already goes elsewhere; the map catches up meanwhile
                topology.refresh_soon()
                return True
            return await topology.reroute(failed, exc)

        await call_with_retries(attempt, deadline, self._retry, on_retry=reroute)
        return outcomes

    async def _metric_resolver(self, rows: Sequence[EventRow]) -> MetricLookup:
        cache = self._metric_cache
        if self._metric_lookup is None and any(row[1] not in cache for row in rows):
            await self.refresh_metric_cache()
        return self.ingest_metric_lookup()

    # ------------------------------------------------------------------ queries

    async def query_realtime(
        self, account_id: int, metric_code: str, *, timeout: float | None = None
    ) -> QueryResult:
        """The aggregate of the metric's current period, from memory."""
        check_account_id(account_id)
        p = self.partition_of(account_id)
        result: QueryResult = await self._on_partition(
            p, lambda n: n.query_realtime(p, account_id, metric_code), timeout
        )
        return result

    async def query(
        self,
        account_id: int,
        metric_code: str,
        period: Period | None = None,
        *,
        selector: PeriodSelector | None = None,
        filters: Mapping[str, str] | None = None,
        group_by: Sequence[str] = (),
        timeout: float | None = None,
    ) -> QueryResult:
        """The aggregate over ``period`` (exact range) or the metric's period named by ``selector``."""
        check_account_id(account_id)
        if period is None and selector is None:
            selector = PeriodSelector.CURRENT
        start, end = (period.start, period.end) if period is not None else (0, 0)
        p = self.partition_of(account_id)
        sel = int(selector or 0)
        flt = dict(filters or {})
        gb = list(group_by)
        result: QueryResult = await self._on_partition(
            p, lambda n: n.query(p, account_id, metric_code, start, end, sel, flt, gb), timeout
        )
        return result

    async def list_events(
        self,
        account_id: int,
        start: int,
        end: int,
        *,
        metric_code: str = "",
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> tuple[list[StoredEvent], str]:
        """One page of the account's events in ``[start, end)`` and the next page's token."""
        check_account_id(account_id)
        p = self.partition_of(account_id)
        page: tuple[list[StoredEvent], str] = await self._on_partition(
            p, lambda n: n.list_events(p, account_id, start, end, metric_code, page_size, page_token), timeout
        )
        return page

    async def list_alerts(
        self, account_id: int, after_offset: int = 0, *, page_size: int = 100, timeout: float | None = None
    ) -> tuple[list[Alert], bool]:
        """The account's alerts after ``after_offset`` and whether more follow."""
        check_account_id(account_id)
        p = self.partition_of(account_id)
        page: tuple[list[Alert], bool] = await self._on_partition(
            p, lambda n: n.list_alerts(p, account_id, after_offset, page_size), timeout
        )
        return page

    async def cluster_status(self, *, timeout: float | None = None) -> ClusterStatus:
        """Nodes, partition owners and offsets."""
        return await self._any(lambda n: n.cluster_status(), timeout)

    def alert_stream(
        self,
        *,
        account_ids: Sequence[int] = (),
        metric_codes: Sequence[str] = (),
        threshold_codes: Sequence[str] = (),
        since_offsets: Mapping[int, int] | None = None,
        from_beginning: bool = False,
    ) -> AsyncIterator[AlertStreamItem]:
        """Every partition's matching alerts, from each partition's owner, following it when it moves,
        with heartbeats (for servers re-streaming)."""
        since = dict(since_offsets or {})
        bad = [p for p in since if not 0 <= p < self.partitions]
        if bad:
            raise InvalidArgumentError(
                f"partition {bad[0]} does not exist",
                violations=[FieldViolation(f"since_offsets[{p}]", "no such partition") for p in bad],
            )
        filters = (list(account_ids), list(metric_codes), list(threshold_codes))
        topology = self._topology
        if topology.routed:
            return routed_alert_stream(topology, since, from_beginning, filters)
        partitions = list(range(self.partitions))
        return topology.owner(0).subscribe_alerts(partitions, since, from_beginning, *filters)

    # ------------------------------------------------------------------ plumbing

    async def _on_partition(
        self, partition: int, call: Callable[[NodeApi], Any], timeout: float | None
    ) -> Any:
        topology = self._topology
        if not topology.routed:
            return await call(topology.owner(partition))
        deadline = deadline_after(timeout, self._retry)
        return await call_with_retries(
            lambda _left: call(topology.owner(partition)),
            deadline,
            self._retry,
            on_retry=lambda exc: topology.reroute([partition], exc),
        )

    async def _any(self, call: Callable[[NodeApi], Awaitable[T]], timeout: float | None) -> T:
        topology = self._topology
        if not topology.routed:
            return await call(topology.any_node())
        deadline = deadline_after(timeout, self._retry)
        tried: list[NodeApi] = []

        async def attempt(_left: float) -> T:
            tried.append(node := topology.any_node())
            return await call(node)

        async def next_node(_exc: Exception) -> bool:
            topology.demote(tried[-1])  # the next try asks another node
            return topology.any_node() is not tried[-1]

        return await call_with_retries(attempt, deadline, self._retry, on_retry=next_node)


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, (UnavailableError, ResourceExhaustedError))


async def _gather_settled(calls: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Every call's result or exception: a node that failed must not hide what the others stored."""
    return list(await asyncio.gather(*calls, return_exceptions=True))
