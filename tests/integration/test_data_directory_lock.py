"""One node per data directory, in one process too: the lock is taken before anything is read, a
second open is refused with the holder's pid, the lock goes with the node that held it, and a
server refused by it closes the listeners it had bound."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cluster_client import AggType, Client, Metric, Period
from node.data_dir_lock import LOCK_FILE, DataDirectoryLock, DataDirectoryLocked
from node.node import Node, NodeConfig
from service.server import UnimeterServer
from tests.conftest import serve_config

pytestmark = pytest.mark.timeout(60)

T0 = 1_772_323_200 * 1_000_000_000  # 2026-03-01T00:00:00Z
DAY = Period(T0, T0 + 86_400 * 1_000_000_000)


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``directory``: (size, mtime in ns) by relative path."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


async def test_a_second_node_on_a_directory_is_refused_at_once_until_the_first_closes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Node(NodeConfig(data, partitions=2))
    await first.start()
    client = await Client.in_process(first, metric_lookup=first.metric_of)
    await client.metrics.create(Metric("calls", AggType.SUM))
    await client.ingest_rows([(7, "calls", 5, T0, None, 1, "e1")], sync=True)
    assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    before = listing(data)

    with pytest.raises(DataDirectoryLocked) as refused:
        Node(NodeConfig(data, partitions=2))
    message = f"data directory {data} is in use by another unimeter process (pid {os.getpid()})"
    assert str(refused.value) == message
    assert refused.value.holder_pid == os.getpid()
    assert listing(data) == before  # nothing read into a second state, nothing written

    # The holder is undisturbed.
    await client.ingest_rows([(7, "calls", 2, T0 + 1, None, 1, "e2")], sync=True)
    assert (await client.query(7, "calls", DAY)).value.sum == 7
    await first.close()

    again = Node(NodeConfig(data))
    try:
        await again.start()
        client = await Client.in_process(again, metric_lookup=again.metric_of)
        assert (await client.query(7, "calls", DAY)).value.sum == 7
    finally:
        await again.close()


def test_the_lock_file_is_the_only_thing_made_in_a_new_directory_before_the_lock(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    lock = DataDirectoryLock.acquire(data)
    try:
        assert [p.name for p in data.iterdir()] == [LOCK_FILE]
        with pytest.raises(DataDirectoryLocked, match=rf"\(pid {os.getpid()}\)$"):
            DataDirectoryLock.acquire(data)
        with pytest.raises(DataDirectoryLocked):
            Node(NodeConfig(data))
        assert [p.name for p in data.iterdir()] == [LOCK_FILE]
    finally:
        lock.release()
    assert not lock.held
    lock.release()  # idempotent
    DataDirectoryLock.acquire(data).release()


def test_a_holder_that_has_not_written_its_pid_yet_is_named_as_such(tmp_path: Path) -> None:
    lock = DataDirectoryLock.acquire(tmp_path)
    try:
        (tmp_path / LOCK_FILE).write_text("")  # as between the holder's flock and its pid write
        with pytest.raises(DataDirectoryLocked) as refused:
            DataDirectoryLock.acquire(tmp_path)
        assert str(refused.value).endswith("(pid not written yet)")
        assert refused.value.holder_pid is None
    finally:
        lock.release()


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def test_a_server_on_a_held_directory_is_refused_and_closes_what_it_bound(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = Node(NodeConfig(data, partitions=2))
    try:
        server = UnimeterServer(serve_config(data, http_addr="127.0.0.1:0", node_addr="127.0.0.1:0"))
        with pytest.raises(DataDirectoryLocked, match=rf"^data directory {data} is in use"):
            await server.start()
        assert server.grpc_port and server.http_port  # they were bound before the lock was tried
        assert refuses_connections(server.grpc_port)
        assert refuses_connections(server.http_port)
        assert server.node is None and not server.ready
    finally:
        await holder.close()
    # Once the holder is gone the same server config starts.
    server = UnimeterServer(serve_config(data, http_addr="127.0.0.1:0"))
    await server.start()
    try:
        assert server.ready
    finally:
        await server.stop(grace=0)
