"""``unimeter serve --backend nats``: the JetStream backend and the cluster's KV state, opened from
serve's configuration.

Imported only when that backend is chosen, so an embedded node never loads the NATS client. The
record backend has a connection of its own; the cluster state (the metric registry, this node's
partition leases and the assignment of partitions over the live nodes:
``node.jetstream.metric_registry``, ``leases`` and ``assignment``) has another, so lease renewals
never queue behind record publishes. Not here: the backend and the buckets themselves
(``node.jetstream``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import nats.errors
from nats.aio.client import Client as NatsClient

from node.jetstream.assignment import Assignment, open_members_bucket
from node.jetstream.backend import JetStreamBackend, JetStreamSettings, open_jetstream_backend
from node.jetstream.connection import NatsOptions, connect
from node.jetstream.errors import NatsUnavailable
from node.jetstream.leases import PartitionLeases
from node.jetstream.metric_registry import KvMetricRegistry
from node.node import Node

from .config import ServeConfig

__all__ = ["ClusterState", "open_backend", "open_cluster_state"]


def _options(cfg: ServeConfig) -> NatsOptions:
    return NatsOptions(
        urls=cfg.nats_urls,
        user=cfg.nats_user,
        password=cfg.nats_password,
        token=cfg.nats_token,
        credentials_file=cfg.nats_credentials_file,
        nkey_seed_file=cfg.nats_nkey_seed_file,
        tls_ca=cfg.nats_tls_ca,
        tls_cert=cfg.nats_tls_cert,
        tls_key=cfg.nats_tls_key,
    )


async def open_backend(cfg: ServeConfig) -> JetStreamBackend:
    """Connect to ``cfg``'s NATS servers and open the deployment's stream (see
    ``node.jetstream.backend.open_jetstream_backend`` for what is checked and refused)."""
    settings = JetStreamSettings(
        stream=cfg.nats_stream,
        replicas=cfg.nats_replicas,
        partitions=cfg.partitions,
        monitor_urls=cfg.nats_monitor_urls,
        allow_unsynced=cfg.allow_unsynced_jetstream,
        cache_bytes=cfg.nats_record_cache_bytes,
    )
    # Partitions are loaded one by one, as this node takes their leases.
    return await open_jetstream_backend(_options(cfg), settings, load=False)


class ClusterState:
    """This node's view of the cluster's KV buckets: the shared metric registry, the leases of the
    partitions it serves (renewed in the background), and their assignment over the live nodes."""

    def __init__(self, cfg: ServeConfig, client: NatsClient, registry: KvMetricRegistry) -> None:
        self._cfg = cfg
        self._client = client
        self.registry = registry
        self.leases: PartitionLeases | None = None
        self.assignment: Assignment | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def settled(self) -> bool:
        """Whether the node has served its whole share of the partitions at least once (see
        ``Assignment.settled_once``): until then it is not ready."""
        return self.assignment is not None and self.assignment.settled_once

    async def wait_settled(self) -> None:
        """Return once ``settled`` is true (at once if it is; it never turns false again). The
        caller cancels it if the node stops first."""
        assert self.assignment is not None, "serve_partitions starts the assignment first"
        await self.assignment.wait_settled()

    async def serve_partitions(self, node: Node, backend: JetStreamBackend) -> None:
        """Take ``node``'s liveness record (NatsRefused, a LeaseConflictError, if another live
        node has its id), keep it and the leases renewed, and start assigning partitions: return
        once ``node`` serves its share (see ``node.jetstream.assignment``). Called once the node's
        listeners are up: the records carry their addresses."""
        cfg = self._cfg
        js = self._client.jetstream(timeout=5.0)
        with _naming_nats_failures(cfg, f"{cfg.nats_stream}_leases"):
            leases = self.leases = await PartitionLeases.open(
                js,
                node.node_id,
                ttl=cfg.lease_ttl_seconds,
                replicas=cfg.nats_replicas,
                bucket=f"{cfg.nats_stream}_leases",
                node_addr=node.node_addr,
                grpc_addr=node.grpc_addr,
            )
            await leases.join()
        self._renewal = asyncio.create_task(leases.run(), name="unimeter-lease-renewal")
        with _naming_nats_failures(cfg, f"{cfg.nats_stream}_members"):
            members = await open_members_bucket(js, f"{cfg.nats_stream}_members", cfg.nats_replicas)
        assignment = self.assignment = Assignment(node, backend, leases, members)
        backend.lease_state = assignment.lease_state
        node.ownership = assignment
        # Long enough for a restarted node's own earlier leases to expire, and for loading.
        await assignment.start(settle_seconds=2 * cfg.lease_ttl_seconds + 10.0)

    async def stop_serving(self) -> None:
        """Stop taking and handing over partitions (before the node closes what it serves)."""
        if self.assignment is not None:
            await self.assignment.stop()

    async def close(self) -> None:
        """Stop renewing, give the leases back (the node has flushed and snapshotted: the next
        owner takes them at once), stop watching the registry, disconnect."""
        await self.stop_serving()
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        try:
            if self.leases is not None:
                await self.leases.release()
            await self.registry.close()
        finally:
            await self._client.close()


async def open_cluster_state(cfg: ServeConfig) -> ClusterState:
    """Connect (NatsUnavailable naming the URLs if no server answers) and open the metric registry."""
    client = await connect(_options(cfg))
    bucket = f"{cfg.nats_stream}_metrics"
    try:
        with _naming_nats_failures(cfg, bucket):
            registry = await KvMetricRegistry.open(
                client.jetstream(timeout=5.0), bucket=bucket, replicas=cfg.nats_replicas
            )
    except BaseException:
        await client.close()
        raise
    return ClusterState(cfg, client, registry)


@contextlib.contextmanager
def _naming_nats_failures(cfg: ServeConfig, bucket: str) -> Iterator[None]:
    """A NATS error while a bucket is opened or taken refuses the start in one line naming it."""
    try:
        yield
    except (TimeoutError, nats.errors.Error) as exc:
        urls = ", ".join(cfg.nats_urls)
        raise NatsUnavailable(
            f"JetStream KV bucket {bucket} could not be opened at {urls}: {type(exc).__name__}: {exc}"
        ) from None
