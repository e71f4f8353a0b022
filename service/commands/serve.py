"""``unimeter serve``: run a node with embedded storage and the gRPC API until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from ..config import ServeConfig
from ..logging_setup import configure_logging
from ..server import UnimeterServer, split_host_port

__all__ = ["run_serve"]


def _listening(configured: str, port: int) -> str:
    """``host:port`` a listener is bound to (the port it got when asked for 0), or ``off``."""
    if not configured:
        return "off"
    host = split_host_port(configured)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve(config: ServeConfig) -> int:
    server = UnimeterServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except ValueError as exc:  # unreadable key or TLS files, bad addresses: nothing is listening yet
        raise SystemExit(f"unimeter serve: {exc}") from None
    # One machine-readable line, so people and scripts (started with port 0) learn where it listens.
    print(
        json.dumps(
            {
                "event": "ready",
                "grpc_addr": _listening(config.grpc_addr, server.grpc_port),
                "node_addr": _listening(config.node_addr, server.node_port),
                "http_addr": _listening(config.http_addr, server.http_port),
                "data_dir": str(config.data_dir),
            }
        ),
        flush=True,
    )
    await stop.wait()
    log = logging.getLogger("unimeter")
    log.info("shutting down")
    try:
        await server.stop()
    except Exception as exc:  # every partition was still flushed; the failure is the operator's to see
        log.error("shutdown did not complete cleanly: %s", exc)
        return 1
    return 0


def run_serve(config: ServeConfig) -> int:
    """Configure logging and serve until stopped; returns the exit code (1: the shutdown failed)."""
    configure_logging(config.log_level.upper(), config.log_format)
    return asyncio.run(_serve(config))
