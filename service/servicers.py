"""The grpc.aio servicers of ``unimeter.v1``: translate messages, call the client core, map errors.

They hold no logic of their own: validation, routing and storage live below. Each RPC has exactly
one client-core method it forwards to (tests/unit/test_api_surface.py keeps the two in step).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from cluster_client.client import Client
from cluster_client.errors import (
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnimeterError,
)
from cluster_client.types import Period, PeriodSelector
from cluster_client.validation import check_account_id
from unimeter.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    ingest_service_pb2,
    metrics_service_pb2,
    metrics_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from .alert_batching import MAX_ALERTS_PER_MESSAGE, batched_alert_responses
from .convert import (
    alert_subscribe_item,
    alert_to_proto,
    cluster_status_to_proto,
    metric_from_proto,
    metric_to_proto,
    query_response,
    realtime_response,
    stored_event_to_proto,
)
from .ingest_engine import DecodedIngest, IngestEngine, IngestRequestDecoder, PythonIngestEngine
from .service_stats import ServiceStats, field_label
from .status_mapping import abort_with_error, rpc_handler

__all__ = [
    "AlertServicer",
    "ClusterServicer",
    "IngestServicer",
    "MetricsServicer",
    "QueryServicer",
    "add_servicers",
]

log = logging.getLogger(__name__)

_SELECTORS = {0: None, 1: PeriodSelector.CURRENT, 2: PeriodSelector.PREVIOUS}

# An overloaded server usually drains in a few fsync rounds (10 ms each by default); the client
# core's backoff grows from here.
_OVERLOAD_RETRY_SECONDS = 0.1


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else float(remaining)


class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """MetricsService over ``client.metrics``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @rpc_handler
    async def CreateMetric(
        self, request: metrics_service_pb2.CreateMetricRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.CreateMetricResponse:
        created = await self._client.metrics.create(
            metric_from_proto(request.metric), timeout=_timeout(context)
        )
        return metrics_service_pb2.CreateMetricResponse(metric=metric_to_proto(created))

    @rpc_handler
    async def GetMetric(
        self, request: metrics_service_pb2.GetMetricRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.GetMetricResponse:
        metric = await self._client.metrics.get(request.code, timeout=_timeout(context))
        return metrics_service_pb2.GetMetricResponse(metric=metric_to_proto(metric))

    @rpc_handler
    async def ListMetrics(
        self, request: metrics_service_pb2.ListMetricsRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.ListMetricsResponse:
        metrics = await self._client.metrics.list(timeout=_timeout(context))
        return metrics_service_pb2.ListMetricsResponse(metrics=[metric_to_proto(m) for m in metrics])

    @rpc_handler
    async def DeleteMetric(
        self, request: metrics_service_pb2.DeleteMetricRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.DeleteMetricResponse:
        await self._client.metrics.delete(request.code, timeout=_timeout(context))
        return metrics_service_pb2.DeleteMetricResponse()


class IngestServicer:
    """IngestService over the ingest engine and the client core (the caller's ids are kept as given).

    The engine decodes the request's bytes in the handler's request-deserializer slot
    (service/ingest_engine.py): protobuf for the Python engine, one native pass for the native
    one; ``Ingest`` gets the decoded batch, and answers the response's bytes as the engine
    writes them (the same on both). It bounds the events of calls in flight (waiting for a
    SYNC fsync, say) to ``stats.max_inflight_ingest_events``: past it a call is answered
    RESOURCE_EXHAUSTED with a retry delay instead of queueing without end. A lone call is always
    admitted, whatever its size.
    """

    def __init__(self, client: Client, stats: ServiceStats, engine: IngestEngine) -> None:
        self._client = client
        self._stats = stats
        self._engine = engine

    @rpc_handler
    async def Ingest(self, request: DecodedIngest, context: grpc.aio.ServicerContext) -> bytes:
        stats = self._stats
        n = request.n_events
        try:
            if (
                stats.inflight_ingest_events
                and stats.inflight_ingest_events + n > stats.max_inflight_ingest_events
            ):
                raise ResourceExhaustedError(
                    f"the server has {stats.inflight_ingest_events} events in flight (limit "
                    f"{stats.max_inflight_ingest_events}); retry later",
                    reason="INGEST_OVERLOADED",
                    retry_after_seconds=_OVERLOAD_RETRY_SECONDS,
                )
            stats.inflight_ingest_events += n
            try:
                result = await request.store(_timeout(context))
            finally:
                stats.inflight_ingest_events -= n
        except UnimeterError as exc:
            stats.rejected_batches[exc.reason] += 1
            stats.rejected_events[exc.reason] += n
            for violation in exc.violations:
                stats.invalid_fields[field_label(violation.field)] += 1
            raise
        return self._engine.encode_response(result)

    def register(self, server: grpc.aio.Server) -> None:
        """Add IngestService to ``server``, like the generated ``add_IngestServiceServicer_to_server``
        but with the engine as the request deserializer and the response's serializer (``Ingest``
        answers bytes, which grpc sends as they are)."""
        handlers = {
            "Ingest": grpc.unary_unary_rpc_method_handler(
                self.Ingest,
                request_deserializer=IngestRequestDecoder(self._engine, self._client).FromString,
                response_serializer=None,
            )
        }
        name = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """QueryService over ``client.query_realtime``, ``client.query`` and ``client.list_events``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @rpc_handler
    async def QueryRealtime(
        self, request: query_service_pb2.QueryRealtimeRequest, context: grpc.aio.ServicerContext
    ) -> query_service_pb2.QueryRealtimeResponse:
        result = await self._client.query_realtime(
            request.account_id, request.metric_code, timeout=_timeout(context)
        )
        return realtime_response(result)

    @rpc_handler
    async def Query(
        self, request: query_service_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> query_service_pb2.QueryResponse:
        selector = request.period_selector
        if selector not in _SELECTORS:
            raise InvalidArgumentError(
                f"unknown period selector {selector}",
                violations=[FieldViolation("period_selector", f"unknown period selector {selector}")],
            )
        period = None if selector else Period(request.period.start_unix_nano, request.period.end_unix_nano)
        result = await self._client.query(
            request.account_id,
            request.metric_code,
            period,
            selector=_SELECTORS[selector],
            filters=dict(request.filters),
            group_by=list(request.group_by),
            timeout=_timeout(context),
        )
        return query_response(result)

    @rpc_handler
    async def ListEvents(
        self, request: query_service_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> query_service_pb2.ListEventsResponse:
        events, token = await self._client.list_events(
            request.account_id,
            request.start_unix_nano,
            request.end_unix_nano,
            metric_code=request.metric_code,
            page_size=request.page_size,
            page_token=request.page_token,
            timeout=_timeout(context),
        )
        return query_service_pb2.ListEventsResponse(
            events=[stored_event_to_proto(e) for e in events], next_page_token=token
        )


class AlertServicer(alert_service_pb2_grpc.AlertServiceServicer):
    """AlertService over ``client.list_alerts`` and ``client.alert_stream``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @rpc_handler
    async def ListAlerts(
        self, request: alert_service_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> alert_service_pb2.ListAlertsResponse:
        alerts, more = await self._client.list_alerts(
            request.account_id, request.after_offset, page_size=request.page_size, timeout=_timeout(context)
        )
        return alert_service_pb2.ListAlertsResponse(alerts=[alert_to_proto(a) for a in alerts], has_more=more)

    async def AlertSubscribe(
        self, request: alert_service_pb2.AlertSubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[alert_service_pb2.AlertSubscribeResponse]:
        try:
            for account in request.account_ids:
                check_account_id(account, "account_ids")
            limit = request.max_alerts_per_message
            if limit > MAX_ALERTS_PER_MESSAGE:
                raise InvalidArgumentError(
                    f"max_alerts_per_message must be at most {MAX_ALERTS_PER_MESSAGE}",
                    violations=[
                        FieldViolation("max_alerts_per_message", f"must be at most {MAX_ALERTS_PER_MESSAGE}")
                    ],
                )
            stream = self._client.alert_stream(
                account_ids=list(request.account_ids),
                metric_codes=list(request.metric_codes),
                threshold_codes=list(request.threshold_codes),
                since_offsets=dict(request.since_offsets),
                from_beginning=request.from_beginning,
            )
            if limit > 1:
                async for response in batched_alert_responses(stream, limit):
                    yield response
            else:
                async for item in stream:
                    yield alert_subscribe_item(item.alert, item.offsets)
        except UnimeterError as exc:
            await abort_with_error(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in AlertSubscribe")
            await abort_with_error(context, InternalError("internal error; see the server log"))


class ClusterServicer(cluster_service_pb2_grpc.ClusterServiceServicer):
    """ClusterService over ``client.cluster_status``."""

    def __init__(self, client: Client, engine_name: str) -> None:
        self._client = client
        self._engine_name = engine_name

    @rpc_handler
    async def GetClusterStatus(
        self, request: cluster_service_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> cluster_service_pb2.GetClusterStatusResponse:
        status = cluster_status_to_proto(await self._client.cluster_status(timeout=_timeout(context)))
        status.engine = self._engine_name
        return status


def add_servicers(
    server: grpc.aio.Server,
    client: Client,
    stats: ServiceStats | None = None,
    engine: IngestEngine | None = None,
) -> list[str]:
    """Register every Unimeter service on ``server``; returns their full names (for reflection).

    ``stats`` receives the ingest counters and holds the in-flight limit (default: unlimited);
    ``engine`` decodes ingest requests (default: the Python reference engine).
    """
    if stats is None:
        stats = ServiceStats(max_inflight_ingest_events=1 << 62)
    if engine is None:
        engine = PythonIngestEngine()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(client), server)
    IngestServicer(client, stats, engine).register(server)
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(client), server)
    alert_service_pb2_grpc.add_AlertServiceServicer_to_server(AlertServicer(client), server)
    cluster = ClusterServicer(client, engine.name)
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(cluster, server)
    return [
        metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
        ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
        query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
        alert_service_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name,
        cluster_service_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
    ]
