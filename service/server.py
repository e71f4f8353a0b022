"""The composition root of ``unimeter serve``: a node, the client core on top of it, and the servers.

It builds the node (recovering its data directory), hands it to the client core as an in-process
transport, and serves the gRPC API (plus health and reflection), the node protocol and the HTTP
endpoint. Shutdown stops accepting, lets in-flight calls finish, then flushes and snapshots.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster_client.client import Client
from node.node import Node, NodeConfig
from node.protocol_server import NodeProtocolServer

from .config import ServeConfig
from .http_endpoint import HttpEndpoint
from .servicers import add_servicers

__all__ = ["MAX_MESSAGE_BYTES", "UnimeterServer", "split_host_port"]

log = logging.getLogger(__name__)

# SPEC §6: a batch is at most 16 MiB; leave room for the envelope.
MAX_MESSAGE_BYTES = 17 << 20


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:port"`` → (host, port); raises ValueError on a malformed address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


class UnimeterServer:
    """One Unimeter process: node + gRPC API + node protocol + HTTP endpoint."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.node: Node | None = None
        self.client: Client | None = None
        self.grpc_port = 0
        self.node_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._protocol: NodeProtocolServer | None = None
        self._http: HttpEndpoint | None = None
        self._health = health.aio.HealthServicer()

    @property
    def ready(self) -> bool:
        """Recovered and serving."""
        return self._grpc is not None and self.node is not None

    async def start(self) -> None:
        """Recover the data directory and start serving."""
        cfg = self.config
        if cfg.http_addr:
            host, port = split_host_port(cfg.http_addr)
            self._http = HttpEndpoint(host, port, lambda: self.ready)
            await self._http.start()
            self.http_port = self._http.port
        node_config = NodeConfig(
            data_dir=cfg.data_dir,
            partitions=cfg.partitions,
            flush_interval=cfg.flush_interval_ms / 1000,
            dedup_window_seconds=cfg.dedup_window_seconds,
            snapshot_interval=cfg.snapshot_interval_seconds,
            node_addr=cfg.node_addr,
            grpc_addr=cfg.grpc_addr,
        )
        # Recovery is CPU-bound; a thread keeps /healthz answering while it runs.
        node = await asyncio.to_thread(Node, node_config)
        await node.start()
        self.node = node
        log.info("recovered %d partitions in %.3fs", node.partitions_count, node.recovery_seconds)
        self.client = await Client.in_process(node, metric_lookup=node.metric_of)

        if cfg.node_addr:
            host, port = split_host_port(cfg.node_addr)
            self._protocol = NodeProtocolServer(node, host=host, port=port)
            await self._protocol.start()
            self.node_port = self._protocol.port
            node.node_addr = f"{host}:{self.node_port}"  # what clients reach, even when asked for port 0

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        names = add_servicers(server, self.client)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        self.grpc_port = server.add_insecure_port(cfg.grpc_addr)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {cfg.grpc_addr}")
        await server.start()
        node.grpc_addr = f"{split_host_port(cfg.grpc_addr)[0]}:{self.grpc_port}"
        self._grpc = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in names:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish in-flight calls (up to ``grace`` seconds), flush and snapshot."""
        await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._protocol is not None:
            await self._protocol.close()
        if self.node is not None:
            await self.node.close()
        if self._http is not None:
            await self._http.close()
