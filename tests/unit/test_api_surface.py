"""The layers stay in step: every RPC has a client-core method, and the public names are pinned."""

from __future__ import annotations

import ast
from pathlib import Path

import cluster_client
from service.servicers import add_servicers  # noqa: F401  (imports every servicer module)
from unimeter.v1 import (
    alert_service_pb2,
    cluster_service_pb2,
    ingest_service_pb2,
    metrics_service_pb2,
    query_service_pb2,
)

REPO = Path(__file__).resolve().parents[2]

# RPC → the client-core call its servicer forwards to.
CLIENT_METHOD = {
    "MetricsService.CreateMetric": "metrics.create",
    "MetricsService.GetMetric": "metrics.get",
    "MetricsService.ListMetrics": "metrics.list",
    "MetricsService.DeleteMetric": "metrics.delete",
    "IngestService.Ingest": "ingest_rows",
    "QueryService.QueryRealtime": "query_realtime",
    "QueryService.Query": "query",
    "QueryService.ListEvents": "list_events",
    "AlertService.ListAlerts": "list_alerts",
    "AlertService.AlertSubscribe": "alert_stream",
    "ClusterService.GetClusterStatus": "cluster_status",
}


def test_every_rpc_has_a_client_method() -> None:
    from cluster_client.client import Client, MetricsClient

    rpcs = {
        f"{svc.name}.{m.name}"
        for module in (
            metrics_service_pb2,
            ingest_service_pb2,
            query_service_pb2,
            alert_service_pb2,
            cluster_service_pb2,
        )
        for svc in module.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert rpcs == set(CLIENT_METHOD)
    for path in CLIENT_METHOD.values():
        owner = MetricsClient if path.startswith("metrics.") else Client
        assert callable(getattr(owner, path.split(".")[-1])), path


def test_public_surface_of_the_sdk_is_pinned() -> None:
    assert sorted(cluster_client.__all__) == sorted(
        [
            "AggType",
            "AggValue",
            "Alert",
            "AlertSubscription",
            "AlertThreshold",
            "AlreadyExistsError",
            "Client",
            "DeadlineExceededError",
            "DeliveryMode",
            "DimensionFilter",
            "Event",
            "FieldViolation",
            "GroupValue",
            "IngestResult",
            "InternalError",
            "InvalidArgumentError",
            "Metric",
            "NotFoundError",
            "OperationType",
            "OutOfRangeError",
            "Period",
            "PeriodSelector",
            "PeriodType",
            "PermissionDeniedError",
            "QueryResult",
            "ResourceExhaustedError",
            "RetryPolicy",
            "StoredEvent",
            "UnauthenticatedError",
            "UnavailableError",
            "UnimeterError",
            "current_billing_period",
            "current_month",
            "current_period",
            "last_billing_period",
            "last_month",
            "scale",
            "this_week",
            "today",
            "unscale",
        ]
    )
    for name in cluster_client.__all__:
        assert hasattr(cluster_client, name), name


def test_layers_point_down_only() -> None:
    """cluster_client never imports node/ or service/; node/ never imports service/ or grpc."""
    forbidden = {
        "cluster_client": ("node", "service", "grpc", "unimeter"),
        "node": ("service", "grpc", "unimeter"),
    }
    for package, banned in forbidden.items():
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for stmt in ast.walk(tree):
                names: list[str] = []
                if isinstance(stmt, ast.Import):
                    names = [a.name for a in stmt.names]
                elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                    names = [stmt.module]
                for name in names:
                    assert name.split(".")[0] not in banned, f"{path.relative_to(REPO)} imports {name}"
