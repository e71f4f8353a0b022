"""``python -m bench.sync_single``: the SYNC single-event latency target alone, in interleaved rounds.

What ``make bench``'s SYNC single measure does (one caller, single-event Ingest calls back to
back, ``bench.workloads.Bench.measure_latency``), without the rest of the run: each round measures
the no-op ceiling's round trip, the fsync probe, and one event SYNC and ASYNC on ``unimeter
serve`` (and SYNC on a second server running another checkout's code, ``--baseline DIR``), in
alternating order, so drift on a shared machine hits every one alike; and, as a diagnostic, the
fsync probe with a pause of the ceiling's last round trip between appends, the cadence of the
SYNC caller's own fsyncs. Prints each round and the medians over rounds of every p50 and p99, with
the target (ceiling round trip + 2 x back-to-back fsync p50, as ``make bench`` computes it). A
measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import preset
from .fsync_probe import probe_fsync
from .loadgen import WorkerPool
from .processes import start_ceiling, start_unimeter
from .report import Progress
from .workloads import Bench

__all__ = ["main"]


def _last(values: list[float], default: float) -> float:
    return values[-1] if values else default


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_single", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window of each latency run")
    parser.add_argument("--fsync-iterations", type=int, default=300, help="fsync probe appends per round")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout whose server is measured beside this one",
    )
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)
    config = dataclasses.replace(preset("full"), latency_seconds=args.seconds)
    root = Path(tempfile.mkdtemp(prefix="unimeter-sync-single-"))
    pool = WorkerPool(1)
    servers = []
    try:
        bench = Bench(config, pool, data_root=root, progress=Progress(1, enabled=False))
        ceiling = start_ceiling(root)
        servers.append(ceiling)
        unimeter = start_unimeter(root / "unimeter", *args.server_arg)
        servers.append(unimeter)
        bench.create_metrics(unimeter)
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "ceiling": lambda: bench.measure_latency(ceiling, "ingest1", account=1, sync=True),
            "sync": lambda: bench.measure_latency(unimeter, "ingest1", account=1, sync=True),
            "async": lambda: bench.measure_latency(unimeter, "ingest1", account=1, sync=False),
            "fsync": lambda: probe_fsync(root / "fsync", args.fsync_iterations),
            # The same appends one round trip apart, as the SYNC caller's fsyncs are (diagnostic).
            "fsync paced": lambda: probe_fsync(
                root / "fsync", args.fsync_iterations, pause_seconds=_last(p50["ceiling"], 0.5) / 1000
            ),
        }
        if args.baseline is not None:
            baseline = start_unimeter(
                root / "baseline", *args.server_arg, name="baseline", source=args.baseline.resolve()
            )
            servers.append(baseline)
            bench.create_metrics(baseline)
            runs["baseline sync"] = lambda: bench.measure_latency(baseline, "ingest1", account=1, sync=True)
        p50: dict[str, list[float]] = {name: [] for name in runs}
        p99: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                result = runs[name]()
                p50[name].append(result["p50_ms"])
                p99[name].append(result["p99_ms"])
            print(f"round {r}: " + ", ".join(f"{n} {p50[n][-1]:.3f}" for n in runs) + " ms p50", flush=True)
        median = {name: statistics.median(values) for name, values in p50.items()}
        for name in runs:
            tail = statistics.median(p99[name])
            print(f"{name:>14}: p50 {median[name]:.3f} ms, p99 {tail:.3f} ms (medians)")
        limit = median["ceiling"] + 2 * median["fsync"]
        for name in ("sync", "baseline sync"):
            if name in median:
                print(
                    f"{name}: {median[name] / median['ceiling']:.2f} x the round trip; target "
                    f"{limit:.3f} ms = {limit / median['ceiling']:.2f} x: "
                    + ("met" if median[name] <= limit else "missed")
                )
    finally:
        for server in servers:
            server.kill()
        pool.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
