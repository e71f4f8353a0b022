"""Why the JetStream backend cannot start; importable without loading the NATS client."""

from __future__ import annotations

__all__ = ["NatsRefused", "NatsUnavailable"]


class NatsUnavailable(RuntimeError):
    """NATS could not be reached at start."""


class NatsRefused(RuntimeError):
    """The NATS servers or the stream cannot serve this node as configured: the message says what
    to change."""
