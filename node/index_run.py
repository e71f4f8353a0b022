"""The bytes of an index run: one immutable file of aged ListEvents positions, defined once.

A run holds, for some (account, hour of event time) keys of one partition, the log positions of
the records holding that account's events of that hour (``node.event_index``), sorted by
(account, hour): what the in-memory index gave up once the hour was older than the memory horizon
(docs/design.md, "Aged index runs"). Layout, little endian, every column 8-byte aligned::

    header   "UMIDXRUN" | u32 version | u32 partition | u64 keys | u64 positions   (32 bytes)
    accounts u64 x keys      ascending
    hours    i64 x keys      ascending within an account
    ends     u64 x keys      key i's positions are positions[ends[i-1]:ends[i]] (ends[-1] = 0)
    positions u64 x positions
    trailer  u32 CRC-32 of everything before it

:func:`write_run` writes one and fsyncs it and its directory before returning; :class:`IndexRun`
opens one, refuses anything damaged, truncated, foreign or of another version with
:class:`RunFormatError`, and answers lookups by binary search over the mapped columns (no copy of
the file in memory; the page cache holds what is read). Not here: which runs a partition has and
when they are written or merged (``node.index_runs``).
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .atomic_file import write_file_atomically
from .records import RecordFormatError

__all__ = ["RUN_VERSION", "IndexRun", "RunColumns", "RunFormatError", "RunInfo", "write_run"]

RUN_VERSION = 1
"""The header's version of the layout above."""
_MAGIC = b"UMIDXRUN"
_HEADER = struct.Struct("<8sIIQQ")
_CRC = struct.Struct("<I")
_CHECK_CHUNK = 1 << 20


class RunFormatError(RecordFormatError):
    """A file that is not an intact index run of this version and partition."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as a snapshot lists it: its file name, size and CRC (the very file it relied on)."""

    name: str
    size: int
    crc: int


@dataclass(slots=True)
class RunColumns:
    """A run's keys and positions as columns (``array('Q')``, ``array('q')``, ``array('Q')``,
    ``array('Q')``), the shape both engines hand over and :func:`write_run` writes."""

    accounts: array[int]
    hours: array[int]
    ends: array[int]
    positions: array[int]

    @classmethod
    def empty(cls) -> RunColumns:
        return cls(array("Q"), array("q"), array("Q"), array("Q"))

    def __len__(self) -> int:
        return len(self.accounts)

    def append(self, account: int, hour: int, *parts: array[int] | list[int] | memoryview) -> None:
        """Add the next key (keys must come in (account, hour) order) with its positions, the
        parts one after the other (a run's own are ``Q`` views, copied as bytes: merging two runs
        makes no Python int per position)."""
        self.accounts.append(account)
        self.hours.append(hour)
        for positions in parts:
            if isinstance(positions, memoryview):
                self.positions.frombytes(positions.cast("B"))
            elif isinstance(positions, array) and positions.typecode != "Q":
                self.positions.extend(positions.tolist())  # an array extends only by its own type code
            else:
                self.positions.extend(positions)
        self.ends.append(len(self.positions))


def _little_endian() -> None:
    if sys.byteorder != "little":  # the columns are the machine's arrays, mapped as they are
        raise RunFormatError("index runs are read and written on little-endian machines only")


def write_run(path: Path, partition: int, columns: RunColumns) -> RunInfo:
    """Write ``columns`` as a new run at ``path`` (through a temp file and a rename), fsync the
    file and its directory, and return what a snapshot lists of it."""
    _little_endian()
    n_keys = len(columns.accounts)
    if not (len(columns.hours) == len(columns.ends) == n_keys) or (columns.ends[-1] if n_keys else 0) != len(
        columns.positions
    ):
        raise ValueError("index run columns do not line up")
    parts = [
        _HEADER.pack(_MAGIC, RUN_VERSION, partition, n_keys, len(columns.positions)),
        columns.accounts.tobytes(),
        columns.hours.tobytes(),
        columns.ends.tobytes(),
        columns.positions.tobytes(),
    ]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    write_file_atomically(path, *parts, _CRC.pack(crc))
    return RunInfo(path.name, sum(map(len, parts)) + _CRC.size, crc)


class IndexRun:
    """One open run: its columns mapped from the file, read by binary search."""

    __slots__ = ("_accounts", "_ends", "_hours", "_map", "_positions", "info")

    def __init__(self, path: Path, partition: int, expected: RunInfo | None = None) -> None:
        """Open and check the run at ``path``; RunFormatError if it is not an intact run of
        ``partition`` (and, given ``expected``, the very file a snapshot listed); OSError if it
        cannot be read."""
        _little_endian()
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.info = self._check(f.fileno(), path.name, partition, size, expected)
            # Mapped only once checked, and checked with reads, not through the mapping: the
            # process's resident memory then counts only the pages lookups touch.
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._map = mapped
        n_keys, n_positions = _HEADER.unpack_from(mapped)[3:]
        view = memoryview(mapped)
        at = _HEADER.size
        self._accounts = view[at : at + 8 * n_keys].cast("Q")
        self._hours = view[at + 8 * n_keys : at + 16 * n_keys].cast("q")
        self._ends = view[at + 16 * n_keys : at + 24 * n_keys].cast("Q")
        self._positions = view[at + 24 * n_keys : at + 24 * n_keys + 8 * n_positions].cast("Q")

    @staticmethod
    def _check(fd: int, name: str, partition: int, size: int, expected: RunInfo | None) -> RunInfo:
        if size < _HEADER.size + _CRC.size:
            raise RunFormatError(f"index run {name}: {size} bytes, shorter than a header")
        header = os.pread(fd, _HEADER.size, 0)
        magic, version, of_partition, n_keys, n_positions = _HEADER.unpack(header)
        if magic != _MAGIC:
            raise RunFormatError(f"index run {name}: not an index run (magic {magic!r})")
        if version != RUN_VERSION:
            raise RunFormatError(f"index run {name}: version {version} is not {RUN_VERSION}")
        if size != _HEADER.size + 24 * n_keys + 8 * n_positions + _CRC.size:
            raise RunFormatError(f"index run {name}: {size} bytes, not what its header counts (truncated?)")
        crc, at = zlib.crc32(header), _HEADER.size
        while at < size - _CRC.size:
            chunk = os.pread(fd, min(_CHECK_CHUNK, size - _CRC.size - at), at)
            if not chunk:
                raise RunFormatError(f"index run {name}: shorter than its size while read")
            crc, at = zlib.crc32(chunk, crc), at + len(chunk)
        (stored,) = _CRC.unpack(os.pread(fd, _CRC.size, size - _CRC.size))
        if crc != stored:
            raise RunFormatError(f"index run {name}: checksum mismatch (the file is damaged)")
        if of_partition != partition:
            raise RunFormatError(f"index run {name}: of partition {of_partition}, not {partition}")
        last_end = int.from_bytes(os.pread(fd, 8, _HEADER.size + 24 * n_keys - 8), "little") if n_keys else 0
        if last_end != n_positions:
            raise RunFormatError(f"index run {name}: its keys end at position {last_end} of {n_positions}")
        info = RunInfo(name, size, crc)
        if expected is not None and info != expected:
            raise RunFormatError(f"index run {name}: not the file the snapshot lists ({info} != {expected})")
        return info

    def __len__(self) -> int:
        """The number of (account, hour) keys."""
        return len(self._accounts)

    def hours(self, account: int, first: int, last: int) -> list[tuple[int, list[int]]]:
        """(hour, positions) of ``account``'s hours from ``first`` to ``last`` inclusive, in hour order."""
        accounts, hours, ends = self._accounts, self._hours, self._ends
        lo = bisect_left(accounts, account)
        hi = bisect_right(accounts, account, lo)
        out = []
        for i in range(bisect_left(hours, first, lo, hi), hi):
            hour = hours[i]
            if hour > last:
                break
            out.append((hour, self._positions[ends[i - 1] if i else 0 : ends[i]].tolist()))
        return out

    def entries(self) -> Iterator[tuple[int, int, memoryview]]:
        """Every (account, hour, positions) in key order (for merging runs)."""
        positions, ends = self._positions, self._ends
        start = 0
        for account, hour, end in zip(self._accounts, self._hours, ends, strict=True):
            yield account, hour, positions[start:end]
            start = end

    def close(self) -> None:
        """Unmap the file (the views first: a mapping with views cannot be closed)."""
        for view in (self._accounts, self._hours, self._ends, self._positions):
            view.release()
        self._map.close()
