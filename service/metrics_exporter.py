"""Prometheus metrics of one Unimeter server, read from plain counters at scrape time.

The node (``node.stats``, partition logs, alert streamer), the gRPC layer (``service_stats``) and
the node-protocol server keep ints; :class:`UnimeterCollector` turns them into metric families only
when ``/metrics`` is scraped, so serving traffic never touches prometheus-client. Each server gets
its own ``CollectorRegistry`` (several servers in one process, as in tests, never collide).
docs/operations.md lists every metric; keep the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from node.node import Node
from node.protocol_server import NodeProtocolServer
from node.stats import Histogram

from .service_stats import ServiceStats

__all__ = ["UnimeterCollector", "new_registry"]


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(bound) else repr(bound), float(n)) for bound, n in histogram.cumulative()]


class UnimeterCollector(Collector):
    """Every ``unimeter_*`` metric of one server."""

    def __init__(
        self,
        *,
        node: Callable[[], Node | None],
        protocol: Callable[[], NodeProtocolServer | None],
        ready: Callable[[], bool],
        stats: ServiceStats,
    ) -> None:
        """Getters, because the node and protocol server exist only once recovery has finished."""
        self._node = node
        self._protocol = protocol
        self._ready = ready
        self._stats = stats

    def describe(self) -> list[Metric]:
        # Nothing to pre-declare: names are fixed, and the registry must not call collect() early.
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "unimeter_ready", "1 once recovery has finished and the API serves", self._ready()
        )
        yield from self._grpc()
        yield from self._ingest()
        node = self._node()
        if node is not None:
            yield from self._storage(node)
            yield from self._alerts(node)
        protocol = self._protocol()
        if protocol is not None:
            yield from self._node_protocol(protocol)

    def _grpc(self) -> Iterator[Metric]:
        stats = self._stats
        calls = CounterMetricFamily(
            "unimeter_grpc_requests",
            "gRPC calls handled, by method and status code",
            labels=["service", "method", "code"],
        )
        latency = HistogramMetricFamily(
            "unimeter_grpc_request_duration_seconds",
            "Time from a call's arrival to its status (for server streams: the stream's lifetime)",
            labels=["service", "method"],
        )
        malformed = CounterMetricFamily(
            "unimeter_grpc_malformed_requests",
            "Calls whose request body did not decode as the method's message (answered INVALID_ARGUMENT)",
            labels=["service", "method"],
        )
        for m in list(stats.methods.values()):
            for code, n in list(m.codes.items()):
                calls.add_metric([m.service, m.method, code], n)
            latency.add_metric([m.service, m.method], _buckets(m.latency), m.latency.sum)
            if m.malformed:
                malformed.add_metric([m.service, m.method], m.malformed)
        yield calls
        yield latency
        yield malformed
        yield _counter_by(
            "unimeter_grpc_auth_failures",
            "Calls refused by the API-key check, by reason",
            "reason",
            stats.auth_failures,
        )

    def _ingest(self) -> Iterator[Metric]:
        stats = self._stats
        node = self._node()
        if stats.ingest_engine:
            engine = GaugeMetricFamily(
                "unimeter_ingest_engine_info", "The ingest engine serving (value 1)", labels=["engine"]
            )
            engine.add_metric([stats.ingest_engine], 1)
            yield engine
        batches = CounterMetricFamily(
            "unimeter_ingest_batches",
            "Ingest calls the node acknowledged, by delivery mode",
            labels=["delivery"],
        )
        events = CounterMetricFamily(
            "unimeter_ingest_events",
            "Events in acknowledged ingest calls (stored plus duplicates), by delivery mode",
            labels=["delivery"],
        )
        duplicates = CounterMetricFamily(
            "unimeter_ingest_duplicates", "Events answered as duplicates of stored events"
        )
        if node is not None:
            ingest = node.stats.ingest
            batches.add_metric(["async"], ingest.batches_async)
            batches.add_metric(["sync"], ingest.batches_sync)
            events.add_metric(["async"], ingest.events_async)
            events.add_metric(["sync"], ingest.events_sync)
            duplicates.add_metric([], ingest.duplicates)
        yield batches
        yield events
        yield duplicates
        yield _counter_by(
            "unimeter_ingest_rejected_batches",
            "Ingest calls that failed, by ErrorInfo reason",
            "reason",
            stats.rejected_batches,
        )
        yield _counter_by(
            "unimeter_ingest_rejected_events",
            "Events in failed ingest calls, by ErrorInfo reason",
            "reason",
            stats.rejected_events,
        )
        yield _counter_by(
            "unimeter_ingest_invalid_fields",
            "Field violations in INVALID_ARGUMENT ingest calls, by field",
            "field",
            stats.invalid_fields,
        )
        yield GaugeMetricFamily(
            "unimeter_ingest_inflight_events",
            "Events of ingest calls being handled",
            stats.inflight_ingest_events,
        )
        yield GaugeMetricFamily(
            "unimeter_ingest_inflight_events_limit",
            "Events in flight past which ingest answers RESOURCE_EXHAUSTED",
            stats.max_inflight_ingest_events,
        )

    def _storage(self, node: Node) -> Iterator[Metric]:
        fsync = HistogramMetricFamily(
            "unimeter_log_fsync_seconds",
            "Duration of each fsync round of the partition logs (one round serves every waiting write)",
            labels=["log"],
        )
        fsync.add_metric(["events"], _buckets(node.stats.fsync_events), node.stats.fsync_events.sum)
        fsync.add_metric(["alerts"], _buckets(node.stats.fsync_alerts), node.stats.fsync_alerts.sum)
        yield fsync
        size = GaugeMetricFamily(
            "unimeter_log_bytes",
            "Bytes in a partition log's segments and write buffer",
            labels=["partition", "log"],
        )
        segments = GaugeMetricFamily(
            "unimeter_log_segments", "Segment files of a partition log", labels=["partition", "log"]
        )
        offset = GaugeMetricFamily(
            "unimeter_partition_last_offset",
            "Offset of a partition's last stored event",
            labels=["partition"],
        )
        age = GaugeMetricFamily(
            "unimeter_snapshot_age_seconds",
            "Seconds since a partition's snapshot was written (absent: it has none yet)",
            labels=["partition"],
        )
        pending = GaugeMetricFamily(
            "unimeter_snapshot_pending_records",
            "Log records a partition's snapshot does not cover (replayed at recovery)",
            labels=["partition"],
        )
        dedup_keys = GaugeMetricFamily(
            "unimeter_dedup_keys", "Dedup keys a partition remembers (arrived within the window)",
            labels=["partition"],
        )  # fmt: skip
        dedup_bytes = GaugeMetricFamily(
            "unimeter_dedup_bytes",
            "Bytes of a partition's dedup index as allocated (table and expiry columns)",
            labels=["partition"],
        )
        now = node.config.clock.now_ns() / 1e9
        for p in node.partitions:
            label = str(p.number)
            for name, log in (("events", p.events), ("alerts", p.alert_log)):
                size.add_metric([label, name], log.size_bytes)
                segments.add_metric([label, name], log.segment_count)
            offset.add_metric([label], p.last_offset)
            if p.last_snapshot_time is not None:
                age.add_metric([label], max(0.0, now - p.last_snapshot_time))
            pending.add_metric([label], p.records_since_snapshot)
            dedup_keys.add_metric([label], len(p.dedup))
            dedup_bytes.add_metric([label], p.dedup.memory_bytes)
        yield size
        yield segments
        yield offset
        yield age
        yield pending
        yield dedup_keys
        yield dedup_bytes
        yield CounterMetricFamily(
            "unimeter_snapshots", "Partition snapshots written by the maintenance loop", node.stats.snapshots
        )
        yield CounterMetricFamily(
            "unimeter_snapshot_failures", "Partition snapshots that failed", node.stats.snapshot_failures
        )
        yield CounterMetricFamily(
            "unimeter_log_flush_failures", "Background log flushes that failed", node.stats.flush_failures
        )
        yield GaugeMetricFamily(
            "unimeter_disk_free_bytes",
            "Free space of the data directory's filesystem, as last checked",
            node.stats.disk_free_bytes,
        )
        yield GaugeMetricFamily(
            "unimeter_disk_free_bytes_floor",
            "Free space below which ingest answers RESOURCE_EXHAUSTED (DISK_FULL); 0: never",
            node.config.min_free_disk_bytes,
        )
        yield GaugeMetricFamily("unimeter_partitions", "Partitions this node owns", len(node.partitions))
        yield GaugeMetricFamily(
            "unimeter_recovery_seconds",
            "How long opening the data directory took at start",
            node.recovery_seconds,
        )

    def _alerts(self, node: Node) -> Iterator[Metric]:
        alerts = GaugeMetricFamily(
            "unimeter_alert_log_alerts",
            "Alerts in a partition's alert log that are durable and visible to readers",
            labels=["partition"],
        )
        in_memory = GaugeMetricFamily(
            "unimeter_alerts_in_memory",
            "Alerts of a partition held in memory (the newest; older ones are read from its alert log)",
            labels=["partition"],
        )
        for p in node.partitions:
            alerts.add_metric([str(p.number)], p.published_alert_offset)
            in_memory.add_metric([str(p.number)], p.alerts.in_memory)
        yield alerts
        yield in_memory
        yield GaugeMetricFamily(
            "unimeter_alert_subscribers", "Open alert subscriptions", node.alerts.subscribers
        )
        lag = GaugeMetricFamily(
            "unimeter_alert_subscriber_lag_alerts",
            "Per partition, published alerts the furthest-behind subscription has not been sent yet",
            labels=["partition"],
        )
        for number, behind in sorted(node.alerts.lag().items()):
            lag.add_metric([str(number)], behind)
        yield lag
        delay = HistogramMetricFamily(
            "unimeter_alert_publish_delay_seconds",
            "Seconds from the arrival of the batch that fired an alert to the alert's publication to "
            "subscribers (its event and alert records durable), one observation per alert",
        )
        delay.add_metric([], _buckets(node.stats.alert_publish_delay), node.stats.alert_publish_delay.sum)
        yield delay

    def _node_protocol(self, protocol: NodeProtocolServer) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "unimeter_node_protocol_connections", "Open node-protocol connections", protocol.connection_count
        )
        yield _counter_by(
            "unimeter_node_protocol_handshake_failures",
            "Node-protocol connections refused during the handshake, by reason",
            "reason",
            protocol.handshake_failures,
        )


def new_registry(collector: UnimeterCollector) -> CollectorRegistry:
    """A registry of its own with ``collector`` and the standard process, platform and GC metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _counter_by(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter family with one sample per key of ``counts`` (copied first: calls update it)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, n in list(counts.items()):
        family.add_metric([value], n)
    return family
