"""The rate soak (``make soak-rate``): 70% of the measured maximum ASYNC rate, held for a long time.

One ``unimeter serve`` process with a short dedup window and a short memory horizon (so the window
fills and must stop growing during the run, and the stored events are older than the horizon, as
everything a node stores eventually is: their ListEvents positions go to disk and their minute
cells fold at each snapshot) takes, in the same run: a short closed-loop measurement of its
maximum ASYNC rate, then that rate's ``--share`` held by paced load generators for
``--seconds``, while an alert subscriber reads every alert and two callers run paced QueryRealtime
and Query. It reuses the benchmark's load generators, payloads and server process helpers. Every
window (a minute by default) records the ingest rate, p50/p99 latencies of ingest and both
queries, and errors; the server's RSS is sampled every few seconds. The verdict, printed and
written with a plot: RSS flat once the dedup window is full (growth over the last third of the run
under ``--max-rss-growth`` of its RSS at the start of that third), p99 not creeping (the last
window's ingest p99 at most ``--max-p99-ratio`` times the first full window's), zero errors and
every acknowledged alert delivered. It is not a benchmark: the numbers depend on the machine and
on what else it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import payloads
from .config import preset
from .loadgen import WorkerPool
from .processes import ServerProcess, rss_bytes, start_unimeter
from .report import Progress
from .stats import latency_summary
from .workloads import Bench

__all__ = ["main", "run_soak"]

_MONTH_NS = 31 * 86_400_000_000_000
_QUERY_CALLS_PER_SECOND = 20.0
_RSS_EVERY_SECONDS = 2.0


class _RssSampler(threading.Thread):
    """Samples a process's RSS every ``every`` seconds until stopped: (seconds since start, bytes)."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self._pid = pid
        self._every = every
        self._stop_event = threading.Event()
        self.started_at = time.monotonic()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic() - self.started_at, rss_bytes(self._pid)))
            self._stop_event.wait(self._every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _query_jobs(server: ServerProcess, window: float, tag: int) -> list[tuple[int, str, dict[str, Any]]]:
    now = time.time_ns()
    common = {"addr": server.addr, "duration": window, "max_calls": 10**9, "warmup_calls": 1,
              "tag": tag, "account": 1, "metric": payloads.QUERY_METRIC,
              "calls_per_second": _QUERY_CALLS_PER_SECOND}  # fmt: skip
    return [
        (0, "latency", {**common, "kind": "realtime"}),
        (1, "latency", {**common, "kind": "query", "start_ns": now - _MONTH_NS, "end_ns": now + _MONTH_NS}),
    ]


def run_soak(
    *,
    seconds: float,
    share: float,
    window: float,
    max_seconds: float,
    dedup_window: float,
    memory_horizon: float,
    event_age: float,
    callers: int,
    batch: int,
    root: Path,
) -> dict[str, Any]:
    """Measure the maximum ASYNC rate, hold ``share`` of it for ``seconds``; returns every figure."""
    config = replace(preset("full"), accounts=10_000, start_delay_seconds=0.2, event_age_seconds=event_age)
    # Workers 0-1 query, 2 subscribes, the rest ingest: Bench.measure_ingest drives workers
    # 0..callers-1, so the ingest callers are a pool of their own.
    queries = WorkerPool(3)
    ingest = WorkerPool(callers)
    server = start_unimeter(
        root / "data",
        *("--dedup-window-seconds", str(dedup_window)),
        *("--memory-horizon-seconds", str(memory_horizon)),
    )
    progress = Progress(seconds + max_seconds, enabled=False)
    bench = Bench(config, ingest, data_root=root, progress=progress, unimeter=server)
    sampler = _RssSampler(server.pid, _RSS_EVERY_SECONDS)
    try:
        bench.create_metrics(server)
        sampler.start()
        print(f"measuring the maximum ASYNC rate ({callers} callers x {batch} events, {max_seconds:.0f}s)")
        top = bench.measure_ingest(server, batch=batch, callers=callers, duration=max_seconds)
        max_rate = top["events_per_s"]
        target = max_rate * share
        print(f"max {max_rate:,.0f} events/s; holding {target:,.0f} events/s for {seconds:.0f}s", flush=True)
        queries.run([(2, "subscribe", {"addr": server.addr, "metric_codes": [payloads.ALERT_METRIC]})])
        hold_start = time.monotonic() - sampler.started_at
        windows: list[dict[str, Any]] = []
        alert_acks = 0
        n_windows = max(1, round(seconds / window))
        for w in range(n_windows):
            for index, command, args in _query_jobs(server, window, bench.next_tag()):
                queries.submit(index, command, **args)
            # The alert events' times are as old as the others: past the horizon too.
            alert = {"per_batch": 1, "base_ns": time.time_ns() - int(event_age * 1e9), "stride": callers}
            load = bench.measure_ingest(server, batch=batch, callers=callers, duration=window, alert=alert,
                                        calls_per_second=target / batch / callers)  # fmt: skip
            realtime, query = queries.collect([0, 1], timeout=window + 120)
            alert_acks += len(load["_alert_calls"])
            rss = [b for t, b in sampler.samples if t >= hold_start + w * window]
            row = {
                "window": w + 1,
                "end_s": round(time.monotonic() - sampler.started_at - hold_start, 1),
                "events_per_s": load["events_per_s"],
                "errors": load["errors"],
                "first_error": load["first_error"],
                "ingest": load["call_latency"],
                "realtime": latency_summary(realtime["latencies_ns"]),
                "query": latency_summary(query["latencies_ns"]),
                "rss_mib": (rss[-1] if rss else sampler.samples[-1][1]) / 2**20,
            }
            windows.append(row)
            print(f"window {w + 1}/{n_windows}: {row['events_per_s']:,.0f} ev/s, ingest p99 "
                  f"{row['ingest']['p99_ms']:.1f} ms, realtime p99 {row['realtime']['p99_ms']:.1f} ms, "
                  f"query p99 {row['query']['p99_ms']:.1f} ms, errors {row['errors']}, "
                  f"RSS {row['rss_mib']:.0f} MiB", flush=True)  # fmt: skip
        (received,) = queries.run([(2, "unsubscribe", {"settle": 2.0})])
    finally:
        sampler.stop()
        server.stop()
        ingest.close()
        queries.close()
    return {
        "seconds": seconds,
        "window_seconds": window,
        "share": share,
        "dedup_window_seconds": dedup_window,
        "memory_horizon_seconds": memory_horizon,
        "event_age_seconds": event_age,
        "callers": callers,
        "batch": batch,
        "max_events_per_s": max_rate,
        "target_events_per_s": target,
        "hold_start_s": hold_start,
        "rss": [(round(t, 1), b) for t, b in sampler.samples],
        "windows": windows,
        "alerts_acknowledged": alert_acks,
        "alerts_received": len(received),
    }


def verdict(result: dict[str, Any], *, max_rss_growth: float, max_p99_ratio: float) -> list[tuple[str, bool]]:
    """(statement, holds) for each guarantee the soak checks.

    RSS growth compares the median RSS of the last window with that of the first window of the last
    third (medians, so a snapshot's brief copy-on-write peak is not taken for growth); the growth
    is also given per event stored in between, the figure to compare with the per-event cost of
    the in-memory indexes.
    """
    start, window = result["hold_start_s"], result["window_seconds"]
    hold = [(t - start, b) for t, b in result["rss"] if t >= start]
    full_from = max(result["seconds"] * 2 / 3, result["dedup_window_seconds"] + window)
    first = [b for t, b in hold if full_from <= t < full_from + window] or [hold[-1][1]]
    final = [b for t, b in hold if t >= result["seconds"] - window] or [hold[-1][1]]
    before, after = statistics.median(first), statistics.median(final)
    growth = (after - before) / before
    windows = result["windows"]
    stored = sum(w["events_per_s"] * window for w in windows if w["end_s"] > full_from + window)
    per_event = (after - before) / stored if stored else 0.0
    first_full = windows[1] if len(windows) > 2 else windows[0]
    ratio = windows[-1]["ingest"]["p99_ms"] / first_full["ingest"]["p99_ms"]
    errors = sum(w["errors"] for w in windows)
    return [
        (f"RSS over the last third (from {full_from:.0f}s; dedup window full) grew {growth:.1%}: median "
         f"{before / 2**20:.0f} -> {after / 2**20:.0f} MiB, {per_event:.0f} B per event stored; "
         f"bound {max_rss_growth:.0%}", growth <= max_rss_growth),
        (f"ingest p99 last window {windows[-1]['ingest']['p99_ms']:.1f} ms vs first full window "
         f"{first_full['ingest']['p99_ms']:.1f} ms: x{ratio:.2f}; bound x{max_p99_ratio:.1f}",
         ratio <= max_p99_ratio),
        (f"errors: {errors}", errors == 0),
        (f"alerts delivered {result['alerts_received']} of {result['alerts_acknowledged']} acknowledged",
         result["alerts_received"] == result["alerts_acknowledged"]),
    ]  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    """RSS over time and p99 latencies per window, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = result["hold_start_s"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    top.plot([(t - start) / 60 for t, _ in result["rss"]], [b / 2**20 for _, b in result["rss"]])
    top.axvline(result["dedup_window_seconds"] / 60, linestyle=":", color="grey", label="dedup window full")
    top.set_ylabel("server RSS (MiB)")
    top.legend(loc="lower right")
    top.set_title(
        f"{result['share']:.0%} of max ASYNC ({result['target_events_per_s']:,.0f} events/s) "
        f"for {result['seconds'] / 60:.0f} min, dedup window {result['dedup_window_seconds']:.0f} s"
    )
    ends = [w["end_s"] / 60 for w in result["windows"]]
    for key, label in (("ingest", "Ingest (ASYNC)"), ("realtime", "QueryRealtime"), ("query", "Query")):
        bottom.plot(ends, [w[key]["p99_ms"] for w in result["windows"]], marker="o", label=f"{label} p99")
    bottom.set_ylabel("p99 per window (ms)")
    bottom.set_xlabel("minutes since the hold started (negative: the max-rate measurement)")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1800.0, help="how long to hold the rate (30 min)")
    parser.add_argument("--share", type=float, default=0.7, help="share of the max ASYNC rate held")
    parser.add_argument("--window-seconds", type=float, default=60.0, help="latency window (a minute)")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="max-rate measurement length")
    parser.add_argument("--dedup-window-seconds", type=float, default=60.0)
    parser.add_argument(
        "--memory-horizon-seconds", type=float, default=60.0,
        help="the server's memory horizon (short, like the dedup window, so that it is passed)",
    )  # fmt: skip
    parser.add_argument(
        "--event-age-seconds", type=float, default=7200.0,
        help="newest event time this far before the clock (events span the hour before it): past "
        "the horizon, as everything a long-running node stores eventually is",
    )  # fmt: skip
    parser.add_argument("--callers", type=int, default=2, help="ingest load-generator processes")
    parser.add_argument("--batch", type=int, default=100, help="events per Ingest call")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--max-p99-ratio", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=Path("soak-results/soak.json"), help="every figure")
    parser.add_argument("--plot", type=Path, default=Path("docs/reliability-soak.png"), help="the PNG")
    parser.add_argument("--report", type=Path, help="no run: judge and plot the figures of this JSON")
    args = parser.parse_args(argv)
    if args.report is not None:
        result = json.loads(args.report.read_text())
        args.json = args.report
    else:
        window = min(args.window_seconds, args.seconds / 6)  # a short run still gets several windows
        with tempfile.TemporaryDirectory(prefix="unimeter-soak-") as tmp:
            result = run_soak(seconds=args.seconds, share=args.share, window=window,
                              max_seconds=args.max_seconds, dedup_window=args.dedup_window_seconds,
                              memory_horizon=args.memory_horizon_seconds, event_age=args.event_age_seconds,
                              callers=args.callers, batch=args.batch, root=Path(tmp))  # fmt: skip
    checks = verdict(result, max_rss_growth=args.max_rss_growth, max_p99_ratio=args.max_p99_ratio)
    result["verdict"] = [{"check": text, "holds": ok} for text, ok in checks]
    for path in (args.json, args.plot):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    plot(result, args.plot)
    rates = [w["events_per_s"] for w in result["windows"]]
    print(f"held {statistics.mean(rates):,.0f} events/s on average (windows {min(rates):,.0f} to "
          f"{max(rates):,.0f}) of the {result['target_events_per_s']:,.0f} targeted: "
          f"{result['share']:.0%} of the max {result['max_events_per_s']:,.0f}, "
          "measured without the queries and the subscriber")  # fmt: skip
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"figures: {args.json}, plot: {args.plot}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
