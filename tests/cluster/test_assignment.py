"""Several ``unimeter serve --backend nats`` processes share one stream: the partitions are split
evenly over the live nodes, every node reports the same map, a node joining later takes its share,
and a node stopped with SIGTERM hands its partitions over without anyone waiting for a lease to
expire, the answers staying what they were."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.errors import UnavailableError
from cluster_client.remote_node import RemoteNode
from node.jetstream.assignment import balanced_assignment
from tests.cluster.conftest import running_cluster
from tests.cluster.helpers import (
    Router,
    accounts_by_partition,
    cluster_flags,
    owners,
    status,
    wait_for_owners,
)
from tests.conftest import Api, api_on_port
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest, query
from tests.process import CLI, ENV, REPO, ServeProcess, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import types_pb2 as t

PARTITIONS = 12


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "assignment")


def test_the_balanced_assignment_is_even_and_moves_little_when_a_node_joins() -> None:
    three = balanced_assignment(64, ["n3", "n1", "n2"])
    assert three == balanced_assignment(64, ["n1", "n2", "n3"])  # the same on every node
    assert sorted(Counter(three).values()) == [21, 21, 22]
    four = balanced_assignment(64, ["n1", "n2", "n3", "n4"])
    assert sorted(Counter(four).values()) == [16, 16, 16, 16]
    moved = sum(1 for a, b in zip(three, four, strict=True) if a != b)
    assert moved < 32  # about the newcomer's share, not the whole map
    assert balanced_assignment(3, []) == ["", "", ""]


@settings(max_examples=200, deadline=None)
@given(
    partitions=st.integers(1, 256),
    nodes=st.sets(st.text("abcdefgh0123456789-", min_size=1, max_size=6), min_size=1, max_size=9),
)
def test_the_balanced_assignment_gives_every_partition_to_one_live_node_within_one_of_even(
    partitions: int, nodes: set[str]
) -> None:
    owners_ = balanced_assignment(partitions, nodes)
    assert owners_ == balanced_assignment(partitions, sorted(nodes, reverse=True))
    assert len(owners_) == partitions and set(owners_) <= nodes
    shares = [owners_.count(node) for node in nodes]
    assert sum(shares) == partitions and max(shares) - min(shares) <= 1


def evenly_split(nodes: set[str]) -> Callable[[list[str]], bool]:
    """Every partition owned, by exactly ``nodes``, shares differing by at most one."""

    def accept(current: list[str]) -> bool:
        counts = Counter(current)
        return set(counts) == nodes and max(counts.values()) - min(counts.values()) <= 1

    return accept


async def answers(ports: dict[str, int], accounts: list[int]) -> list[tuple[int, int, int, list[int]]]:
    """Per account (one per partition), asked of its owner: the count, the last offset, the sum
    and the alerts' offsets. (The status names a node as soon as it holds a partition's lease, a
    moment before it serves it: the router retries.)"""
    router = Router(list(ports.values()), PARTITIONS)
    out = []
    try:
        for account in accounts:

            async def ask(api: Api, account: int = account) -> tuple[int, int, int, list[int]]:
                answer = await query(api, account, "calls", T0, T0 + 30 * 86_400 * SEC)
                alerts = await api.alerts.ListAlerts(als.ListAlertsRequest(account_id=account), timeout=5)
                offsets = [a.offset for a in alerts.alerts]
                return answer.value.count, answer.as_of_offset, answer.value.value, offsets

            out.append(await router.until_done(account, ask))
    finally:
        await router.close()
    return out


async def test_nodes_split_the_partitions_a_joiner_takes_its_share_and_sigterm_hands_over(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    # A TTL far longer than the waits below: nothing here may wait for a lease to expire.
    flags = [
        *cluster_flags(nats_cluster, "ASSIGN", PARTITIONS),
        "--lease-ttl-seconds",
        "30",
        "--log-level",
        "INFO",
    ]
    nodes: dict[str, ServeProcess] = {}

    def start(node_id: str) -> int:
        nodes[node_id] = start_serve(tmp_path / node_id, *flags, "--node-id", node_id)
        return nodes[node_id].grpc_port

    try:
        for node_id in ("n1", "n2", "n3"):
            start(node_id)
        ports = {n: p.grpc_port for n, p in nodes.items()}
        first = await wait_for_owners(ports["n1"], evenly_split({"n1", "n2", "n3"}), timeout=20)
        # Every node reports the same map, with every node alive and reachable.
        for port in ports.values():
            response = await status(port)
            assert owners(response) == owners(first)
            assert [(n.node_id, n.alive) for n in response.nodes] == [
                ("n1", True),
                ("n2", True),
                ("n3", True),
            ]
            assert all(n.node_addr.startswith("127.0.0.1:") and n.grpc_addr for n in response.nodes)
            assert all(p.lease_epoch > 0 and p.lag == 0 for p in response.partition_infos)
        assert sorted(Counter(owners(first)).values()) == [4, 4, 4]

        api = api_on_port(ports["n1"])
        await create_metric(api, "calls", thresholds=[t.AlertThreshold(code="two", value=2)])
        await api.channel.close()
        accounts = accounts_by_partition(PARTITIONS)
        router = Router(list(ports.values()), PARTITIONS)
        await router.refresh()
        for round_ in range(3):
            for account in accounts:
                event = ev(account, "calls", 1, T0 + round_ * SEC, event_id=f"{account}-{round_}")
                await router.until_done(account, lambda api, event=event: ingest(api, event, sync=True))
        await router.close()
        before = await answers(ports, accounts)
        assert before == [(3, 3, 3, [1])] * PARTITIONS

        # A fourth node joins: the others hand it its share.
        ports["n4"] = start("n4")
        joined = await wait_for_owners(ports["n2"], evenly_split({"n1", "n2", "n3", "n4"}), timeout=20)
        assert sorted(Counter(owners(joined)).values()) == [3, 3, 3, 3]
        assert await answers(ports, accounts) == before
        # `unimeter status` on any node: one row per node, each alive with its three partitions
        # and their events (offsets of other nodes' partitions are as last reported: a moment).
        command = [*CLI, "status", "--addr", f"127.0.0.1:{ports['n4']}"]
        expected = [(n, "yes", "3", "9") for n in ("n1", "n2", "n3", "n4")]
        async with asyncio.timeout(10):
            while True:
                shown = await asyncio.to_thread(
                    subprocess.run, command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=30
                )
                assert shown.returncode == 0, shown.stderr
                rows = [line.split() for line in shown.stdout.splitlines() if line.startswith("n")]
                if [(r[0], r[3], r[4], r[5]) for r in rows] == expected:
                    break
                await asyncio.sleep(0.1)

        # SIGTERM: n2's partitions are taken by the others long before its 30 s leases could expire.
        assert nodes.pop("n2").terminate() == 0
        del ports["n2"]
        left = await wait_for_owners(ports["n1"], evenly_split({"n1", "n3", "n4"}), timeout=10)
        assert await answers(ports, accounts) == before
        listed = {n.node_id: n.alive for n in left.nodes}
        assert listed == {"n1": True, "n2": False, "n3": True, "n4": True}  # n2 stays listed, not alive
    finally:
        for process in nodes.values():
            process.terminate()


async def test_requests_for_a_partition_of_another_node_are_refused_naming_its_owner(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    flags = cluster_flags(nats_cluster, "REFUSE", 4)
    a = start_serve(tmp_path / "a", *flags, "--node-id", "a")
    b = start_serve(tmp_path / "b", *flags, "--node-id", "b")
    remote = RemoteNode(f"127.0.0.1:{a.node_port}", connect_timeout=5.0)
    try:
        response = await wait_for_owners(a.grpc_port, evenly_split({"a", "b"}))
        addr = {n.node_id: n.node_addr for n in response.nodes}
        assert addr["b"] == f"127.0.0.1:{b.node_port}"
        theirs = owners(response).index("b")
        api = api_on_port(a.grpc_port)
        await create_metric(api, "calls")
        await api.channel.close()
        account = accounts_by_partition(4)[theirs]
        with pytest.raises(UnavailableError) as refused:
            await remote.ingest(
                [(theirs, [(account, "calls", 1, T0, None, t.OPERATION_TYPE_ADD, "e")])], True, ""
            )
        assert refused.value.reason == "PARTITION_NOT_OWNED"
        assert refused.value.owner_hint == addr["b"]
        with pytest.raises(UnavailableError) as refused:
            await remote.query_realtime(theirs, account, "calls")
        assert refused.value.owner_hint == addr["b"]
    finally:
        await remote.close()
        a.terminate()
        b.terminate()


async def test_an_alert_stream_on_a_partition_handed_over_ends_with_not_owned(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    flags = cluster_flags(nats_cluster, "STREAMS", 2)
    a = start_serve(tmp_path / "a", *flags, "--node-id", "a")
    remote = RemoteNode(f"127.0.0.1:{a.node_port}", connect_timeout=5.0)
    b: ServeProcess | None = None
    try:
        api = api_on_port(a.grpc_port)
        await create_metric(api, "calls", thresholds=[t.AlertThreshold(code="one", value=1)])
        accounts = accounts_by_partition(2)
        for account in accounts:
            await ingest(api, ev(account, "calls", 1, T0, event_id=f"e{account}"), sync=True)
        await api.channel.close()
        stream = remote.subscribe_alerts([0, 1], {}, True, [], [], [])
        seen: dict[int, int] = {}
        items = aiter(stream)
        while len(seen) < 2:  # the first item is where the stream starts; then both alerts
            item = await anext(items)
            if item.alert is not None:
                seen[item.alert.partition] = item.alert.offset
        assert seen == {0: 1, 1: 1}
        b = start_serve(tmp_path / "b", *flags, "--node-id", "b")  # takes one of the two partitions
        with pytest.raises(UnavailableError) as ended:
            async with asyncio.timeout(20):
                while True:
                    await anext(items)
        assert ended.value.reason == "PARTITION_NOT_OWNED"
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await remote.close()
        a.terminate()
        if b is not None:
            b.terminate()
