"""``--fsync-mode``: one syncfs per flush of many logs (default, where safe) or one fdatasync per log."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster_client import AggType, Client, Metric, Period
from node import filesystem_sync
from node.embedded_backend import EmbeddedBackend
from node.kernel_fdatasync import KernelFdatasync
from node.node import Node, NodeConfig
from node.stats import NodeStats
from node.tick_writes import TickWrites
from service.config import add_serve_arguments, serve_config_from_args
from service.server import UnimeterServer
from tests.conftest import open_api, serve_config
from tests.engines import ENGINES
from tests.integration.helpers import create_metric, ev, ingest
from unimeter.v1 import types_pb2 as t

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
DAY = Period(T0, T0 + 24 * 3600 * 1_000_000_000)


def test_the_mode_comes_from_the_flag_or_the_environment() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert serve_config_from_args(parser.parse_args([]), {}).fsync_mode == "filesystem"
    assert serve_config_from_args(parser.parse_args([]), {"UNIMETER_FSYNC_MODE": "file"}).fsync_mode == "file"
    args = parser.parse_args(["--fsync-mode", "file"])
    assert serve_config_from_args(args, {"UNIMETER_FSYNC_MODE": "filesystem"}).fsync_mode == "file"
    with pytest.raises(SystemExit, match="fsync mode must be filesystem or file"):
        serve_config_from_args(parser.parse_args(["--fsync-mode", "fast"]), {})


@pytest.mark.parametrize("mode", ["filesystem", "file"])
async def test_sync_batches_over_partitions_are_durable_in_either_mode(tmp_path: Path, mode: str) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", fsync_mode=mode))
    await server.start()
    try:
        node = server.node
        assert node is not None
        uses_syncfs = mode == "filesystem" and filesystem_sync.syncfs_supported()
        assert node.backend.syncs_filesystem == uses_syncfs
        api = await open_api(server)
        await create_metric(api, "calls", t.AGG_TYPE_SUM)
        response = await ingest(
            api, *[ev(a, "calls", a, time=1_772_323_200 * 10**9 + a) for a in range(1, 41)], sync=True
        )
        assert response.n_stored == 40
        touched = [p for p in node.partitions if p.last_offset]
        assert len(touched) == 8  # 40 accounts reach every partition: a grouped round
        for partition in touched:
            assert partition.events.durable_position == partition.events.end_position
        await api.channel.close()
    finally:
        await server.stop(grace=1)


async def test_a_node_runs_on_the_backend_its_factory_builds(tmp_path: Path) -> None:
    """Partitions are opened from the backend the node's factory returns: its segment size, its
    fsync mode and its fsync histograms are the ones in force, and the status names it."""
    built: list[EmbeddedBackend] = []

    def factory(config: NodeConfig, stats: NodeStats) -> EmbeddedBackend:
        backend = EmbeddedBackend(
            config.data_dir, segment_bytes=1024, fsync_threads=2, sync_filesystem=False, stats=stats
        )
        built.append(backend)
        return backend

    node = Node(NodeConfig(tmp_path / "data", partitions=2), backend_factory=factory)
    assert [node.backend] == built
    assert not node.backend.syncs_filesystem
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        for n in range(20):
            await client.ingest_rows(
                [(a, "calls", 1, T0 + n, None, 1, f"e{n}-{a}") for a in range(1, 5)], sync=True
            )
        assert (await client.query(1, "calls", DAY)).value.sum == 20
        for partition in node.partitions:
            assert partition.events.durable_position == partition.events.end_position > 0
            assert partition.events.segment_count > 1  # 1 KiB segments, not the 64 MiB default
        assert node.stats.fsync_events.count > 0
        assert (await node.cluster_status()).backend == "embedded"
    finally:
        await node.close()


async def test_a_sync_call_to_one_partition_is_synced_by_the_kernel_and_acked_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/design.md, "Durability and group commit": a SYNC call whose events land in one
    partition has that log's round synced by the kernel (no fsync thread), and its answer comes
    only once the log's durable position covers its record."""
    submitted: list[int] = []
    real_submit = KernelFdatasync.submit

    def spying(self: KernelFdatasync, fd: int, then: Callable[[OSError | None], None]) -> bool:
        submitted.append(fd)
        return real_submit(self, fd, then)

    monkeypatch.setattr(KernelFdatasync, "submit", spying)
    node = Node(NodeConfig(tmp_path / "data", partitions=1))
    assert node.backend.syncs_in_kernel
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        events = node.partitions[0].events
        durable_at_sync: list[int] = []
        events.on_sync = lambda seconds: durable_at_sync.append(events.durable_position)
        for n in range(5):
            call = asyncio.create_task(
                client.ingest_rows([(1, "calls", 1, T0 + n, None, 1, f"e{n}")], sync=True)
            )
            while len(submitted) == n:  # the call runs up to its wait for the kernel's sync
                assert not call.done()
                await asyncio.sleep(0)
            end = events.end_position
            assert events.durable_position < end
            result = await asyncio.wait_for(call, 10)
            assert result.offsets == [n + 1]
            assert durable_at_sync[-1] == events.durable_position == end
        assert len(submitted) == 5
        assert (await client.query(1, "calls", DAY)).value.sum == 5
    finally:
        await node.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_nodes_ticks_go_to_the_worker_on_native_and_are_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """node.tick_writes: on the native engine, with one syncfs for the data directory, a flush
    tick's rounds are written and synced by the worker (none on the loop thread), and what it
    wrote is durable and recovered. The python engine has no worker, nor does a node where syncfs
    is missing: the threads' syncs serve them, and the same holds."""
    taken: list[int] = []
    real_run = TickWrites.run

    def spying(self: TickWrites, jobs: list[Any], finish: Any) -> bool:
        taken.append(len(jobs) if real_run(self, jobs, finish) else 0)
        return taken[-1] > 0

    monkeypatch.setattr(TickWrites, "run", spying)
    config = NodeConfig(tmp_path / "data", partitions=4, engine=engine)
    node = Node(config)
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.metrics.create(Metric("calls", AggType.SUM))
        rows = [(a, "calls", a, T0 + a, None, 1, f"e{a}") for a in range(1, 41)]
        assert (await client.ingest_rows(rows, sync=False)).n_stored == 40
        async with asyncio.timeout(10):
            while any(p.events.durable_position < p.events.end_position for p in node.partitions):
                await asyncio.sleep(0.005)
        if engine == "native" and node.backend.syncs_filesystem:
            assert taken and max(taken) == 4  # every partition's event log in one tick
        else:
            assert not taken  # the threads' syncs, as before
    finally:
        await node.close()
    reopened = Node(config)
    await reopened.start()
    try:
        client = await Client.in_process(reopened, metric_lookup=reopened.metric_of)
        sums = [(await client.query(a, "calls", DAY)).value.sum for a in range(1, 41)]
        assert sums == list(range(1, 41))
    finally:
        await reopened.close()
