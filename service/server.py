"""The composition root of ``unimeter serve``: a node, the client core on top of it, and the servers.

It checks its listen addresses, builds the node (which locks and recovers its data directory),
hands it to the client core as an in-process transport, and serves the gRPC API (plus health and
reflection, each handler wrapped with request ids, metrics and API-key checks), the node protocol and the HTTP
endpoint, over TLS when configured. The gRPC health statuses follow ``ready``, as /readyz does.
Shutdown turns both to not ready, stops accepting, lets in-flight calls finish, then flushes and
snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import ssl
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster_client.client import Client
from cluster_client.errors import UnimeterError
from cluster_client.remote_node import RemoteNode
from node.jetstream.errors import NatsRefused
from node.node import Node, NodeConfig
from node.protocol_server import NodeProtocolServer

from .api_keys import ApiKeyStore, load_api_keys
from .call_wrapping import CallWrapping, WrappingServer
from .config import ServeConfig
from .health import HealthServicer
from .http_endpoint import HttpEndpoint
from .ingest_engine import IngestEngine, choose_engine
from .listen_addresses import check_free, naming_address_in_use, split_host_port
from .metrics_exporter import UnimeterCollector, new_registry
from .service_stats import ServiceStats
from .servicers import add_servicers
from .tls import ServerTls, load_server_tls

if TYPE_CHECKING:
    from node.jetstream.backend import JetStreamBackend

    from .nats_backend import ClusterState

__all__ = ["MAX_MESSAGE_BYTES", "YOUNG_COLLECTION_THRESHOLD", "UnimeterServer", "tune_gc"]

log = logging.getLogger(__name__)

# A batch is at most 16 MiB (docs/semantics.md); leave room for the envelope.
MAX_MESSAGE_BYTES = 17 << 20


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one: every log segment keeps a read descriptor
    open, so a node with big logs over 64 partitions needs thousands of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


YOUNG_COLLECTION_THRESHOLD = {"native": 2_000, "python": 50_000}
"""Tracked objects allocated (less those freed) between two young collections, by engine.

The Python engine's batches leave many tracked objects behind (dict entries, member histories):
at 50,000 instead of CPython's 700, young collections stop re-walking the batch being applied,
about 15% less CPU per event on 1000-event batches. The native engine leaves next to none; what
fills its young generation is grpc's garbage, a cycle of 5 objects every call makes (the closure
grpc.aio builds to look the method up, its scope, the call details, the metadata). At 50,000
that was a collection every ~10,000 calls of 15-63 ms, freezing every call and alert in flight;
at 2,000 it is one every ~400 calls of at most ~1.4 ms, and no more in all (docs/benchmarks-history.md,
session 26, "Young collections")."""


def tune_gc(engine: str) -> None:
    """Keep the cyclic GC off the aggregation state, which has no cycles but millions of lists:
    the recovered state is frozen (never scanned again: the documented use of ``gc.freeze``), and
    the young collections are timed for ``engine``'s garbage (``YOUNG_COLLECTION_THRESHOLD``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD[engine], 20, 100)


GIL_SWITCH_INTERVAL = 0.001
"""Seconds a thread waiting for the GIL lets the running one keep it (Python's default: 0.005)."""


def _shorten_gil_switch_interval() -> None:
    """Let the threads that only wait (fsync rounds, gRPC's completion-queue poller) get the GIL
    within 1 ms instead of 5 while the event loop is busy ingesting.

    Every fsync round and every gRPC completion (a request arriving, a stream message written)
    needs a few lines of Python on its own thread, and each time that thread waited up to the
    switch interval for the loop to let go. Under load that was most of an alert's latency: at
    32,000 events/s paced (server at 0.65-0.85 CPU), ingest→alert p99 was 31-80 ms with the
    default and 7-11 ms with 1 ms, in three interleaved pairs of runs; ASYNC 1000-event batches
    x 4 callers back to back were 33-52k events/s either way (within this machine's noise).
    0.5 ms cut the alert latency further but cost ~10% of that throughput (docs/design.md).
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def _peer_tls_context(cert: Path) -> ssl.SSLContext:
    """How a node verifies the other nodes' TLS: it trusts its own certificate chain file (one
    certificate shared by the cluster's nodes, or a chain ending in the cluster's CA) besides the
    system's roots, and checks the host name as any client does."""
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


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
        self._engine: IngestEngine | None = None
        self._protocol: NodeProtocolServer | None = None
        self._http: HttpEndpoint | None = None
        self._health = HealthServicer()
        self._jetstream: JetStreamBackend | None = None
        self._cluster: ClusterState | None = None
        self._serving = False
        self._stopping = False
        self._health_follower: asyncio.Task[None] | None = None
        self.stats = ServiceStats(max_inflight_ingest_events=config.max_inflight_ingest_events)
        """Counters of the gRPC layer (the node keeps its own in ``node.stats``)."""
        self.registry = new_registry(
            UnimeterCollector(
                node=lambda: self.node,
                protocol=lambda: self._protocol,
                ready=lambda: self.ready,
                stats=self.stats,
            )
        )
        """This server's Prometheus registry, served on /metrics."""

    @property
    def ready(self) -> bool:
        """Recovered, serving, and not shutting down; on a cluster node also: it has served its
        whole share of the partitions at least once since it started (docs/operations.md,
        "Health endpoints")."""
        cluster = self._cluster
        return self._serving and not self._stopping and (cluster is None or cluster.settled)

    async def start(self) -> None:
        """Check the listen addresses, lock and recover the data directory, and start serving.

        What can refuse a start without touching the data directory comes first: bad API keys or
        TLS files (ValueError) and a listen address in use (AddressInUse). Then the node locks the
        directory (DataDirectoryLocked while another process serves it) and recovers it
        (PartitionRecoveryError naming the record that does not replay). A failed start closes
        whatever it had opened.
        """
        try:
            await self._start()
        except BaseException:
            try:
                await self.stop(grace=0)
            except Exception as exc:  # the start's own error is the one to report; this one is logged
                log.error("cleaning up after a failed start: %s", exc)
            raise

    async def _start(self) -> None:
        cfg = self.config
        keys = load_api_keys(cfg.api_keys_file, cfg.api_keys or None)
        choice = choose_engine(cfg.engine)
        self._engine = choice.engine
        tls = load_server_tls(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
        for addr in (cfg.grpc_addr, cfg.http_addr, cfg.node_addr):
            if addr:
                check_free(addr)
        if cfg.http_addr:
            host, port = split_host_port(cfg.http_addr)
            self._http = HttpEndpoint(host, port, lambda: self.ready, self.registry)
            with naming_address_in_use(cfg.http_addr):
                await self._http.start()  # before recovery: /healthz answers while it runs
            self.http_port = self._http.port
        # The gRPC port is bound now and served once the node has recovered.
        server = self._grpc = self._grpc_server(keys)
        self.grpc_port = self._listen(server, tls)
        node_config = NodeConfig(
            data_dir=cfg.data_dir,
            partitions=cfg.partitions,
            flush_interval=cfg.flush_interval_ms / 1000,
            sync_filesystem=cfg.fsync_mode == "filesystem",
            sync_spin_ns=round(cfg.sync_spin_us * 1000),
            dedup_window_seconds=cfg.dedup_window_seconds,
            alerts_in_memory=cfg.alerts_in_memory,
            snapshot_interval=cfg.snapshot_interval_seconds,
            memory_horizon_ns=round(cfg.memory_horizon_seconds * 1e9),
            min_free_disk_bytes=int(cfg.min_free_disk_mb * (1 << 20)),
            node_addr=cfg.node_addr,
            grpc_addr=cfg.grpc_addr,
            node_id=cfg.node_id,
            engine=choice.engine.name,  # the partitions' per-event work runs on the same engine
        )
        # Recovery is CPU-bound; a thread keeps /healthz answering while it runs.
        _raise_open_file_limit()
        if cfg.backend == "nats":
            node = self.node = await self._start_node_on_jetstream(node_config)
        else:
            node = self.node = await asyncio.to_thread(Node, node_config)
        tune_gc(choice.engine.name)
        _shorten_gil_switch_interval()
        await node.start()
        log.info("recovered %d partitions in %.3fs", node.partitions_count, node.recovery_seconds)
        # Chosen before anything was touched (a missing native engine refuses the start), said
        # once the start can no longer be refused for another reason.
        choice.announce()
        self.stats.ingest_engine = choice.engine.name
        if cfg.node_addr:
            host, port = split_host_port(cfg.node_addr)
            self._protocol = NodeProtocolServer(
                node,
                host=host,
                port=port,
                ssl=tls.node_context if tls is not None else None,
                cluster_secret=cfg.cluster_secret or None,
                handshake_timeout=cfg.handshake_timeout_seconds,
            )
            with naming_address_in_use(cfg.node_addr):
                await self._protocol.start()
            self.node_port = self._protocol.port
            node.node_addr = f"{host}:{self.node_port}"  # what clients reach, even when asked for port 0
        self.client = await self._client_core(node, tls)
        self._log_access(keys)

        names = add_servicers(server, self.client, self.stats, choice.engine)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        # Not ready yet: a health check must say so, as /readyz does (grpc's servicer starts with
        # "" SERVING), until _serve_health_once_ready says otherwise.
        for name in ("", *names):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._serving = True
        node.grpc_addr = f"{split_host_port(cfg.grpc_addr)[0]}:{self.grpc_port}"
        if self._cluster is not None and self._jetstream is not None:
            # Once both listeners are up: the lease records carry their addresses.
            await self._cluster.serve_partitions(node, self._jetstream)
            # The partition map was read before this node joined: read it again now, not at the
            # next periodic refresh.
            with contextlib.suppress(UnimeterError):
                await self.client.topology.refresh()
        if self.ready:
            await self._health.set_all(health_pb2.HealthCheckResponse.SERVING)
        else:  # a cluster node whose start stopped waiting for its share: it follows later
            self._health_follower = asyncio.create_task(
                self._serve_health_once_ready(), name="unimeter-health-follows-readiness"
            )

    async def _serve_health_once_ready(self) -> None:
        """Turn the gRPC health statuses to SERVING once the cluster node has served its whole
        share (``ready``; it never turns false again before a shutdown, which makes them
        NOT_SERVING for good)."""
        if self._cluster is not None:
            await self._cluster.wait_settled()
        if self.ready:
            await self._health.set_all(health_pb2.HealthCheckResponse.SERVING)

    async def _start_node_on_jetstream(self, node_config: NodeConfig) -> Node:
        """Open the cluster's KV state (the metric registry) and the JetStream backend
        (NatsUnavailable or NatsRefused before the data directory is touched), then the node over
        them, whose partition count must be the stream's. It serves no partition yet: ``start``
        joins the cluster once the listeners are up (``ClusterState.serve_partitions``)."""
        # The NATS client only loads for this backend.
        from .nats_backend import open_backend, open_cluster_state

        cfg = self.config
        cluster = self._cluster = await open_cluster_state(cfg)
        backend = self._jetstream = await open_backend(cfg)
        # Records are in JetStream: the data directory's free space no longer bounds ingest.
        node_config = replace(node_config, partitions=backend.partitions, min_free_disk_bytes=0)
        node = self.node = Node(node_config, backend.factory, cluster.registry, serve_all=False)
        if node.partitions_count != backend.partitions:
            raise NatsRefused(
                f"the data directory {cfg.data_dir} has {node.partitions_count} partitions, JetStream "
                f"stream {cfg.nats_stream} has {backend.partitions}: use the data directory "
                "this deployment's node had, or a new one"
            )
        return node

    async def _client_core(self, node: Node, tls: ServerTls | None) -> Client:
        """What the gRPC API calls: the node itself with the embedded backend; with a shared
        stream, a router that serves this node's partitions in process and reaches the other
        nodes' over the node protocol (with this node's TLS trust and cluster secret), so a
        client can send any call to any node."""
        if self._cluster is None:
            return await Client.in_process(
                node, metric_lookup=node.metric_of, metric_refresh=node.refresh_metrics
            )
        cfg = self.config
        peer_ssl = _peer_tls_context(cfg.tls_cert) if tls is not None and cfg.tls_cert else None

        def peer(address: str) -> RemoteNode:
            return RemoteNode(address, ssl=peer_ssl, cluster_secret=cfg.cluster_secret or None)

        return await Client.in_cluster(
            node, node.node_id, peer, metric_lookup=node.metric_of, metric_refresh=node.refresh_metrics
        )

    def _log_access(self, keys: ApiKeyStore | None) -> None:
        """Say at start who can reach what: an open API or node protocol is the operator's to see."""
        cfg = self.config
        if keys is not None:
            log.info("API keys required: %d key(s) configured", len(keys))
        else:
            log.info("no API keys configured: the gRPC API is open to anyone who can reach it")
        if not cfg.node_addr:
            return
        if cfg.cluster_secret:
            log.info("cluster secret required: node-protocol clients must prove it")
        elif keys is not None:  # the config refuses this unless --insecure-node-protocol is given
            log.warning(
                "--insecure-node-protocol: the node protocol on %s takes every call without an API key "
                "or a cluster secret; anyone who can reach it can create metrics and ingest",
                self.node.node_addr if self.node is not None else cfg.node_addr,
            )
        else:
            log.info("no cluster secret configured: the node protocol is open to anyone who can reach it")

    def _grpc_server(self, keys: ApiKeyStore | None) -> grpc.aio.Server:
        cfg = self.config
        server = grpc.aio.server(
            options=[
                # Over the limit, grpc itself answers RESOURCE_EXHAUSTED before any handler runs.
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                # A connection that opens and never completes its TLS/HTTP2 handshake is dropped.
                ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout_seconds * 1000)),
            ],
        )
        # Request ids, metrics, API keys and error mapping around every handler, built once per
        # method instead of run as interceptors per call.
        return WrappingServer(server, CallWrapping(self.stats, keys))

    def _listen(self, server: grpc.aio.Server, tls: ServerTls | None) -> int:
        addr = self.config.grpc_addr
        try:
            if tls is None:
                return int(server.add_insecure_port(addr))
            return int(server.add_secure_port(addr, tls.grpc_credentials))
        except RuntimeError:  # grpc's "failed to bind": taken since check_free, or not bindable
            raise ValueError(f"cannot listen on {addr}") from None

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish in-flight calls (up to ``grace`` seconds), flush and snapshot."""
        self._stopping = True  # /readyz answers 503 at once, so balancers stop sending new work
        if self._health_follower is not None:
            self._health_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_follower
        # gRPC health: NOT_SERVING, as /readyz; its Watch streams end, so they hold no grace period.
        await self._health.enter_graceful_shutdown()
        if self.node is not None:
            # Alert streams never finish by themselves: end them now so that in-flight unary calls,
            # not idle subscribers, decide how long the grace period lasts. Subscribers resume.
            self.node.alerts.close()
        if self._grpc is not None:
            if not self._serving:
                # A start that failed after the bind: grpc closes a bound listener only when a
                # started server stops (it has no handlers yet: a call in the backlog is refused).
                await self._grpc.start()
            await self._grpc.stop(grace)
        if self._engine is not None:
            self._engine.close()  # no call decodes any more
        if self.client is not None:
            await self.client.close()  # the partition map's refresher and the peer connections
        if self._protocol is not None:
            await self._protocol.close()
        try:
            if self._cluster is not None:
                await self._cluster.stop_serving()  # nothing taken or handed over while closing
            if self.node is not None:
                await self.node.close()
        finally:
            try:
                if self._cluster is not None:
                    await self._cluster.close()  # after the node flushed: the next owner has it all
            finally:
                if self._jetstream is not None:
                    await self._jetstream.disconnect()
            if self._http is not None:
                await self._http.close()
