"""Files replaced whole and atomically: partition snapshots, index runs, the metric registry,
the node's identity."""

from __future__ import annotations

import os
from pathlib import Path

from .filesystem_sync import write_back

__all__ = ["WRITE_BACK_BYTES", "write_file_atomically"]

WRITE_BACK_BYTES = 1 << 20
"""A file written by :func:`write_file_atomically` is written back to the disk a slice of this many
bytes at a time as it is written, so that no more than a slice of it is ever dirty: the logs'
group commit is one ``syncfs`` (``node.filesystem_sync``), which writes back every dirty page of
the filesystem, and a partition snapshot of 7-14 MB left dirty until its own fsync made the
commits that met it take 10-22 ms instead of 4-5 (docs/benchmarks-history.md, session 28)."""


def write_file_atomically(path: Path, *parts: bytes | memoryview) -> None:
    """Replace ``path`` with ``parts`` written one after the other, so that a crash leaves either
    the old or the new file (fsynced, renamed, its directory fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        written = 0
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                # Up to the end of the file's current slice, which is written back once full.
                room = WRITE_BACK_BYTES - written % WRITE_BACK_BYTES
                written += f.write(view[:room])
                view = view[room:]
                if written % WRITE_BACK_BYTES == 0:
                    f.flush()
                    write_back(f.fileno(), written - WRITE_BACK_BYTES, WRITE_BACK_BYTES)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
