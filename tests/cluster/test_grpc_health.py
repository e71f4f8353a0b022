"""The standard gRPC health service of a cluster node agrees with its /readyz, on real processes: a
node that joins answers NOT_SERVING while /readyz answers 503 (it does not serve its whole share
yet), and SERVING only once /readyz answers 200, so a balancer probing either one sends it work at
the same moment (docs/operations.md, "Health endpoints")."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.jetstream.assignment import Assignment, balanced_assignment
from service.server import UnimeterServer
from tests.cluster.conftest import running_cluster
from tests.cluster.helpers import (
    cluster_flags,
    nats_serve_config,
    owners,
    owners_settled,
    readyz,
    spawn_node_on_free_ports,
    status,
)
from tests.integration.ops_helpers import http_get
from tests.integration.test_grpc_edges import UNIMETER_SERVICES
from tests.process import ServeProcess, listener_port, ready_line, start_serve
from tools.nats_cluster import NatsCluster

PARTITIONS = 6
TTL = 60.0
"""Lease TTL of this test's nodes: a paused node's leases outlive the first phase by far (they
expire at least two thirds of it after the pause), so the joining node cannot take them meanwhile."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "grpc-health")


async def _check(stub: health_pb2_grpc.HealthStub) -> int | None:
    """Health.Check("")'s status, None while the gRPC API does not listen yet."""
    try:
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return None
    return int(answer.status)


async def test_a_joining_node_is_not_serving_until_ready_and_serving_once_ready(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    flags = cluster_flags(nats_cluster, "GRPCHEALTH", PARTITIONS, ttl=TTL)
    share = {p for p, owner in enumerate(balanced_assignment(PARTITIONS, ["n1", "n2"])) if owner == "n2"}
    n1 = await asyncio.to_thread(start_serve, tmp_path / "n1", *flags, "--node-id", "n1")
    n2: subprocess.Popen[bytes] | None = None
    try:
        await owners_settled(n1.grpc_port, {"n1"})
        # n1 serves every partition and cannot hand any over while paused: n2, joining, cannot
        # serve its share until n1 resumes.
        n1.proc.send_signal(signal.SIGSTOP)
        n2, http, grpc_port = spawn_node_on_free_ports(tmp_path / "n2", flags, "n2")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            # Not ready: its gRPC API listens (it does once n2 has recovered, before it takes its
            # share) and says NOT_SERVING, as /readyz says 503.
            answered: list[tuple[int | None, int]] = []
            deadline = time.monotonic() + 30
            while len(answered) < 5:
                assert n2.poll() is None, "n2 exited"
                assert time.monotonic() < deadline, f"n2's gRPC API never answered: {answered}"
                code, health = await readyz(http), await _check(stub)
                if health is not None:
                    answered.append((code, health))
                await asyncio.sleep(0.02)
            assert answered == [(503, NOT_SERVING)] * 5

            # Ready once n1 hands n2 its share: SERVING, and never while /readyz says 503. Health
            # may follow /readyz a moment late (NOT_SERVING with 200), never early; a SERVING
            # after a 503 read just before it is the race of the two reads, and /readyz read
            # again right after must then say 200.
            n1.proc.send_signal(signal.SIGCONT)
            samples: list[tuple[int | None, int | None]] = []
            deadline = time.monotonic() + 60
            while True:
                assert n2.poll() is None, "n2 exited"
                assert time.monotonic() < deadline, f"n2 never became SERVING: {samples[-5:]}"
                code, health = await readyz(http), await _check(stub)
                samples.append((code, health))
                if health == SERVING:
                    assert await readyz(http) == 200, samples[-5:]
                    break
                assert health == NOT_SERVING, samples[-5:]
                await asyncio.sleep(0.02)
            assert {code for code, health in samples[:-1] if health == NOT_SERVING} <= {200, 503}
            listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)
            assert {name: s.status for name, s in listed.statuses.items()} == {
                "": SERVING,
                **{name: SERVING for name in UNIMETER_SERVICES},
            }
        # SERVING means what ready means: n2 itself serves every partition of its share.
        served = {p for p, owner in enumerate(owners(await status(grpc_port))) if owner == "n2"}
        assert share <= served, f"SERVING while serving {sorted(served)} of its share {sorted(share)}"
        assert n2.stdout is not None
        msg = ready_line(await asyncio.to_thread(n2.stdout.readline))
        assert msg is not None
        joined = ServeProcess(n2, *(listener_port(msg[k]) for k in ("grpc_addr", "node_addr", "http_addr")))
        assert await asyncio.to_thread(joined.terminate) == 0
    finally:
        if n1.proc.poll() is None:
            n1.proc.send_signal(signal.SIGCONT)
        for proc in (n2, n1.proc):
            if proc is not None:
                await asyncio.to_thread(_stop, proc)


async def test_a_node_whose_start_stopped_waiting_for_its_share_turns_serving_once_it_serves_it(
    tmp_path: Path, nats_cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start stops waiting for the node's share after twice the lease TTL plus 10 s (its leases
    held by a node that is gone, until they expire): the server then serves, not ready, and its
    health turns SERVING when the node has served its share, as /readyz turns 200."""
    original = Assignment.start

    async def start_without_waiting(self: Assignment, settle_seconds: float) -> None:
        await original(self, settle_seconds=0.0)  # as if the wait had run out at once

    monkeypatch.setattr(Assignment, "start", start_without_waiting)
    stream = "GRPCHEALTHLATE"
    flags = cluster_flags(nats_cluster, stream, PARTITIONS, ttl=TTL)
    server = UnimeterServer(
        nats_serve_config(
            tmp_path / "n2",
            nats_cluster,
            stream,
            partitions=PARTITIONS,
            lease_ttl_seconds=TTL,
            node_addr="127.0.0.1:0",
            http_addr="127.0.0.1:0",
            node_id="n2",
        )
    )
    n1 = await asyncio.to_thread(start_serve, tmp_path / "n1", *flags, "--node-id", "n1")
    try:
        await owners_settled(n1.grpc_port, {"n1"})
        n1.proc.send_signal(signal.SIGSTOP)  # n2's share cannot be handed over
        await server.start()
        assert not server.ready
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert (await watch.read()).status == NOT_SERVING
            assert await http_get(server.http_port, "/readyz") == (503, "recovering\n")
            assert await _check(stub) == NOT_SERVING
            n1.proc.send_signal(signal.SIGCONT)
            # The next status a watcher hears is SERVING, once ready, and nothing between.
            assert (await watch.read()).status == SERVING
            assert server.ready
            assert await http_get(server.http_port, "/readyz") == (200, "ready\n")
            watch.cancel()
    finally:
        await server.stop(grace=1.0)
        if n1.proc.poll() is None:
            n1.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(_stop, n1.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (SIGKILL if it has not exited 30 s later), then close its stdout pipe."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
