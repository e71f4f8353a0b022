"""Fixtures of the cluster tests: real nats-server processes on loopback, started once per module.

Each test uses a stream of its own (``stream_name``), so tests sharing a cluster never see each
other's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from node.jetstream.backend import JetStreamBackend, JetStreamSettings, open_jetstream_backend
from node.jetstream.connection import NatsOptions
from node.jetstream.subject_log import JetStreamLog
from node.node import Node, NodeConfig
from node.record_log import RecordLog
from tools.nats_cluster import NatsCluster

_names = itertools.count(1)


def running_cluster(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[NatsCluster]:
    """Three JetStream servers with ``sync_interval: always``, stopped when the generator ends
    (the body of a module-scoped fixture)."""
    cluster = NatsCluster(tmp_path_factory.mktemp(name), 3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three JetStream servers with ``sync_interval: always``, shared by a module's tests."""
    yield from running_cluster(tmp_path_factory, "nats")


@pytest.fixture
def stream_name() -> str:
    """A stream name no other test of the session uses."""
    return f"T{next(_names)}"


def nats_options(cluster: NatsCluster) -> NatsOptions:
    return NatsOptions(urls=tuple(cluster.urls))


def settings(cluster: NatsCluster, stream: str, **overrides: object) -> JetStreamSettings:
    values: dict[str, object] = {
        "stream": stream,
        "replicas": len(cluster.servers),
        "partitions": 2,
        "monitor_urls": tuple(cluster.monitor_urls),
    }
    values.update(overrides)
    return JetStreamSettings(**values)  # type: ignore[arg-type]


async def open_backend(cluster: NatsCluster, stream: str, **overrides: object) -> JetStreamBackend:
    return await open_jetstream_backend(nats_options(cluster), settings(cluster, stream, **overrides))


def data_dir(tmp_path: Path, name: str = "data") -> Path:
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    return path


async def node_on(backend: JetStreamBackend, config: NodeConfig) -> Node:
    """A node serving every partition of ``backend``, built as the server builds one: in a worker
    thread, whose recovery reads the records from the stream (a wait the event loop cannot make)."""
    return await asyncio.to_thread(Node, config, backend.factory)


@contextlib.asynccontextmanager
async def node_on_stream(
    cluster: NatsCluster, stream: str, config: NodeConfig, **overrides: object
) -> AsyncIterator[tuple[Node, JetStreamBackend]]:
    """A backend of ``stream`` (``open_backend``) and a node on it (``node_on``), recovered on
    entering; the node closed and the backend disconnected on leaving."""
    backend = await open_backend(cluster, stream, **overrides)
    try:
        node = await node_on(backend, config)
        try:
            yield node, backend
        finally:
            await node.close()
    finally:
        await backend.disconnect()


async def commit_partition(backend: JetStreamBackend, partition: int) -> None:
    """Until what ``partition``'s logs hold now is stored in the stream (one commit round)."""
    done = asyncio.get_running_loop().create_future()
    backend.commit_group([partition], background=False, then=lambda: done.set_result(None))
    await done


def events_log(backend: JetStreamBackend, partition: int) -> JetStreamLog:
    """``partition``'s event log on ``backend``."""
    log = backend.open_partition(partition).events
    assert isinstance(log, JetStreamLog)
    return log


async def scan_records(log: RecordLog, start: int = 0) -> list[tuple[int, bytes]]:
    """``log.scan(start)`` as recovery runs it: in a worker thread, which waits for the records
    the log reads from the stream (on the loop it would raise RecordsNotLoaded instead)."""
    return await asyncio.to_thread(lambda: list(log.scan(start)))
