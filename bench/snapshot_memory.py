"""``python -m bench.snapshot_memory``: what a snapshot round costs in RSS and time, in process.

Builds a node on the native engine (64 partitions; ``--partitions``) with the rate soak's shape
(docs/reliability.md, "Soak"): 10,000 accounts, 5 SUM metrics, every event with an id, event times
2.5 hours old, a 60-second memory horizon (so each round ages the index and folds minute
cells) and a 60-second dedup window. Each round ingests ``--events`` events, then snapshots every
partition one after another as the node's maintenance loop does, while a thread samples the
process's RSS (``/proc/self/status`` VmRSS) every few ms. It prints, per round: the RSS just
before the round (baseline), the highest sample during it (peak), how long RSS stayed more than
16 MiB above the baseline, the round's duration and the snapshot bytes written. ``--ingest``
keeps ingesting during the round (copy-on-write at work); ``--tracemalloc`` also reports the
highest Python-side allocation during the round. The garbage collector is tuned as the server
tunes it (``--default-gc``: not). A measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import random
import shutil
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from cluster_client import AggType, Metric
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow
from node.node import Node, NodeConfig

__all__ = ["main"]

ACCOUNTS = 10_000
METRICS = [Metric(f"m{i}", AggType.SUM) for i in range(5)]
BATCH = 1000
RATE = 65_000  # the soak's events a second (70% of the maximum it measured)
_ABOVE = 16 << 20  # RSS this far above the baseline counts as "above"
Parts = Sequence[tuple[int, Sequence[EventRow]]]


def rss_bytes() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler(threading.Thread):
    """Samples RSS every ``every`` seconds until stopped: ``(monotonic time, bytes)`` pairs."""

    def __init__(self, every: float) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic(), rss_bytes()))
            self._stop_event.wait(self.every)

    def stop(self) -> list[tuple[float, int]]:
        self._stop_event.set()
        self.join()
        return self.samples


class Load:
    """The soak's events: ids, accounts over 10,000, times starting ``age`` seconds ago and
    advancing with the events (a second per ``rate`` events), as a soak's callers send them. It
    is the node's clock too, simulated at the same rate: a round of ``60 * rate`` events is a
    minute, so the 60-second dedup window holds the soak's number of keys."""

    def __init__(self, seed: int, age: float, rate: int, partitions: int) -> None:
        self.partitions = partitions
        self._rng = random.Random(seed)
        self._k = 0
        self._start = time.time_ns()
        self._t0 = self._start - int(age * 1e9)
        self._rate = rate

    def now_ns(self) -> int:
        return self._start + self._k * 1_000_000_000 // self._rate

    def batch(self) -> Parts:
        rng, parts = self._rng, dict[int, list[EventRow]]()
        for _ in range(BATCH):
            k = self._k
            account = rng.randrange(1, ACCOUNTS + 1)
            t = self._t0 + k * 1_000_000_000 // self._rate
            row = (account, f"m{rng.randrange(5)}", rng.randrange(1, 1000), t, None, 1, f"e-{k}")
            parts.setdefault(partition_of(account, self.partitions), []).append(row)
            self._k += 1
        return sorted(parts.items())


async def ingest(node: Node, load: Load, events: int) -> None:
    for _ in range(events // BATCH):
        await node.ingest(load.batch(), False, "", validated=True)
        await asyncio.sleep(0)


async def snapshot_round(node: Node) -> int:
    """Snapshot every partition with new records, one after another (the maintenance loop's
    round); the bytes of the snapshots written."""
    written = 0
    for partition in node.partitions:
        if partition.records_since_snapshot:
            await partition.snapshot()
            path = node.config.data_dir / "partitions" / f"{partition.number:04d}" / "snapshot.msgpack"
            written += path.stat().st_size if path.exists() else 0
    return written


async def keep_ingesting(node: Node, load: Load, rate: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await node.ingest(load.batch(), False, "", validated=True)
        await asyncio.sleep(BATCH / rate)


async def measure_round(node: Node, load: Load, args: argparse.Namespace) -> str:
    """One snapshot round, sampled: its figures as a line."""
    sampler = RssSampler(args.sample_ms / 1000)
    if args.tracemalloc:
        tracemalloc.start()
    baseline = rss_bytes()
    sampler.start()
    started = time.monotonic()
    stop = asyncio.Event()
    feeder = asyncio.create_task(keep_ingesting(node, load, args.ingest_rate, stop)) if args.ingest else None
    written = await snapshot_round(node)
    seconds = time.monotonic() - started
    stop.set()
    if feeder is not None:
        await feeder
    await asyncio.sleep(args.settle)
    samples = sampler.stop()
    traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else 0
    tracemalloc.stop()
    peak = max(b for t, b in samples if t <= started + seconds)
    above = sum(t1 - t0 for (t0, b), (t1, _) in itertools.pairwise(samples) if b > baseline + _ABOVE)
    mib = 1 << 20
    return (
        f"baseline {baseline / mib:.0f} MiB, peak {peak / mib:.0f} MiB (+{(peak - baseline) / mib:.0f}), "
        f"above +16 MiB for {above:.1f}s, after {samples[-1][1] / mib:.0f} MiB; "
        f"round {seconds:.2f}s, {written / mib:.1f} MiB written"
        + (f"; tracemalloc peak {traced / mib:.0f} MiB" if args.tracemalloc else "")
    )


async def measure(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="unimeter-snapshot-memory-"))
    load = Load(seed=1, age=args.event_age, rate=RATE, partitions=args.partitions)
    config = NodeConfig(
        root / "data",
        clock=load,
        partitions=args.partitions,
        engine="native",
        dedup_window_seconds=60.0,
        memory_horizon_ns=60 * 10**9,
        snapshot_interval=1e9,  # the rounds here are the only snapshots
        snapshot_every_records=1 << 62,
    )
    node = Node(config)
    try:
        await node.start()
        for metric in METRICS:
            await node.create_metric(metric)
        if not args.default_gc:  # the server's tuning (service/server.py): full collections are rare
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
        for r in range(args.rounds):
            await ingest(node, load, args.events)
            node.expire()
            print(f"round {r}: {await measure_round(node, load, args)}", flush=True)
    finally:
        await node.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot_memory", description=__doc__)
    parser.add_argument("--events", type=int, default=60 * RATE, help="events ingested before each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=64, help="fewer: larger snapshots each")
    parser.add_argument("--event-age", type=float, default=9000.0, help="seconds the first event is old")
    parser.add_argument("--sample-ms", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds sampled after each round")
    parser.add_argument("--ingest", action="store_true", help="keep ingesting during the rounds")
    parser.add_argument("--ingest-rate", type=float, default=20_000, help="events/s at most with --ingest")
    parser.add_argument("--default-gc", action="store_true", help="keep CPython's GC thresholds")
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
