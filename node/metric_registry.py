"""The metric registry a node reads its metrics from: the protocol, and the embedded backend's file.

A registry holds metric definitions by code. Each creation gets a generation (the metric's
``create_time_unix_nano``), strictly increasing per registry, that event records carry so a deleted
and re-created metric starts from empty aggregates. A registry tells its ``on_change`` listener (the
node) of every creation and deletion, its own and, for a shared registry, those made through other
nodes, before the call that made it returns. The embedded one here is one small file: metrics are
few and change rarely, so the whole registry is one msgpack document (with a version and a CRC-32,
``encode_registry_file``) written to a temporary file, fsynced and renamed over the old one (then the
directory is fsynced). The replicated one lives in a JetStream KV bucket
(``node.jetstream.metric_registry``).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgpack

from cluster_client.errors import AlreadyExistsError, NotFoundError, UnimeterError
from cluster_client.types import Metric
from cluster_client.validation import normalize_metric
from cluster_client.wire import metric_from_wire, metric_to_wire

from .atomic_file import write_file_atomically
from .clock import SYSTEM_CLOCK, Clock

__all__ = [
    "REGISTRY_FILE_VERSION",
    "FileMetricRegistry",
    "MetricListener",
    "MetricRegistry",
    "RegistryFileError",
    "decode_registry_file",
    "encode_registry_file",
    "metric_not_found",
]

REGISTRY_FILE_VERSION = 1
"""The ``"v"`` key of the registry file. Files written before versions existed have no ``"v"``
and no checksum (version 0); they are read, and the next change rewrites them as version 1."""
_CRC_BYTES = 4

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


class RegistryFileError(RuntimeError):
    """The registry file cannot be read: its message names the file, what is wrong and what to do."""


def encode_registry_file(last_generation: int, metrics: list[Metric]) -> bytes:
    """The registry file's bytes: a msgpack map (version, last generation, metrics), then the
    CRC-32 of it (4 bytes, little endian), so that a damaged file is refused, never half-read."""
    body: bytes = msgpack.packb(
        {
            "v": REGISTRY_FILE_VERSION,
            "last_generation": last_generation,
            "metrics": [metric_to_wire(m) for m in metrics],
        }
    )
    return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "little")


def decode_registry_file(data: bytes) -> tuple[int, list[Metric]]:
    """``(last_generation, metrics)`` from a registry file's bytes; ValueError saying what is
    wrong unless they are a well-formed file of version 1, or of version 0 (before checksums)."""
    body, crc = data[:-_CRC_BYTES], data[-_CRC_BYTES:]
    if len(data) > _CRC_BYTES and zlib.crc32(body) == int.from_bytes(crc, "little"):
        doc, expected_version = _unpack(body, "the checksum matches but the body does not decode"), 1
    else:
        doc, expected_version = _unpack(data, "checksum mismatch"), 0
    if type(doc) is not dict:
        raise ValueError("not a map")
    if doc.get("v", 0) != expected_version:
        raise ValueError(
            f"version {doc.get('v')!r} is not supported" if expected_version else "checksum mismatch"
        )
    generation, raw_metrics = doc.get("last_generation"), doc.get("metrics")
    if type(generation) is not int or type(raw_metrics) is not list:
        raise ValueError("last_generation or metrics missing or of the wrong type")
    try:
        return generation, [metric_from_wire(raw) for raw in raw_metrics]
    except UnimeterError as exc:
        raise ValueError(exc.message) from None


def _unpack(data: bytes, what_is_wrong: str) -> object:
    try:
        return msgpack.unpackb(data)
    except (ValueError, TypeError, msgpack.UnpackException):
        # ExtraData, FormatError and StackError are ValueErrors; a truncated payload is an
        # UnpackException; a map key of a type Python cannot hash is a TypeError.
        raise ValueError(what_is_wrong) from None


def metric_not_found(code: str) -> NotFoundError:
    """The error for a code no registry has."""
    return NotFoundError(f"metric {code!r} does not exist", reason="METRIC_NOT_FOUND")


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
            try:
                self._last_generation, metrics = decode_registry_file(path.read_bytes())
            except ValueError as exc:
                raise RegistryFileError(
                    f"metric registry {path} is damaged ({exc}): restore it from a backup of the data "
                    "directory; metric definitions cannot be rebuilt from the event log"
                ) from None
            self._metrics = {metric.code: metric for metric in metrics}

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
        write_file_atomically(self._path, encode_registry_file(self._last_generation, self.list()))
