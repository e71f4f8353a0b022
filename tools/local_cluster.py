"""``make cluster``: a Unimeter cluster on loopback, three nats-servers and three nodes, for trying
the cluster by hand (the README's cluster tour).

The servers form one JetStream cluster (``tools.nats_cluster``, ``sync_interval: always``); the
nodes run ``unimeter serve --backend nats`` with replicas 3 on every server. Everything lives under
one folder (``./cluster-data``: ``nats/`` the servers' stores, ``<node>/`` each node's data
directory, ``<node>.log`` its log), so a second ``make cluster`` finds the same stream, metrics and
usage. The addresses are fixed by default (the README names them; ``--free-ports`` picks free ones,
as tests do) and printed once everything is up. SIGINT or SIGTERM stops the nodes (SIGTERM each,
so each hands its partitions over and flushes), then the servers. A node that exits on its own (an
operator's ``kill -9`` in the tour) is reported and the rest carry on. The children run in sessions
of their own (so a terminal's Ctrl-C reaches only this program): a SIGKILL of this program leaves
them running. Not for production: the servers have no authentication or TLS and the nodes no
cluster secret.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from tools.nats_cluster import NatsCluster, NatsServer

__all__ = ["main"]

_NATS_BASE = (4222, 6222, 8222)
"""Client, route and monitoring port of the first server; the next servers count up from them."""
_NODE_BASE = (50051, 7001, 9464)
"""gRPC, node-protocol and HTTP port of the first node (``make run``'s), counting up likewise."""
_READY_SECONDS = 120.0
_STOP_SECONDS = 60.0


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


@dataclass
class _Node:
    """One ``unimeter serve`` child and where it listens (from its ready line)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready: dict[str, str]
    reported_exit: bool = False


def _unimeter() -> list[str]:
    script = Path(sys.executable).with_name("unimeter")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]


def _fixed_servers(root: Path, count: int) -> list[NatsServer]:
    """The servers at the fixed ports (with ``--free-ports`` NatsCluster picks its own)."""
    client, route, monitor = _NATS_BASE
    return [
        NatsServer(f"n{i + 1}", client + i, route + i, monitor + i, root / f"n{i + 1}") for i in range(count)
    ]


def _watch_stdout(proc: subprocess.Popen[bytes], log_path: Path, ready: queue.Queue[dict[str, str]]) -> None:
    """Hand a node's JSON ready line to ``ready``; copy every other line it prints to its log (so
    the pipe never fills). Ends when the node closes its stdout."""
    assert proc.stdout is not None
    with log_path.open("ab") as log:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("event") == "ready":
                ready.put({k: str(v) for k, v in msg.items()})
            else:
                log.write(line)
                log.flush()


def _wait_ready(proc: subprocess.Popen[bytes], name: str, log_path: Path) -> dict[str, str]:
    """The ready line of a starting node; RuntimeError with its log's tail if it exits first."""
    ready: queue.Queue[dict[str, str]] = queue.Queue()
    threading.Thread(target=_watch_stdout, args=(proc, log_path, ready), daemon=True).start()
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline:
        try:
            return ready.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-5:])
                raise RuntimeError(
                    f"node {name} exited with {proc.returncode} before it was ready:\n{tail}"
                ) from None
    raise RuntimeError(f"node {name} did not print its ready line within {_READY_SECONDS:.0f}s")


def _start_node(index: int, root: Path, cluster: NatsCluster, args: argparse.Namespace) -> _Node:
    """Node ``n<index+1>``, once it has printed its ready line."""
    name = f"n{index + 1}"
    if args.free_ports:
        grpc = node = http = "127.0.0.1:0"
    else:
        grpc, node, http = (f"127.0.0.1:{base + index}" for base in _NODE_BASE)
    cmd = [
        *_unimeter(),
        "serve",
        "--backend", "nats",
        "--node-id", name,
        "--data-dir", str(root / name),
        "--grpc-addr", grpc,
        "--node-addr", node,
        "--http-addr", http,
        "--nats-url", ",".join(cluster.urls),
        "--nats-monitor-url", ",".join(cluster.monitor_urls),
        "--nats-replicas", str(len(cluster.servers)),
        "--log-level", args.log_level,
        "--log-format", "text",
        *args.serve_arg,
    ]  # fmt: skip
    log_path = root / f"{name}.log"
    with log_path.open("ab") as log:
        # A session of its own: a Ctrl-C at the terminal reaches only this program, which stops the
        # nodes before the servers they need for their last flush and handover.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        ready = _wait_ready(proc, name, log_path)
    except BaseException:
        _stop_nodes([_Node(name, proc, log_path, {})])
        raise
    return _Node(name, proc, log_path, ready)


def _stop_nodes(nodes: Sequence[_Node]) -> None:
    """SIGTERM every running node at once, then wait (SIGKILL one that does not exit in time)."""
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"node {node.name} did not stop within {_STOP_SECONDS:.0f}s: killed", flush=True)
            node.proc.kill()
            node.proc.wait()


def _print_ready(cluster: NatsCluster, nodes: Sequence[_Node], root: Path) -> None:
    for server in cluster.servers:
        pid = server.proc.pid if server.proc is not None else 0
        print(
            f"nats-server {server.name}  client {server.url}  "
            f"monitor http://127.0.0.1:{server.monitor_port}  pid {pid}"
        )
    for node in nodes:
        r = node.ready
        print(
            f"node {node.name}  grpc {r['grpc_addr']}  node {r['node_addr']}  http {r['http_addr']}  "
            f"pid {node.proc.pid}  log {node.log_path}"
        )
    print(
        f"cluster ready: {len(cluster.servers)} nats-servers (JetStream, replicas {len(cluster.servers)}), "
        f"{len(nodes)} nodes, data in {root}. Ctrl-C stops the nodes, then the servers.",
        flush=True,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.local_cluster",
        description="Three nats-servers (one JetStream cluster) and three Unimeter nodes on loopback.",
    )
    parser.add_argument("--dir", type=Path, default=Path("cluster-data"), help="where everything is kept")
    parser.add_argument("--nodes", type=int, default=3, help="Unimeter nodes (default 3)")
    parser.add_argument("--servers", type=int, default=3, help="nats-servers, and the stream's replicas")
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="free ports instead of the fixed ones (nats 4222+, gRPC 50051+, node 7001+, HTTP 9464+)",
    )
    parser.add_argument("--log-level", default="INFO", help="the nodes' log level (logs: DIR/<node>.log)")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every node (repeatable), e.g. --serve-arg=--lease-ttl-seconds=5",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the cluster, print its addresses, run until SIGINT or SIGTERM, stop it; the exit code."""
    args = _parser().parse_args(argv)
    if args.nodes < 1 or args.servers < 1:
        print("--nodes and --servers must be at least 1", file=sys.stderr)
        return 2
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop at a time: a second Ctrl-C waits
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    servers = [] if args.free_ports else _fixed_servers(root / "nats", args.servers)
    cluster = NatsCluster(root / "nats", args.servers, own_session=True, servers=servers)
    nodes: list[_Node] = []
    code = 0
    try:
        print(f"starting {args.servers} nats-servers in {root / 'nats'}", flush=True)
        cluster.start()
        for index in range(args.nodes):
            print(f"starting node n{index + 1}", flush=True)
            nodes.append(_start_node(index, root, cluster, args))
        _print_ready(cluster, nodes, root)
        while True:
            for node in nodes:
                if not node.reported_exit and node.proc.poll() is not None:
                    node.reported_exit = True
                    returned = node.proc.returncode
                    print(f"node {node.name} exited with {returned}; the others carry on", flush=True)
            time.sleep(0.2)
    except _Stop as stop:
        print(f"{stop}: stopping the nodes, then the nats-servers", flush=True)
    except RuntimeError as exc:
        hint = "" if args.free_ports else " (a port taken? --free-ports picks free ones)"
        print(
            f"make cluster: {exc}. Logs: {root}/nats/<server>/server.log, {root}/<node>.log{hint}",
            file=sys.stderr,
            flush=True,
        )
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_nodes(nodes)
        cluster.stop()
    if code == 0:
        print("cluster stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
