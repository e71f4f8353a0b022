"""One benchmark run from start to finish: servers, load generators, sections, report files.

``run_bench`` is what ``python -m bench`` calls and what the harness test calls with tiny sizes.
It always cleans up: load generators are stopped, servers are stopped (killed if they hang) and
the temporary data directory is removed unless asked to keep it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .cluster import section_cluster
from .config import BenchConfig
from .loadgen import WorkerPool
from .processes import REPO, ServerProcess, start_ceiling, start_unimeter
from .report import Progress, render_table, write_chart, write_json
from .targets import evaluate_targets, table_rows
from .workloads import _W_SERVER, Bench, estimate_seconds

__all__ = ["RunOutput", "run_bench"]

DEFAULT_OUT = REPO / "bench" / "results"


@dataclasses.dataclass(frozen=True, slots=True)
class RunOutput:
    """A finished run: its results and the files written."""

    results: dict[str, Any]
    json_path: Path
    chart_path: Path | None
    table: str


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_digest() -> str:
    """SHA-256 over the server's source (service/, node/, cluster_client/, the protos).

    The git revision alone misses uncommitted edits; a digest taken before and after the run also
    shows whether the code under test changed while it ran.
    """
    digest = hashlib.sha256()
    files = [p for d in ("service", "node", "cluster_client") for p in (REPO / d).rglob("*.py")]
    files += list((REPO / "proto" / "unimeter" / "v1").glob("*.proto"))
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meta(
    config: BenchConfig, timestamp: str, data_root: Path, server_args: tuple[str, ...]
) -> dict[str, Any]:
    import grpc

    return {
        "timestamp": timestamp,
        "mode": config.mode,
        "config": dataclasses.asdict(config),
        "server_args": list(server_args),
        "git": _git_revision(),
        "source_digest": source_digest(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "python": sys.version.split()[0],
            "grpcio": grpc.__version__,
            "data_root": str(data_root),
        },
    }


def run_bench(
    config: BenchConfig,
    *,
    out_dir: Path = DEFAULT_OUT,
    data_root: Path | None = None,
    keep_data: bool = False,
    server_args: tuple[str, ...] = (),
    chart: bool = True,
    stream: TextIO | None = None,
    progress: bool = True,
) -> RunOutput:
    """Run every section of ``config``; write ``<out_dir>/<timestamp>.json`` (and ``.png``)."""
    out = stream or sys.stdout
    timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = Path(tempfile.mkdtemp(prefix="unimeter-bench-", dir=data_root))
    sections = set(config.sections)
    bar = Progress(estimate_seconds(config), enabled=progress)
    results: dict[str, Any] = {"meta": _meta(config, timestamp, root, server_args)}
    pool: WorkerPool | None = None
    servers: list[ServerProcess] = []
    bench: Bench | None = None
    try:
        bar.begin(f"starting {config.workers} load-generator processes", 3.0)
        pool = WorkerPool(config.workers)
        bar.end()
        bench = Bench(config, pool, data_root=root, progress=bar, server_args=server_args)
        if "fsync" in sections:
            results["fsync"] = bench.section_fsync()
        bar.begin("starting the ceiling and unimeter serve", 2 * _W_SERVER)
        ceiling = start_ceiling(root)
        servers.append(ceiling)
        bench.ceiling = ceiling
        needs_main = bool(sections & {"async", "sync", "query", "alerts"})
        if needs_main:
            # With its HTTP endpoint: the alert run reads the server's own view of it there.
            unimeter = start_unimeter(root / "main", *server_args, "--http-addr", "127.0.0.1:0")
            servers.append(unimeter)
            bench.unimeter = unimeter
            bench.create_metrics(unimeter)
            results["servers"] = {
                "unimeter_ready_seconds": unimeter.ready_seconds,
                "ceiling_ready_seconds": ceiling.ready_seconds,
            }
        bar.end()
        if "async" in sections:
            results["async"] = bench.section_async()
        if "sync" in sections:
            results["sync"] = bench.section_sync()
        if "query" in sections:
            results["query"] = bench.section_query()
        if "alerts" in sections:
            results["alerts"] = bench.section_alerts(results.get("async"))
        for server in servers:
            # Idle from here on: end them so they cannot disturb the fresh servers (their data is
            # thrown away, so there is no graceful flush + snapshot to wait for).
            server.kill()
        if "engines" in sections:
            results["engines"] = bench.section_engines()
        if "memory" in sections:
            results["memory"] = bench.section_memory()
        if "restart" in sections:
            results["restart"] = bench.section_restart()
        if "cluster" in sections:
            results["cluster"] = section_cluster(bench)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
        for server in [*servers, *(bench.extra_servers if bench else [])]:
            server.kill()
        if keep_data:
            print(f"data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    digest_after = source_digest()
    results["meta"]["source_changed_during_run"] = digest_after != results["meta"]["source_digest"]
    targets = evaluate_targets(results, config)
    rows = table_rows(results, targets, config)
    results["targets"] = targets
    results["table"] = rows
    results["summary"] = {
        "targets_met": sum(1 for t in targets if t["met"]),
        "targets_missed": sum(1 for t in targets if t["met"] is False),
    }
    json_path = out_dir / f"{timestamp}.json"
    chart_path: Path | None = None
    if chart and results.get("async"):
        try:
            chart_path = write_chart(json_path.with_suffix(".png"), results)
        except ImportError:
            print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
    results["files"] = {"json": str(json_path), "chart": None if chart_path is None else str(chart_path)}
    write_json(json_path, results)
    color = out.isatty()
    table = render_table(rows, color=color)
    summary = results["summary"]
    print(file=out)
    meta = results["meta"]
    print(
        f"Unimeter benchmark ({config.mode}, {timestamp}, git {meta['git']}, source {meta['source_digest']})",
        file=out,
    )
    if meta["source_changed_during_run"]:
        print("WARNING: the server's source changed during the run; numbers mix versions.", file=out)
    print(table, file=out)
    print(
        f"\ntargets met: {summary['targets_met']}, missed: {summary['targets_missed']}"
        f"\nresults: {json_path}" + (f"\nchart:   {chart_path}" if chart_path else ""),
        file=out,
    )
    return RunOutput(results, json_path, chart_path, table)
