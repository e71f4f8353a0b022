"""SIGTERM: a server with an open alert stream stops promptly, flushes, and the stream ends cleanly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from tests.process import start_serve
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import alert_service_pb2_grpc


async def test_sigterm_with_an_open_subscription_exits_promptly(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "data", "--partitions", "2")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            stream = alert_service_pb2_grpc.AlertServiceStub(ch).AlertSubscribe(als.AlertSubscribeRequest())
            async with asyncio.timeout(5):
                first = await stream.read()
            assert first.WhichOneof("kind") == "heartbeat"
            started = time.monotonic()
            code = await asyncio.to_thread(server.terminate, 30)
            assert code == 0
            assert time.monotonic() - started < 5  # not the 10 s grace period
            async with asyncio.timeout(5):
                end = await stream.read()
            assert end is grpc.aio.EOF
    finally:
        if server.proc.poll() is None:
            server.kill9()
