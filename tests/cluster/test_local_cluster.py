"""``make cluster`` (``tools.local_cluster``) as a real process, through the README's cluster tour:
it prints every server's and node's address once the cluster is up; a metric created through one
node, usage sent through another and read through a third; the owner of that usage's partition
killed with SIGKILL (the tool reports it and carries on) and the answer the same through a
survivor; SIGINT stops every process it started (the nodes first, then the servers), exiting 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from cluster_client.partitioning import partition_of
from tests.conftest import Api, api_on_port
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest, query
from tests.process import ENV, REPO
from unimeter.v1 import cluster_service_pb2 as cs
from unimeter.v1 import cluster_service_pb2_grpc
from unimeter.v1 import types_pb2 as t

NODES = 3
TTL = 2
HOUR = 3600 * SEC
_NODE_LINE = re.compile(r"node (n\d)  grpc 127\.0\.0\.1:(\d+)  node \S+  http \S+  pid (\d+)  log (\S+)")
_SERVER_LINE = re.compile(r"nats-server (n\d)  client nats://127\.0\.0\.1:\d+  monitor \S+  pid (\d+)")


class _Tool:
    """The running tool and its stdout, read line by line by a thread (so every wait is bounded)."""

    def __init__(self, directory: Path) -> None:
        tool = [sys.executable, "-m", "tools.local_cluster", "--dir", str(directory), "--free-ports"]
        self.proc = subprocess.Popen(
            [
                *tool,
                "--nodes",
                str(NODES),
                "--log-level",
                "WARNING",
                f"--serve-arg=--lease-ttl-seconds={TTL}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=REPO,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._seen.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # the tool closed its stdout: it exited

    def line(self, timeout: float = 90) -> str:
        """The next line; AssertionError if the tool exits or says nothing for ``timeout`` s."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the tool printed nothing for {timeout}s") from None
        if line is None:
            raise AssertionError(f"the tool exited with {self.proc.wait()}")
        return line

    def until_ready(self) -> list[str]:
        lines = [self.line()]
        while not lines[-1].startswith("cluster ready:"):
            lines.append(self.line())
        return lines

    def interrupt(self) -> tuple[int, list[str]]:
        """SIGINT; the exit code and the lines printed until the tool exited."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=90)
        rest: list[str] = []
        while (line := self._lines.get(timeout=10)) is not None:
            rest.append(line)
        return code, rest

    def end(self) -> None:
        """After a failure: SIGTERM (the tool stops what it started); if it hangs, SIGKILL it and
        every process it printed, which run in sessions of their own and would outlive it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                for pid in _printed_pids(self._seen):
                    if _alive(pid):
                        os.kill(pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _printed_pids(lines: list[str]) -> list[int]:
    """The pid of every nats-server and node line among ``lines``."""
    pids = []
    for line in lines:
        if server := _SERVER_LINE.fullmatch(line):
            pids.append(int(server.group(2)))
        elif node := _NODE_LINE.fullmatch(line):
            pids.append(int(node.group(3)))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _owner(api: Api, partition: int) -> str:
    stub = cluster_service_pb2_grpc.ClusterServiceStub(api.channel)
    status = await stub.GetClusterStatus(cs.GetClusterStatusRequest(), timeout=10)
    return str(next(p.owner_node_id for p in status.partition_infos if p.partition == partition))


async def test_make_cluster_runs_the_readme_tour_and_stops_everything_on_sigint(tmp_path: Path) -> None:
    tool = _Tool(tmp_path / "cluster")
    apis: dict[str, Api] = {}
    try:
        lines = tool.until_ready()
        servers = [m.groups() for m in map(_SERVER_LINE.fullmatch, lines) if m]
        nodes = {
            name: (int(port), int(pid))
            for name, port, pid, _ in (m.groups() for m in map(_NODE_LINE.fullmatch, lines) if m)
        }
        assert [name for name, _ in servers] == ["n1", "n2", "n3"]
        assert list(nodes) == [f"n{i + 1}" for i in range(NODES)]
        assert lines[-1].startswith(f"cluster ready: 3 nats-servers (JetStream, replicas 3), {NODES} nodes")
        pids = _printed_pids(lines)
        assert len(pids) == len(servers) + len(nodes)
        assert all(_alive(pid) for pid in pids)
        apis = {name: api_on_port(port) for name, (port, _) in nodes.items()}

        # Created through n1, ingested through n2, queried on n3.
        await create_metric(apis["n1"], "calls", t.AGG_TYPE_SUM)
        events = [
            ev(7, "calls", 5, T0 + SEC, event_id="tour-1"),
            ev(7, "calls", 7, T0 + 2 * SEC, event_id="b"),
        ]
        reply = await ingest(apis["n2"], *events, sync=True)
        assert (reply.n_stored, reply.n_duplicates) == (2, 0)
        answer = await query(apis["n3"], 7, "calls", T0, T0 + HOUR)
        assert (answer.value.sum, answer.value.count) == (12, 2)

        # The owner of account 7's partition killed: the tool says so, and a survivor answers the
        # same once it has taken the partition over, then takes new usage.
        owner = await _owner(apis["n1"], partition_of(7, 64))
        survivors = [name for name in nodes if name != owner]
        os.kill(nodes[owner][1], signal.SIGKILL)
        assert tool.line() == f"node {owner} exited with -9; the others carry on"
        answer = await query(apis[survivors[0]], 7, "calls", T0, T0 + HOUR)
        assert (answer.value.sum, answer.value.count) == (12, 2)
        await ingest(apis[survivors[1]], ev(7, "calls", 2, T0 + 3 * SEC, event_id="tour-2"), sync=True)
        assert (await query(apis[survivors[0]], 7, "calls", T0, T0 + HOUR)).value.sum == 14
        assert await _owner(apis[survivors[1]], partition_of(7, 64)) in survivors
        for api in apis.values():
            await api.channel.close()
        apis = {}

        code, rest = tool.interrupt()
        assert code == 0
        assert rest == ["SIGINT: stopping the nodes, then the nats-servers", "cluster stopped"]
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        for api in apis.values():
            await api.channel.close()
        tool.end()
