"""One ``syncfs(2)`` for a whole filesystem: the durability of many partition logs in one call.

A flush tick used to fdatasync every dirty log, 64 of them for a node whose batches reach every
partition: on ext4 that is one journal commit each, 6-13 ms of disk time per 10 ms tick on the
reference machine, which slowed every other fsync (an alert's, a SYNC caller's) queued behind
them. ``syncfs`` writes back the filesystem's dirty pages and commits its journal once (0.6 ms
for the same 64 logs). It is used only where it reports write-back errors (Linux 5.8 and later):
an error it reports is then pinned on a log by each log's own ``fdatasync``, which still returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["syncfs", "syncfs_supported"]

_MIN_KERNEL = (5, 8)
"""syncfs reports write-back errors from this kernel on (earlier ones return 0 regardless)."""


def _load() -> ctypes._NamedFuncPointer | None:
    if sys.platform != "linux":
        return None
    try:
        release = tuple(int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if release < _MIN_KERNEL:
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    function = getattr(libc, "syncfs", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_syncfs = _load()


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
