"""Sizes and durations of one benchmark run: ``full`` (``make bench``), ``quick`` and ``tiny`` (tests).

Only sizes live here; what each workload does is in ``bench.workloads``. Presets are plain frozen
dataclasses so a test can shrink any number with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SECTIONS", "BenchConfig", "preset"]

SECTIONS = ("fsync", "async", "sync", "query", "alerts", "engines", "memory", "restart", "cluster")
"""Every section of a run, in the order it runs."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What one run measures and how big each workload is."""

    mode: str
    """``full``, ``quick`` or ``tiny``; recorded in the results."""
    accounts: int = 10_000
    """Accounts the ingest workloads spread over (the reference benchmark's 10,000)."""
    metrics: int = 5
    """SUM metrics the ingest workloads spread over (the reference benchmark's 5)."""
    batch_sizes: tuple[int, ...] = (1, 100, 1000)
    """Events per Ingest call in the ASYNC matrix."""
    callers: tuple[int, ...] = (1, 4, 16)
    """Concurrent callers (each its own process and channel) in the ASYNC matrix."""
    run_seconds: float = 5.0
    """Measured window of each throughput run (ASYNC matrix, SYNC batches)."""
    latency_seconds: float = 4.0
    """Measured window of each latency run (SYNC single event, QueryRealtime, Query)."""
    latency_max_calls: int = 20_000
    """A latency run also stops after this many calls."""
    templates_per_caller: int = 4
    """Distinct pre-encoded batch shapes each caller cycles through (ids are made unique per call)."""
    fsync_iterations: int = 500
    """Appends of 100 bytes + fdatasync in the fsync probe."""
    sync_batch: int = 1000
    """Events per call in the SYNC batch run."""
    sync_batch_callers: int = 4
    """Callers of the SYNC batch run (compared with ASYNC at the same shape)."""
    target_batch: int = 1000
    """Batch size of the ASYNC row the targets use."""
    target_callers: int = 4
    """Callers of the ASYNC row the targets use."""
    target_pairs: int = 3
    """Back-to-back (ceiling, unimeter) pairs of that row, in alternating order; the row is the
    pair with the median ratio (odd, so that one pair is the median)."""
    query_account_events: int = 1_000_000
    """Events held by the account the query latencies are measured on."""
    query_fill_batch: int = 1000
    """Events per call when storing them: the reference client's example batch. A range edge reads
    back the log records its minute points at, so the record size sets the edge cost (with
    10,000-event records the month-long Query's p50 was ~5x higher on the same machine)."""
    alert_seconds: float = 10.0
    """Measured window of the ingest-to-alert run."""
    alert_callers: int = 4
    """Load-generator processes of the alert run (plus one subscriber process)."""
    alert_batch: int = 1000
    """Events per call in the alert run, of which ``alert_events_per_batch`` cross a threshold."""
    alert_events_per_batch: int = 10
    """Events per batch on the alert metric; each one crosses the next multiple of the threshold."""
    alert_max_per_message: int = 64
    """The subscriber's ``max_alerts_per_message`` in the target run (the mode for bursts of alerts);
    a diagnostic run at the same rate subscribes one alert per message."""
    series: int = 500_000
    """(account, metric, period) series created for the RSS-per-series measurement."""
    dedup_keys: int = 300_000
    """Events with ids (and, as the baseline, without) in the bytes-per-dedup-key measurement."""
    restart_events: int = 10_000_000
    """Events in the log of the restart measurement."""
    fill_batch: int = 10_000
    """Events per call when filling a server (the API's maximum batch)."""
    fill_callers: int = 4
    """Processes filling a server."""
    start_delay_seconds: float = 0.3
    """Between the last load generator being ready and the agreed start of a timed run."""
    event_age_seconds: float = 0.0
    """How far before the wall clock the newest event time of an ingest run lies (its events span
    the hour before that). The soak sets it past its short memory horizon, so that what it stores
    is in the state a node reaches for everything older than its horizon."""
    alert_settle_seconds: float = 1.0
    """After the alert run's load stops, how long the subscriber keeps reading."""
    memory_settle_seconds: float = 0.5
    """Wait before each RSS reading (longer than the flush interval)."""
    cluster_servers: int = 3
    """nats-servers of the cluster section (one JetStream cluster; the stream's replicas)."""
    cluster_nodes: int = 3
    """Unimeter nodes of the cluster section."""
    cluster_lease_ttl_seconds: float = 5.0
    """The cluster nodes' ``--lease-ttl-seconds``: the failover target is this + 2 s."""
    failover_kills: int = 3
    """Owners killed, one at a time, in the failover measurement (with more than one node)."""
    sections: tuple[str, ...] = field(default=SECTIONS)
    """Sections to run (``--only``); the default runs all."""

    @property
    def workers(self) -> int:
        """Load-generator processes the run needs at once."""
        return max(max(self.callers), self.sync_batch_callers, self.alert_callers + 1, self.fill_callers)


def preset(mode: str) -> BenchConfig:
    """The ``full``, ``quick`` or ``tiny`` preset."""
    if mode == "full":
        return BenchConfig(mode="full")
    if mode == "quick":
        return BenchConfig(
            mode="quick",
            run_seconds=0.5,
            latency_seconds=0.4,
            fsync_iterations=100,
            query_account_events=20_000,
            alert_seconds=1.0,
            series=20_000,
            dedup_keys=20_000,
            restart_events=100_000,
            start_delay_seconds=0.15,
            alert_settle_seconds=0.5,
            memory_settle_seconds=0.2,
            failover_kills=2,
        )
    if mode == "tiny":
        return BenchConfig(
            mode="tiny",
            accounts=50,
            batch_sizes=(1, 20),
            callers=(1, 2),
            run_seconds=0.2,
            latency_seconds=0.15,
            latency_max_calls=50,
            templates_per_caller=2,
            fsync_iterations=20,
            sync_batch=20,
            sync_batch_callers=2,
            target_batch=20,
            target_callers=2,
            query_account_events=300,
            query_fill_batch=50,
            alert_seconds=0.5,
            alert_callers=1,
            alert_batch=20,
            alert_events_per_batch=2,
            series=200,
            dedup_keys=200,
            restart_events=400,
            fill_batch=100,
            fill_callers=2,
            start_delay_seconds=0.1,
            alert_settle_seconds=0.5,
            memory_settle_seconds=0.1,
            cluster_lease_ttl_seconds=2.0,
            failover_kills=1,
        )
    raise ValueError(f"unknown mode {mode!r}")
