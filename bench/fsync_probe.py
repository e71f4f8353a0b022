"""The disk's own durability cost: append 100 bytes and fdatasync, repeatedly, in the data directory.

This is the floor under every SYNC acknowledgement (one group-commit fsync at least), measured on
the same filesystem the server writes its log to. Back to back by default (what ``make bench``'s
target uses); with a pause between appends it is what one caller sending a SYNC event per round
trip meets: on the reference VM an fdatasync after an idle pause takes about 1.3-1.6 x as long.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .stats import latency_summary

__all__ = ["probe_fsync"]


def probe_fsync(
    directory: Path,
    iterations: int,
    *,
    pause_seconds: float = 0.0,
    progress: Callable[[float], None] | None = None,
) -> dict[str, object]:
    """p50/p99 (ms) of ``write(100 bytes) + fdatasync`` appends to a fresh file in ``directory``,
    ``pause_seconds`` apart (not timed)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe.bin"
    payload = b"u" * 100
    latencies: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
        for i in range(iterations):
            if pause_seconds:
                time.sleep(pause_seconds)
            started = time.monotonic_ns()
            os.write(fd, payload)
            os.fdatasync(fd)
            latencies.append(time.monotonic_ns() - started)
            if progress is not None and i % 20 == 0:
                progress(i / iterations)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "path": str(directory),
        "iterations": iterations,
        "pause_seconds": pause_seconds,
        **latency_summary(latencies),
    }
