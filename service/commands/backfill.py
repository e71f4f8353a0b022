"""``unimeter import FILE.jsonl``: a backfill that never silently drops an event.

Lines are sent in batches (default 1000). The API rejects a whole batch if any event in it is
invalid; the import then reports each event its field violations name — line number and reason —
and re-sends the batch without them, so one bad line costs only itself. Lines that are not events
(bad JSON, unknown fields) are reported the same way without being sent. Backpressure
(RESOURCE_EXHAUSTED) and UNAVAILABLE are retried; any other failure stops the import at its line.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO

import grpc

from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import types_pb2

from .connection import Api
from .errors import CliError, ExitCode, RpcFailure, event_index, rpc_failure
from .output import print_stdout
from .parsing import event_from_json
from .progress import Progress

__all__ = ["import_file"]

_RETRY = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
_MAX_RETRIES = 8
_MAX_BACKOFF = 5.0


@dataclass
class _Counts:
    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    done_bytes: int = 0

    def text(self) -> str:
        counts = f"stored {self.stored}  duplicates {self.duplicates}  rejected {self.rejected}"
        return f"{self.lines} lines  {counts}"

    def summary(self) -> str:
        return f"stored {self.stored}, duplicates {self.duplicates}, rejected {self.rejected}"


@dataclass
class _Batch:
    events: list[types_pb2.Event] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


class _Stopped(Exception):
    """A failure the import cannot get past, at the first line of the batch it hit."""

    def __init__(self, line: int, failure: RpcFailure) -> None:
        super().__init__(failure.message)
        self.line = line
        self.failure = failure


class _Importer:
    def __init__(self, api: Api, *, sync: bool, progress: Progress) -> None:
        self.api = api
        self.delivery = types_pb2.DELIVERY_MODE_SYNC if sync else types_pb2.DELIVERY_MODE_UNSPECIFIED
        self.progress = progress
        self.counts = _Counts()
        self._rejected: list[tuple[int, str]] = []
        self.reached_server = False

    def reject(self, line: int, reason: str) -> None:
        self.counts.rejected += 1
        self._rejected.append((line, reason))

    def report_rejected(self) -> None:
        """Print the rejections so far in line order (lines that are not events are found before a
        batch is sent, the server's rejections after)."""
        if self._rejected:
            self.progress.clear()
            for line, reason in sorted(self._rejected):
                print(f"rejected line {line}: {reason}", file=sys.stderr)
            sys.stderr.flush()
            self._rejected.clear()

    def send(self, batch: _Batch) -> None:
        """Store the batch, dropping (and reporting) exactly the events the server names as invalid."""
        events, lines = batch.events, batch.lines
        attempt = 0
        while events:
            try:
                response = self.api.ingest.Ingest(
                    ing.IngestRequest(events=events, delivery=self.delivery), timeout=self.api.timeout
                )
            except grpc.RpcError as err:
                failure = rpc_failure(err)
                if failure.code == grpc.StatusCode.INVALID_ARGUMENT:
                    bad = self._named_events(failure, len(events), lines[0])
                    for i in sorted(bad):
                        self.reject(lines[i], "; ".join(bad[i]))
                    events = [e for i, e in enumerate(events) if i not in bad]
                    lines = [n for i, n in enumerate(lines) if i not in bad]
                    continue
                # An address that never answered is a mistake to report now, not to retry for a minute.
                unreachable = failure.code == grpc.StatusCode.UNAVAILABLE and not self.reached_server
                if failure.code in _RETRY and attempt < _MAX_RETRIES and not unreachable:
                    attempt += 1
                    delay = failure.retry_after or min(0.25 * 2**attempt, _MAX_BACKOFF)
                    self.progress.clear()
                    print(
                        f"{failure.code.name}: {failure.message}; retrying line {lines[0]} in {delay:g}s "
                        f"({attempt}/{_MAX_RETRIES})",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(delay)
                    continue
                raise _Stopped(lines[0], failure) from None
            self.reached_server = True
            self.counts.stored += response.n_stored
            self.counts.duplicates += response.n_duplicates
            return

    @staticmethod
    def _named_events(failure: RpcFailure, n: int, first_line: int) -> dict[int, list[str]]:
        """Batch index → reasons; stops the import when a violation names no event of the batch."""
        bad: dict[int, list[str]] = {}
        for field_path, description in failure.violations:
            where = event_index(field_path)
            if where is None or where[0] >= n:
                raise _Stopped(first_line, failure)
            bad.setdefault(where[0], []).append(f"{where[1]}: {description}")
        if not bad:
            raise _Stopped(first_line, failure)
        return bad

    def run(self, source: BinaryIO, batch_size: int) -> None:
        batch = _Batch()
        counts = self.counts
        for number, raw in enumerate(source, start=1):
            counts.done_bytes += len(raw)
            counts.lines = number
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.reject(number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not text.strip():
                continue
            try:
                batch.events.append(event_from_json(text))
                batch.lines.append(number)
            except ValueError as exc:
                self.reject(number, str(exc))
                continue
            if len(batch.events) >= batch_size:
                self.send(batch)
                self.report_rejected()
                batch = _Batch()
            self.progress.update(counts.done_bytes, counts.text())
        if batch.events:
            self.send(batch)
        self.report_rejected()


def _open(path: str) -> tuple[BinaryIO, int | None]:
    if path == "-":
        return sys.stdin.buffer, None
    try:
        f = open(path, "rb")  # noqa: SIM115  (closed by the caller)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", ExitCode.BAD_INPUT) from None
    info = os.fstat(f.fileno())
    return f, info.st_size if stat.S_ISREG(info.st_mode) else None


def import_file(api: Api, *, path: str, batch_size: int, sync: bool, progress: bool | None) -> int:
    """Import JSON lines from ``path`` (``-``: stdin); 0 when every line was stored or a duplicate,
    2 when some were rejected (each reported on stderr)."""
    source, total = _open(path)
    show = sys.stderr.isatty() if progress is None else progress
    importer = _Importer(api, sync=sync, progress=Progress(sys.stderr, total_bytes=total, enabled=show))
    counts = importer.counts
    try:
        importer.run(source, batch_size)
    except _Stopped as stop:
        importer.report_rejected()
        importer.progress.finish(counts.done_bytes, counts.text())
        print_stdout(counts.summary())
        error = stop.failure.to_cli_error(api.options.addr)
        raise CliError(
            f"import stopped at line {stop.line}: {error.message}. Lines from there on may not be "
            "stored; re-running the import is safe for events with an event_id or a time "
            "(duplicates are recognised)",
            error.exit_code,
            error.lines,
        ) from None
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    importer.progress.finish(counts.done_bytes, counts.text())
    print_stdout(counts.summary())
    return ExitCode.BAD_INPUT if counts.rejected else ExitCode.OK
