"""A partition's index runs: the ListEvents positions of hours older than the memory horizon, on disk.

The in-memory event index (``node.event_index``) hands the positions of aged hours over as run
columns; :meth:`IndexRuns.add` writes them as a new run (``node.index_run``, fsynced in a thread)
before the index drops them, and :meth:`IndexRuns.joined` puts a lookup's on-disk hours and
in-memory hours back together, so the index answers exactly as it did with everything in memory.
Runs are listed by the partition's snapshot (:meth:`listed`); recovery opens the listed ones
(:meth:`load`) and deletes every other run file (:meth:`discard_unlisted`: a run written after the
snapshot is re-derived by replay). More than :data:`MAX_RUNS` runs are merged pairwise at the next
snapshot (:meth:`compact`); a merged-away run is deleted once a snapshot that no longer lists it
is stored (:meth:`delete_retired`). Not here: when hours age (``node.partition``) or the bytes of a
run (``node.index_run``). Design: docs/design.md, "Aged index runs".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from .index_run import IndexRun, RunColumns, RunInfo, write_run

__all__ = ["MAX_RUNS", "IndexRuns"]

log = logging.getLogger(__name__)

MAX_RUNS = 8
"""Runs past which the next snapshot merges the smallest adjacent pair (a lookup reads each run)."""
_RUN_NAME = re.compile(r"run-(\d{10})\.umx(\.tmp)?")


class IndexRuns:
    """The open runs of one partition, oldest first (for a key, an older run's positions are all
    below a newer one's, and the in-memory index's above both: each was appended after the
    hand-over before it)."""

    __slots__ = ("_next", "_retired", "_runs", "directory", "partition")

    def __init__(self, directory: Path, partition: int) -> None:
        self.directory = directory
        self.partition = partition
        directory.mkdir(parents=True, exist_ok=True)
        self._runs: list[IndexRun] = []
        self._retired: list[IndexRun] = []
        self._next = 1 + max(
            (int(m[1]) for p in directory.iterdir() if (m := _RUN_NAME.fullmatch(p.name))), default=0
        )

    def __len__(self) -> int:
        return len(self._runs)

    def listed(self) -> list[RunInfo]:
        """The runs a snapshot taken now relies on, oldest first."""
        return [run.info for run in self._runs]

    def load(self, listed: Iterable[RunInfo]) -> None:
        """Open the runs a snapshot lists; RunFormatError or OSError (none left open) if one is
        missing, damaged or not the file listed."""
        opened: list[IndexRun] = []
        try:
            for info in listed:
                opened.append(IndexRun(self.directory / info.name, self.partition, info))
        except BaseException:
            for run in opened:
                run.close()
            raise
        self.close()
        self._runs = opened

    def discard_unlisted(self) -> None:
        """Delete every run file not open now (written after the snapshot recovery used, merged
        away, or half written)."""
        keep = {run.info.name for run in self._runs}
        for path in self.directory.iterdir():
            if _RUN_NAME.fullmatch(path.name) and path.name not in keep:
                log.info(
                    "partition %d: deleting index run %s, which no snapshot relies on",
                    self.partition,
                    path.name,
                )
                path.unlink()

    def joined(
        self, account: int, first: int, last: int, memory: Iterable[tuple[int, list[int]]]
    ) -> list[tuple[int, list[int]]]:
        """(hour, positions) of ``account``'s hours ``first`` to ``last`` from every run and from
        ``memory`` (the in-memory index's, in hour order), in hour order."""
        merged: dict[int, list[int]] = {}
        for run in self._runs:
            for hour, positions in run.hours(account, first, last):
                found = merged.get(hour)
                merged[hour] = positions if found is None else _joined(found, positions)
        if not merged:
            return list(memory)
        for hour, positions in memory:
            found = merged.get(hour)
            merged[hour] = positions if found is None else _joined(found, positions)
        return sorted(merged.items())

    async def add(self, columns: RunColumns) -> None:
        """Write ``columns`` as the newest run (fsynced, in a thread) and open it."""
        path = self._path()
        info = await asyncio.to_thread(write_run, path, self.partition, columns)
        self._runs.append(IndexRun(path, self.partition, info))

    async def compact(self) -> None:
        """Merge the smallest adjacent pair of runs (in a thread) until at most :data:`MAX_RUNS`
        are left; the merged-away runs stay open (a snapshot on disk lists them) until
        :meth:`delete_retired`."""
        while len(self._runs) > MAX_RUNS:
            runs = self._runs
            i = min(range(len(runs) - 1), key=lambda k: runs[k].info.size + runs[k + 1].info.size)
            older, newer = runs[i], runs[i + 1]
            path = self._path()
            info = await asyncio.to_thread(_merge, older, newer, path, self.partition)
            runs[i : i + 2] = [IndexRun(path, self.partition, info)]
            self._retired += (older, newer)

    def delete_retired(self) -> None:
        """Close and delete the runs merged away (a snapshot not listing them is now stored)."""
        for run in self._retired:
            run.close()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / run.info.name).unlink()
        self._retired.clear()

    def close(self) -> None:
        """Unmap every run (the files stay)."""
        for run in (*self._runs, *self._retired):
            run.close()
        self._runs, self._retired = [], []

    def _path(self) -> Path:
        path = self.directory / f"run-{self._next:010d}.umx"
        self._next += 1
        return path


def _joined(older: list[int], newer: list[int]) -> list[int]:
    """Two hours' ascending positions of one key as one ascending list (an older run's come first;
    sorted anyway if a damaged order ever reached here, so an answer never goes out of order)."""
    if older[-1] < newer[0]:
        return older + newer
    return sorted({*older, *newer})


def _merge(older: IndexRun, newer: IndexRun, path: Path, partition: int) -> RunInfo:
    """Write the keys of two runs as one run at ``path``."""
    out = RunColumns.empty()
    a, b = older.entries(), newer.entries()
    x, y = next(a, None), next(b, None)
    while x is not None and y is not None:
        if x[:2] < y[:2]:
            out.append(*x)
            x = next(a, None)
        elif y[:2] < x[:2]:
            out.append(*y)
            y = next(b, None)
        else:
            older_positions, newer_positions = x[2], y[2]
            # An older run's positions all come first (each hand-over took everything below the
            # log's end at its time): the views are copied as they are, no int per position.
            if not older_positions or not newer_positions or older_positions[-1] < newer_positions[0]:
                out.append(x[0], x[1], older_positions, newer_positions)
            else:
                out.append(x[0], x[1], _joined(older_positions.tolist(), newer_positions.tolist()))
            x, y = next(a, None), next(b, None)
    for rest, item in ((a, x), (b, y)):
        while item is not None:
            out.append(*item)
            item = next(rest, None)
    return write_run(path, partition, out)
