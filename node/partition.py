"""One partition of a node: its event log, dedup index, aggregates, alert log and snapshots.

Everything about an account lives in one partition. ``ingest`` is the hot path: validation has
already happened (the node checked the batch against the registry); here a batch is deduplicated,
appended as ONE log record, applied to the aggregates, its alerts appended to the alert log, and
acknowledged. Because aggregates, dedup keys and alerts are a pure function of the log, recovery
loads the last snapshot and replays the log tail to the same state, alerts included. The logs and
the snapshot slot come from the node's backend (``node.record_log``), the bytes from
``node.records``; durability is asked of the node's ``node.commit_scheduler``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, TypeVar

import msgpack

from cluster_client.errors import FieldViolation, InvalidArgumentError
from cluster_client.node_api import IngestOutcome
from cluster_client.types import AggType, Alert, EventRow, OperationType, Period, QueryResult, StoredEvent

from .aggregation import AlertRow, AppliedRow, MetricSpec, PartitionAggregates
from .aggregation.cells import COUNT, LAST_OFFSET, empty_cell, fold_row
from .alert_list import AlertList
from .clock import SYSTEM_CLOCK, Clock
from .event_index import HOUR_NS
from .index_run import RunFormatError, RunInfo
from .index_runs import IndexRuns
from .partition_engine import PYTHON, PartIngested, PartitionEngine
from .record_log import PartitionStorage, RecordLog, RecordsNotLoaded, read_fetching
from .records import (
    AlertIndex,
    AlertRecord,
    RecordFormatError,
    Snapshot,
    decode_alert_record,
    decode_event_record,
    decode_snapshot,
    encode_alert_record,
    encode_snapshot,
)

if TYPE_CHECKING:
    from .commit_scheduler import CommitScheduler
    from .stats import Histogram

__all__ = ["Partition", "PartitionConfig", "PartitionRecoveryError"]

log = logging.getLogger(__name__)


_DECODED_CACHE = 256
_MINUTE_NS = 60_000_000_000
_LOOKAHEAD_RECORDS = 1000
"""Most records one ListEvents page asks a log for at once when they are not in memory."""
_LOOKAHEAD_MIN = 32
"""Fewest records it asks for beyond the hour at hand: a page whose metric filter skips most
events would otherwise fetch (and run again) a record or two at a time."""
_T = TypeVar("_T")
_INGEST_STEP = attrgetter("_ingest_part")
"""A partition's part ingest, read for a slice's parts in a C-level loop (``Partition.ingest_parts``)."""


@dataclass(frozen=True, slots=True)
class _IndexedAlerts:
    """What a snapshot holding the alert index says of the alert log."""

    index: AlertIndex
    count: int
    """Alerts 1..count are in the log before ``position``."""
    position: int
    last_offset: int
    """Every alert of the events up to this offset is in the log before ``position``."""


class _IndexMismatch(Exception):
    """A snapshot's alert index does not match the alert log (recovery then reads all of it)."""


class PartitionRecoveryError(RuntimeError):
    """A partition's log holds a record recovery cannot replay; the message names the partition,
    the file and the position, and what the operator can do."""


@dataclass(frozen=True, slots=True)
class PartitionConfig:
    """Tunables of a partition."""

    dedup_window_ns: int = 24 * 3600 * 1_000_000_000
    """How long (by arrival time) an event's dedup key is remembered."""
    memory_horizon_ns: int = 48 * 3600 * 1_000_000_000
    """Index positions of hours that ended more than this before the clock's now move to disk, and
    those hours' minute cells are folded into their hours (0: never): ``NodeConfig.memory_horizon_ns``."""
    batch_window_ns: int = 600 * 1_000_000_000
    """How long a retried batch id is answered with its original result."""
    clock: Clock = SYSTEM_CLOCK
    """The node's wall clock (here: the time of the last snapshot)."""
    engine: PartitionEngine = PYTHON
    """Where the per-event work runs (dedup index and keys): ``node.partition_engine``."""
    alerts_in_memory: int = 10_000
    """How many of the newest alerts are kept in memory; older ones are read from the alert log
    (``node.alert_list``)."""
    publish_delays: Histogram | None = None
    """Where each alert that ingest logs observes the seconds from its batch's arrival to its
    publication, by the clock (``NodeStats.alert_publish_delay``; None: nowhere). Alerts that
    recovery regenerates are not observed: their batches arrived in an earlier process."""


# A decoded event record: (first_offset, generations, rows); row i has offset first_offset + i.
_Decoded = tuple[int, dict[str, int], Sequence[EventRow]]


class _MinuteIndex:
    """What queries have worked out of one decoded record, kept with it: its rows by (account,
    minute), and the cells of whole minutes already folded (a record never changes, so neither do
    they)."""

    __slots__ = ("cells", "rows_of")

    def __init__(self, rows: Sequence[EventRow]) -> None:
        self.rows_of: dict[tuple[int, int], list[int]] = {}
        for i, row in enumerate(rows):
            key = (row[0], row[3] // _MINUTE_NS)
            found = self.rows_of.get(key)
            if found is None:
                self.rows_of[key] = [i]
            else:
                found.append(i)
        self.cells: dict[tuple[int, int, str, bool], list[int]] = {}

    def cell(
        self, rows: Sequence[EventRow], first: int, indexes: list[int], key: tuple[int, int, str, bool]
    ) -> list[int]:
        """The cell of ``key``'s (account, minute, code, with_sum): of the rows at ``indexes`` (that
        account's in that minute; offsets from ``first``) those of that code. Kept: do not change it."""
        cell = self.cells.get(key)
        if cell is None:
            _, _, code, with_sum = key
            cell = self.cells[key] = empty_cell()
            for i in indexes:
                _, row_code, value, t, _, op, _ = rows[i]
                if row_code == code:
                    fold_row(cell, value, t, op, first + i, with_sum)
        return cell


_AlertRow = AlertRow
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def _storable(alert: _AlertRow) -> list[object]:
    """The alert as its log row stores it: ``value_at_cross`` saturated to int64 and ``multiple``
    to uint64, the ranges of the API's fields (docs/semantics.md, "Alerts"). Sums are exact past
    them, so a crossing whose value does not fit still fires and is logged, with the field's
    largest value, instead of failing the call after its record was stored."""
    account, metric, threshold, threshold_value, multiple, value, period_start, event_time = alert
    return [
        account,
        metric,
        threshold,
        threshold_value,
        min(multiple, _UINT64_MAX),
        max(min(value, _INT64_MAX), -_INT64_MAX - 1),
        period_start,
        event_time,
    ]


class Partition:
    """State and storage of one partition. Not thread-safe: used from one event loop."""

    def __init__(
        self,
        number: int,
        storage: PartitionStorage,
        specs: Mapping[str, MetricSpec],
        config: PartitionConfig,
        commit: CommitScheduler,
    ) -> None:
        self.number = number
        self._storage = storage
        self._commit = commit
        self._specs = specs
        self._spec_of = specs.get
        self._config = config
        self.events = storage.events
        self.alert_log = storage.alerts
        self._cursor = config.engine.new_cursor()
        """Where ingest stands: the last offset, the last arrival, the records since the snapshot
        (``node.ingest_cursor``; the part ingest step moves it on)."""
        self._engine = config.engine
        self.aggregates = PartitionAggregates(self._fetch_events, config.engine.stores)
        self.dedup = config.engine.new_dedup(config.dedup_window_ns)
        self.index = config.engine.new_index()
        directory = storage.index_directory
        self._runs = None if directory is None else IndexRuns(directory, number)
        """The runs of aged hours' positions (docs/design.md, "Aged index runs"); None on a
        backend without local files."""
        self.index.runs = self._runs
        self._bind_steps()
        self._batches: OrderedDict[str, tuple[int, IngestOutcome]] = OrderedDict()
        self._decoded: OrderedDict[int, _Decoded] = OrderedDict()
        self._loaded: dict[int, bytes] = {}
        """Records fetched for the read :meth:`reading` runs now (empty between reads)."""
        self._minute_indexes: OrderedDict[int, _MinuteIndex] = OrderedDict()
        self.alerts = AlertList(number, self.alert_log, config.alerts_in_memory)
        self.published_alert_offset = 0
        self.alerts_unpublished = False
        """Whether alerts were logged that are not published yet (``published_alert_offset <
        len(alerts)``), as a flag: the node asks it of every partition part of an ASYNC call, and
        an ``AlertList``'s ``len`` is a Python call (~1,000 instructions, 64 a request)."""
        self.on_alerts_published: Callable[[int, int, int], None] | None = None
        """Called with (partition, first, last): alerts ``first`` to ``last`` were just published."""
        self._unpublished_arrivals: deque[tuple[int, int, int]] = deque()
        """(last, count, arrival) of each alert record ingest logged that is not published yet:
        its ``count`` alerts end at offset ``last``, its batch arrived at ``arrival`` (for
        ``publish_delays``)."""
        self._unapplied: BaseException | None = None
        """Why a stored record's apply step failed, if one did: the state is behind the log, so no
        snapshot is taken (a restart replays the record) until then."""
        self._snapshot_lock = asyncio.Lock()
        self.last_snapshot_time: float | None = None
        """Wall-clock time the current snapshot was written (or, after recovery, its file's mtime)."""
        self._recover()

    @property
    def last_offset(self) -> int:
        """The offset of the partition's last stored event (0: none yet)."""
        return self._cursor.last_offset

    @last_offset.setter
    def last_offset(self, offset: int) -> None:
        self._cursor.last_offset = offset

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        rows: Sequence[EventRow],
        batch_id: str,
        now_ns: int,
        specs: Mapping[str, MetricSpec],
    ) -> IngestOutcome:
        """Deduplicate, append one record, apply, evaluate thresholds. Rows are already validated,
        against ``specs``: the record stores those generations, and only rows whose metric
        still has its generation are applied."""
        if batch_id:
            seen = self._batches.get(batch_id)
            if seen is not None:
                return seen[1]
        return self._finish_part(self._ingest_part(rows, specs, now_ns, batch_id), batch_id)

    @staticmethod
    def ingest_parts(
        partitions: Sequence[Partition],
        parts: list[Sequence[EventRow]],
        batch_id: str,
        now_ns: int,
        specs: Mapping[str, MetricSpec],
    ) -> list[IngestOutcome]:
        """:meth:`ingest` of each of ``parts`` into the partition beside it, in order: without a
        batch id, all through the engine's ``ingest_parts`` in one call (the native engine's
        saves a Python call, a frame and each metric's lookups a part). A part that raises
        before its record is stored ends the slice: the parts before it are stored and finished
        (alerts logged), the parts after it are not ingested. A part that fails after its record
        is stored hands its error back and the slice goes on. Then the earliest part's error is
        raised."""
        if not partitions:
            return []
        # The next tick looks at them (whatever they end up storing: a part may store its record,
        # then raise). Told first, as nothing here awaits: no tick runs before they are stored.
        partitions[0]._commit.appended(partitions)
        if batch_id:  # each partition answers a retry from its memory of batch ids
            pairs = zip(partitions, parts, strict=True)
            return [part.ingest(rows, batch_id, now_ns, specs) for part, rows in pairs]
        steps = list(map(_INGEST_STEP, partitions))
        answers, unfinished, error = partitions[0]._engine.ingest_parts(steps, parts, specs, now_ns, batch_id)
        failed: BaseException | None = None
        for i in unfinished:
            try:
                answers[i] = partitions[i]._finish_part(answers[i], batch_id)
            except Exception as exc:  # a later part's alerts are logged all the same
                failed = failed or exc
        failed = failed or error  # the earliest part's: ``error`` is the last part's
        if failed is not None:
            raise failed
        return answers  # type: ignore[return-value]  # every tuple finished above

    def _finish_part(self, done: PartIngested, batch_id: str) -> IngestOutcome:
        """What a part's ingest left to the partition (``PartIngested``): its batch id
        remembered, the exception that stopped its steps raised, its alerts logged."""
        if not isinstance(done, tuple):
            return done  # nothing logged, or logged with nothing more to do: the cursor moved on
        # A record is stored (recovery replays it), its keys remembered and the cursor moved on:
        # its batch id is remembered before anything else can fail (the apply step, a failed
        # alert log), so a retry of a call that raised after this point is answered as a
        # duplicate, never stored twice.
        outcome, first_offset, arrival, fired, error = done
        if batch_id:
            self._remember_batch(batch_id, arrival, outcome)
        if error is not None:
            self._unapplied = error
            raise error
        if fired:
            self._log_alerts(first_offset, fired, arrival)
            if self._config.publish_delays is not None:
                self._unpublished_arrivals.append((len(self.alerts), len(fired), arrival))
        return outcome

    def forget_metric(self, code: str) -> None:
        """Drop the state of a deleted metric: its store, and whatever the ingest step remembers
        of it (bound again: a deletion is rare, and the binding is the cache's lifetime)."""
        self.aggregates.forget_metric(code)
        self._bind_steps()

    def _bind_steps(self) -> None:
        """Bind the engine's apply and ingest steps to :attr:`dedup`, :attr:`index` and
        :attr:`aggregates` (again when recovery loads them from a snapshot)."""
        engine = self._engine
        self._apply_stored = engine.bind_apply(self.index, self.aggregates, self._spec_of)
        """A stored record into :attr:`index` and :attr:`aggregates`."""
        self._ingest_part = engine.bind_ingest(
            self.dedup,
            self.index,
            self.aggregates,
            self._specs,
            self._apply_stored,
            self.events,
            self._cursor,
        )
        """A partition part's whole ingest (``node.partition_engine.PartIngest``)."""

    def _apply(
        self, ref: int, first_offset: int, gens: dict[str, int], rows: Sequence[EventRow]
    ) -> list[_AlertRow]:
        """Apply a record's rows to the aggregates and the event index; returns the alerts they fire."""
        if not rows:
            return []
        self.last_offset = first_offset + len(rows) - 1
        return self._apply_stored(ref, rows, first_offset, gens)

    def _log_alerts(self, event_first_offset: int, fired: list[_AlertRow], record_time: int) -> None:
        """Give alerts their offsets and append them, as one record, to the alert log."""
        first = len(self.alerts) + 1
        rows = [[*_storable(a), record_time] for a in fired]
        position = self.alert_log.append(encode_alert_record(AlertRecord(event_first_offset, first, rows)))
        self._load_alerts(rows, position)
        self.alerts_unpublished = True

    def _load_alerts(self, rows: list[list[object]], position: int) -> None:
        """Index the alerts of the alert record at ``position``, by offset and by account."""
        for row in rows:
            self.alerts.append(row, position)

    def _remember_batch(self, batch_id: str, arrival: int, outcome: IngestOutcome) -> None:
        batches = self._batches
        batches[batch_id] = (arrival, outcome)
        cutoff = arrival - self._config.batch_window_ns
        while batches:
            oldest = next(iter(batches.values()))
            if oldest[0] >= cutoff:
                break
            batches.popitem(last=False)

    def expire(self, now_ns: int) -> None:
        """Forget dedup keys and batch ids older than their windows."""
        self.dedup.expire(now_ns)

    # ------------------------------------------------------------------ durability

    @property
    def dirty(self) -> bool:
        """Whether anything appended is not yet durable."""
        return (
            self.events.durable_position < self.events.end_position
            or self.alert_log.durable_position < self.alert_log.end_position
            or self.alerts_unpublished
        )

    def flush_mark(self) -> tuple[int, int, int]:
        """(alerts, event log end, alert log end) now: what :meth:`publish_durable` may publish
        once both logs are durable up to those ends."""
        return len(self.alerts), self.events.end_position, self.alert_log.end_position

    def publish_durable(self, mark: tuple[int, int, int]) -> bool:
        """Publish the alerts counted in ``mark`` if both logs are durable up to its ends; whether
        they are."""
        alerts, events_end, alerts_end = mark
        if self.events.durable_position < events_end or self.alert_log.durable_position < alerts_end:
            return False
        published = self.published_alert_offset
        if alerts > published:
            self.published_alert_offset = alerts
            self.alerts_unpublished = alerts < len(self.alerts)
            if self.on_alerts_published is not None:
                self.on_alerts_published(self.number, published + 1, alerts)
            self.alerts.release(alerts)
            if self._unpublished_arrivals:
                self._observe_publish_delays(alerts)
        return True

    def _observe_publish_delays(self, alerts: int) -> None:
        """The delays since their batch's arrival of the alerts ingest logged that are published
        now, up to offset ``alerts``. A mark is taken between records, so a record is published
        whole. A clock that went back counts as no delay."""
        delays = self._config.publish_delays
        assert delays is not None  # arrivals are kept only then
        waiting = self._unpublished_arrivals
        now = self._config.clock.now_ns()
        while waiting and waiting[0][0] <= alerts:
            _, count, arrival = waiting.popleft()
            delays.observe(max(0, now - arrival) / 1e9, count)

    async def flush(self) -> None:
        """Make everything appended so far durable, then publish the alerts it holds."""
        await self._commit.flush(self)

    async def snapshot(self) -> None:
        """Checkpoint the state with the log position it covers (after making that position durable)."""
        async with self._snapshot_lock:  # one at a time: a capture's copy-on-write lasts until packed
            # A failed log (an alert record that could not be appended, say) means the state may
            # be ahead of what the logs hold, a failed apply step that it is behind: no snapshot
            # then, so recovery replays from the last good one and regenerates what is missing.
            self.events.check_usable()
            self.alert_log.check_usable()
            if self._unapplied is not None:
                raise RuntimeError(
                    f"partition {self.number}: its state is behind its log (a stored record could not be "
                    f"applied: {self._unapplied!r}); no snapshot until a restart replays the log"
                ) from self._unapplied
            while self.dedup.growing:  # finishing a growth inside the capture stalled the loop 25-45 ms
                self.dedup.advance_growth()
                await asyncio.sleep(0)
            await self._age_index()
            await self._fold_minutes()
            state = self._snapshot_state()
            covered = self._cursor.records
            try:
                # Ingestion goes on between slices: what it changes was copied, or is copy-on-write.
                pieces = await encode_snapshot(state, self._engine.crc32)
            finally:
                self.aggregates.release_snapshot()
            await self.flush()
            await _until_done(self._storage.write_snapshot(pieces))
            if self._runs is not None:
                self._runs.delete_retired()  # the snapshot on disk no longer lists them
            # Records appended while the file was being written are not in it: they still count.
            self._cursor.records -= covered
            self.last_snapshot_time = self._config.clock.now_ns() / 1e9

    async def _age_index(self) -> None:
        """Hand every position of the hours that ended more than the memory horizon ago (below
        the log's end now) to a new index run, written and fsynced before the index forgets
        them; then merge runs past their bound. Positions added meanwhile are at or past that
        end and stay in memory until the next snapshot (late events of an aged hour too)."""
        runs, horizon = self._runs, self._config.memory_horizon_ns
        if runs is None:
            return
        if horizon:
            before = (self._config.clock.now_ns() - horizon) // HOUR_NS
            below = self.events.end_position
            columns = self.index.aged(before, below)
            if len(columns):
                await runs.add(columns)
                self.index.drop_aged(before, below)
        await runs.compact()

    async def _fold_minutes(self) -> None:
        """Fold the minute cells of the hours that ended more than the memory horizon ago into
        their hours (docs/design.md, "Folded minutes"), a metric at a time with the loop served
        in between: a pass over a store's minute cells once an hour of the clock, else nothing."""
        horizon = self._config.memory_horizon_ns
        if horizon:
            for _ in self.aggregates.fold_steps(self._config.clock.now_ns() - horizon):
                await asyncio.sleep(0)

    @property
    def records_since_snapshot(self) -> int:
        """Log records appended since the last snapshot."""
        return self._cursor.records

    async def close(self) -> None:
        """Flush, snapshot and close the logs. The logs are closed (made durable) even if the
        snapshot fails; the first error is raised once both are."""
        errors: list[BaseException] = []
        for step in (self.snapshot, self.events.close, self.alert_log.close):
            try:
                await step()
            except Exception as exc:
                errors.append(exc)
        if self._runs is not None:
            self._runs.close()
        if errors:
            raise errors[0]

    def _snapshot_state(self) -> Snapshot:
        return Snapshot(
            partition=self.number,
            event_position=self.events.end_position,
            last_offset=self.last_offset,
            last_arrival=self._cursor.last_arrival,
            alert_position=self.alert_log.end_position,
            alert_count=len(self.alerts),
            aggregates=self.aggregates.to_snapshot(),
            dedup=self.dedup.to_snapshot(),
            index=self.index.to_snapshot(self.events.end_position),
            batches=[(b, a, list(o.offsets), o.n_duplicates) for b, (a, o) in self._batches.items()],
            index_runs=[] if self._runs is None else [(r.name, r.size, r.crc) for r in self._runs.listed()],
            alert_index=self.alerts.to_snapshot(),
        )

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        started = time.monotonic()
        start_pos, indexed = self._load_snapshot()
        if self._runs is not None:
            self._runs.discard_unlisted()  # replay re-derives what a later run held
        fired_by_record: list[tuple[int, int, list[_AlertRow]]] = []
        replayed = 0
        for ref, payload in self.events.scan(start_pos):
            try:
                first, batch_id, arrival, gens, rows, stamped, n_req, dups = decode_event_record(payload)
                if first != self.last_offset + 1:
                    # Every record starts right after the one before it; anything else is what two
                    # processes appending to one log at once leave behind.
                    raise ValueError(f"its offsets start at {first}, not at {self.last_offset + 1}")
                keys, key_offsets = self._engine.replay_keys(rows, gens, stamped, first)
                self.dedup.add(arrival, keys, key_offsets)
                fired = self._apply(ref, first, gens, rows)
            except Exception as exc:
                raise self._unrecoverable(self.events, ref, exc) from exc
            if fired:
                fired_by_record.append((first, arrival, fired))
            if batch_id:
                self._remember_batch(batch_id, arrival, _outcome_from_record(first, len(rows), n_req, dups))
            self._cursor.last_arrival = max(self._cursor.last_arrival, arrival)
            replayed += 1
        covered = self._recover_alerts(indexed)
        self.published_alert_offset = len(self.alerts)
        self.alerts_unpublished = False
        for first, arrival, fired in fired_by_record:
            if first > covered:
                self._log_alerts(first, fired, arrival)
        self._cursor.records = replayed
        if replayed or start_pos:
            log.info(
                "partition %d recovered: offset %d, %d records replayed in %.3fs",
                self.number, self.last_offset, replayed, time.monotonic() - started,
            )  # fmt: skip

    def _recover_alerts(self, indexed: _IndexedAlerts | None) -> int:
        """Check the alert log against the events replayed up to ``last_offset``, and index it;
        returns the ``event_first_offset`` up to which it holds every alert those events fire.

        The log keeps what it holds for events still in the log; a record for events the crash
        lost is cut, and alerts of replayed events it lacks are regenerated by the caller (same
        order, same offsets as they would have had), so it is exactly what the stored events
        imply. With a snapshot holding the alert index, the log is read only from the records
        holding the alerts kept in memory (at least the last one, which checks the index against
        the log) on; the alerts before its position are those of events up to the snapshot's
        ``last_offset``, written before it was and never cut since (a cut only takes alerts of
        events after a durable snapshot's). An index the log does not match is dropped and the
        whole log read, as for a snapshot of a version without one."""
        if indexed is not None:
            try:
                return self._read_alert_log(indexed)
            except _IndexMismatch as exc:
                log.warning("partition %d: %s; reading the whole alert log", self.number, exc)
                self.alerts = AlertList(self.number, self.alert_log, self._config.alerts_in_memory)
        return self._read_alert_log(None)

    def _read_alert_log(self, indexed: _IndexedAlerts | None) -> int:
        """The alert log read from the start, or past what the snapshot's alert index holds."""
        covered = 0
        refilling = indexed is not None
        """Whether the records read now are those before the snapshot's alert position."""
        if indexed is not None:
            try:
                first = self.alerts.restore(indexed.index, indexed.count)
                records = self.alert_log.scan(indexed.position if first is None else first)
            except ValueError as exc:  # from the index, or a position at which no record starts
                raise _IndexMismatch(str(exc)) from None
            covered = indexed.last_offset
        else:
            records = self.alert_log.scan()
        for pos, payload in records:
            try:
                event_first, first_alert, alert_rows = decode_alert_record(payload)
            except Exception as exc:
                raise self._unrecoverable(self.alert_log, pos, exc) from exc
            if refilling:
                assert indexed is not None
                if pos < indexed.position:  # a record the index holds: its newest alerts go to memory
                    self._refill_alerts(pos, event_first, first_alert, alert_rows, indexed.last_offset)
                    continue
                self._refilled()
                refilling = False
            try:
                expected = len(self.alerts) + 1
                if event_first <= self.last_offset and first_alert != expected:
                    raise ValueError(f"its alert offsets start at {first_alert}, not at {expected}")
            except Exception as exc:
                raise self._unrecoverable(self.alert_log, pos, exc) from exc
            if event_first > self.last_offset:
                log.warning("partition %d: cutting alerts of events lost in a crash", self.number)
                self.alert_log.truncate(pos)
                break
            self._load_alerts(alert_rows, pos)
            self.alerts.release(len(self.alerts))  # read from the log: it can be read again
            covered = event_first
        if refilling:
            self._refilled()
        self.alerts.release(len(self.alerts))
        return covered

    def _refill_alerts(
        self, pos: int, event_first: int, first_alert: int, rows: list[list[object]], last_offset: int
    ) -> None:
        if event_first > last_offset:
            raise _IndexMismatch(f"the alert record at {pos} is of events after the snapshot")
        try:
            self.alerts.refill(pos, first_alert, rows)
        except ValueError as exc:
            raise _IndexMismatch(str(exc)) from None

    def _refilled(self) -> None:
        if not self.alerts.refilled:
            raise _IndexMismatch("the records before the snapshot's alert position lack alerts it indexes")

    def _unrecoverable(self, record_log: RecordLog, position: int, exc: Exception) -> PartitionRecoveryError:
        return PartitionRecoveryError(
            f"cannot recover partition {self.number}: the record at {record_log.describe(position)} "
            f"does not replay: {exc}; every record before it is intact. "
            "Stop every process using the data directory, then restore it from a backup or repair "
            'it as docs/operations.md describes ("Recovery failed")'
        )

    def _load_snapshot(self) -> tuple[int, _IndexedAlerts | None]:
        """Load the stored snapshot into the state; returns the event log position replay starts
        at and what the snapshot says of the alert log (0 and None: no usable snapshot; None: one
        without the alert index). Only these are kept: the rest of the decoded snapshot is freed
        before the replay."""
        stored = self._storage.read_snapshot()
        if stored is None:
            return 0, None
        data, written_at = stored
        try:
            state = decode_snapshot(data, self._engine.crc32)
        except RecordFormatError as exc:
            log.warning("partition %d: unreadable snapshot ignored (%s); replaying the log", self.number, exc)
            return 0, None
        # A log cut below what the snapshot covers (damage, a lost disk write) puts the snapshot
        # ahead of the log: replaying the log rebuilds the state and regenerates the lost alerts.
        if (
            state.event_position > self.events.end_position
            or state.alert_position > self.alert_log.end_position
        ):
            log.warning("partition %d: snapshot does not match the log; replaying the log", self.number)
            return 0, None
        try:
            aggregates = PartitionAggregates.from_snapshot(
                state.aggregates, self._fetch_events, self._specs, self._engine.stores
            )
            dedup = self._engine.load_dedup(self._config.dedup_window_ns, state.dedup)
        except ValueError as exc:  # a snapshot format this version does not read: the log is the truth
            log.warning("partition %d: snapshot not loadable (%s); replaying the log", self.number, exc)
            return 0, None
        if state.index_runs:
            try:
                if self._runs is None:
                    raise RunFormatError("this backend keeps no index runs")
                self._runs.load(RunInfo(*run) for run in state.index_runs)
            except (RunFormatError, OSError) as exc:  # like a damaged snapshot: the log is the truth
                log.warning(
                    "partition %d: snapshot's index runs unusable (%s); replaying the log", self.number, exc
                )
                return 0, None
        self.aggregates = aggregates
        self.dedup = dedup
        self.index = self._engine.load_index(state.index)
        self.index.runs = self._runs
        self._bind_steps()
        self.last_offset = state.last_offset
        self._cursor.last_arrival = state.last_arrival
        self.last_snapshot_time = written_at
        for batch_id, arrival, offsets, n_dup in state.batches:
            self._batches[batch_id] = (arrival, IngestOutcome(offsets, n_dup))
        if state.alert_index is None:
            return state.event_position, None
        alerts = _IndexedAlerts(state.alert_index, state.alert_count, state.alert_position, state.last_offset)
        return state.event_position, alerts

    # ------------------------------------------------------------------ reads

    async def reading(self, read: Callable[[], _T]) -> _T:
        """``read()`` (a query or an event page: synchronous) with the event records it needs at
        hand, fetched first where the log holds them in a remote store (``read_fetching``)."""
        loaded: dict[int, bytes] = {}
        self._loaded = loaded
        try:
            return await read_fetching(self.events, read, loaded)
        finally:
            self._loaded = {}

    def _decode(self, ref: int) -> _Decoded:
        cached = self._decoded.get(ref)
        if cached is not None:
            self._decoded.move_to_end(ref)
            return cached
        raw = self._loaded.get(ref)
        record = decode_event_record(self.events.read(ref) if raw is None else raw)
        decoded: _Decoded = (record.first_offset, record.generations, record.rows)
        self._decoded[ref] = decoded
        if len(self._decoded) > _DECODED_CACHE:
            self._decoded.popitem(last=False)
        return decoded

    def _decode_all(self, refs: Sequence[int]) -> list[_Decoded]:
        """Every record of ``refs`` decoded, or RecordsNotLoaded naming all that are missing."""
        out: list[_Decoded] = []
        missing: list[int] = []
        for ref in refs:
            try:
                out.append(self._decode(ref))
            except RecordsNotLoaded:
                missing.append(ref)
        if missing:
            raise RecordsNotLoaded(missing)
        return out

    def _fetch_events(
        self,
        refs: list[int] | None,
        account_id: int,
        metric_code: str,
        windows: list[tuple[int, int]],
        whole_minutes: list[list[int]] | None = None,
    ) -> list[AppliedRow]:
        """Rows of one account and metric (current generation) in the given records and time windows;
        ``refs`` None: in the records the event index lists for the account in the windows' hours.
        Given ``whole_minutes``, the events of minutes a window covers whole go there instead, as
        one cell per record and minute (``FetchEvents``).

        Used for the partial edge minutes of range queries (and the edges inside hours whose minute
        cells are folded): a per-record index by (account, minute) means a 10,000-event record is
        scanned once, not on every query that touches its minutes, and a whole minute's cell is
        folded once, not on every query that reads it (an edge inside a folded hour is mostly
        whole minutes: up to 59 of them, every event of each read again per query otherwise).
        """
        spec = self._spec_of(metric_code)
        if spec is None:
            return []
        if refs is None:
            found: set[int] = set()
            for lo, hi in windows:
                for _, hour_refs in self.index.hours(account_id, lo, hi):
                    found.update(hour_refs)
            refs = sorted(found)
        # Each minute with the windows that overlap it, or None where one covers it whole: a row
        # found under its minute is checked against those only (an edge inside a folded hour is
        # up to 60 one-minute windows, and checking every row against all of them was most of
        # such a query's time).
        minutes: dict[int, list[tuple[int, int]] | None] = {}
        for lo, hi in windows:
            for m in range(lo // _MINUTE_NS, (hi - 1) // _MINUTE_NS + 1):
                if lo <= m * _MINUTE_NS and (m + 1) * _MINUTE_NS <= hi:
                    minutes[m] = None
                    continue
                within = minutes.setdefault(m, [])
                if within is not None:
                    within.append((lo, hi))
        with_sum = spec.agg_type is AggType.SUM
        out: list[AppliedRow] = []
        for ref, (first, gens, rows) in zip(refs, self._decode_all(refs), strict=True):
            if gens.get(metric_code) != spec.generation:
                continue
            index = self._minute_index(ref, rows)
            for minute, within in minutes.items():
                indexes = index.rows_of.get((account_id, minute))
                if indexes is None:
                    continue
                if within is None and whole_minutes is not None:
                    cell = index.cell(rows, first, indexes, (account_id, minute, metric_code, with_sum))
                    if cell[COUNT] or cell[LAST_OFFSET]:  # any event (an ADD and a REMOVE count 0)
                        whole_minutes.append(cell)
                    continue
                for i in indexes:
                    account, code, value, t, props, op, _ = rows[i]
                    if code == metric_code and (within is None or any(lo <= t < hi for lo, hi in within)):
                        out.append((account, value, t, props, op, first + i))
        out.sort(key=lambda r: r[5])
        return out

    def _minute_index(self, ref: int, rows: Sequence[EventRow]) -> _MinuteIndex:
        index = self._minute_indexes.get(ref)
        if index is None:
            index = self._minute_indexes[ref] = _MinuteIndex(rows)
            if len(self._minute_indexes) > _DECODED_CACHE:
                self._minute_indexes.popitem(last=False)
        else:
            self._minute_indexes.move_to_end(ref)
        return index

    def query(
        self,
        spec: MetricSpec,
        account_id: int,
        start: int,
        end: int,
        filters: dict[str, str],
        group_by: list[str],
    ) -> QueryResult:
        """The aggregate over ``[start, end)`` (already validated)."""
        value, groups = self.aggregates.query(spec, account_id, start, end, filters, group_by)
        return QueryResult(value, Period(start, end), self.last_offset, tuple(groups))

    def query_realtime(self, spec: MetricSpec, account_id: int, now_ns: int) -> QueryResult:
        """The aggregate of the metric's current period."""
        value, period = self.aggregates.realtime(spec, account_id, now_ns)
        return QueryResult(value, period, self.last_offset)

    def list_events(
        self, account_id: int, start: int, end: int, metric_code: str, page_size: int, page_token: str
    ) -> tuple[list[StoredEvent], str]:
        """A page of the account's events in ``[start, end)``, ordered by (event time, offset)."""
        after = _decode_page_token(page_token, account_id, start, end, metric_code)
        page: list[StoredEvent] = []
        for hour, refs in self.index.hours(account_id, max(start, after[0]), end):
            hits: list[tuple[int, int, EventRow]] = []
            try:
                records = self._decode_all(refs)
            except RecordsNotLoaded as exc:
                need = page_size - len(page)
                raise RecordsNotLoaded(self._page_ahead(exc.positions, account_id, hour, end, need)) from None
            for first, _, rows in records:
                for i, row in enumerate(rows):
                    t = row[3]
                    if (
                        row[0] == account_id
                        and t // HOUR_NS == hour  # a record may hold this account's events of other hours
                        and start <= t < end
                        and (t, first + i) > after
                        and (not metric_code or row[1] == metric_code)
                    ):
                        hits.append((t, first + i, row))
            hits.sort(key=lambda h: (h[0], h[1]))
            for t, offset, (account, code, value, _, props, op, event_id) in hits:
                if len(page) == page_size:
                    last = page[-1]
                    return page, _encode_page_token(
                        account_id, start, end, metric_code, last.time_unix_nano, last.offset
                    )
                page.append(
                    StoredEvent(
                        account,
                        code,
                        value,
                        t,
                        dict(props or {}),
                        OperationType(op),
                        event_id,
                        offset,
                        self.number,
                    )
                )
        return page, ""

    def _page_ahead(self, missing: list[int], account_id: int, hour: int, end: int, need: int) -> list[int]:
        """The records a page of ``need`` more events fetches at once from ``hour`` on: those of
        this hour that are ``missing``, then the next hours' not at hand, as many as ``need``
        events take at the partition's mean events per record (a record the index lists under an
        hour holds at least one event of the account there; one with fewer of the account's
        events than the mean leaves the page short, and its next fetch asks for the rest), at
        least ``_LOOKAHEAD_MIN`` and at most ``_LOOKAHEAD_RECORDS`` beyond this hour's."""
        per_record = max(1, self.last_offset // max(1, self.events.end_position))
        wanted = list(missing)
        limit = len(missing) + min(_LOOKAHEAD_RECORDS, max(_LOOKAHEAD_MIN, -(-need // per_record)))
        for _, refs in self.index.hours(account_id, (hour + 1) * HOUR_NS, end):
            if len(wanted) >= limit:
                break
            wanted += [r for r in refs if r not in self._decoded and r not in self._loaded]
        return wanted[:limit]

    async def list_alerts(
        self, account_id: int, after_offset: int, page_size: int
    ) -> tuple[list[Alert], bool]:
        """The account's durable alerts with offset > ``after_offset``."""
        offsets = self.alerts.offsets_of(account_id)
        limit = self.published_alert_offset
        start = bisect_right(offsets, after_offset)
        wanted = [o for o in offsets[start : start + page_size + 1] if o <= limit]
        picked = await self.alerts.reading(lambda: self.alerts.get_many(wanted))
        return picked[:page_size], len(picked) > page_size


async def _until_done(future: asyncio.Future[None]) -> None:
    """Await ``future``; a cancellation meanwhile is raised only once it is done. A snapshot's
    file write runs on in its thread when its waiter is cancelled (the node's shutdown cancels
    the maintenance loop, then snapshots every partition): the snapshot keeps its lock until
    the write ends, so two writes of one partition's temp file never overlap. A cancellation is
    raised even if the write then fails: the cancelled caller (the maintenance loop) must stop,
    not count a failure and go on."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:
            break  # the write failed: raised below, unless the caller was cancelled
    if cancelled:
        if not future.cancelled() and future.exception() is not None:
            log.warning("a cancelled snapshot's write failed: %s", future.exception())
        raise asyncio.CancelledError
    future.result()


def _outcome_from_record(
    first: int, n_stored: int, n_req: int, dups: Sequence[Sequence[int]]
) -> IngestOutcome:
    offsets: list[int] = []
    dup_at = dict((int(i), int(o)) for i, o in dups)
    next_offset = first
    for i in range(n_req):
        original = dup_at.get(i)
        if original is None:
            offsets.append(next_offset)
            next_offset += 1
        else:
            offsets.append(original)
    return IngestOutcome(offsets, len(dups))


def _encode_page_token(account_id: int, start: int, end: int, metric_code: str, t: int, offset: int) -> str:
    raw = msgpack.packb([1, account_id, start, end, metric_code, t, offset])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(
    token: str, account_id: int, start: int, end: int, metric_code: str
) -> tuple[int, int]:
    """The (time, offset) a page continues after; the token must belong to this very request."""
    if not token:
        return (start - 1, 0)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, account, t_start, t_end, code, t, offset = msgpack.unpackb(raw)
        valid = (
            version == 1
            and (account, t_start, t_end, code) == (account_id, start, end, metric_code)
            and isinstance(t, int)
            and isinstance(offset, int)
        )
    except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
        valid = False
    if not valid:
        raise InvalidArgumentError(
            "page_token is not a token of this query",
            violations=[
                FieldViolation("page_token", "not a token returned for this account, range and metric")
            ],
        )
    return (t, offset)
