"""``python -m bench.sync_single``: the SYNC single-event latency target alone, in interleaved rounds.

What ``make bench``'s SYNC single measure does (one caller, single-event Ingest calls back to
back, ``bench.workloads.Bench.measure_latency``), without the rest of the run: each round measures
the no-op ceiling's round trip, the fsync probe, and one event SYNC and ASYNC on ``unimeter
serve`` and on a server per other checkout (``--baseline DIR``: the median of the rounds' paired
differences is printed), in alternating order, so drift on a shared machine hits every one alike
(``--throughput`` adds 1000-event batches from 4 callers, SYNC and ASYNC, on each server); and,
as a diagnostic, the fsync probe with a pause of the ceiling's last round trip between appends,
the cadence of the SYNC caller's own fsyncs. Prints each round and the medians over rounds of
every p50 and p99, with the target (ceiling round trip + 2 x back-to-back fsync p50, as ``make
bench`` computes it). A measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .config import preset
from .fsync_probe import probe_fsync
from .loadgen import WorkerPool
from .processes import ServerProcess, add_baseline_option, start_ceiling, start_unimeter, tear_down
from .report import Progress
from .workloads import Bench

__all__ = ["main"]


def _last(values: list[float], default: float) -> float:
    return values[-1] if values else default


def _rate(bench: Bench, server: ServerProcess, sync: bool, batch: int, callers: int, seconds: float) -> float:
    """Events/s of ``callers`` closed-loop callers sending ``batch``-event calls for ``seconds``."""
    result = bench.measure_ingest(server, batch=batch, callers=callers, duration=seconds, sync=sync)
    if result["errors"]:
        print(f"{server.name}: {result['errors']} errors, first: {result['first_error']}")
    return float(result["events_per_s"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_single", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window of each latency run")
    parser.add_argument("--fsync-iterations", type=int, default=300, help="fsync probe appends per round")
    add_baseline_option(parser)
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="also SYNC and ASYNC 1000-event batches from 4 callers on each server (events/s)",
    )
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)
    config = dataclasses.replace(preset("full"), latency_seconds=args.seconds)
    root = Path(tempfile.mkdtemp(prefix="unimeter-sync-single-"))
    pool = WorkerPool(config.sync_batch_callers if args.throughput else 1)
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
        targets = [("", unimeter)]
        for i, source in enumerate(args.baseline):
            name = f"baseline{i + 1 if len(args.baseline) > 1 else ''}"
            baseline = start_unimeter(root / name, *args.server_arg, name=name, source=source.resolve())
            servers.append(baseline)
            bench.create_metrics(baseline)
            targets.append((f"{name} ", baseline))
            for sync in (True, False):
                runs[f"{name} {'sync' if sync else 'async'}"] = partial(
                    bench.measure_latency, baseline, "ingest1", account=1, sync=sync
                )
        rates: dict[str, Callable[[], float]] = {}
        if args.throughput:
            for name, server in targets:
                for sync in (True, False):
                    rates[f"{name}{'sync' if sync else 'async'} 1000x4"] = partial(
                        _rate, bench, server, sync, config.sync_batch, config.sync_batch_callers, args.seconds
                    )
        p50: dict[str, list[float]] = {name: [] for name in runs}
        p99: dict[str, list[float]] = {name: [] for name in runs}
        per_s: dict[str, list[float]] = {name: [] for name in rates}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                result = runs[name]()
                p50[name].append(result["p50_ms"])
                p99[name].append(result["p99_ms"])
            for name in list(rates) if r % 2 == 0 else list(reversed(rates)):
                per_s[name].append(rates[name]())
            print(
                f"round {r}: "
                + ", ".join(
                    [f"{n} {p50[n][-1]:.3f} ms" for n in runs] + [f"{n} {per_s[n][-1]:,.0f}/s" for n in rates]
                ),
                flush=True,
            )
        median = {name: statistics.median(values) for name, values in p50.items()}
        for name in runs:
            tail = statistics.median(p99[name])
            print(f"{name:>14}: p50 {median[name]:.3f} ms, p99 {tail:.3f} ms (medians)")
        for name in rates:
            print(f"{name:>22}: {statistics.median(per_s[name]):,.0f} events/s (median)")
        limit = median["ceiling"] + 2 * median["fsync"]
        for name in [n for n in runs if n.startswith("baseline")]:
            mine = name.split()[-1]
            paired = statistics.median(b - m for b, m in zip(p50[name], p50[mine], strict=True))
            print(f"{name} - {mine}: {paired:+.3f} ms (median of the rounds' differences of p50)")
        for name in [n for n in runs if n == "sync" or n.endswith(" sync")]:
            if name in median:
                print(
                    f"{name}: {median[name] / median['ceiling']:.2f} x the round trip; target "
                    f"{limit:.3f} ms = {limit / median['ceiling']:.2f} x: "
                    + ("met" if median[name] <= limit else "missed")
                )
    finally:
        tear_down(servers, pool, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
