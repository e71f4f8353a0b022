"""What the multi-node cluster tests share: starting ``unimeter serve --backend nats`` processes on
one stream, reading GetClusterStatus, and sending each request to the partition's owner (these tests
route by hand: routing between nodes is not what they test)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from cluster_client.partitioning import partition_of
from service.config import ServeConfig
from tests.conftest import Api, api_on_port, serve_config
from tests.integration.ops_helpers import http_get
from tests.process import ServeProcess, spawn_serve, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import cluster_service_pb2 as cs
from unimeter.v1 import cluster_service_pb2_grpc

TTL = 2.0
"""The lease TTL of these tests' nodes (seconds)."""
T = TypeVar("T")


def cluster_flags(
    cluster: NatsCluster, stream: str, partitions: int, *, ttl: float = TTL, extra: tuple[str, ...] = ()
) -> list[str]:
    """``serve`` flags of a node of the stream (a snapshot every second unless ``extra`` says)."""
    return [
        "--backend", "nats",
        "--nats-url", ",".join(cluster.urls),
        "--nats-monitor-url", ",".join(cluster.monitor_urls),
        "--nats-stream", stream,
        "--partitions", str(partitions),
        "--lease-ttl-seconds", str(ttl),
        "--node-addr", "127.0.0.1:0",
        "--snapshot-interval-seconds", "1",
        *extra,
    ]  # fmt: skip


def nats_serve_config(data_dir: Path, cluster: NatsCluster, stream: str, **overrides: object) -> ServeConfig:
    """An in-process server's config on ``stream`` of ``cluster`` (``tests.conftest.serve_config``)."""
    return serve_config(
        data_dir,
        backend="nats",
        nats_url=",".join(cluster.urls),
        nats_monitor_url=",".join(cluster.monitor_urls),
        nats_stream=stream,
        **overrides,
    )


def free_port() -> int:
    """A loopback port nothing listens on now (for a process that must be told its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_node_on_free_ports(data_dir: Path, flags: list[str], node_id: str) -> tuple[ServeProcess, int, int]:
    """``spawn_serve`` of node ``node_id`` with its HTTP endpoint and gRPC API on free ports, without
    waiting for it: ``(process, http port, grpc port)``, so a test can probe it while it starts."""
    http, grpc_port = free_port(), free_port()
    proc = spawn_serve(
        data_dir,
        *flags,
        "--node-id", node_id,
        "--http-addr", f"127.0.0.1:{http}",
        "--grpc-addr", f"127.0.0.1:{grpc_port}",
    )  # fmt: skip
    return proc, http, grpc_port


async def readyz(port: int) -> int | None:
    """/readyz's status code on ``port``, None while nothing listens yet."""
    try:
        return (await http_get(port, "/readyz"))[0]
    except OSError:
        return None


@contextlib.asynccontextmanager
async def three_nodes(tmp_path: Path, flags: list[str]) -> AsyncIterator[list[ServeProcess]]:
    """Nodes n1, n2 and n3 started with ``flags``, once every partition has an owner and each
    node serves some; every node is stopped at the end, whatever happens: one that does not stop
    on SIGTERM is killed, and named, after the others were stopped too."""
    nodes: list[ServeProcess] = []
    try:
        for i in (1, 2, 3):
            nodes.append(
                await asyncio.to_thread(start_serve, tmp_path / f"n{i}", *flags, "--node-id", f"n{i}")
            )
        await owners_settled(nodes[0].grpc_port, {"n1", "n2", "n3"})
        yield nodes
    finally:
        stuck: list[str] = []
        for i, node in enumerate(nodes, 1):
            if node.proc.poll() is None:
                try:
                    await asyncio.to_thread(node.terminate)
                except subprocess.TimeoutExpired:
                    stuck.append(f"n{i}")
                    await asyncio.to_thread(node.kill9)
        assert not stuck, f"{stuck} did not stop within 30 s of SIGTERM"


async def owners_settled(port: int, expected: set[str], timeout: float = 30) -> dict[int, str]:
    """Partition → owner once every partition has one and the owners are exactly ``expected``."""
    response = await wait_for_owners(port, lambda o: all(o) and set(o) == expected, timeout)
    return dict(enumerate(owners(response)))


def start_node(
    tmp_path: Path, cluster: NatsCluster, stream: str, node_id: str, partitions: int
) -> ServeProcess:
    return start_serve(tmp_path / node_id, *cluster_flags(cluster, stream, partitions), "--node-id", node_id)


async def status(port: int) -> cs.GetClusterStatusResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        return await stub.GetClusterStatus(cs.GetClusterStatusRequest(), timeout=10)


def owners(response: cs.GetClusterStatusResponse) -> list[str]:
    """Each partition's owner node id ("" for none)."""
    return [p.owner_node_id for p in response.partition_infos]


async def wait_for_owners(
    port: int, accept: Callable[[list[str]], bool], timeout: float = 30.0
) -> cs.GetClusterStatusResponse:
    """Poll the node on ``port`` until its partition owners satisfy ``accept`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await status(port)
        if accept(owners(response)):
            return response
        if time.monotonic() > deadline:
            raise TimeoutError(f"owners never satisfied the condition: {owners(response)}")
        await asyncio.sleep(0.05)


def accounts_by_partition(partitions: int) -> list[int]:
    """One account id hashing to each partition."""
    found: dict[int, int] = {}
    account = 1
    while len(found) < partitions:
        found.setdefault(partition_of(account, partitions), account)
        account += 1
    return [found[p] for p in range(partitions)]


class Router:
    """Sends each request to its partition's owner as GetClusterStatus of a live node says; after a
    failure, :meth:`refresh` asks again (the test decides when)."""

    def __init__(self, ports: list[int], partitions: int) -> None:
        self.ports = list(ports)
        self.partitions = partitions
        self.table: list[str] = []
        self.grpc_port: dict[str, int] = {}
        self._apis: dict[int, Api] = {}

    async def refresh(self) -> None:
        """Read the map from the first node that answers (every node gives the same one)."""
        for port in self.ports:
            try:
                response = await status(port)
            except grpc.aio.AioRpcError:
                continue
            self.table = owners(response)
            self.grpc_port = {n.node_id: int(n.grpc_addr.rpartition(":")[2]) for n in response.nodes}
            return
        raise RuntimeError("no node answered GetClusterStatus")

    def api(self, account: int) -> Api:
        """Stubs on a channel to the owner of ``account``'s partition (as last read)."""
        port = self.grpc_port[self.table[partition_of(account, self.partitions)]]
        api = self._apis.get(port)
        if api is None:
            api = self._apis[port] = api_on_port(port)
        return api

    async def close(self) -> None:
        for api in self._apis.values():
            await api.channel.close()
        self._apis.clear()

    async def until_done(self, account: int, call: Callable[[Api], Awaitable[T]], timeout: float = 30.0) -> T:
        """``call`` on the owner of ``account``'s partition, retried (refreshing the map) until it
        succeeds, bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self.table or not self.table[partition_of(account, self.partitions)]:
                    raise LookupError("no owner yet")
                return await call(self.api(account))
            except (grpc.aio.AioRpcError, LookupError, KeyError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
                with contextlib.suppress(RuntimeError):
                    await self.refresh()
