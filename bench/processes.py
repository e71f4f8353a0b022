"""Server processes of a run: a real ``unimeter serve`` and the no-op ceiling; /proc and /metrics reads.

Both servers are started the way an operator would (their own process, 127.0.0.1, port 0) and
announce their port on one JSON ready line. Their stderr goes to a log file beside the data so a
failure can show its tail without garbling the progress bar.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from .loadgen import WorkerPool

__all__ = [
    "ServerProcess",
    "add_baseline_option",
    "cpu_seconds",
    "rss_bytes",
    "scrape_gauge_sum",
    "scrape_histograms",
    "start_ceiling",
    "start_unimeter",
    "tear_down",
]

REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProcess:
    """A running server, its port, and how long it took from spawn to its ready line."""

    name: str
    proc: subprocess.Popen[bytes]
    grpc_port: int
    started_monotonic: float
    ready_seconds: float
    stderr_path: Path
    ready_line: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_addr(self) -> str | None:
        """``host:port`` of its HTTP endpoint (``/metrics``), or None: off, or not a Unimeter server."""
        addr = self.ready_line.get("http_addr")
        return None if addr in (None, "off") else str(addr)

    def stop(self, timeout: float = 300) -> float:
        """SIGTERM, wait for the graceful shutdown (flush + snapshot); returns the seconds it took."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL (cleanup after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _env(source: Path) -> dict[str, str]:
    path = os.pathsep.join([str(source), str(source / "proto"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)}


def _start(
    name: str, cmd: list[str], stderr_path: Path, timeout: float, source: Path = REPO
) -> ServerProcess:
    stderr_path.parent.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("ab") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=_env(source), cwd=source)
    assert proc.stdout is not None
    deadline = started + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            proc.stdout.close()
            tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"{name} exited with {code} before it was ready:\n{tail}")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("event") == "ready":
            ready = time.monotonic() - started
            port = int(str(msg["grpc_addr"]).rpartition(":")[2])
            return ServerProcess(name, proc, port, started, ready, stderr_path, msg)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise TimeoutError(f"{name} did not print its ready line within {timeout}s")


def _unimeter_command() -> list[str]:
    script = Path(sys.executable).with_name("unimeter")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]


def start_unimeter(
    data_dir: Path, *extra: str, name: str = "unimeter", timeout: float = 600, source: Path = REPO
) -> ServerProcess:
    """``unimeter serve`` on 127.0.0.1 port 0 with the embedded backend in ``data_dir``; the
    server's code is imported from ``source`` (another checkout, to compare two versions in one
    run; the installed native extension is shared)."""
    cmd = [
        *_unimeter_command(),
        "serve",
        "--data-dir",
        str(data_dir),
        "--grpc-addr",
        "127.0.0.1:0",
        "--log-level",
        "WARNING",
        *extra,
    ]
    return _start(name, cmd, data_dir.parent / f"{data_dir.name}.stderr.log", timeout, source)


def add_baseline_option(parser: argparse.ArgumentParser) -> None:
    """``--baseline DIR``, repeatable: another checkout whose server (:func:`start_unimeter` with
    ``source=DIR``) a measurement runs beside this one's."""
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout whose server is measured beside this one (repeatable)",
    )


def start_ceiling(log_dir: Path, *extra: str, name: str = "ceiling", timeout: float = 60) -> ServerProcess:
    """The no-op ceiling server (``python -m bench.ceiling``, with ``extra`` arguments) on 127.0.0.1
    port 0."""
    cmd = [sys.executable, "-m", "bench.ceiling", "--host", "127.0.0.1", "--port", "0", *extra]
    return _start(name, cmd, log_dir / f"{name}.stderr.log", timeout)


def tear_down(servers: Iterable[ServerProcess], pool: WorkerPool, root: Path) -> None:
    """The end of a measurement run alone (``bench.sync_single`` and its kind), however it ended:
    its servers killed, its load generators stopped, its scratch directory removed."""
    for server in servers:
        server.kill()
    pool.close()
    shutil.rmtree(root, ignore_errors=True)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _samples(http_addr: str) -> list[Sample]:
    """Every sample of a server's ``/metrics`` (at ``host:port``)."""
    with urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=30) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape_gauge_sum(http_addr: str, name: str) -> float:
    """Sum over every label set of gauge ``name`` on a server's ``/metrics`` (at ``host:port``)."""
    return sum(sample.value for sample in _samples(http_addr) if sample.name == name)


def scrape_histograms(
    http_addr: str, wanted: Mapping[str, tuple[str, Mapping[str, str]]]
) -> dict[str, list[tuple[float, float]]]:
    """For each ``key: (name, labels)`` of ``wanted``, ``(upper bound, cumulative count)`` of each
    bucket of histogram ``name`` (the label set ``labels``), ending with ``(inf, count)``; empty
    if the server has no such histogram. One read of a server's ``/metrics``."""
    samples = _samples(http_addr)
    return {
        key: sorted(
            (float(sample.labels["le"]), sample.value)
            for sample in samples
            if sample.name == f"{name}_bucket"
            and all(sample.labels.get(label) == value for label, value in labels.items())
        )
        for key, (name, labels) in wanted.items()
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK
