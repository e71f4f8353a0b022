"""Takeovers with real processes: an owner killed (SIGKILL) in the middle of SYNC ingests, whose
partitions the other nodes take over once its leases expire, with exactly its state; an owner
paused (SIGSTOP) until its leases are taken, which once resumed (SIGCONT) appends nothing and
acknowledges none of the SYNC calls it had in flight; and a partition another writer appended to
under this node's lease, which stops and is loaded again from the stream."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest

from node.records import EventRecord, encode_event_record
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
from tests.integration.helpers import SEC, T0, create_metric, ev, query
from tests.process import ServeProcess, start_serve
from tools.nats_cluster import NatsCluster
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import types_pb2 as t

PARTITIONS = 6
BATCHES = 12
PER_BATCH = 2


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path_factory, "takeover")


def batch(account: int, k: int) -> ing.IngestRequest:
    """Batch ``k`` of ``account``: the same event ids every time it is sent."""
    return ing.IngestRequest(
        events=[
            ev(account, "calls", 1, T0 + (k * PER_BATCH + i) * SEC, event_id=f"{account}-{k}-{i}")
            for i in range(PER_BATCH)
        ],
        delivery=t.DELIVERY_MODE_SYNC,
    )


async def alert_offsets(api: Api, account: int) -> list[tuple[int, str]]:
    page = await api.alerts.ListAlerts(als.ListAlertsRequest(account_id=account), timeout=5)
    return [(a.offset, a.threshold_code) for a in page.alerts]


async def counted(api: Api, account: int) -> int:
    return (await query(api, account, "calls", T0, T0 + 30 * 86_400 * SEC)).value.count


def start_nodes(tmp_path: Path, cluster: NatsCluster, stream: str, ids: list[str]) -> dict[str, ServeProcess]:
    flags = cluster_flags(cluster, stream, PARTITIONS)
    return {node_id: start_serve(tmp_path / node_id, *flags, "--node-id", node_id) for node_id in ids}


async def test_an_owner_killed_during_sync_ingests_is_taken_over_with_exactly_its_state(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    nodes = start_nodes(tmp_path, nats_cluster, "KILL", ["a", "b", "c"])
    router = Router([p.grpc_port for p in nodes.values()], PARTITIONS)
    try:
        await wait_for_owners(nodes["a"].grpc_port, lambda o: sorted(set(o)) == ["a", "b", "c"])
        await router.refresh()
        api = api_on_port(nodes["a"].grpc_port)
        await create_metric(
            api,
            "calls",
            thresholds=[t.AlertThreshold(code="six", value=6), t.AlertThreshold(code="twenty", value=20)],
        )
        await api.channel.close()
        accounts = accounts_by_partition(PARTITIONS)
        victim = router.table[0]
        acked: dict[int, list[list[int]]] = {a: [] for a in accounts}
        halfway = asyncio.Event()
        seen_before: dict[int, list[tuple[int, str]]] = {}

        async def writer(account: int) -> None:
            for k in range(BATCHES):
                response = await router.until_done(
                    account, lambda api, k=k: api.ingest.Ingest(batch(account, k), timeout=5)
                )
                acked[account].append(list(response.offsets))
                if k == BATCHES // 2:
                    await halfway.wait()

        writers = [asyncio.create_task(writer(a)) for a in accounts]
        async with asyncio.timeout(30):
            while not all(len(v) > BATCHES // 2 for v in acked.values()):
                await asyncio.sleep(0.02)
        # What a subscriber has seen so far: the first threshold crossed everywhere.
        for account in accounts:
            seen_before[account] = await alert_offsets(router.api(account), account)
        assert all(offsets == [(1, "six")] for offsets in seen_before.values())
        halfway.set()
        nodes.pop(victim).kill9()  # SYNC ingests in flight on its partitions
        async with asyncio.timeout(60):
            await asyncio.gather(*writers)
        survivor = next(iter(nodes.values())).grpc_port
        after = await wait_for_owners(survivor, lambda o: victim not in o and "" not in o)
        assert all(p.lag == 0 for p in after.partition_infos)
        assert {n.node_id: n.alive for n in after.nodes}[victim] is False  # listed, not alive
        await router.refresh()
        for account in accounts:
            api = router.api(account)
            # Every acknowledged event once, each batch's offsets following the previous ones'.
            assert await counted(api, account) == BATCHES * PER_BATCH
            assert [o for offsets in acked[account] for o in offsets] == list(
                range(1, BATCHES * PER_BATCH + 1)
            )
            alerts = await alert_offsets(api, account)
            assert alerts == [(1, "six"), (2, "twenty")]
            assert alerts[: len(seen_before[account])] == seen_before[account]
            # Every batch again, same event ids: duplicates, answered with their first offsets.
            for k in range(BATCHES):
                again = await api.ingest.Ingest(batch(account, k), timeout=5)
                assert (again.n_stored, again.n_duplicates) == (0, PER_BATCH)
                assert list(again.offsets) == acked[account][k]
            assert await counted(api, account) == BATCHES * PER_BATCH
            assert await alert_offsets(api, account) == [(1, "six"), (2, "twenty")]
    finally:
        await router.close()
        for process in nodes.values():
            process.terminate()


async def test_an_owner_paused_until_its_leases_are_taken_appends_nothing_and_acknowledges_nothing(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    nodes = start_nodes(tmp_path, nats_cluster, "PAUSE", ["a", "b"])
    paused = nodes["a"]
    router = Router([nodes["b"].grpc_port], PARTITIONS)
    api = api_on_port(paused.grpc_port)
    try:
        first = await wait_for_owners(paused.grpc_port, lambda o: sorted(o) == ["a"] * 3 + ["b"] * 3)
        await create_metric(api, "calls")
        partition = owners(first).index("a")
        account = accounts_by_partition(PARTITIONS)[partition]
        stored = 0
        for k in range(3):
            # The status names a node as soon as it holds the lease, a moment before it serves.
            await Router([paused.grpc_port], PARTITIONS).until_done(
                account, lambda api, k=k: api.ingest.Ingest(batch(account, k), timeout=5)
            )
            stored += PER_BATCH

        # SYNC calls in flight when the owner stops, and more sent while it is stopped.
        async def send(k: int) -> ing.IngestResponse:
            return await api.ingest.Ingest(batch(account, k), timeout=20)

        calls = [asyncio.create_task(send(k)) for k in range(3, 6)]
        await asyncio.sleep(0)
        paused.proc.send_signal(signal.SIGSTOP)
        calls += [asyncio.create_task(send(k)) for k in range(6, 9)]
        taken = await wait_for_owners(nodes["b"].grpc_port, lambda o: o[partition] == "b")
        epoch = taken.partition_infos[partition].lease_epoch
        assert epoch > first.partition_infos[partition].lease_epoch
        # The new owner has what was acknowledged, perhaps some of the calls in flight as well
        # (stored, never acknowledged): whatever it has, it writes on.
        await router.refresh()
        before_resume = await router.until_done(account, lambda api: counted(api, account))
        stored += PER_BATCH * sum(1 for call in calls if call.done() and not call.exception())
        assert stored <= before_resume <= stored + 6 * PER_BATCH
        # A stopped process answers nothing: a call done by now was answered before the stop.
        in_flight = [call for call in calls if not call.done()]
        assert len(in_flight) >= 3
        paused.proc.send_signal(signal.SIGCONT)
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        # The resumed node appends nothing and acknowledges nothing itself: its gRPC API routes a
        # call it no longer serves to the new owner (docs/design.md, Routing), which stores each
        # event once (what it already had is a duplicate), or the call fails.
        codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
        assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        routed = sum(r.n_stored for r in results if isinstance(r, ing.IngestResponse))
        # Nothing it held was appended after the takeover: the new owner's state is the stream's.
        more = await router.until_done(account, lambda api: api.ingest.Ingest(batch(account, 20), timeout=5))
        assert more.n_stored == PER_BATCH
        # The owner's own word (the resumed node may have been handed the partition back by now).
        owner = (await status(nodes["b"].grpc_port)).partition_infos[partition].owner_node_id
        info = (await status(nodes[owner].grpc_port)).partition_infos[partition]
        assert info.lag == 0
        assert info.last_offset == before_resume + routed + PER_BATCH
        assert (
            await router.until_done(account, lambda api: counted(api, account))
            == before_resume + routed + PER_BATCH
        )
    finally:
        await api.channel.close()
        await router.close()
        if paused.proc.poll() is None:
            paused.proc.send_signal(signal.SIGCONT)
        for process in nodes.values():
            process.terminate()


async def test_a_partition_another_writer_appended_to_stops_and_is_reloaded_from_the_stream(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    node = start_nodes(tmp_path, nats_cluster, "FENCE", ["a"])["a"]
    router = Router([node.grpc_port], PARTITIONS)
    api = api_on_port(node.grpc_port)
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        await wait_for_owners(node.grpc_port, lambda o: o == ["a"] * PARTITIONS)
        metric = await create_metric(api, "calls")
        account = accounts_by_partition(PARTITIONS)[2]
        await router.refresh()
        await router.until_done(account, lambda api: api.ingest.Ingest(batch(account, 0), timeout=5))
        epoch = (await status(node.grpc_port)).partition_infos[2].lease_epoch
        # Another writer appends a record of its own, expecting the subject's last sequence.
        js = nc.jetstream()
        subject = "unimeter.FENCE.p.2.events"
        last = await js.get_last_msg("FENCE", subject)
        foreign = EventRecord(
            PER_BATCH + 1, "", T0, {"calls": metric.create_time_unix_nano},
            [(account, "calls", 1, T0 + 99 * SEC, None, 1, "foreign")], [], 1, [],
        )  # fmt: skip
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last.seq)}
        await js.publish(subject, encode_event_record(foreign), headers=headers)
        # The node's next publish is refused: the node acknowledges nothing it could not append,
        # and the partition stops until it is loaded again (its lease is still this node's). Its
        # router may send the call again once it is (docs/design.md, Routing): then it is stored
        # once, and sending it again stores nothing.
        first: ing.IngestResponse | None = None
        try:
            first = await api.ingest.Ingest(batch(account, 1), timeout=5)
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        again = await router.until_done(account, lambda api: api.ingest.Ingest(batch(account, 1), timeout=5))
        offsets = [PER_BATCH + 2, PER_BATCH + 3]
        assert (again.n_stored, list(again.offsets)) == (PER_BATCH if first is None else 0, offsets)
        assert first is None or (first.n_stored, list(first.offsets)) == (PER_BATCH, offsets)
        assert await counted(api, account) == 2 * PER_BATCH + 1
        info = (await status(node.grpc_port)).partition_infos[2]
        assert (info.owner_node_id, info.lease_epoch, info.last_offset, info.lag) == ("a", epoch, 5, 0)
    finally:
        await nc.close()
        await api.channel.close()
        await router.close()
        node.terminate()
