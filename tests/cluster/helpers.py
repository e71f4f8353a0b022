"""What the multi-node cluster tests share: starting ``unimeter serve --backend nats`` processes on
one stream, reading GetClusterStatus, and sending each request to the partition's owner (these tests
route by hand: routing between nodes is not what they test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from cluster_client.partitioning import partition_of
from tests.process import ServeProcess, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import cluster_service_pb2 as cs
from unimeter.v1 import cluster_service_pb2_grpc

TTL = 2.0
"""The lease TTL of these tests' nodes (seconds)."""


def cluster_flags(cluster: NatsCluster, stream: str, partitions: int) -> list[str]:
    return [
        "--backend", "nats",
        "--nats-url", ",".join(cluster.urls),
        "--nats-monitor-url", ",".join(cluster.monitor_urls),
        "--nats-stream", stream,
        "--partitions", str(partitions),
        "--lease-ttl-seconds", str(TTL),
        "--node-addr", "127.0.0.1:0",
        "--snapshot-interval-seconds", "1",
    ]  # fmt: skip


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
