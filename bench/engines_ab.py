"""``python -m bench.engines_ab``: ASYNC ingest on both engines and the no-op ceiling, interleaved.

One server per engine (``--engine python`` and ``--engine native``) and the no-op ceiling run side
by side in the same run; each round measures the three, one after the other, in alternating order,
with the benchmark's own load generators (``bench.workloads.Bench.measure_ingest``: closed loop,
``callers`` processes, ``batch``-event calls). The servers take no snapshot meanwhile (their
interval is an hour): one would slow whichever engine it hit for seconds. On a shared machine
whose load drifts by the minute, this is what tells the engines apart: ``make bench`` measures
one engine per run. Prints each round, then the medians, the share of the ceiling and the
server's CPU µs per event. A measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .config import preset
from .loadgen import WorkerPool
from .processes import ServerProcess, start_ceiling, start_unimeter, tear_down
from .report import Progress
from .workloads import Bench

__all__ = ["main"]

ENGINES = ("python", "native")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines_ab", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window of each run")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args(argv)
    config = dataclasses.replace(preset("quick"), run_seconds=args.seconds)
    root = Path(tempfile.mkdtemp(prefix="unimeter-engines-ab-"))
    pool = WorkerPool(args.callers)
    servers: list[ServerProcess] = []
    try:
        bench = Bench(config, pool, data_root=root, progress=Progress(1, enabled=False))
        targets = {"ceiling": start_ceiling(root)}
        servers.append(targets["ceiling"])
        for engine in ENGINES:
            # No snapshot during the rounds: a node snapshotting its 64 partitions runs at a
            # fraction of its rate for seconds, and would measure whichever engine it hit.
            server = start_unimeter(
                root / engine, "--engine", engine, "--snapshot-interval-seconds=3600", name=engine
            )
            servers.append(server)
            bench.create_metrics(server)
            targets[engine] = server
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                result = bench.measure_ingest(
                    targets[name], batch=args.batch, callers=args.callers, duration=args.seconds
                )
                if result["errors"]:
                    print(f"{name}: {result['errors']} errors, first: {result['first_error']}")
                rates[name].append(result["events_per_s"])
                cpu[name].append(result["server_cpu_s"] / max(result["events"], 1) * 1e6)
            print(f"round {r}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} ev/s" for n in targets), flush=True)
        ceiling = statistics.median(rates["ceiling"])
        for name in targets:
            median = statistics.median(rates[name])
            print(
                f"{name}: median {median:,.0f} events/s, {median / ceiling:.3f} of the ceiling, "
                f"server CPU {statistics.median(cpu[name]):.2f} µs/event"
            )
    finally:
        tear_down(servers, pool, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
