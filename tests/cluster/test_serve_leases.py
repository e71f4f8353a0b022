"""``unimeter serve --backend nats`` alone takes the lease of every partition: a second node with
its id, or with another partition count, is refused naming the conflict, SIGTERM hands the leases
over, a node that cannot renew stops acknowledging (UNAVAILABLE naming the partition) and resumes
by itself when NATS is back, and a lease taken from under a node stops that partition there while
the other holder has it. GetClusterStatus reports each partition's lease epoch."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import grpc
import msgpack
import nats
import nats.js.errors
import pytest

from cluster_client.partitioning import partition_of
from node.jetstream.leases import lease_key
from service.server import UnimeterServer
from tests.cluster.helpers import nats_serve_config
from tests.conftest import Api, open_api, serve_config
from tests.grpc_errors import details
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest
from tests.process import CLI, ENV, REPO, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import cluster_service_pb2 as cs
from unimeter.v1 import cluster_service_pb2_grpc
from unimeter.v1 import ingest_service_pb2 as ing

TTL = 3.0


def nats_flags(cluster: NatsCluster, stream: str) -> list[str]:
    return [
        "--backend", "nats",
        "--nats-url", ",".join(cluster.urls),
        "--nats-monitor-url", ",".join(cluster.monitor_urls),
        "--nats-stream", stream,
        "--partitions", "2",
        "--lease-ttl-seconds", str(TTL),
    ]  # fmt: skip


def refused(data_dir: Path, *flags: str) -> str:
    """The last stderr line of a serve that must refuse to start."""
    cmd = [*CLI, "serve", "--data-dir", str(data_dir), "--grpc-addr", "127.0.0.1:0", *flags]
    done = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    return done.stderr.strip().splitlines()[-1]


async def partition_table(port: int) -> list[tuple[str, int]]:
    """(owner, lease epoch) of each partition, from GetClusterStatus."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        status = await stub.GetClusterStatus(cs.GetClusterStatusRequest(), timeout=10)
    return [(p.owner_node_id, p.lease_epoch) for p in status.partition_infos]


async def test_a_second_node_with_the_same_id_or_partition_count_is_refused_and_sigterm_hands_over(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    flags = nats_flags(nats_cluster, stream_name)
    first = start_serve(tmp_path / "a", *flags, "--node-id", "n1")
    try:
        held = await partition_table(first.grpc_port)
        assert [owner for owner, _ in held] == ["n1", "n1"]
        assert all(epoch > 0 for _, epoch in held)
        line = refused(tmp_path / "c", *flags, "--node-id", "n1")
        assert re.fullmatch(
            r"unimeter serve: node id 'n1' is held by node 'n1' \(instance \w+, at no address\), which "
            r"renewed it: it is alive\. Two live nodes with one id, .*give this one another --node-id",
            line,
        ), line
        line = refused(tmp_path / "e", *flags, "--node-id", "n5", "--partitions", "3")
        assert line == (
            "unimeter serve: --partitions 3 differs from the 2 partitions of JetStream stream "
            f"{stream_name}: the count is fixed for a deployment (drop --partitions, or use another stream)"
        ), line
        assert not (tmp_path / "e" / "node.msgpack").exists()  # refused before the data directory
        assert await partition_table(first.grpc_port) == held  # the cluster's leases untouched
    finally:
        assert first.terminate() == 0
    # SIGTERM gave the leases back: nothing is left for the next node to wait for.
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        kv = await nc.jetstream().key_value(f"{stream_name}_leases")
        for partition in (0, 1):
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get(lease_key(partition))
    finally:
        await nc.close()
    line = refused(tmp_path / "d", *flags, "--node-id", "n3", "--lease-ttl-seconds", "5")
    assert line.startswith(
        f"unimeter serve: the lease bucket '{stream_name}_leases' has a TTL of 3s and this node was "
        "given --lease-ttl-seconds 5: every node must use the bucket's TTL"
    ), line
    second = start_serve(tmp_path / "b", *flags, "--node-id", "n2")
    try:
        taken = await partition_table(second.grpc_port)
        assert [owner for owner, _ in taken] == ["n2", "n2"]
        assert all(new > old for (_, new), (_, old) in zip(taken, held, strict=True))
    finally:
        assert second.terminate() == 0


def accounts_by_partition(partitions: int) -> list[int]:
    """One account id hashing to each partition."""
    found: dict[int, int] = {}
    account = 1
    while len(found) < partitions:
        found.setdefault(partition_of(account, partitions), account)
        account += 1
    return [found[p] for p in range(partitions)]


async def wait_for_refusal(api: Api, account: int) -> grpc.aio.AioRpcError:
    """Ingest into ``account``'s partition until the node refuses it for its lease (bounded)."""
    async with asyncio.timeout(60):
        while True:
            try:
                # A short deadline: the node routes a call for a partition it does not serve to
                # the owner until the call's deadline (docs/design.md, Routing); with no time to
                # retry, the refusal itself comes back.
                await api.ingest.Ingest(
                    ing.IngestRequest(events=[ev(account, "calls", 1, T0 + SEC)]), timeout=0.3
                )
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE and details(err)[0] == "PARTITION_NOT_OWNED":
                    return err
            await asyncio.sleep(0.05)


async def test_a_node_cut_off_from_nats_stops_acknowledging_then_resumes_by_itself(
    tmp_path: Path, stream_name: str
) -> None:
    cluster = NatsCluster(tmp_path / "nats", 1)
    cluster.start()
    server = UnimeterServer(
        serve_config(
            tmp_path / "data",
            backend="nats",
            nats_url=cluster.urls[0],
            nats_monitor_url=cluster.monitor_urls[0],
            nats_stream=stream_name,
            nats_replicas=1,
            partitions=2,
            node_id="n1",
            lease_ttl_seconds=TTL,
        )
    )
    try:
        await server.start()
        api = await open_api(server)
        await create_metric(api, "calls")
        accounts = accounts_by_partition(2)
        await ingest(api, *[ev(a, "calls", 1, T0 + SEC) for a in accounts], sync=True)
        epochs = await partition_table(server.grpc_port)
        cluster.kill(cluster.servers[0])
        err = await wait_for_refusal(api, accounts[0])
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert (err.details() or "").startswith("partition 0 is not served by this node now")
        assert details(err)[2] == 1.0  # retryable, with a delay
        cluster.start_server(cluster.servers[0])
        # A renewal that gets through before the lease expired finds it at this node's revision
        # (nobody took it: same epoch); one after that finds it expired, and the node takes it
        # again (a new epoch). Which one depends on how long the server took to come back.
        async with asyncio.timeout(60):
            while True:
                try:
                    await ingest(api, *[ev(a, "calls", 1, T0 + 2 * SEC) for a in accounts], sync=True)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
        again = await partition_table(server.grpc_port)
        assert [owner for owner, _ in again] == ["n1", "n1"]
        assert all(new >= old for (_, new), (_, old) in zip(again, epochs, strict=True))
        # The metric registry's watch came back too: a new metric is created and used at once.
        await create_metric(api, "after")
        await ingest(api, ev(accounts[0], "after", 1, T0 + SEC), sync=True)
        await api.channel.close()
    finally:
        await server.stop(grace=0)
        cluster.stop()


async def test_a_lease_taken_from_under_a_node_stops_that_partition_while_the_other_holds_it(
    tmp_path: Path, nats_cluster: NatsCluster, stream_name: str
) -> None:
    server = UnimeterServer(
        nats_serve_config(
            tmp_path / "data",
            nats_cluster,
            stream_name,
            partitions=2,
            node_id="n1",
            lease_ttl_seconds=TTL,
        )
    )
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        await server.start()
        api = await open_api(server)
        await create_metric(api, "calls")
        accounts = accounts_by_partition(2)
        # Another node takes partition 0 (as an operator deleting the lease would let it).
        kv = await nc.jetstream().key_value(f"{stream_name}_leases")
        await kv.delete(lease_key(0))
        await kv.create(lease_key(0), msgpack.packb({"node": "n9", "instance": "other", "addr": ""}))
        err = await wait_for_refusal(api, accounts[0])
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "partition 0 is not served by this node now" in (err.details() or "")
        # The other partition is still served, and the status says who owns what.
        await ingest(api, ev(accounts[1], "calls", 1, T0 + SEC), sync=True)
        table = await partition_table(server.grpc_port)
        assert table[0][0] == "n9" and table[1][0] == "n1" and table[1][1] > 0
        await api.channel.close()
    finally:
        await nc.close()
        await server.stop(grace=0)
