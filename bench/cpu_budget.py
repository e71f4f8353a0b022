"""``python -m bench.cpu_budget``: what per-event work costs ASYNC ingest on this machine.

``make bench``'s ASYNC 1000 x 4 shape (1000-event batches from 4 closed-loop callers) against the
no-op ceiling, against the ceiling made to burn a set CPU time per event with the GIL released
(``bench.ceiling --burn-ns-per-event``) on the event loop's thread and on a worker thread each
call awaits, and against ``unimeter serve``, in interleaved rounds. The load generators run on
the same machine, as in ``make bench``, so the curve answers two questions with numbers instead
of hopes: how much CPU per event a server may spend beyond the ceiling's and still reach a given
share of the ceiling's rate, and whether moving that work to a second thread (the GIL released
for all of it, one hand-over per call) buys anything when the load generators already use the
other core. ``unimeter serve`` is placed on the curve: the burn on the loop's thread that costs
as much as its per-event work does. A measurement, not a test: no pass or fail.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from .config import preset
from .loadgen import WorkerPool
from .processes import ServerProcess, start_ceiling, start_unimeter
from .report import Progress
from .workloads import Bench

__all__ = ["main", "node_equivalent_ns"]


def node_equivalent_ns(curve: Sequence[tuple[float, float]], rate: float) -> float | None:
    """The burn (ns per event, on the loop's thread) at which the ``(ns, events/s)`` curve, falling
    as the burn grows, reaches ``rate``, by linear interpolation of 1/rate (time per event) between
    the points around it; None outside the curve."""
    points = sorted(curve)
    for (ns_a, rate_a), (ns_b, rate_b) in itertools.pairwise(points):
        if rate_b <= rate <= rate_a:
            t_a, t_b, t = 1 / rate_a, 1 / rate_b, 1 / rate
            return ns_a + (ns_b - ns_a) * (t - t_a) / (t_b - t_a) if t_b != t_a else ns_a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_budget", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window of each run")
    parser.add_argument(
        "--burn-ns",
        default="500,1000,1500,2000",
        help="comma-separated CPU burns per event (ns) to model, each on the loop and on a thread",
    )
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    args = parser.parse_args(argv)
    burns = [float(ns) for ns in args.burn_ns.split(",") if ns.strip()]
    config = preset("full")
    root = Path(tempfile.mkdtemp(prefix="unimeter-cpu-budget-"))
    pool = WorkerPool(config.sync_batch_callers)
    bench = Bench(config, pool, data_root=root, progress=Progress(1, enabled=False))
    servers: dict[str, Callable[[], ServerProcess]] = {"ceiling": lambda: start_ceiling(root)}
    for ns in burns:
        for where in ("loop", "thread"):
            extra = ("--burn-ns-per-event", str(ns), "--burn-on", where)
            servers[f"burn {ns:g} ns on {where}"] = partial(start_ceiling, root, *extra)

    def unimeter() -> ServerProcess:
        server = start_unimeter(root / f"unimeter{len(rates['unimeter'])}", *args.server_arg)
        bench.create_metrics(server)
        return server

    servers["unimeter"] = unimeter
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for r in range(args.rounds):
            for name in list(servers) if r % 2 == 0 else list(reversed(servers)):
                server = servers[name]()
                try:
                    batch, callers = config.sync_batch, config.sync_batch_callers
                    bench.measure_ingest(server, batch=batch, callers=callers, duration=1.0)  # warm-up
                    result = bench.measure_ingest(server, batch=batch, callers=callers, duration=args.seconds)
                finally:
                    server.kill()
                if result["errors"]:
                    print(f"{name}: {result['errors']} errors, first: {result['first_error']}")
                rates[name].append(float(result["events_per_s"]))
                print(f"round {r}: {name} {rates[name][-1]:,.0f} events/s", flush=True)
    finally:
        pool.close()
        shutil.rmtree(root, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    ceiling = median["ceiling"]
    print(f"{'server':>26}  {'events/s':>10}  share of the ceiling (medians of {args.rounds} rounds)")
    for name, rate in median.items():
        print(f"{name:>26}  {rate:>10,.0f}  {rate / ceiling:.2f}")
    curve = [(0.0, ceiling)] + [(ns, median[f"burn {ns:g} ns on loop"]) for ns in burns]
    equivalent = node_equivalent_ns(curve, median["unimeter"])
    if equivalent is None:
        print("unimeter serve is outside the modelled curve: widen --burn-ns")
    else:
        print(f"unimeter serve's per-event work costs as much as {equivalent:,.0f} ns burnt on the loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
