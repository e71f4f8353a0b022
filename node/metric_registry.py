"""The embedded backend's durable metric registry: one small file, rewritten atomically on change.

Metrics are few and change rarely, so the whole registry is one msgpack document written to a
temporary file, fsynced and renamed over the old one (then the directory is fsynced). Each creation
gets a generation, strictly increasing, that event records carry so a deleted and re-created metric
starts from empty aggregates.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import msgpack

from cluster_client.errors import AlreadyExistsError, NotFoundError
from cluster_client.types import Metric
from cluster_client.validation import normalize_metric
from cluster_client.wire import metric_from_wire, metric_to_wire

from .clock import SYSTEM_CLOCK, Clock

__all__ = ["MetricRegistry", "write_file_atomically"]


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


class MetricRegistry:
    """Metric definitions by code, durable in ``<data-dir>/metrics.msgpack``."""

    def __init__(self, path: Path, clock: Clock = SYSTEM_CLOCK) -> None:
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

    def require(self, code: str) -> Metric:
        """The metric named ``code``, or NotFoundError."""
        metric = self._metrics.get(code)
        if metric is None:
            raise NotFoundError(f"metric {code!r} does not exist", reason="METRIC_NOT_FOUND")
        return metric

    def list(self) -> list[Metric]:
        """Every metric, ordered by code."""
        return [self._metrics[code] for code in sorted(self._metrics)]

    def create(self, metric: Metric) -> Metric:
        """Validate and store a new metric; its create time is its generation."""
        normalized = normalize_metric(metric)
        if normalized.code in self._metrics:
            raise AlreadyExistsError(f"metric {metric.code!r} already exists", reason="METRIC_EXISTS")
        generation = max(self._clock.now_ns(), self._last_generation + 1)
        stored = dataclasses.replace(normalized, create_time_unix_nano=generation)
        self._metrics[stored.code] = stored
        self._last_generation = generation
        self._save()
        return stored

    def delete(self, code: str) -> Metric:
        """Remove a metric; returns what was removed."""
        metric = self.require(code)
        del self._metrics[code]
        self._save()
        return metric

    def _save(self) -> None:
        doc = {
            "last_generation": self._last_generation,
            "metrics": [metric_to_wire(m) for m in self.list()],
        }
        write_file_atomically(self._path, msgpack.packb(doc))
