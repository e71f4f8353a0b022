"""``python -m bench.instructions``: the event loop's instructions per ingest request, counted.

On a shared 2-core machine the same code's throughput moves by a tenth between rounds
(docs/benchmarks.md), which buries a change worth a few percent. This tool counts instead of
timing. The server's ingest path runs in process, with the server's collector settings
(``service.server.tune_gc``): the native engine's decode (the worker for a large body), the
client core, the node and its 64 partitions, the answer's bytes; 1000-event
requests from ``bench.payloads`` (10,000 accounts, five SUM metrics), 4 callers, as ``make
bench``'s ASYNC 1000 x 4 sends them, in waves of one per caller; the logs made durable in one
group commit after each wave (``CommitScheduler.make_durable``), about as often as the server's
10 ms ticks at that rate. It
runs under valgrind's callgrind twice, with N and 3 N measured requests after the same warm-up,
and the difference between the loop thread's instruction counts, over 2 N, is what one request
costs there, start and stop cancelled out. The functions are listed the same way: where the
instructions are spent (each function's own), and the native engine's steps with all they call.

Two runs of the same code agree to 1-2% (the decode worker's timing still moves the loop's idle
turns). Instructions are not time: a cache miss costs one instruction and hundreds of cycles. With
``--cache`` callgrind also simulates the caches (``_LAST_LEVEL``: an 8 MiB last level, about what a
2-vCPU guest gets of a shared L3 when its neighbours are busy) and the tool counts the loop's
last-level misses per request, reads and writes, and lists where they happen: the memory traffic
that makes the partitions' tables slow on a busy host, counted instead of timed. A model, not the
machine: no prefetchers, one cache for all threads. Needs valgrind on the PATH. A measurement,
not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["function_counts", "main", "thread_totals"]

_PARTITIONS = 64
_CALLERS = 4
_LAST_LEVEL = "8388608,16,64"
"""The simulated last-level cache of ``--cache`` (valgrind's ``--LL``: bytes, ways, line bytes):
valgrind would take the host's, which a guest reports as its whole L3 (256 MiB direct-mapped on
the reference machine), where nothing the benchmark holds would ever miss."""
_MISSES = ("DLmr", "DLmw")
"""callgrind's last-level data misses: reads, writes."""
_LINE = re.compile(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(?:\*\s+)?(\S.*?)\s*(?:\[.*\])?$")


def thread_totals(callgrind_out: str) -> dict[str, int]:
    """Each event's count a callgrind output file records (its ``summary:`` or ``totals:``, named
    by its ``events:`` line): ``Ir``, and with the cache simulation ``DLmr``, ``DLmw``..."""
    events = ["Ir"]
    for line in callgrind_out.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            return dict(zip(events, map(int, line.split()[1:]), strict=False))
    raise ValueError("no summary or totals line: not a callgrind output file")


def function_counts(annotated: str) -> dict[str, int]:
    """Each function's count in ``callgrind_annotate`` output (the largest, where a name appears
    more than once; a recursive cycle's ``'2`` entries are their own names)."""
    counts: dict[str, int] = {}
    for line in annotated.splitlines():
        match = _LINE.match(line)
        if match and "PROGRAM TOTALS" not in line:
            name = match.group(2)
            counts[name] = max(counts.get(name, 0), int(match.group(1).replace(",", "")))
    return counts


async def _workload(warmup: int, measured: int, batch: int, bodies: int) -> None:
    """The in-process ingest path: ``warmup`` requests, then ``measured`` more. ``bodies``
    request bodies are made first, the same number in both runs, so that making them (each with
    ids of its own) cancels out of the difference."""
    from bench import payloads
    from cluster_client.client import Client
    from node.node import Node, NodeConfig
    from service.convert import metric_from_proto
    from service.ingest_engine import choose_engine
    from service.server import tune_gc

    root = Path(tempfile.mkdtemp(prefix="unimeter-instructions-"))
    # No time-driven work: ticks and snapshots would run as often as valgrind slows the clock.
    config = NodeConfig(
        root, partitions=_PARTITIONS, engine="native", flush_interval=3600.0, snapshot_interval=3600.0
    )
    node = Node(config)
    tune_gc("native")  # the server's collector settings, set where it sets them
    await node.start()
    try:
        for metric in payloads.metric_definitions(5):
            await node.create_metric(metric_from_proto(metric))
        client = await Client.in_process(
            node, metric_lookup=node.metric_of, metric_refresh=node.refresh_metrics
        )
        engine = choose_engine("native").engine
        now = time.time_ns()
        templates = [
            payloads.ingest_templates(slot=s, batch=batch, count=4, accounts=10_000, metrics=5, now_ns=now)
            for s in range(_CALLERS)
        ]
        made = [
            templates[i % _CALLERS][i // _CALLERS % 4].replace(
                payloads.ID_SENTINEL, payloads.unique_prefix(1, i % _CALLERS, i)
            )
            for i in range(bodies)
        ]
        bodies_left = iter(made)

        async def one() -> None:
            decoded = engine.decode(next(bodies_left), client)
            if inspect.isawaitable(decoded):
                decoded = await decoded
            engine.encode_response(await decoded.store(None))

        # Waves of one request per caller, in flight together, then the group commit: a commit
        # while other requests append would take a second round as often as timing has it.
        for n in (warmup, measured):
            for _ in range(n // _CALLERS):
                await asyncio.gather(*(one() for _ in range(_CALLERS)))
                await node.commit.make_durable(node.partitions)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # No close: it snapshots every partition, work that grows with the state and so would not
    # cancel out of the difference. The process is a measurement's child; its data is gone.
    os._exit(0)


Counts = tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]
"""A run's loop thread: its totals by event, each function's own instructions, each one's
inclusive instructions, and (with ``--cache``) each one's own last-level misses."""


def _count(out_dir: Path, warmup: int, measured: int, batch: int, bodies: int, cache: bool) -> Counts:
    """The loop thread's counts of one run under callgrind."""
    prefix = out_dir / f"m{measured}"
    simulate = ["--cache-sim=yes", f"--LL={_LAST_LEVEL}"] if cache else []
    command = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={prefix}.%p",
        *simulate,
        sys.executable, "-m", "bench.instructions", "--workload",
        "--warmup", str(warmup), "--requests", str(measured), "--batch", str(batch), "--bodies", str(bodies),
    ]  # fmt: skip
    # A fixed hash seed: dict layouts (and so their probes) the same in every run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main_thread = next(out_dir.glob(f"m{measured}.*-01"))  # thread 1: the event loop's

    def annotate(inclusive: str, event: str = "Ir") -> dict[str, int]:
        return function_counts(subprocess.run(
            ["callgrind_annotate", f"--show={event}", f"--inclusive={inclusive}", "--threshold=100",
             str(main_thread)],
            capture_output=True, text=True, check=True,
        ).stdout)  # fmt: skip

    misses: dict[str, int] = {}
    for event in _MISSES if cache else ():
        for function, count in annotate("no", event).items():
            misses[function] = misses.get(function, 0) + count
    return thread_totals(main_thread.read_text()), annotate("no"), annotate("yes"), misses


def _print_grown(
    title: str, low: dict[str, int], high: dict[str, int], n: int, total: float, top: int
) -> None:
    """The ``top`` functions whose counts grew the most from ``low`` (N requests) to ``high`` (3 N)."""
    grown = sorted(((high[f] - low.get(f, 0)) / (2 * n), f) for f in high)
    print(f"\n{'per request':>12}  {'share':>6}  {title}")
    for count, function in reversed(grown[-top:]):
        print(f"{count:12,.0f}  {count / total:6.1%}  {function}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="N: the runs measure N and 3 N")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the measured ones")
    parser.add_argument("--batch", type=int, default=1000, help="events per request")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument(
        "--cache", action="store_true", help="simulate the caches too: last-level misses per request"
    )
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests % _CALLERS or args.warmup % _CALLERS:
        parser.error(f"--requests and --warmup go in waves of {_CALLERS}: give multiples of {_CALLERS}")
    if args.workload:
        asyncio.run(
            _workload(args.warmup, args.requests, args.batch, max(args.bodies, args.warmup + args.requests))
        )
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_annotate") if shutil.which(tool) is None]
    if missing:
        print(f"bench.instructions needs {' and '.join(missing)} on the PATH", file=sys.stderr)
        return 2
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="unimeter-callgrind-") as tmp:
        bodies = args.warmup + 3 * n
        low_totals, low_own, low_all, low_misses = _count(
            Path(tmp), args.warmup, n, args.batch, bodies, args.cache
        )
        high_totals, high_own, high_all, high_misses = _count(
            Path(tmp), args.warmup, 3 * n, args.batch, bodies, args.cache
        )
    grown = {event: (high_totals[event] - low_totals.get(event, 0)) / (2 * n) for event in high_totals}
    per_request = grown["Ir"]
    print(f"event loop's thread: {per_request:,.0f} instructions per {args.batch}-event request")
    reads, writes = (grown.get(event, 0.0) for event in _MISSES)
    if args.cache:
        print(
            f"last-level misses ({_LAST_LEVEL.split(',')[0]} B simulated): {reads:,.0f} reads and "
            f"{writes:,.0f} writes per request, {(reads + writes) / args.batch:.2f} an event"
        )
    _print_grown("function (its own instructions)", low_own, high_own, n, per_request, args.top)
    native = {f: c for f, c in high_all.items() if "unimeter_native::" in f and "'" not in f}
    _print_grown("native step (with what it calls)", low_all, native, n, per_request, args.top)
    if args.cache:
        _print_grown(
            "function (its own last-level misses)", low_misses, high_misses, n, reads + writes, args.top
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
