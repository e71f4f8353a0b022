"""The metric registry a node reads its metrics from: the protocol, and the embedded backend's file.

A registry holds metric definitions by code. Each creation gets a generation (the metric's
``create_time_unix_nano``), strictly increasing per registry, that event records carry so a deleted
and re-created metric starts from empty aggregates. A registry tells its ``on_change`` listener (the
node) of every creation and deletion, its own and, for a shared registry, those made through other
nodes, before the call that made it returns. The embedded one here is one small file: metrics are
few and change rarely, so the whole registry is one msgpack document written to a temporary file,
fsynced and renamed over the old one (then the directory is fsynced). The replicated one lives in a
JetStream KV bucket (``node.jetstream.metric_registry``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgpack

from cluster_client.errors import AlreadyExistsError, NotFoundError
from cluster_client.types import Metric
from cluster_client.validation import normalize_metric
from cluster_client.wire import metric_from_wire, metric_to_wire

from .clock import SYSTEM_CLOCK, Clock

__all__ = [
    "FileMetricRegistry",
    "MetricListener",
    "MetricRegistry",
    "metric_not_found",
    "write_file_atomically",
]

MetricListener = Callable[[str, Metric | None], None]
"""Told ``(code, metric)`` when a metric is created, ``(code, None)`` when it is deleted."""


class MetricRegistry(Protocol):
    """What a node needs of its metric registry."""

    on_change: MetricListener | None

    def get(self, code: str) -> Metric | None:
        """The metric named ``code`` as this registry knows it now, or None."""

    def list(self) -> list[Metric]:
        """Every metric as this registry knows it now, ordered by code."""

    async def create(self, metric: Metric) -> Metric:
        """Validate and store a new metric with the next generation; AlreadyExistsError if the
        code exists."""

    async def delete(self, code: str) -> Metric:
        """Remove a metric and return it; NotFoundError if there is none."""

    async def refresh(self) -> None:
        """Catch up with every change made anywhere before this call (a node asks before it
        answers "unknown metric")."""


def metric_not_found(code: str) -> NotFoundError:
    """The error for a code no registry has."""
    return NotFoundError(f"metric {code!r} does not exist", reason="METRIC_NOT_FOUND")


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileMetricRegistry:
    """Metric definitions by code, durable in ``<data-dir>/metrics.msgpack``; this node is its
    only writer (the data directory's lock)."""

    def __init__(self, path: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self.on_change: MetricListener | None = None
        self._path = path
        self._clock = clock
        self._metrics: dict[str, Metric] = {}
        self._last_generation = 0
        if path.exists():
            doc = msgpack.unpackb(path.read_bytes())
            self._last_generation = int(doc["last_generation"])
            for raw in doc["metrics"]:
                metric = metric_from_wire(raw)
                self._metrics[metric.code] = metric

    def get(self, code: str) -> Metric | None:
        """The metric named ``code``, or None."""
        return self._metrics.get(code)

    def list(self) -> list[Metric]:
        """Every metric, ordered by code."""
        return [self._metrics[code] for code in sorted(self._metrics)]

    async def create(self, metric: Metric) -> Metric:
        """Validate and store a new metric; its create time is its generation."""
        normalized = normalize_metric(metric)
        if normalized.code in self._metrics:
            raise AlreadyExistsError(f"metric {metric.code!r} already exists", reason="METRIC_EXISTS")
        generation = max(self._clock.now_ns(), self._last_generation + 1)
        stored = dataclasses.replace(normalized, create_time_unix_nano=generation)
        self._metrics[stored.code] = stored
        self._last_generation = generation
        self._save()
        self._tell(stored.code, stored)
        return stored

    async def delete(self, code: str) -> Metric:
        """Remove a metric; returns what was removed."""
        metric = self._metrics.get(code)
        if metric is None:
            raise metric_not_found(code)
        del self._metrics[code]
        self._save()
        self._tell(code, None)
        return metric

    async def refresh(self) -> None:
        """Nothing to catch up with: every change goes through this object."""

    def _tell(self, code: str, metric: Metric | None) -> None:
        if self.on_change is not None:
            self.on_change(code, metric)

    def _save(self) -> None:
        doc = {
            "last_generation": self._last_generation,
            "metrics": [metric_to_wire(m) for m in self.list()],
        }
        write_file_atomically(self._path, msgpack.packb(doc))
