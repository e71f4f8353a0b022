"""A real ``unimeter serve`` process that the crash loop SIGKILLs at chosen moments.

Three moments: whenever the caller says (:meth:`KillableServe.kill`); while a partition's snapshot
file is being written (:meth:`KillableServe.kill_during_snapshot`: a thread watches for a fresh
``snapshot.msgpack.tmp``, which exists only between the start of the write and its atomic rename);
and while the node is still recovering (``kill_after_recovered=k``: the kill is sent as soon as the
k-th partition logs that it recovered, before the others and before the ready line). Each reports
where the kill actually landed, from what the process left behind, so the loop counts only kills
that really hit the moment. Not a general process helper: see ``tests.process`` for that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from tests.process import listener_port, ready_line, spawn_serve

__all__ = ["KillableServe"]

_POLL_SECONDS = 0.0003
_FRESH_NS = 100_000_000
"""A snapshot temp file modified less than this before the watch began counts as a new write
(file times come from a coarse clock); an older one is a leftover of an earlier kill."""


class KillableServe:
    """``unimeter serve`` on ``data_dir`` with its log (INFO, JSON) read by a thread."""

    def __init__(
        self,
        data_dir: Path,
        extra: Sequence[str],
        *,
        partitions: int,
        kill_after_recovered: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.partitions = partitions
        self.grpc_port = 0
        self.recovered = 0
        """Partitions that logged their recovery."""
        self.errors: list[str] = []
        """Messages the server logged at ERROR or above."""
        self.log_tail: deque[str] = deque(maxlen=40)
        self._kill_after_recovered = kill_after_recovered
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.proc = spawn_serve(data_dir, *extra, log_level="INFO", stderr=subprocess.PIPE)
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_log, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # ------------------------------------------------------------------ output

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                msg = ready_line(line)
                if msg is not None:
                    self.grpc_port = listener_port(msg["grpc_addr"])
                    self._ready.set()
        finally:
            self._ready.set()  # an exit before the ready line also ends the wait

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.log_tail.append(text)
            try:
                doc = json.loads(text)
            except ValueError:
                self.errors.append(text)  # not a log record: a traceback printed past the logger
                continue
            msg = str(doc.get("msg", ""))
            if doc.get("level") in ("ERROR", "CRITICAL"):
                self.errors.append(msg)
            if msg.startswith("partition ") and " recovered:" in msg:
                with self._lock:
                    self.recovered += 1
                    if (
                        self._kill_after_recovered is not None
                        and self.recovered >= self._kill_after_recovered
                    ):
                        self._signal_kill()

    # ------------------------------------------------------------------ waiting and killing

    @property
    def ready(self) -> bool:
        """Whether the ready line was printed (the gRPC port is known)."""
        return self.grpc_port != 0

    def wait_ready(self, timeout: float = 120) -> bool:
        """Wait for the ready line; False if the process exited (or the wait timed out) first."""
        self._ready.wait(timeout)
        return self.ready

    def _signal_kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL now (if still running) and wait for the process and its output to end."""
        self._signal_kill()
        self.wait_exit()

    def wait_exit(self, timeout: float = 120) -> None:
        """Wait for the process to end (killing it after ``timeout``) and for its output to be read."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _snapshot_temps(self) -> list[Path]:
        return [
            self.data_dir / "partitions" / f"{p:04d}" / "snapshot.msgpack.tmp" for p in range(self.partitions)
        ]

    def _fresh_temps(self, since_ns: int) -> list[Path]:
        fresh = []
        for path in self._snapshot_temps():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime_ns >= since_ns - _FRESH_NS:
                    fresh.append(path)
        return fresh

    def kill_during_snapshot(self, timeout: float) -> bool:
        """Kill as soon as a snapshot file write is seen in progress (or after ``timeout``);
        whether the kill landed inside that write (its temp file was left behind)."""
        since = time.time_ns()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._fresh_temps(since):
                break
            time.sleep(_POLL_SECONDS)
        self.kill()
        return bool(self._fresh_temps(since))
