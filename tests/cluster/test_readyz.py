"""``/readyz`` of a cluster node during a rolling restart, on real processes: a node started again
answers 503 until it serves its whole share of the partitions, so an operator who waits for it
before stopping the next node never has two nodes' shares on the move at once
(docs/operations.md, "Health endpoints")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.jetstream.assignment import balanced_assignment
from tests.cluster.conftest import running_cluster
from tests.cluster.helpers import (
    cluster_flags,
    owners,
    owners_settled,
    readyz,
    spawn_node_on_free_ports,
    status,
    three_nodes,
)
from tests.process import ServeProcess, listener_port, ready_line
from tools.nats_cluster import NatsCluster

PARTITIONS = 6


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "readyz")


async def test_a_restarted_node_is_ready_only_once_it_serves_its_share(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    flags = cluster_flags(nats_cluster, "READYZ", PARTITIONS)
    targets = balanced_assignment(PARTITIONS, ["n1", "n2", "n3"])
    share = {p for p, owner in enumerate(targets) if owner == "n2"}
    async with three_nodes(tmp_path, flags) as nodes:
        assert await asyncio.to_thread(nodes[1].terminate) == 0  # n2 hands its share to n1 and n3
        await owners_settled(nodes[0].grpc_port, {"n1", "n3"})
        proc, http, grpc_port = spawn_node_on_free_ports(tmp_path / "n2", flags, "n2")
        answers: list[int] = []
        deadline = time.monotonic() + 60
        while (code := await readyz(http)) != 200:
            assert proc.poll() is None, "n2 exited before it was ready"
            assert time.monotonic() < deadline, f"n2 never became ready: {answers[-3:]}"
            if code is not None:
                answers.append(code)
            await asyncio.sleep(0.02)
        # Ready: n2 itself serves every partition of its share (its own status lists a partition
        # as its own only while it serves it), not merely holds their leases.
        served = {p for p, owner in enumerate(owners(await status(grpc_port))) if owner == "n2"}
        assert set(answers) <= {503}
        assert share <= served, f"ready while serving {sorted(served)} of its share {sorted(share)}"
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)  # printed once start() returned
        msg = ready_line(line)
        assert msg is not None, line
        ports = (listener_port(msg[key]) for key in ("grpc_addr", "node_addr", "http_addr"))
        nodes[1] = ServeProcess(proc, *ports)
        await owners_settled(nodes[0].grpc_port, {"n1", "n2", "n3"})
        assert await readyz(http) == 200
