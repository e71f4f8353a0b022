"""The ``unimeter`` console command. ``unimeter serve`` runs a node with the gRPC API."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from .config import ServeConfig, add_serve_arguments, serve_config_from_args
from .server import UnimeterServer

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimeter", description="Usage metering for usage-based billing.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a node with embedded storage and the gRPC API")
    add_serve_arguments(serve)
    return parser


async def _serve(config: ServeConfig) -> None:
    server = UnimeterServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # One machine-readable line, so scripts and tests started with port 0 learn the ports.
    print(
        json.dumps(
            {
                "event": "ready",
                "grpc_port": server.grpc_port,
                "node_port": server.node_port,
                "http_port": server.http_port,
                "data_dir": str(config.data_dir),
            }
        ),
        flush=True,
    )
    await stop.wait()
    logging.getLogger("unimeter").info("shutting down")
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unimeter`` command."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        config = serve_config_from_args(args)
        logging.basicConfig(
            level=config.log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        asyncio.run(_serve(config))
    return 0
