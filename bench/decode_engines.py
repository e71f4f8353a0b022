"""``python -m bench.decode_engines``: the ingest engines' decode + validate + split, in process.

Times what each engine does with the bytes of one ``IngestRequest`` before the node sees it: the
Python engine's protobuf parse, row conversion, validation and partition split, and the native
engine's single ``unimeter_native.decode_ingest`` call, on the same 1000-event batches (64
partitions, five metrics, a third of the events with properties, all with ids and times). Prints
microseconds per event, the best of several rounds. A measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import importlib
import random
import time
from collections.abc import Callable, Sequence

from cluster_client.client import partition_batch
from cluster_client.topology import Topology
from cluster_client.types import AggType, DimensionFilter, Metric
from cluster_client.validation import normalize_metric
from service.convert import ingest_rows_from_proto
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import types_pb2 as t

__all__ = ["main"]

PARTITIONS = 64
T0 = 1_772_323_200 * 10**9
METRICS = {
    m.code: normalize_metric(m)
    for m in (
        Metric("api_calls", AggType.COUNT),
        Metric("bytes", AggType.SUM, filters=(DimensionFilter("region", ("eu", "us")),)),
        Metric("peak", AggType.MAX),
        Metric("last", AggType.LATEST),
        Metric("seats", AggType.COUNT_UNIQUE),
    )
}


def request_bytes(batch: int, seed: int) -> bytes:
    rng = random.Random(seed)
    events = []
    for i in range(batch):
        code = rng.choice(list(METRICS))
        events.append(
            t.Event(
                account_id=rng.randrange(1, 100_000),
                metric_code=code,
                value=rng.randrange(1, 10_000),
                time_unix_nano=T0 + i * 1_000_000,
                properties={"region": rng.choice(["eu", "us"])} if rng.random() < 0.33 else {},
                event_id=f"evt-{seed}-{i:08d}",
            )
        )
    return ing.IngestRequest(events=events).SerializeToString()


def python_engine(data: bytes) -> object:
    topology = Topology(PARTITIONS, routed=False)
    rows, _sync = ingest_rows_from_proto(ing.IngestRequest.FromString(data))
    return partition_batch(rows, METRICS.get, topology.partition_of)


def best_seconds(run: Callable[[bytes], object], payloads: Sequence[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for data in payloads:
            run(data)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_engines", description=__doc__)
    parser.add_argument("--batch", type=int, default=1000, help="events per request")
    parser.add_argument("--requests", type=int, default=50, help="distinct requests per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the best one counts")
    args = parser.parse_args(argv)
    payloads = [request_bytes(args.batch, seed) for seed in range(args.requests)]
    events = args.batch * args.requests
    engines: dict[str, Callable[[bytes], object]] = {
        "protobuf parse only (python)": ing.IngestRequest.FromString,
        "python engine": python_engine,
    }
    try:
        native = importlib.import_module("unimeter_native")
    except ImportError:
        print("unimeter_native is not installed: only the Python engine is measured")
    else:
        engines["native engine"] = lambda data: native.decode_ingest(data, METRICS.get, PARTITIONS)
    for name, run in engines.items():
        seconds = best_seconds(run, payloads, args.rounds)
        print(f"{name:30} {seconds / events * 1e6:7.3f} µs/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
