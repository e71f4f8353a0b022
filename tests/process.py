"""Running ``unimeter serve`` as a real child process, for crash and end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}"}
"""Environment of a child process that runs this checkout's code."""
CLI = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
"""The ``unimeter`` command of this checkout, as a child process's argv prefix."""


@dataclass
class ServeProcess:
    """A running ``unimeter serve`` and the ports it announced (0: that listener is off)."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    node_port: int
    http_port: int

    def kill9(self) -> None:
        """SIGKILL: no flush, no snapshot, nothing graceful."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_pipe()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the graceful shutdown; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._close_pipe()
        return code

    def _close_pipe(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def listener_port(addr: str) -> int:
    """The port of a ready line's ``host:port``, 0 for ``off``."""
    return 0 if addr == "off" else int(addr.rpartition(":")[2])


def spawn_serve(
    data_dir: Path, *extra: str, log_level: str = "WARNING", stderr: int | None = None
) -> subprocess.Popen[bytes]:
    """Start ``unimeter serve`` on 127.0.0.1 port 0 without waiting: its stdout is a pipe (the
    ready line is printed there), its stderr (the log) is ``stderr`` (None: this process's)."""
    cmd = [
        *CLI,
        "serve",
        "--data-dir",
        str(data_dir),
        "--grpc-addr",
        "127.0.0.1:0",
        "--log-level",
        log_level,
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=ENV, cwd=REPO)


def ready_line(line: bytes) -> dict[str, Any] | None:
    """The ready message of serve's stdout, if ``line`` is it."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) and msg.get("event") == "ready" else None


def start_serve(data_dir: Path, *extra: str, timeout: float = 60) -> ServeProcess:
    """Start ``unimeter serve`` on 127.0.0.1 port 0 and wait for its ready line."""
    proc = spawn_serve(data_dir, *extra)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"unimeter serve exited with {proc.wait()} before it was ready")
            msg = ready_line(line)
            if msg is not None:
                return ServeProcess(
                    proc, *(listener_port(msg[key]) for key in ("grpc_addr", "node_addr", "http_addr"))
                )
        raise TimeoutError("unimeter serve did not become ready")
    except BaseException:
        # Closed here: a pipe left to the garbage collector warns inside whichever test runs next.
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise
