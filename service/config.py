"""Configuration of ``unimeter serve``: one frozen dataclass, parsed once from flags and environment.

Every flag has an environment variable of the same name (``--data-dir`` ↔ ``UNIMETER_DATA_DIR``);
a flag given on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeConfig", "add_serve_arguments", "serve_config_from_args"]


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``unimeter serve`` needs."""

    data_dir: Path = Path("./data")
    """Directory of the embedded backend's logs, snapshots and metric registry."""
    grpc_addr: str = "127.0.0.1:50051"
    """host:port of the public gRPC API (port 0 picks a free port)."""
    node_addr: str = ""
    """host:port of the node protocol for remote client cores; empty disables it."""
    http_addr: str = ""
    """host:port of the HTTP endpoint (/metrics, /healthz, /readyz); empty disables it."""
    partitions: int | None = None
    """Partitions of a new data directory (default 64; an existing one keeps its own)."""
    flush_interval_ms: float = 10.0
    """Longest time an ASYNC write waits before its fsync."""
    dedup_window_seconds: float = 86_400.0
    """How long an event's dedup key is remembered."""
    snapshot_interval_seconds: float = 60.0
    """Seconds between snapshots of changed partitions."""
    log_level: str = "INFO"
    """Python logging level."""


_FLAGS: list[tuple[str, str, type, str]] = [
    ("data_dir", "--data-dir", Path, "directory of logs, snapshots and the metric registry"),
    ("grpc_addr", "--grpc-addr", str, "host:port of the public gRPC API"),
    ("node_addr", "--node-addr", str, "host:port of the node protocol (empty: off)"),
    ("http_addr", "--http-addr", str, "host:port of /metrics, /healthz, /readyz (empty: off)"),
    ("partitions", "--partitions", int, "partitions of a new data directory"),
    ("flush_interval_ms", "--flush-interval-ms", float, "max milliseconds before an ASYNC write is fsynced"),
    ("dedup_window_seconds", "--dedup-window-seconds", float, "dedup window by arrival time"),
    ("snapshot_interval_seconds", "--snapshot-interval-seconds", float, "seconds between snapshots"),
    ("log_level", "--log-level", str, "DEBUG, INFO, WARNING or ERROR"),
]


def _env_name(flag: str) -> str:
    return "UNIMETER_" + flag.lstrip("-").replace("-", "_").upper()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every serve flag (default None, so the environment can fill what is not given)."""
    defaults = ServeConfig()
    for name, flag, kind, help_text in _FLAGS:
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=None,
            help=f"{help_text} (env {_env_name(flag)}, default {getattr(defaults, name)!s})",
        )


def serve_config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """Flags over environment over defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, flag, kind, _ in _FLAGS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
        elif _env_name(flag) in env:
            raw = env[_env_name(flag)]
            try:
                values[name] = kind(raw)
            except ValueError as exc:
                raise SystemExit(f"{_env_name(flag)}={raw!r}: {exc}") from None
    return ServeConfig(**values)  # type: ignore[arg-type]


def env_names() -> Sequence[str]:
    """Every environment variable serve reads (for docs and tests)."""
    return [_env_name(flag) for _, flag, _, _ in _FLAGS]
