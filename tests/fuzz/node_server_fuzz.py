"""Fuzzing a real node-protocol server: garbage clients against a real Node, and a good client after.

A ``ServerUnderFuzz`` is a ``NodeProtocolServer`` (with or without a cluster secret) serving a real
``Node`` on a temporary data directory, plus a well-behaved ``RemoteNode`` that stored known events
before the fuzzing began. Each input opens a raw TCP connection, optionally gets through the hello
(and the secret's proof) first, sends fuzz bytes from :mod:`.frame_fuzz`, half-closes and reads
what the node answers until it closes. The check: every byte the node sent back is a valid frame,
every error it sent is INVALID_ARGUMENT, UNAUTHENTICATED or one a request may get from the Node
itself, never INTERNAL, and the good client (on its long-lived connection, and on a new one) still
gets exactly its known numbers. Logged tracebacks are counted by ``TracebackCounter``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from types import TracebackType

from cluster_client import wire
from cluster_client.errors import InternalError
from cluster_client.node_auth import AUTH_METHOD, client_proof, new_nonce, secret_bytes
from cluster_client.partitioning import partition_of
from cluster_client.remote_node import RemoteNode
from cluster_client.types import AggType, Metric
from cluster_client.wire import FrameDecoder
from node.node import Node, NodeConfig
from node.protocol_server import NodeProtocolServer

from .frame_fuzz import frame_input

__all__ = ["CHECK_ACCOUNT", "CHECK_METRIC", "ServerUnderFuzz", "TracebackCounter"]

CHECK_METRIC = "check.sum"
"""The good client's metric: no fuzz input names it, so nothing a fuzz input does can change it."""
CHECK_ACCOUNT = 4_000_000_001
_CHECK_VALUES = list(range(1, 51))
_SECRET = "fuzz-cluster-secret"
_READ_TIMEOUT = 10.0


class TracebackCounter(logging.Handler):
    """Counts log records that carry a traceback (and keeps the first), at any level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info:
            self.count += 1
            if not self.first:
                self.first = self.format(record)


class ServerUnderFuzz:
    """A real Node behind a real NodeProtocolServer, and a good client with known numbers."""

    def __init__(self, data_dir: Path, *, secret: bool) -> None:
        self._data_dir = data_dir
        self._secret = _SECRET if secret else None
        self.node: Node | None = None
        self.server: NodeProtocolServer | None = None
        self.good: RemoteNode | None = None
        self.inputs = 0

    async def __aenter__(self) -> ServerUnderFuzz:
        self.node = Node(NodeConfig(self._data_dir, partitions=2, min_free_disk_bytes=0))
        await self.node.start()
        # A short handshake timeout: a fuzz input that stalls mid-handshake is answered quickly.
        self.server = NodeProtocolServer(self.node, cluster_secret=self._secret, handshake_timeout=2.0)
        await self.server.start()
        self.good = RemoteNode(f"127.0.0.1:{self.server.port}", cluster_secret=self._secret)
        await self.good.create_metric(Metric(CHECK_METRIC, AggType.SUM))
        now = time.time_ns()  # the realtime query reads the current period
        rows = [(CHECK_ACCOUNT, CHECK_METRIC, v, now + v, None, 1, f"c{v}") for v in _CHECK_VALUES]
        await self.good.ingest([(self._check_partition, rows)], True, "check-batch")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.good is not None:
            await self.good.close()
        if self.server is not None:
            await self.server.close(grace=1.0)
        if self.node is not None:
            await self.node.close()

    @property
    def _check_partition(self) -> int:
        assert self.node is not None
        return partition_of(CHECK_ACCOUNT, self.node.partitions_count)

    async def check_garbage_client(self, rng: random.Random) -> None:
        """One garbage client (see the module docstring), then the good client's checks."""
        assert self.server is not None
        self.inputs += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        decoder = FrameDecoder()
        answers: list[wire.Body] = []
        try:
            stage = rng.randrange(3)
            if stage >= 1:
                nonce = new_nonce()
                writer.write(wire.encode_hello({"client": "fuzz", "nonce": nonce}))
                hello = await self._next_body(reader, decoder, answers)
                if stage == 2 and hello is not None and hello[0] == wire.HELLO and self._secret is not None:
                    proof = client_proof(secret_bytes(self._secret), hello[2]["nonce"], nonce)
                    writer.write(wire.encode_request(1, AUTH_METHOD, [proof]))
                    await self._next_body(reader, decoder, answers)
            writer.write(frame_input(rng))
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(_READ_TIMEOUT):
                while data := await reader.read(65536):
                    answers.extend(decoder.feed(data))
        except (ConnectionResetError, BrokenPipeError):
            pass  # the node closed first: what it sent before is in answers
        finally:
            writer.close()
        for body in answers:
            self._check_answer(body)
        await self.check_good_client(new_connection=self.inputs % 16 == 0)

    async def _next_body(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder, answers: list[wire.Body]
    ) -> wire.Body | None:
        async with asyncio.timeout(_READ_TIMEOUT):
            while True:
                data = await reader.read(65536)
                if not data:
                    return None
                bodies = decoder.feed(data)
                answers.extend(bodies)
                if bodies:
                    return bodies[0]

    @staticmethod
    def _check_answer(body: wire.Body) -> None:
        if body[0] == wire.RESPONSE and not body[2]:
            error = wire.remote_error(body[3])
            assert not isinstance(error, InternalError), f"the node answered garbage with {error!r}"
            assert error.message

    async def garbage_connections_closed(self) -> bool:
        """Whether, within a few seconds, every connection but the good client's is gone."""
        assert self.server is not None
        for _ in range(500):
            if self.server.connection_count == 1:
                return True
            await asyncio.sleep(0.01)
        return False

    async def check_good_client(self, *, new_connection: bool) -> None:
        """The good client still gets its exact numbers (on a fresh connection if asked)."""
        assert self.server is not None and self.good is not None
        client = self.good
        if new_connection:
            client = RemoteNode(f"127.0.0.1:{self.server.port}", cluster_secret=self._secret)
        try:
            result = await client.query_realtime(self._check_partition, CHECK_ACCOUNT, CHECK_METRIC)
            assert (result.value.sum, result.value.count) == (sum(_CHECK_VALUES), len(_CHECK_VALUES))
            status = await client.cluster_status()
            assert status.partitions == 2
        finally:
            if client is not self.good:
                await client.close()
