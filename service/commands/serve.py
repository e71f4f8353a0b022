"""``unimeter serve``: run a node (embedded or JetStream storage) and the gRPC API until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import faulthandler
import io
import json
import logging
import signal
import sys

from node.data_dir_lock import DataDirectoryLocked
from node.jetstream.errors import NatsRefused, NatsUnavailable
from node.metric_registry import RegistryFileError
from node.partition import PartitionRecoveryError

from ..config import ServeConfig
from ..listen_addresses import AddressInUse, split_host_port
from ..logging_setup import configure_logging
from ..server import UnimeterServer

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
    except (
        ValueError,
        AddressInUse,
        DataDirectoryLocked,
        PartitionRecoveryError,
        RegistryFileError,
        NatsUnavailable,
        NatsRefused,
    ) as exc:
        # Unreadable key or TLS files, bad or taken addresses, a data directory another process
        # serves, a log that does not replay, a damaged registry file, NATS unreachable or unfit:
        # one line each, and whatever was opened is closed.
        raise SystemExit(f"unimeter serve: {exc}") from None
    except OSError as exc:  # the data directory cannot be made or opened (a file there, no permission)
        where = f": {exc.filename}" if exc.filename else ""
        raise SystemExit(f"unimeter serve: {exc.strerror or exc}{where}") from None
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
    # A shutdown that hangs must say where: the tasks still running, and (below, for what runs
    # after the loop) every thread's stack.
    watchdog = asyncio.create_task(_report_slow_shutdown(log), name="unimeter-shutdown-watchdog")
    faulthandler.dump_traceback_later(2 * SLOW_SHUTDOWN_SECONDS, repeat=True, file=sys.stderr)
    try:
        await server.stop()
    except Exception as exc:  # every partition was still flushed; the failure is the operator's to see
        log.error("shutdown did not complete cleanly: %s", exc)
        return 1
    finally:
        watchdog.cancel()
    return 0


SLOW_SHUTDOWN_SECONDS = 15.0
"""After this long, a shutdown logs the tasks it still waits for (and again each time after)."""


async def _report_slow_shutdown(log: logging.Logger) -> None:
    me = asyncio.current_task()
    while True:
        await asyncio.sleep(SLOW_SHUTDOWN_SECONDS)
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            if task is not me:
                task.print_stack(limit=8, file=stacks)
        log.warning(
            "shutdown is taking longer than %.0f s; still running:\n%s",
            SLOW_SHUTDOWN_SECONDS,
            stacks.getvalue(),
        )


def run_serve(config: ServeConfig) -> int:
    """Configure logging and serve until stopped; returns the exit code (1: the shutdown failed)."""
    configure_logging(config.log_level.upper(), config.log_format)
    try:
        return asyncio.run(_serve(config))
    finally:
        faulthandler.cancel_dump_traceback_later()
