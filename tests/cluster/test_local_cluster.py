"""``make cluster`` (``tools.local_cluster``) as a real process: it prints every server's and
node's address once the cluster is up, the cluster ingests and answers through those addresses, and
SIGINT stops every process it started (the nodes first, each flushing and handing over, then the
servers), exiting 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import api_on_port
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest
from tests.process import ENV, REPO
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

NODES = 3
_NODE_LINE = re.compile(r"node (n\d)  grpc 127\.0\.0\.1:(\d+)  node \S+  http \S+  pid (\d+)  log (\S+)")
_SERVER_LINE = re.compile(r"nats-server (n\d)  client nats://127\.0\.0\.1:\d+  monitor \S+  pid (\d+)")


def _read_until_ready(proc: subprocess.Popen[str], timeout: float = 90) -> list[str]:
    """The tool's stdout lines up to and including its ``cluster ready`` line (read by a thread, so
    the wait is bounded)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))
            if line.startswith("cluster ready:"):
                return
        lines.put("")  # the tool exited

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if not line:
            raise AssertionError(f"the tool exited with {proc.wait()} before it was ready: {seen}")
        seen.append(line)
        if line.startswith("cluster ready:"):
            return seen
    raise AssertionError(f"no ready line within {timeout}s: {seen}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_tool(directory: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """``python -m tools.local_cluster`` on free ports, and its lines up to ``cluster ready``."""
    tool = [sys.executable, "-m", "tools.local_cluster", "--dir", str(directory), "--free-ports"]
    proc = subprocess.Popen(
        [*tool, "--nodes", str(NODES), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    try:
        return proc, _read_until_ready(proc)
    except BaseException:
        _end(proc)
        raise


def _interrupt(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """SIGINT the tool; its exit code and the lines it printed after ready."""
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=90)
    assert proc.stdout is not None
    return code, proc.stdout.read().splitlines()


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def test_make_cluster_starts_serves_and_stops_everything_on_sigint(tmp_path: Path) -> None:
    proc, lines = _start_tool(tmp_path / "cluster")
    try:
        servers = [m.groups() for m in map(_SERVER_LINE.fullmatch, lines) if m]
        nodes = [m.groups() for m in map(_NODE_LINE.fullmatch, lines) if m]
        assert [name for name, _ in servers] == ["n1", "n2", "n3"]
        assert [name for name, *_ in nodes] == [f"n{i + 1}" for i in range(NODES)]
        assert lines[-1].startswith(f"cluster ready: 3 nats-servers (JetStream, replicas 3), {NODES} nodes")
        pids = [int(pid) for _, pid in servers] + [int(pid) for _, _, pid, _ in nodes]
        assert all(_alive(pid) for pid in pids)

        # Created through the first node, ingested through the middle one, queried on the last.
        apis = [api_on_port(int(port)) for _, port, _, _ in nodes]
        await create_metric(apis[0], "calls", t.AGG_TYPE_SUM)
        events = [ev(42, "calls", 5, T0 + SEC, event_id="a"), ev(42, "calls", 7, T0 + 2 * SEC, event_id="b")]
        reply = await ingest(apis[len(apis) // 2], *events, sync=True)
        assert (reply.n_stored, reply.n_duplicates) == (2, 0)
        period = t.Period(start_unix_nano=T0, end_unix_nano=T0 + 3600 * SEC)
        answer = await apis[-1].query.Query(
            qs.QueryRequest(account_id=42, metric_code="calls", period=period), timeout=10
        )
        assert (answer.value.sum, answer.value.count) == (12, 2)
        for api in apis:
            await api.channel.close()

        code, rest = _interrupt(proc)
        assert code == 0
        assert rest == ["SIGINT: stopping the nodes, then the nats-servers", "cluster stopped"]
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        _end(proc)
