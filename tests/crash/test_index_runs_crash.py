"""Index runs under SIGKILL: killed while a run file is being written, and after a run is on disk
but before the snapshot listing it, ``unimeter serve`` recovers to exactly the events it stored.

A real server with a one-second memory horizon and a snapshot every 50 ms takes SYNC batches of
events hours in the past, so every snapshot hands positions over to a new run (and merges runs
past their bound). A thread watches the partitions' ``index/`` directories and sends SIGKILL the
moment a run's temp file appears (during its write and fsync) or a new run file appears (written,
not yet listed by a snapshot). Each cycle then checks, from what the kill left behind, that it
landed there (the temp file, or a run the stored snapshot does not list), restarts the server,
checks that recovery deleted every run the snapshot does not list, resends every unacknowledged
batch and compares every account's ListEvents pages with every event sent: each exactly once, in
time order. Cycles go on on the same data directory until both moments were hit twice; each cycle lets more
runs be written before its kill, so later ones die with listed runs on disk.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from node.records import decode_snapshot
from tests.engines import Target, over_targets
from tests.process import ServeProcess, start_serve
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

HOUR = 3_600 * 1_000_000_000
T0 = 18_000 * 86_400 * 1_000_000_000  # 2019: hours long past a one-second horizon
ACCOUNTS = [1, 2, 3, 42, 43, 44, 1000, 65535]
PARTITIONS = 4
MAX_CYCLES = 16
BATCHES_PER_CYCLE = 2_000
MOMENTS = ("writing a run", "run not yet listed")


def _batch(n: int) -> list[t.Event]:
    return [
        t.Event(
            account_id=a,
            metric_code="calls",
            value=n + 1,
            time_unix_nano=T0 + (n % 6) * HOUR + n * 1000 + i,
            event_id=f"b{n}-a{a}",
        )
        for i, a in enumerate(ACCOUNTS)
    ]


def _run_files(data: Path) -> set[Path]:
    return set(data.glob("partitions/*/index/run-*"))


def _listed(partition_dir: Path) -> set[str]:
    snapshot = partition_dir / "snapshot.msgpack"
    if not snapshot.exists():
        return set()
    return {name for name, _, _ in decode_snapshot(snapshot.read_bytes()).index_runs}


class Killer:
    """Sends SIGKILL to the server at the ``skip + 1``-th occurrence of ``moment`` (the earlier
    ones let runs be listed, so later kills find listed runs beside unlisted ones), from a thread
    polling the index directories."""

    def __init__(self, server: ServeProcess, data: Path, moment: str, skip: int) -> None:
        self.server, self.data, self.moment, self.skip = server, data, moment, skip
        self.hit: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        seen = {p.name for p in _run_files(self.data)}
        while not self._stop.is_set():
            for path in _run_files(self.data):
                if path.name in seen:
                    continue
                seen.add(path.name)
                if path.name.endswith(".tmp") != (self.moment == "writing a run"):
                    continue
                if self.skip:
                    self.skip -= 1
                    continue
                self.server.proc.send_signal(signal.SIGKILL)
                self.hit = path
                return
            time.sleep(0.0003)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def landed(self) -> bool:
        """Whether the process left the state the moment names."""
        if self.hit is None:
            return False
        if self.moment == "writing a run":
            return self.hit.exists()
        return self.hit.exists() and self.hit.name not in _listed(self.hit.parent.parent)


async def _list_all(port: int) -> dict[int, list[str]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = query_service_pb2_grpc.QueryServiceStub(ch)
        out: dict[int, list[str]] = {}
        for a in ACCOUNTS:
            ids: list[str] = []
            token = ""
            while True:
                r = await stub.ListEvents(
                    qs.ListEventsRequest(
                        account_id=a,
                        start_unix_nano=T0,
                        end_unix_nano=T0 + 7 * HOUR,
                        page_size=37,
                        page_token=token,
                    ),
                    timeout=10,
                )
                ids += [e.event.event_id for e in r.events]
                token = r.next_page_token
                if not token:
                    break
            out[a] = ids
        return out


def _expected(sent: set[int]) -> dict[int, list[str]]:
    events = sorted((e.time_unix_nano, e.event_id, e.account_id) for n in sent for e in _batch(n))
    return {a: [i for _, i, acc in events if acc == a] for a in ACCOUNTS}


async def _ingest(port: int, batches: list[int]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
        for n in batches:
            await stub.Ingest(ing.IngestRequest(events=_batch(n), delivery=t.DELIVERY_MODE_SYNC), timeout=10)


async def _write_until(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
    k: int,
    end: int,
    killer: Killer,
    sent: set[int],
    acked: set[int],
) -> None:
    """SYNC batches ``k``, ``k + 2``, ... until the killer fired (the call then fails) or ``end``."""
    while killer.hit is None and k < end:
        sent.add(k)
        await stub.Ingest(ing.IngestRequest(events=_batch(k), delivery=t.DELIVERY_MODE_SYNC), timeout=10)
        acked.add(k)
        k += 2


# Kills until each moment was hit twice: minutes on a quiet machine, past 10 on a loaded one, so it
# runs with the long reliability runs (`make soak-crash`), not in `make test`.
@pytest.mark.soak
@pytest.mark.timeout(1200)
@over_targets
async def test_kill_while_runs_are_written_or_unlisted_recovers_exactly(
    tmp_path: Path, target: Target
) -> None:
    data = tmp_path / "data"
    horizon = ("--memory-horizon-seconds", "1", *target.serve_args)
    # A snapshot every 50 ms under load; a check after recovery with none until it is done.
    busy, still = (
        (*horizon, "--snapshot-interval-seconds", "0.05"),
        (*horizon, "--snapshot-interval-seconds", "3600"),
    )
    server = start_serve(data, "--partitions", str(PARTITIONS), *busy)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        await metrics_service_pb2_grpc.MetricsServiceStub(ch).CreateMetric(
            metrics_service_pb2.CreateMetricRequest(metric=t.Metric(code="calls", agg_type=t.AGG_TYPE_SUM)),
            timeout=10,
        )
    sent: set[int] = set()
    landed = dict.fromkeys(MOMENTS, 0)
    try:
        for cycle in range(MAX_CYCLES):
            if min(landed.values()) >= 2:
                break
            moment = MOMENTS[cycle % 2]
            killer = Killer(server, data, moment, skip=cycle // 2)
            acked: set[int] = set()
            first = max(sent, default=0) + 1
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
                stub = ingest_service_pb2_grpc.IngestServiceStub(ch)

                results = await asyncio.gather(
                    *(
                        _write_until(stub, k, first + BATCHES_PER_CYCLE, killer, sent, acked)
                        for k in (first, first + 1)
                    ),
                    return_exceptions=True,
                )
            killer.stop()
            server.kill9()  # killed by the watcher already, or it never saw its moment
            assert all(r is None or isinstance(r, grpc.aio.AioRpcError) for r in results)
            landed[moment] += killer.landed()

            server = start_serve(data, *still)
            for partition_dir in data.glob("partitions/*"):
                on_disk = {p.name for p in (partition_dir / "index").iterdir()}
                assert on_disk == _listed(partition_dir), "recovery keeps exactly the runs its snapshot lists"
            await _ingest(server.grpc_port, sorted(sent - acked))
            assert await _list_all(server.grpc_port) == _expected(sent)
            server.kill9()
            server = start_serve(data, *busy)
        assert min(landed.values()) >= 2, f"kills landed: {landed}"
        assert server.terminate() == 0
        server = start_serve(data, *still)  # after a graceful stop: loads the runs its snapshot lists
        assert await _list_all(server.grpc_port) == _expected(sent)
        assert len(_run_files(data)) > PARTITIONS  # the positions really are in runs
    finally:
        if server.proc.poll() is None:
            server.kill9()
