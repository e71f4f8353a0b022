"""The cluster section of a run: Unimeter on a 3-server NATS JetStream cluster, beside the bare
JetStream publish it is built on and beside one embedded node, all measured in the same run.

What it measures (docs/benchmarks.md, "The cluster section"): the round trip of a bare JetStream
publish with ack (nats-py, the payload size of the node's own one-event record, from this process)
as the cluster's ceiling; SYNC single-event p50 through a node on the cluster and through an
embedded node; ASYNC throughput of the cluster's nodes (callers spread over them) and of the
embedded node at the target shape; and, with several nodes, failover: an owner killed with SIGKILL
→ the first SYNC write to one of its partitions a surviving node acknowledges. Its own servers
(``tools.nats_cluster``) and nodes, stopped when it ends; nothing here decides pass or fail.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import nats
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from cluster_client.partitioning import partition_of
from node.jetstream.backend import when_settled
from node.jetstream.kv_bucket import NOT_STORED
from tools.nats_cluster import NatsCluster

from . import payloads
from .processes import ServerProcess, start_unimeter
from .stats import latency_summary, percentile, ratio
from .workloads import Bench

__all__ = ["section_cluster"]

STREAM = "UNIMETER"
"""The nodes' stream (serve's default)."""
_BARE_STREAM = "BENCH_BARE"
_NOT_STORED_PAUSE_SECONDS = 0.05
"""How long a bare publish nobody answered waits before it is sent again."""
_WARM_PUBLISHES = 20
_ATTEMPT_SECONDS = 1.0
"""Deadline of each write while a failover is timed: a write the old owner swallowed is retried."""
_REBALANCE_SECONDS = 90.0


class _Cluster:
    """The section's NATS servers and Unimeter nodes."""

    def __init__(self, bench: Bench, root: Path) -> None:
        cfg = bench.config
        self.bench = bench
        self.root = root
        self.nats = NatsCluster(root / "nats", cfg.cluster_servers)
        self.nodes: list[ServerProcess] = []

    def start_node(self, index: int) -> ServerProcess:
        """Node ``n<index+1>`` (started again after a kill: the same data directory and id)."""
        cfg = self.bench.config
        node = start_unimeter(
            self.root / f"n{index + 1}",
            *self.bench.server_args,
            "--backend", "nats",
            "--node-id", f"n{index + 1}",
            "--node-addr", "127.0.0.1:0",
            "--nats-url", ",".join(self.nats.urls),
            "--nats-monitor-url", ",".join(self.nats.monitor_urls),
            "--nats-replicas", str(cfg.cluster_servers),
            "--lease-ttl-seconds", str(cfg.cluster_lease_ttl_seconds),
            name=f"cluster-n{index + 1}",
        )  # fmt: skip
        self.bench.extra_servers.append(node)  # killed by the run's cleanup whatever happens
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        self.nats.stop()


def section_cluster(bench: Bench) -> dict[str, Any]:
    """Every measurement of the cluster section (JSON-ready)."""
    cfg = bench.config
    progress = bench.progress
    cluster = _Cluster(bench, bench.data_root / "cluster")
    try:
        progress.begin(
            f"cluster: {cfg.cluster_servers} nats-servers, {cfg.cluster_nodes} nodes, an embedded node",
            2.0 + 1.5 * cfg.cluster_nodes,
        )
        cluster.nats.start()
        for index in range(cfg.cluster_nodes):
            cluster.nodes.append(cluster.start_node(index))
        embedded = bench.start_server("cluster-embedded")
        bench.create_metrics(cluster.nodes[0])
        bench.create_metrics(embedded)
        progress.end()

        # The SDK sends each partition's share to its owner; a gRPC caller may reach any node,
        # which forwards it over the node protocol: both paths are measured.
        owner, other = asyncio.run(_owner_and_other(cluster.nodes, account=1))
        sync: dict[str, Any] = {"owner_node": owner.name, "other_node": other.name if other else None}
        paths = [("cluster", owner), ("cluster_forwarded", other), ("embedded", embedded)]
        for name, server in ((n, s) for n, s in paths if s is not None):
            progress.begin(f"cluster: SYNC single-event latency → {name}", cfg.latency_seconds + 0.4)
            sync[name] = bench.measure_latency(server, "ingest1", account=1, sync=True)
            progress.end()
        record_bytes = asyncio.run(_record_bytes(cluster.nats.urls))
        progress.begin(f"cluster: bare JetStream publish ({record_bytes} B) round trip", cfg.latency_seconds)
        bare = asyncio.run(
            _bare_publish(cluster.nats.urls, record_bytes, cfg.latency_seconds, cfg.latency_max_calls)
        )
        progress.end()
        progress.begin("cluster: the same publishes with a node's headers (diagnostic)", cfg.latency_seconds)
        sync["bare_publish_fenced"] = asyncio.run(
            _bare_publish(
                cluster.nats.urls, record_bytes, cfg.latency_seconds, cfg.latency_max_calls, fenced=True
            )
        )
        progress.end()
        sync["bare_publish"] = {**bare, "payload_bytes": record_bytes}
        sync["ratio_p50"] = ratio(sync["cluster"]["p50_ms"], bare["p50_ms"])

        shape = {"batch": cfg.target_batch, "callers": cfg.target_callers}
        async_: dict[str, Any] = dict(shape)
        for name, servers in (("cluster", cluster.nodes), ("embedded", [embedded])):
            progress.begin(
                f"cluster: ASYNC batch={cfg.target_batch} callers={cfg.target_callers} → {name}",
                cfg.run_seconds + 0.8,
            )
            result = bench.measure_ingest(
                servers, batch=cfg.target_batch, callers=cfg.target_callers, duration=cfg.run_seconds
            )
            result.pop("_alert_calls")
            async_[name] = result
            progress.end()
        async_["ratio"] = ratio(async_["cluster"]["events_per_s"], async_["embedded"]["events_per_s"])

        failover: dict[str, Any] = {
            "lease_ttl_seconds": cfg.cluster_lease_ttl_seconds,
            "nodes": cfg.cluster_nodes,
        }
        if cfg.cluster_nodes > 1:
            failover.update(_failovers(cluster))
        else:
            failover["not_measured"] = "one node holds every partition: nothing to fail over to"
        return {
            "servers": cfg.cluster_servers,
            "nodes": cfg.cluster_nodes,
            "sync": sync,
            "async": async_,
            "failover": failover,
        }
    finally:
        cluster.stop()


async def _owner_and_other(
    nodes: list[ServerProcess], account: int
) -> tuple[ServerProcess, ServerProcess | None]:
    """The node owning ``account``'s partition, and another node (None with one node)."""
    status = await _status(nodes[0].addr)
    partition = partition_of(account, status.partitions)
    owner_id = next(p.owner_node_id for p in status.partition_infos if p.partition == partition)
    owner = next(n for n in nodes if n.name == f"cluster-{owner_id}")
    return owner, next((n for n in nodes if n is not owner), None)


async def _record_bytes(urls: list[str]) -> int:
    """The size of the node's one-event records: the last message on the busiest events subject."""
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(STREAM, subjects_filter=f"unimeter.{STREAM}.p.*.events")
        subjects = info.state.subjects or {}
        busiest = max(subjects, key=lambda s: subjects[s])
        last = await js.get_last_msg(STREAM, busiest)
        return len(last.data or b"")
    finally:
        await nc.close()


async def _bare_publish(
    urls: list[str], size: int, seconds: float, max_calls: int, *, fenced: bool = False
) -> dict[str, Any]:
    """Sequential publishes with ack of ``size`` random bytes to a stream of its own with the
    nodes' settings (file storage, one replica per server); latency percentiles in ms.
    ``fenced``: each with the headers a node's publish carries (a message id for deduplication,
    the expected last subject sequence for fencing), on a subject of its own. A publish nobody
    answers (no stream leader yet) is sent again and not timed."""
    subject = f"bench.bare.{'fenced' if fenced else 'plain'}"
    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=10)
        config = StreamConfig(
            name=_BARE_STREAM, subjects=["bench.bare.*"], storage=StorageType.FILE, num_replicas=len(urls)
        )
        # The same config again is accepted; a cluster still electing its leaders is waited for.
        await when_settled(partial(js.add_stream, config), "the bare-publish stream")
        payload = os.urandom(size)
        last = refused = 0
        latencies: list[int] = []
        end = time.monotonic() + seconds
        for i in itertools.count():
            if i >= _WARM_PUBLISHES and (time.monotonic() >= end or len(latencies) >= max_calls):
                break
            headers = (
                {"Nats-Msg-Id": f"bench-{i}", "Nats-Expected-Last-Subject-Sequence": str(last)}
                if fenced
                else None
            )
            started = time.perf_counter_ns()
            try:
                ack = await js.publish(subject, payload, headers=headers)
            except NOT_STORED:
                # Nobody answered: the new stream had no leader for that moment, so nothing was
                # stored (a CI run met it once). The same publish goes again after a pause.
                await asyncio.sleep(_NOT_STORED_PAUSE_SECONDS)
                continue
            except BadRequestError as exc:
                # Seen once in a full run: a fenced publish refused as if another message had
                # been stored on the subject. A diagnostic must not end the whole run: count it,
                # start again from the subject's last sequence.
                if not fenced or not str(exc.description).startswith("wrong last sequence"):
                    raise
                refused += 1
                last = (await js.get_last_msg(_BARE_STREAM, subject)).seq or 0
                continue
            if i >= _WARM_PUBLISHES:
                latencies.append(time.perf_counter_ns() - started)
            last = ack.seq
        return {**latency_summary(latencies), **({"refused_wrong_last_sequence": refused} if fenced else {})}
    finally:
        await nc.close()


def _failovers(cluster: _Cluster) -> dict[str, Any]:
    """Kill each node in turn (SIGKILL), time the first acknowledged write to one of its
    partitions, start it again and wait until it holds partitions before the next kill."""
    cfg = cluster.bench.config
    progress = cluster.bench.progress
    metric = payloads.metric_definitions(1)[0].code
    seconds: list[float] = []
    for kill in range(cfg.failover_kills):
        index = kill % len(cluster.nodes)
        progress.begin(
            f"cluster: failover {kill + 1}/{cfg.failover_kills} (n{index + 1} killed)",
            cfg.cluster_lease_ttl_seconds + 4,
        )
        seconds.append(asyncio.run(_failover_once(cluster, index, metric, kill)))
        cluster.nodes[index] = cluster.start_node(index)
        asyncio.run(_wait_holding(cluster, index))
        progress.end()
    return {
        "kills": len(seconds),
        "seconds": seconds,
        "p50_s": percentile(seconds, 50),
        "max_s": max(seconds) if seconds else None,
    }


async def _status(addr: str) -> Any:
    from unimeter.v1 import cluster_service_pb2, cluster_service_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        return await stub.GetClusterStatus(cluster_service_pb2.GetClusterStatusRequest(), timeout=10)


async def _failover_once(cluster: _Cluster, index: int, metric: str, kill: int) -> float:
    from unimeter.v1 import ingest_service_pb2, ingest_service_pb2_grpc, types_pb2

    victim = cluster.nodes[index]
    survivors = [node for i, node in enumerate(cluster.nodes) if i != index]
    status = await _status(survivors[0].addr)
    owned = [p.partition for p in status.partition_infos if p.owner_node_id == f"n{index + 1}"]
    if not owned:
        raise RuntimeError(f"n{index + 1} owns no partition to fail over: {status}")
    account = next(a for a in range(1, 1 << 20) if partition_of(a, status.partitions) == owned[0])
    channels = [grpc.aio.insecure_channel(node.addr) for node in survivors]
    try:
        stubs = [ingest_service_pb2_grpc.IngestServiceStub(c) for c in channels]
        victim.kill()
        killed = time.monotonic()
        attempt = 0
        while True:
            event = types_pb2.Event(
                account_id=account,
                metric_code=metric,
                value=1,
                time_unix_nano=time.time_ns(),
                event_id=f"failover-{kill}-{attempt}",
            )
            request = ingest_service_pb2.IngestRequest(events=[event], delivery=types_pb2.DELIVERY_MODE_SYNC)
            try:
                # Round robin over the survivors: whichever took the partition answers.
                await stubs[attempt % len(stubs)].Ingest(request, timeout=_ATTEMPT_SECONDS)
                return time.monotonic() - killed
            except grpc.aio.AioRpcError:
                attempt += 1
                await asyncio.sleep(0.05)
    finally:
        for channel in channels:
            await channel.close()


async def _wait_holding(cluster: _Cluster, index: int) -> None:
    """Until node ``index`` (started again) holds partitions: the cluster is balanced again."""
    deadline = time.monotonic() + _REBALANCE_SECONDS
    while time.monotonic() < deadline:
        status = await _status(cluster.nodes[index].addr)
        if any(p.owner_node_id == f"n{index + 1}" for p in status.partition_infos):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"n{index + 1} took no partition back within {_REBALANCE_SECONDS:.0f}s")
