"""One ``unimeter serve`` per data directory, with real processes: a second one is refused at once
without touching the live directory, the lock goes with a killed holder, a port in use is refused
before the directory is touched, and a log two writers interleaved fails its recovery with a
message naming the partition, the file and the byte, which the documented repair then gets past."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from cluster_client import AggType, AlertThreshold, Client, Metric, Period
from node.data_dir_lock import LOCK_FILE, DataDirectoryLock
from node.node import Node, NodeConfig
from node.partition import PartitionRecoveryError
from node.segment_log import SegmentLog
from tests.process import CLI, ENV, REPO, ServeProcess, start_serve
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import (
    ingest_service_pb2_grpc,
    metrics_service_pb2,
    metrics_service_pb2_grpc,
    query_service_pb2_grpc,
)
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

pytestmark = pytest.mark.crash

T0 = 20_000 * 86_400 * 1_000_000_000
END = T0 + 30 * 86_400 * 1_000_000_000
ACCOUNTS = [1, 2, 3, 42, 1000]
# No snapshot of its own while a test looks at the directory: only what the test does writes there.
QUIET = ("--partitions", "4", "--snapshot-interval-seconds", "3600")


def serve_refused(data: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``unimeter serve`` that must stop on its own (at the default log level: what an operator
    sees); the caller checks how."""
    return subprocess.run(
        [*CLI, "serve", "--data-dir", str(data), *flags],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=60,
    )


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``directory``: (size, mtime in ns) by relative path."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


async def create_and_ingest(port: int, batch: int) -> None:
    """The metric (the first time) and one SYNC batch: one event per account, value ``batch``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        if batch == 1:
            await metrics_service_pb2_grpc.MetricsServiceStub(ch).CreateMetric(
                metrics_service_pb2.CreateMetricRequest(
                    metric=t.Metric(code="calls", agg_type=t.AGG_TYPE_SUM)
                ),
                timeout=10,
            )
        events = [
            t.Event(
                account_id=a,
                metric_code="calls",
                value=batch,
                time_unix_nano=T0 + batch,
                event_id=f"{batch}-{a}",
            )
            for a in ACCOUNTS
        ]
        response = await ingest_service_pb2_grpc.IngestServiceStub(ch).Ingest(
            ing.IngestRequest(events=events, delivery=t.DELIVERY_MODE_SYNC), timeout=10
        )
        assert response.n_stored == len(ACCOUNTS)


async def answers(port: int) -> dict[int, tuple[int, int]]:
    """(count, sum) of every account."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = query_service_pb2_grpc.QueryServiceStub(ch)
        out = {}
        for a in ACCOUNTS:
            period = t.Period(start_unix_nano=T0, end_unix_nano=END)
            r = await stub.Query(
                qs.QueryRequest(account_id=a, metric_code="calls", period=period), timeout=10
            )
            out[a] = (r.value.count, r.value.sum)
        return out


def stop(server: ServeProcess) -> None:
    if server.proc.poll() is None:
        server.kill9()


async def test_a_second_serve_on_a_live_directory_is_refused_and_the_first_serves_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_serve(data, *QUIET, "--http-addr", "127.0.0.1:0")
    try:
        await create_and_ingest(first.grpc_port, 1)
        await create_and_ingest(first.grpc_port, 2)
        before = await answers(first.grpc_port)
        assert before == {a: (2, 3) for a in ACCOUNTS}
        assert (data / LOCK_FILE).read_text() == f"{first.proc.pid}\n"
        files = listing(data)

        # Other ports: refused by the lock, before anything of the directory is read.
        second = serve_refused(data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
        assert (second.returncode, second.stdout) == (1, "")
        holder = f"another unimeter process (pid {first.proc.pid})"
        assert second.stderr == f"unimeter serve: data directory {data} is in use by {holder}\n"
        # The same port (a second `make run`): refused by the port, before the lock is even tried.
        third = serve_refused(data, "--grpc-addr", f"127.0.0.1:{first.grpc_port}")
        assert (third.returncode, third.stdout) == (1, "")
        assert third.stderr == f"unimeter serve: 127.0.0.1:{first.grpc_port} is already in use\n"
        assert listing(data) == files

        # The first server never noticed: same answers, and it goes on taking writes.
        assert await answers(first.grpc_port) == before
        await create_and_ingest(first.grpc_port, 3)
        assert await answers(first.grpc_port) == {a: (3, 6) for a in ACCOUNTS}
        assert first.terminate() == 0
    finally:
        stop(first)

    again = start_serve(data, *QUIET)
    try:
        assert await answers(again.grpc_port) == {a: (3, 6) for a in ACCOUNTS}
    finally:
        stop(again)


async def test_a_killed_holders_lock_is_released_and_a_restart_recovers_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_serve(data, *QUIET)
    try:
        await create_and_ingest(first.grpc_port, 1)
        before = await answers(first.grpc_port)
    finally:
        first.kill9()  # no shutdown, no unlock of its own: the kernel drops the lock with the process
    restarted = start_serve(data, *QUIET)
    try:
        assert (data / LOCK_FILE).read_text() == f"{restarted.proc.pid}\n"
        assert await answers(restarted.grpc_port) == before == {a: (1, 1) for a in ACCOUNTS}
        refused = serve_refused(data, "--grpc-addr", "127.0.0.1:0")
        assert refused.stderr.endswith(f"(pid {restarted.proc.pid})\n")
    finally:
        stop(restarted)


@pytest.mark.parametrize("flag", ["--grpc-addr", "--http-addr", "--node-addr"])
def test_a_port_in_use_is_one_line_and_the_data_directory_is_not_touched(tmp_path: Path, flag: str) -> None:
    data = tmp_path / "data"
    assert start_serve(data, *QUIET).terminate() == 0
    files = listing(data)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        flags = {"--grpc-addr": "127.0.0.1:0", flag: addr}
        for directory in (data, tmp_path / "new"):
            refused = serve_refused(directory, *(part for item in flags.items() for part in item))
            assert (refused.returncode, refused.stdout, refused.stderr) == (
                1,
                "",
                f"unimeter serve: {addr} is already in use\n",
            )
    assert listing(data) == files
    assert not (tmp_path / "new").exists()


def test_a_data_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    refused = serve_refused(taken, "--grpc-addr", "127.0.0.1:0")
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        1,
        "",
        f"unimeter serve: File exists: {taken}\n",
    )
    assert taken.read_text() == "not a directory"


# --------------------------------------------------------------------------- a log two writers shared

SEGMENT = "00000000000000000000.seg"
DAY = Period(T0, T0 + 86_400 * 1_000_000_000)


async def ingest_one(directory: Path, event_id: str, value: int) -> None:
    node = Node(NodeConfig(directory))
    await node.start()
    try:
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        await client.ingest_rows([(7, "calls", value, T0, None, 1, event_id)], sync=True)
    finally:
        await node.close()


async def two_writers_directory(tmp_path: Path, log: str) -> tuple[Path, int]:
    """A data directory whose partition ``log`` ("events" or "alerts") holds, after the first
    writer's record, the record the second writer appended for the same offsets, as two servers on
    one directory left it. Returns the directory and the position of the second writer's record."""
    data, other = tmp_path / "data", tmp_path / "other"
    node = Node(NodeConfig(data, partitions=1))
    await node.start()
    client = await Client.in_process(node, metric_lookup=node.metric_of)
    await client.metrics.create(Metric("calls", AggType.SUM, thresholds=(AlertThreshold("cap", 5),)))
    await node.close()
    shutil.copytree(data, other)  # both writers start from the same state
    await ingest_one(data, "a", 5)  # each writer's event crosses the threshold: one alert each
    await ingest_one(other, "b", 100)
    theirs = SegmentLog.open(other / "partitions/0000" / log)
    records = [payload for _, payload in theirs.scan()]
    await theirs.close()
    assert len(records) == 1
    ours = SegmentLog.open(data / "partitions/0000" / log)
    position = ours.end_position
    ours.append(records[0])
    await ours.flush()
    await ours.close()
    return data, position


def recovery_message(data: Path, log: str, position: int) -> str:
    kind = "offsets start at 1, not at 2" if log == "events" else "alert offsets start at 1, not at 2"
    return (
        f"cannot recover partition 0: the record at byte {position} of {data}/partitions/0000/{log}/"
        f"{SEGMENT} (log position {position}) does not replay: its {kind}; every "
        "record before it is intact. Stop every process using the data directory, then restore it from "
        'a backup or repair it as docs/operations.md describes ("Recovery failed")'
    )


@pytest.mark.parametrize("log", ["events", "alerts"])
async def test_a_log_two_writers_shared_names_partition_file_and_byte_and_the_documented_repair_works(
    tmp_path: Path, log: str
) -> None:
    data, position = await two_writers_directory(tmp_path, log)
    assert sorted(p.name for p in (data / "partitions/0000" / log).iterdir()) == [SEGMENT]
    files = listing(data)
    del files[LOCK_FILE]  # each process that takes the lock writes its pid there

    with pytest.raises(PartitionRecoveryError) as failed:
        Node(NodeConfig(data))
    assert str(failed.value) == recovery_message(data, log, position)
    DataDirectoryLock.acquire(data).release()  # the failed node let go of the directory

    refused = serve_refused(data, "--grpc-addr", "127.0.0.1:0")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == f"unimeter serve: {recovery_message(data, log, position)}\n"
    assert {name: entry for name, entry in listing(data).items() if name != LOCK_FILE} == files

    # The repair docs/operations.md describes ("Recovery failed"), with the numbers of the message.
    partition = data / "partitions/0000"
    if log == "events":
        os.truncate(partition / "events" / SEGMENT, position)
    (partition / "snapshot.msgpack").unlink()
    shutil.rmtree(partition / "alerts")
    node = Node(NodeConfig(data))
    try:
        await node.start()
        client = await Client.in_process(node, metric_lookup=node.metric_of)
        value = (await client.query(7, "calls", DAY)).value
        assert (value.count, value.sum) == (1, 5)  # the first writer's event; the second's is cut
        await node.partitions[0].flush()  # regenerated alerts are listed once durable
        alerts, more = await client.list_alerts(7)
        assert [(a.offset, a.value_at_cross) for a in alerts] == [(1, 5)]  # regenerated, same offset
        assert not more
        retry = await client.ingest_rows([(7, "calls", 5, T0, None, 1, "a")], sync=True)
        assert (retry.n_stored, retry.n_duplicates, retry.offsets) == (0, 1, [1])
    finally:
        await node.close()
