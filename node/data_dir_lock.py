"""The lock that makes one process the only one serving a data directory.

Two processes on one data directory hand out the same offsets and overwrite each other's snapshots
(the directory then no longer recovers), so a node takes an exclusive OS lock on ``<data dir>/LOCK``
before it reads or writes anything else there, and holds it until it is closed; the kernel releases
it when the process dies, however it dies, so a crash never leaves a stale lock behind. The file
records the holder's pid for the refusal message; the lock, not the file, is the truth (the file
stays after a clean stop). It is not a lock between hosts: a data directory is local storage.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "DataDirectoryLock", "DataDirectoryLocked"]

LOCK_FILE = "LOCK"
"""Name of the lock file inside the data directory."""


class DataDirectoryLocked(RuntimeError):
    """Another process (or another open node in this one) holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder_pid: int | None) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "pid not written yet"
        super().__init__(f"data directory {data_dir} is in use by another unimeter process ({holder})")
        self.data_dir = data_dir
        self.holder_pid = holder_pid


class DataDirectoryLock:
    """An exclusive lock on one data directory, taken by :meth:`acquire`."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirectoryLock:
        """Create the directory if needed and lock it; raises :class:`DataDirectoryLocked` at once
        (never waits) if someone else holds it, having read only the lock file and written nothing.

        ``flock``, not ``lockf``/``fcntl`` record locks: a record lock belongs to the process, so a
        second open in the same process would "succeed" (and closing either descriptor would drop
        the lock), while a ``flock`` belongs to the open file description, so a second node opened
        on the same directory in this very process is refused as well.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DataDirectoryLocked(data_dir, holder) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        return cls(data_dir, fd)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let the next process in (idempotent). The file stays: removing it would let a process
        that opened it before the removal lock an orphaned file while another locks a new one."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file description unlocks it
            self._fd = None


def _read_pid(fd: int) -> int | None:
    """The pid in the lock file, or None if the holder has not written it yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
