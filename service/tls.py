"""TLS material of ``unimeter serve``: one PEM certificate chain and key, loaded once at start, as
gRPC server credentials and as an ``ssl.SSLContext`` for the node protocol.

Only server-side TLS (clients verify the server); client certificates are not asked for: callers
authenticate with API keys, node-protocol peers with the cluster secret.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["ServerTls", "load_server_tls"]


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The same certificate and key for both listeners."""

    grpc_credentials: grpc.ServerCredentials
    node_context: ssl.SSLContext


def load_server_tls(cert: Path, key: Path) -> ServerTls:
    """Read and check ``cert`` and ``key``; ValueError naming the file when either is unusable."""
    try:
        cert_pem = cert.read_bytes()
        key_pem = key.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS file: {exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # Loading here also checks that the key matches the certificate, before anything listens.
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS certificate {cert} and key {key} are not a usable pair: {exc}") from None
    credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    return ServerTls(credentials, context)
