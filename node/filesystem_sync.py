"""One ``syncfs(2)`` for a whole filesystem: the durability of many partition logs in one call.

A flush tick used to fdatasync every dirty log, 64 of them for a node whose batches reach every
partition: on ext4 that is one journal commit each, 6-13 ms of disk time per 10 ms tick on the
reference machine, which slowed every other fsync (an alert's, a SYNC caller's) queued behind
them. ``syncfs`` writes back the filesystem's dirty pages and commits its journal once (0.6 ms
for the same 64 logs). It is used only where it reports write-back errors (Linux 5.8 and later):
an error it reports is then pinned on a log by each log's own ``fdatasync``, which still returns it.

Every dirty page of the filesystem, that is, not only the logs': a file written in one go and
fsynced at its end (a partition snapshot of several MB) is in every ``syncfs`` that starts
meanwhile. :func:`write_back` lets such a writer keep at most a slice of it dirty
(``sync_file_range(2)``: the data of a range written out and waited for, no journal commit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

__all__ = ["syncfs", "syncfs_supported", "write_back"]

_MIN_KERNEL = (5, 8)
"""syncfs reports write-back errors from this kernel on (earlier ones return 0 regardless)."""


_WRITE_AND_WAIT = 1 | 2 | 4
"""``SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER``."""


def _libc_function(name: str, argtypes: list[Any]) -> ctypes._NamedFuncPointer | None:
    """``name`` from the C library on Linux, None elsewhere or where the library lacks it."""
    if sys.platform != "linux":
        return None
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    function = getattr(ctypes.CDLL(path, use_errno=True), name, None)
    if function is None:
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def _load_syncfs() -> ctypes._NamedFuncPointer | None:
    try:
        release = tuple(int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if release < _MIN_KERNEL:
        return None
    return _libc_function("syncfs", [ctypes.c_int])


_syncfs = _load_syncfs()
_sync_file_range = _libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)


def syncfs_supported() -> bool:
    """True if :func:`syncfs` can be used: Linux 5.8 or later, with a libc that has it."""
    return _syncfs is not None


def syncfs(fd: int) -> None:
    """Write back and commit the filesystem holding ``fd``; OSError on a write-back error."""
    if _syncfs is None:
        raise OSError("syncfs is not available on this system")
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write_back(fd: int, offset: int, length: int) -> None:
    """Write the data of ``length`` bytes of ``fd`` from ``offset`` back to the disk and wait for
    it, where the system has ``sync_file_range`` (elsewhere nothing: the file's ``fsync`` still
    makes it durable). Not a durability call: it commits no metadata and no journal, and an I/O
    error it meets is left for the file's ``fsync`` to report."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _WRITE_AND_WAIT)
