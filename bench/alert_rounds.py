"""``python -m bench.alert_rounds``: the alert target alone, servers side by side at one rate.

What ``make bench``'s alert measure does (``bench.workloads.Bench.alert_run``: 4 callers of
1000-event calls paced to a rate, 10 of each call's events crossing a threshold, ack → alert
latency at a subscriber asking for batches), without the rest of the run, and at a rate fixed on
the command line instead of half of the run's best ASYNC rate: that rate moves with the hour, and
so would the load two versions are compared at. ``unimeter serve`` of this checkout and one per
other checkout (``--baseline DIR``) each take the same warm-up (ASYNC 1000 x 16, the state the full
run's alert measure meets after its ASYNC matrix), then measure in rounds whose order alternates,
so drift on a shared machine hits every server alike. Prints each run (with the latency from each
batch's send too, and the server's own view of it, from its ``/metrics``: the alerts' publish
delays and the log syncs) and the medians over rounds: latencies, server CPU an event, and for
each baseline the median of the rounds' CPU ratios. With ``--fresh-servers`` every round starts
its servers anew (own data directories, own warm-up, in alternating order): a server keeps its
own speed for its whole life (where its tables and heap landed), and two sittings of the same
two versions with long-lived servers disagreed by ±9% (docs/benchmarks-history.md, session 34),
which fresh servers a round average out. A measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import preset
from .loadgen import WorkerPool
from .processes import REPO, ServerProcess, add_baseline_option, start_unimeter, tear_down
from .report import Progress
from .workloads import Bench

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alert_rounds", description=__doc__)
    parser.add_argument("--rate", type=float, required=True, help="events/s offered in every round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warm-seconds", type=float, default=15.0, help="ASYNC 1000 x 16 before the rounds")
    parser.add_argument(
        "--fresh-servers", action="store_true", help="new servers, warmed up anew, for every round"
    )
    add_baseline_option(parser)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)
    config = preset("full")
    root = Path(tempfile.mkdtemp(prefix="unimeter-alert-rounds-"))
    pool = WorkerPool(config.workers)
    servers: list[ServerProcess] = []
    sources = [
        ("this", REPO),
        *((f"baseline{i + 1}", path.resolve()) for i, path in enumerate(args.baseline)),
    ]

    def start(directory: Path, order: Sequence[tuple[str, Path]]) -> list[ServerProcess]:
        """Servers of ``order`` in ``directory``, started and warmed up in that order, with their
        metrics; returned in the order of ``sources``."""
        started = []
        for name, source in order:
            server = start_unimeter(
                directory / name, *args.server_arg, "--http-addr", "127.0.0.1:0", name=name, source=source
            )
            servers.append(server)
            started.append(server)
            bench.create_metrics(server)
        for server in started:
            warm = bench.measure_ingest(server, batch=1000, callers=16, duration=args.warm_seconds)
            print(f"{server.name}: warmed at {warm['events_per_s']:,.0f} events/s", flush=True)
        names = [name for name, _ in sources]
        return sorted(started, key=lambda server: names.index(server.name))

    try:
        bench = Bench(config, pool, data_root=root, progress=Progress(1, enabled=False))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sources}
        measured = [] if args.fresh_servers else start(root, sources)
        for r in range(args.rounds):
            if args.fresh_servers:
                measured = start(root / f"round{r}", sources if r % 2 == 0 else sources[::-1])
            for server in measured if r % 2 == 0 else measured[::-1]:
                run = bench.alert_run(server, args.rate, config.alert_max_per_message)
                runs[server.name].append(run)
                print(
                    f"round {r} {server.name}: {run['events_per_s']:,.0f} events/s, p50 {run['p50_ms']:.3f} "
                    f"p90 {run['p90_ms']:.3f} p99 {run['p99_ms']:.2f} max {run['max_ms']:.1f} ms, "
                    f"from the send p50 {run['from_send']['p50_ms']:.2f} "
                    f"p99 {run['from_send']['p99_ms']:.2f} ms, "
                    f"server CPU {run['server_cpu_share']:.2f} ({cpu_per_event_us(run):.2f} µs an event), "
                    f"{run['alerts_matched']}/{run['alerts_expected']} alerts{_server_side(run)}",
                    flush=True,
                )
            if args.fresh_servers:  # each round's directories hold a warm-up's events: GBs
                for server in measured:
                    server.kill()
                shutil.rmtree(root / f"round{r}", ignore_errors=True)
        for line in summary(runs):
            print(line)
    finally:
        tear_down(servers, pool, root)
    return 0


def cpu_per_event_us(run: dict[str, Any]) -> float:
    """The server's CPU an event taken in ``run``, in µs."""
    return float(run["server_cpu_share"]) / float(run["events_per_s"]) * 1e6


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Medians over the rounds for each server (the first is this checkout's), and for each other
    server the median of the rounds' ratios of the first's CPU an event to its own, with the
    rounds where the first spent less."""
    lines = []
    for name, results in runs.items():
        p50 = statistics.median(run["p50_ms"] for run in results)
        p99 = statistics.median(run["p99_ms"] for run in results)
        cpu = statistics.median(map(cpu_per_event_us, results))
        lines.append(
            f"{name:>10}: p50 {p50:.3f} ms, p99 {p99:.2f} ms, {cpu:.2f} µs an event "
            f"(medians over {len(results)} rounds)"
        )
    (first, mine), *others = runs.items()
    for name, theirs in others:
        ratios = [cpu_per_event_us(a) / cpu_per_event_us(b) for a, b in zip(mine, theirs, strict=True)]
        lower = sum(ratio < 1 for ratio in ratios)
        lines.append(
            f"{first} / {name}: CPU an event x{statistics.median(ratios):.3f} "
            f"(median of {len(ratios)} rounds; lower in {lower})"
        )
    return lines


def _server_side(run: dict[str, Any]) -> str:
    """The server's own view of the run (``Bench.alert_run``'s ``server_side``), as a line's tail."""
    seen = run.get("server_side", {})
    parts = [
        f"{label} p50 {seen[key]['p50_ms']:.2f} p99 {seen[key]['p99_ms']:.2f} ms"
        for key, label in (("publish_delay", "publish delay"), ("log_syncs", "log syncs"))
        if seen.get(key, {}).get("n")
    ]
    return "".join(f"; server {part}" for part in parts)


if __name__ == "__main__":
    raise SystemExit(main())
