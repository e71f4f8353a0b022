"""fdatasync handed to the kernel, its completion delivered to the event loop: no thread of ours.

A SYNC call's round used to run ``fdatasync`` on a thread of the fsync pool: waking that thread,
then winning the GIL back to hand the result to the loop, cost about as much as the sync itself on
the reference machine (docs/design.md, "Durability and group commit"). Linux's native AIO accepts
an fdatasync request (``IOCB_CMD_FDSYNC``, Linux 4.18 and later): ``io_submit`` queues it to a
kernel worker, which runs the very ``vfs_fsync(file, datasync=1)`` of the ``fdatasync`` system call
(same file, same write-back error reporting), and signals an ``eventfd`` the loop watches. The loop
never blocks on the disk, and no Python thread wakes. Where it is missing (another OS or machine
architecture, a kernel or filesystem without it, a seccomp policy refusing ``io_setup``) or a
submission is refused, the caller keeps its thread path: this module only says so.

While a sync it submitted is in the kernel and the loop has nothing else to do, the loop's thread
can wait for it on its CPU, yielding that CPU, instead of sleeping (:meth:`KernelFdatasync.wait_on_cpu`):
a CPU gone idle is slow to wake for the completion on a virtual machine. Not here: what is synced
when (``node.segment_log``, ``node.commit_scheduler``).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import logging
import os
import platform
import select
import sys
import time
from collections.abc import Callable
from functools import partial

__all__ = ["KernelFdatasync"]

log = logging.getLogger(__name__)

_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
"""io_setup, io_destroy, io_getevents, io_submit per machine architecture."""
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1


class _Iocb(ctypes.Structure):
    """``struct iocb`` of <linux/aio_abi.h> (little endian: key before rw_flags)."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("key", ctypes.c_uint32),
        ("rw_flags", ctypes.c_int32),
        ("opcode", ctypes.c_uint16),
        ("reqprio", ctypes.c_int16),
        ("fildes", ctypes.c_uint32),
        ("buf", ctypes.c_uint64),
        ("nbytes", ctypes.c_uint64),
        ("offset", ctypes.c_int64),
        ("reserved2", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    """``struct io_event``: the request's ``data``, its iocb's address, the result (or -errno)."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


Peek = tuple[Callable[[float, int], list[tuple[int, int]]], collections.deque[object]]
"""A loop's epoll ``poll`` and its queue of ready callbacks (:func:`_idle_peek`)."""


Then = Callable[[OSError | None, float], None]
"""What runs when a submitted sync is done: ``then(error, seconds)`` (:meth:`KernelFdatasync.submit`)."""


def _idle_peek(loop: asyncio.AbstractEventLoop) -> Peek | None:
    """What :meth:`KernelFdatasync.wait_on_cpu` reads of ``loop``: its selector's epoll object's
    ``poll`` and its ready callbacks, as asyncio's selector loop keeps them (``_selector._selector``,
    ``_ready``); None for any other loop, whose thread then always sleeps for a sync."""
    epoll = getattr(getattr(loop, "_selector", None), "_selector", None)
    ready = getattr(loop, "_ready", None)
    if not isinstance(epoll, select.epoll) or not isinstance(ready, collections.deque):
        return None
    return epoll.poll, ready


def _syscall() -> Callable[..., int] | None:
    if sys.platform != "linux" or sys.byteorder != "little" or platform.machine() not in _SYSCALLS:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = libc.syscall
    function.restype = ctypes.c_long
    return function


class KernelFdatasync:
    """One AIO context of a node and the eventfd its completions ring, read on one event loop.

    ``submit(fd, then)`` queues an fdatasync of ``fd`` and returns True; ``then(error, seconds)``
    runs on the loop once it is done (``error`` None, or the ``OSError`` the sync returned;
    ``seconds`` from the submission to the completion's reaping). False: the
    kernel refused the request (the caller syncs on its thread instead), and, if the refusal says
    the kernel or the file's filesystem cannot do it, every later ``submit`` is refused at once.
    The file descriptor must stay open until ``then`` has run.
    """

    _BATCH = 64  # completions read per io_getevents call

    def __init__(
        self, syscall: Callable[..., int], numbers: tuple[int, int, int, int], depth: int, spin_ns: int
    ) -> None:
        # Private: use KernelFdatasync.open().
        self._spin_ns = spin_ns
        self._typical_ns = 0
        """Recent syncs' time from submission to reaping (a moving average, 1/8 per sync)."""
        self._peek: Peek | None = None
        self._syscall = syscall
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._context = ctypes.c_ulong(0)
        if syscall(ctypes.c_long(self._setup), ctypes.c_long(depth), ctypes.byref(self._context)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"io_setup: {os.strerror(code)}")
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, tuple[Then, int]] = {}
        """Each sync in flight: its ``then`` and when it was submitted (``perf_counter_ns``)."""
        self._next_id = 0
        self._usable = True
        self._iocb = _Iocb(opcode=_IOCB_CMD_FDSYNC, flags=_IOCB_FLAG_RESFD, resfd=self._eventfd)
        self._iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._events = (_Event * self._BATCH)()
        # A SYNC call's round makes both calls: their arguments are built once, not per call.
        self._submit_one = partial(
            syscall, ctypes.c_long(self._submit), self._context, ctypes.c_long(1), self._iocbs
        )
        self._reap_ready = partial(
            syscall,
            ctypes.c_long(self._getevents),
            self._context,
            ctypes.c_long(0),
            ctypes.c_long(self._BATCH),
            self._events,
            None,
        )

    @classmethod
    def open(cls, depth: int = 256, *, spin_ns: int = 0) -> KernelFdatasync | None:
        """A context for up to ``depth`` syncs in flight, or None where this machine has none.
        ``spin_ns``: the longest :meth:`wait_on_cpu` waits (0: the loop always sleeps)."""
        syscall = _syscall()
        if syscall is None:
            return None
        try:
            return cls(syscall, _SYSCALLS[platform.machine()], depth, spin_ns)
        except OSError as exc:
            log.info("kernel fdatasync unavailable (%s): SYNC rounds sync on the fsync threads", exc)
            return None

    @property
    def in_flight(self) -> int:
        """Syncs submitted whose ``then`` has not run yet."""
        return len(self._pending)

    def submit(self, fd: int, then: Then) -> bool:
        """Queue an fdatasync of ``fd``; ``then(error, seconds)`` runs on the running loop when it
        is done."""
        if not self._usable:
            return False
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and self._pending:
                return False  # completions owed to another loop: this one uses its threads
            if self._loop is not None:
                self._loop.remove_reader(self._eventfd)
            loop.add_reader(self._eventfd, self._drain)
            self._loop = loop
            self._peek = _idle_peek(loop)
        request = self._next_id = self._next_id + 1
        iocb = self._iocb
        iocb.data = request
        iocb.fildes = fd
        if self._submit_one() != 1:
            code = ctypes.get_errno()
            if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
                # The kernel has no asynchronous fdatasync, or this file's filesystem cannot do one.
                log.info(
                    "kernel fdatasync refused (%s): SYNC rounds sync on the fsync threads", os.strerror(code)
                )
                self._usable = False
            return False  # EAGAIN (the context is full) and the like: this round takes the thread
        self._pending[request] = (then, time.perf_counter_ns())
        return True

    def wait_on_cpu(self) -> None:
        """Wait for the sync just submitted with the loop's thread on its CPU, yielding it, instead
        of letting the loop sleep in its selector: if the loop has no callback ready, and this
        disk's syncs typically take no longer than ``spin_ns``.

        The kernel runs the sync on a worker bound to the submitting CPU, the loop's. A loop
        asleep in ``epoll_wait`` lets that CPU go idle, and on a virtual machine waking an idle
        CPU for the completion costs a lone SYNC call tens of µs (docs/design.md, "Durability and
        group commit"). ``sched_yield`` hands the CPU to the worker whenever it can run and keeps
        the CPU awake for the completion; a spin that never yielded would hold the worker off the
        CPU instead (a SYNC call 0.3 ms slower, measured).

        The wait ends as soon as the sync is reaped (its ``then`` runs here), or any descriptor the
        loop watches is ready (a new request), seen with an ``epoll_wait`` of timeout 0 that
        consumes nothing (asyncio's epoll is level-triggered: the loop's next select reports the
        same), or after ``spin_ns``. A slow disk is waited for by sleeping: its wake-up is a small
        share of its sync, and the CPU would be spent for nothing.
        """
        budget, peek = self._spin_ns, self._peek
        if not budget or peek is None or self._typical_ns > budget:
            return
        poll, ready = peek
        if ready:
            return  # the loop has work: the completion is read once it is done
        deadline = time.perf_counter_ns() + budget
        # The CPU first goes to the worker (just submitted, the sync cannot be done yet), then
        # the context is reaped: a sync found done is taken here, a loop turn sooner than through
        # the eventfd. The eventfd is left as it is: its next read, by the loop, takes whatever
        # finished by then (nothing, or a sync a completion here started; reset here, it could
        # swallow that one's ring).
        while not poll(0, 1) and time.perf_counter_ns() < deadline:
            os.sched_yield()
            if self._collect(0):
                return

    def _drain(self) -> None:
        """The eventfd rang: run the ``then`` of every finished sync (on the loop)."""
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        self._collect(0)

    def _collect(self, at_least: int) -> int:
        """Reap finished syncs (waiting for ``at_least`` of them) and run their ``then``; how many."""
        events = self._events
        finished: list[tuple[Then, int, int]] = []  # then, result, ns from submission
        while self._pending:
            if at_least <= 0:
                got = self._reap_ready()
            else:
                got = self._syscall(
                    ctypes.c_long(self._getevents),
                    self._context,
                    ctypes.c_long(min(at_least, self._BATCH)),
                    ctypes.c_long(self._BATCH),
                    events,
                    None,
                )
            if got < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                # Which syncs finished is unknown now: every one in flight fails (its log fails, as
                # after a failed fdatasync), none is left waiting, and no more go to the kernel.
                log.error(
                    "io_getevents failed (%s): %d kernel fdatasyncs fail", os.strerror(code), self.in_flight
                )
                now = time.perf_counter_ns()
                finished.extend((then, -(code or errno.EIO), now - at) for then, at in self._pending.values())
                self._pending.clear()
                self._usable = False
                break
            reaped = time.perf_counter_ns()
            for event in events[:got]:
                then, submitted = self._pending.pop(event.data)
                took = reaped - submitted
                self._typical_ns += (took - self._typical_ns) >> 3
                finished.append((then, event.res, took))
            at_least -= got
            if got < self._BATCH and at_least <= 0:
                break
        for then, res, took in finished:
            try:
                then(None if res >= 0 else OSError(-res, os.strerror(-res)), took / 1e9)
            except Exception:  # a bug in one waiter's completion must not strand the others
                log.exception("completion of a kernel fdatasync failed")
        return len(finished)

    def close(self) -> None:
        """Wait for the syncs in flight (their ``then`` runs here), then free the context."""
        if self._eventfd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._eventfd)
            self._loop = None
        self._collect(len(self._pending))
        self._syscall(ctypes.c_long(self._destroy), self._context)
        os.close(self._eventfd)
        self._eventfd = -1
        self._usable = False
