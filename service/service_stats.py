"""Plain counters the gRPC layer keeps: calls by method and status code, their latency, ingest
rejections and authentication failures.

Like ``node.stats`` these are ints updated on the event loop thread (once per call, never per
event) and turned into Prometheus metrics only when scraped, by ``metrics_exporter``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from node.stats import Histogram

__all__ = ["RPC_BUCKETS", "STREAM_BUCKETS", "MethodStats", "ServiceStats", "field_label"]

# Unary calls: ~100 µs (a realtime query) to seconds (a SYNC ingest behind a slow disk).
RPC_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip
# Server streams (AlertSubscribe, health Watch): the stream's lifetime, seconds to hours.
STREAM_BUCKETS: tuple[float, ...] = (0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)

_FIELD_PREFIX = re.compile(r"^events\[\d+\]\.")
_FIELD_LABEL = re.compile(r"[a-z_]{1,32}")


def field_label(path: str) -> str:
    """A bounded label for a violation's field path: ``events[7].properties[region]`` ->
    ``properties``; anything unexpected -> ``other`` (labels must not grow with user input)."""
    name = _FIELD_PREFIX.sub("", path).split("[", 1)[0].split(".", 1)[0]
    return name if _FIELD_LABEL.fullmatch(name) else "other"


@dataclass(slots=True)
class MethodStats:
    """Calls of one RPC method: how many ended with each status code, and how long they took."""

    service: str
    method: str
    latency: Histogram
    codes: Counter[str] = field(default_factory=Counter)
    malformed: int = 0
    """Calls answered INVALID_ARGUMENT because a request body did not decode as the method's message."""


@dataclass(slots=True)
class ServiceStats:
    """Counters of one server's gRPC API."""

    methods: dict[str, MethodStats] = field(default_factory=dict)
    """By full method path (``/unimeter.v1.IngestService/Ingest``); only methods the server has."""
    auth_failures: Counter[str] = field(default_factory=Counter)
    """Calls refused by the API-key check, by ErrorInfo reason."""
    rejected_batches: Counter[str] = field(default_factory=Counter)
    """Ingest calls that failed, by ErrorInfo reason (INVALID_ARGUMENT and INGEST_OVERLOADED store
    nothing; a call failing later, e.g. UNAVAILABLE, may have stored some partitions' parts)."""
    rejected_events: Counter[str] = field(default_factory=Counter)
    """Events in those calls, by ErrorInfo reason."""
    invalid_fields: Counter[str] = field(default_factory=Counter)
    """Field violations of INVALID_ARGUMENT ingest calls, by field (see :func:`field_label`)."""
    inflight_ingest_events: int = 0
    """Events of ingest calls being handled right now."""
    max_inflight_ingest_events: int = 0
    """The configured limit of ``inflight_ingest_events``."""
    ingest_engine: str = ""
    """The ingest engine serving ("native" or "python"), once the server has chosen it."""

    def method(self, path: str, *, streaming: bool) -> MethodStats:
        """The stats of ``path``, created on first use (call only for methods the server serves)."""
        stats = self.methods.get(path)
        if stats is None:
            service, _, name = path.lstrip("/").rpartition("/")
            stats = self.methods[path] = MethodStats(
                service, name, Histogram(STREAM_BUCKETS if streaming else RPC_BUCKETS)
            )
        return stats
