"""One gRPC channel to a node's public API, with the caller's API key on every call.

The CLI uses grpc's blocking API: a command is a handful of sequential calls, and blocking calls
keep Ctrl-C and broken pipes simple. This module owns the channel and nothing else; errors are
described by :mod:`.errors`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from unimeter.v1 import (
    alert_service_pb2_grpc,
    cluster_service_pb2_grpc,
    ingest_service_pb2_grpc,
    metrics_service_pb2_grpc,
    query_service_pb2_grpc,
)

from .errors import CliError, ExitCode

__all__ = ["DEFAULT_ADDR", "Api", "ConnectionOptions"]

DEFAULT_ADDR = "127.0.0.1:50051"

# Ingest batches are up to 16 MiB (docs/semantics.md); the server accepts 17 MiB.
_MAX_MESSAGE_BYTES = 17 << 20

# grpc re-dials a lost server with its own backoff (1 s growing to 120 s by default), and calls made
# meanwhile fail at once: `alerts tail` would be back only at the next dial, seconds after the
# server. Re-dialing at most a second apart brings it back within a second or two.
_RECONNECT_BACKOFF_MS = (250, 1000)


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How to reach a node's gRPC API."""

    addr: str = DEFAULT_ADDR
    """host:port of the gRPC API."""
    api_key: str = ""
    """Sent as ``authorization: Bearer <key>`` metadata on every call; empty sends none."""
    tls_ca: Path | None = None
    """PEM root certificate(s): use TLS and trust these; None means a plaintext channel."""
    timeout: float = 30.0
    """Deadline of each unary call, in seconds (streams have none)."""


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """Concrete ClientCallDetails (grpc only declares the interface)."""


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds fixed metadata to every call, so no command can forget the API key."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def _details(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), *self._pairs]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class Api:
    """Stubs of every Unimeter service on one channel; use as a context manager."""

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options
        channel_options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[1]),
        ]
        if options.tls_ca is not None:
            try:
                roots = options.tls_ca.read_bytes()
            except OSError as exc:
                raise CliError(
                    f"cannot read --tls-ca {options.tls_ca}: {exc.strerror}", ExitCode.BAD_INPUT
                ) from None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            raw = grpc.secure_channel(options.addr, credentials, options=channel_options)
        else:
            raw = grpc.insecure_channel(options.addr, options=channel_options)
        self._raw = raw
        pairs = [("authorization", f"Bearer {options.api_key}")] if options.api_key else []
        channel = grpc.intercept_channel(raw, _Metadata(pairs))
        self.timeout = options.timeout
        self.metrics = metrics_service_pb2_grpc.MetricsServiceStub(channel)
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        self.query = query_service_pb2_grpc.QueryServiceStub(channel)
        self.alerts = alert_service_pb2_grpc.AlertServiceStub(channel)
        self.cluster = cluster_service_pb2_grpc.ClusterServiceStub(channel)

    def close(self) -> None:
        """Close the channel (cancels any open stream)."""
        self._raw.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
