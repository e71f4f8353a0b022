"""``python -m bench.partition_engines``: a node's ingest per event on each engine, in process.

Times ``Node.ingest`` (already validated, already split: the partitions' work only, dedup,
record, aggregation, event index) on each partition engine (``node/partition_engine.py``) over the
same 1000-event batches (10,000 accounts, 64 partitions, five SUM metrics, each event with an id,
or, in alternate rounds, with a time and no id so its key is derived from its content), rounds
interleaved so that a drifting machine load hits both alike; and the dedup index's bytes per key
(``memory_bytes`` over the keys held, as the ``unimeter_dedup_bytes`` gauge reports it) at the
end. ``native batches`` is the native engine fed as the server feeds it: each batch's parts as the
native decoder hands them over (``unimeter_native.decode_ingest``, one ``EventBatch`` per
partition, decoded before the clock starts), where ``native`` gets the rows as tuples. A
measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cluster_client import AggType, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node.node import Node, NodeConfig
from unimeter.v1 import ingest_service_pb2, types_pb2

__all__ = ["main"]

T0 = 1_772_323_200 * 10**9
PARTITIONS = 64
ENGINES = ("python", "native", "native batches")
METRICS = {f"m{i}": Metric(f"m{i}", AggType.SUM) for i in range(5)}
Parts = Sequence[tuple[int, Sequence[EventRow]]]


def batches(n_batches: int, size: int, seed: int, *, ids: bool) -> list[Parts]:
    """``n_batches`` batches split by partition, events with ids or with content keys."""
    rng = random.Random(seed)
    out: list[Parts] = []
    k = 0
    for _ in range(n_batches):
        parts: dict[int, list[EventRow]] = {}
        for _ in range(size):
            account = rng.randrange(1, 10_000)
            event_id = f"e-{seed}-{k}" if ids else ""
            row = (account, f"m{rng.randrange(5)}", rng.randrange(1, 1000), T0 + k * 1000, None, 1, event_id)
            parts.setdefault(partition_of(account, PARTITIONS), []).append(row)
            k += 1
        out.append(sorted(parts.items()))
    return out


def native_batches(work: list[Parts]) -> list[Parts]:
    """The same batches as the native decoder splits their requests: ``EventBatch`` parts."""
    native = importlib.import_module("unimeter_native")
    out: list[Parts] = []
    for parts in work:
        events = [
            types_pb2.Event(account_id=a, metric_code=c, value=v, time_unix_nano=t, operation=op, event_id=i)  # type: ignore[arg-type]
            for _, rows in parts
            for a, c, v, t, _, op, i in rows
        ]
        data = ingest_service_pb2.IngestRequest(events=events).SerializeToString()
        _, _, by_partition, rejection = native.decode_ingest(data, METRICS.get, PARTITIONS)
        assert rejection is None, rejection
        out.append(sorted((p, batch) for p, (batch, _) in by_partition.items()))
    return out


async def run(engine: str, data_dir: Path, work: list[Parts]) -> tuple[float, float]:
    """(µs per event, dedup bytes per key) of ``work`` on a fresh node of ``engine``."""
    node = Node(NodeConfig(data_dir, partitions=PARTITIONS, engine=engine.split()[0]))
    try:
        for metric in METRICS.values():
            await node.create_metric(metric)
        started = time.perf_counter()
        for parts in work:
            await node.ingest(parts, False, "", validated=True)
        seconds = time.perf_counter() - started
        events = sum(len(rows) for parts in work for _, rows in parts)
        keys = sum(len(p.dedup) for p in node.partitions)
        memory = sum(p.dedup.memory_bytes for p in node.partitions)
    finally:
        await node.close()
    return seconds / events * 1e6, memory / max(keys, 1)


async def measure(rounds: int, n_batches: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="unimeter-partition-engines-"))
    per_event: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    try:
        for r in range(rounds):
            ids = r % 2 == 0
            work = batches(n_batches, 1000, r, ids=ids)
            work_of = {"python": work, "native": work, "native batches": native_batches(work)}
            for engine in ENGINES if r % 2 else reversed(ENGINES):
                shutil.rmtree(root / engine, ignore_errors=True)
                us, bytes_per_key = await run(engine, root / engine, work_of[engine])
                per_event[engine].append(us)
                kind = "ids" if ids else "content keys"
                print(f"round {r} ({kind}) {engine}: {us:.2f} µs/event, dedup {bytes_per_key:.1f} B/key")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for engine in ENGINES:
        print(f"{engine}: median {statistics.median(per_event[engine]):.2f} µs/event")
    for engine in ENGINES[1:]:
        ratios = [n / p for n, p in zip(per_event[engine], per_event["python"], strict=True)]
        print(f"{engine} / python, paired by round: median {statistics.median(ratios):.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partition_engines", description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=200, help="1000-event batches per round")
    args = parser.parse_args(argv)
    asyncio.run(measure(args.rounds, args.batches))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
