"""One gRPC channel to a node's public API, with the caller's API key on every call.

The CLI uses grpc's blocking API: a command is a handful of sequential calls, and blocking calls
keep Ctrl-C and broken pipes simple. Given several node addresses (``--addr h1:50051,h2:50051``)
it talks to the first that accepts a connection: every node of a cluster serves every call.
This module owns the channel and nothing else; errors are described by :mod:`.errors`.
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

__all__ = ["DEFAULT_ADDR", "Api", "ConnectionOptions", "addresses"]

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
    """host:port of the gRPC API, or several separated by commas (the first reachable is used)."""
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


def addresses(addr: str) -> list[str]:
    """The node addresses of ``--addr``: one ``host:port``, or several separated by commas."""
    found = [a.strip() for a in addr.split(",") if a.strip()]
    if not found:
        raise CliError(
            "--addr names no address: give host:port (or several, separated by commas)", ExitCode.BAD_INPUT
        )
    return found


_PROBE_SECONDS = 2.0
"""How long each of several addresses gets to accept a connection before the next is tried."""


def _first_reachable(
    addrs: list[str], channel_to: Callable[[str], grpc.Channel], timeout: float
) -> grpc.Channel:
    """A channel to the first of ``addrs`` that accepts a connection; with one address (or none
    reachable), a channel to the first, whose calls then say why it cannot be reached."""
    if len(addrs) == 1:
        return channel_to(addrs[0])
    probe = min(_PROBE_SECONDS, timeout)
    for addr in addrs:
        channel = channel_to(addr)
        try:
            grpc.channel_ready_future(channel).result(timeout=probe)
        except grpc.FutureTimeoutError:
            channel.close()
            continue
        return channel
    return channel_to(addrs[0])


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
        credentials: grpc.ChannelCredentials | None = None
        if options.tls_ca is not None:
            try:
                roots = options.tls_ca.read_bytes()
            except OSError as exc:
                raise CliError(
                    f"cannot read --tls-ca {options.tls_ca}: {exc.strerror}", ExitCode.BAD_INPUT
                ) from None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)

        def channel_to(addr: str) -> grpc.Channel:
            if credentials is not None:
                return grpc.secure_channel(addr, credentials, options=channel_options)
            return grpc.insecure_channel(addr, options=channel_options)

        raw = _first_reachable(addresses(options.addr), channel_to, options.timeout)
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
