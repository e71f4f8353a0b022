"""Alert subscriptions served from the partitions' alert logs.

A subscription keeps its own position per partition and reads the durable alerts after it, so a
slow subscriber is served from the log and nothing is ever dropped on the server side. A waiting
subscription is a future, woken when a partition publishes alerts its filters may match; one that
cannot match them just has its position moved past them, without being woken. A partition the
node stops serving (handed over to another node) ends the streams that read it with
PARTITION_NOT_OWNED, so a subscriber resumes at its new owner from the offsets it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial

from cluster_client.errors import FieldViolation, InvalidArgumentError, OutOfRangeError
from cluster_client.node_api import AlertStreamItem
from cluster_client.types import Metric

from .ownership import not_owned
from .partition import Partition
from .record_log import RecordsNotLoaded

__all__ = ["AlertStreamer", "release"]

_BATCH = 256


class AlertStreamer:
    """Serves alert streams for a node's partitions."""

    def __init__(self, partitions: Mapping[int, Partition], count: int, *, heartbeat_interval: float) -> None:
        """``partitions``: the node's served partitions by number, a live mapping (see
        :meth:`attach`); ``count``: the deployment's partition count."""
        self._partitions = partitions
        self._count_partitions = count
        self._heartbeat = heartbeat_interval
        # One future per waiting subscription, set directly on a publish: under load every hop
        # through the loop's ready queue waits behind ingest slices, and an Event waited with
        # wait_for took three hops (the Event's task, wait_for's wake-up, the stream) where this
        # takes one. Each maps to the subscription's filters and positions.
        self._waiters: dict[asyncio.Future[None], _Subscription] = {}
        self._closed = False
        self._count = 0
        # Every open subscription's live positions (partition -> last alert offset handed out),
        # keyed by a serial; read by the metrics exporter, never copied on the hot path.
        self._positions: dict[int, dict[int, int]] = {}
        self._serial = 0
        for partition in partitions.values():
            partition.on_alerts_published = self._published

    def attach(self, partition: Partition) -> None:
        """``partition`` is served from now on (the node added it to the mapping)."""
        partition.on_alerts_published = self._published

    def detach(self, partition: Partition) -> None:
        """``partition`` is no longer served (the node removed it from the mapping): wake the
        streams reading it, which end with PARTITION_NOT_OWNED. Its publishes stop reaching this
        streamer: a hand-over still flushes it (closing it, or a flush tick that began before),
        and its alerts are then no business of this node's streams."""
        partition.on_alerts_published = None
        for waiter, sub in self._waiters.items():
            if partition.number in sub.positions:
                release(waiter)

    @property
    def subscribers(self) -> int:
        """Open subscriptions."""
        return self._count

    def lag(self) -> dict[int, int]:
        """Per partition, how many published alerts the furthest-behind subscription has not yet
        been handed (0 for partitions nobody subscribes to)."""
        lag = dict.fromkeys(self._partitions, 0)
        for positions in self._positions.values():
            for p, position in positions.items():
                partition = self._partitions.get(p)
                if partition is None:
                    continue  # handed over: its stream ends at its next wake-up
                behind = partition.published_alert_offset - position
                if behind > lag[p]:
                    lag[p] = behind
        return lag

    def _published(self, partition: int, first: int, last: int) -> None:
        """Wake the subscriptions that may want alerts ``first..last`` of ``partition``.

        Waking every subscription on every publish cost ~15 µs of loop time per subscription (a
        task switch and a scan of every partition): with 1,000 subscriptions filtering on other
        accounts, 30 publishes a second took 0.44 of a core. A subscription whose account, metric
        or threshold filter shares nothing with the new alerts cannot match any of them: if it had
        read the partition up to them, its position moves past them here, as its own scan would
        have done, and it sleeps on (its heartbeats carry the moved position). What the new alerts
        hold of the filters is read only if a subscription with filters reads the partition (one
        without any wants them all), and from the alert list's columns: building the alerts for
        it built each once more than its stream does.
        """
        keys: tuple[set[int], set[str], set[str]] | None = None
        unknown = False
        for waiter, sub in self._waiters.items():
            position = sub.positions.get(partition)
            if position is None:
                continue  # a subscription to other partitions (one per owning node)
            if not (sub.accounts or sub.metrics or sub.thresholds) or unknown:
                release(waiter)
                continue
            if keys is None:
                try:
                    keys = self._partitions[partition].alerts.filter_keys(first, last)
                except RecordsNotLoaded:
                    # Alerts kept in memory by nobody (--alerts-in-memory 0 on JetStream) and not
                    # in the log's cache: the filters only spare wake-ups, so every one wakes.
                    unknown = True
                    release(waiter)
                    continue
            accounts, metrics, thresholds = keys
            if (
                (sub.accounts and sub.accounts.isdisjoint(accounts))
                or (sub.metrics and sub.metrics.isdisjoint(metrics))
                or (sub.thresholds and sub.thresholds.isdisjoint(thresholds))
            ):
                if position == first - 1:
                    sub.positions[partition] = last
            else:
                release(waiter)

    def close(self) -> None:
        """End every subscription."""
        self._closed = True
        for waiter in self._waiters:
            release(waiter)

    def subscribe(
        self,
        partitions: list[int],
        since_offsets: dict[int, int],
        from_beginning: bool,
        account_ids: list[int],
        metric_codes: list[str],
        threshold_codes: list[str],
        *,
        known_metrics: list[Metric],
    ) -> AsyncIterator[AlertStreamItem]:
        """Validate the request and return the stream (errors are raised here, before streaming)."""
        by_code = {m.code: m for m in known_metrics}
        bad: list[FieldViolation] = []
        for i, code in enumerate(metric_codes):
            if code not in by_code:
                bad.append(FieldViolation(f"metric_codes[{i}]", f"unknown metric {code!r}"))
        scope = [by_code[c] for c in metric_codes if c in by_code] if metric_codes else known_metrics
        declared = {t.code for m in scope for t in m.thresholds}
        for i, code in enumerate(threshold_codes):
            if code not in declared:
                bad.append(FieldViolation(f"threshold_codes[{i}]", f"no selected metric declares {code!r}"))
        chosen = partitions or sorted(self._partitions)
        for p in since_offsets:
            if not 0 <= p < self._count_partitions:
                bad.append(FieldViolation(f"since_offsets[{p}]", f"partition {p} does not exist"))
        for p in chosen:
            if not 0 <= p < self._count_partitions:
                bad.append(FieldViolation("partitions", f"partition {p} does not exist"))
        if bad:
            raise InvalidArgumentError(f"invalid subscription: {bad[0].description}", violations=bad)
        positions: dict[int, int] = {}
        for p in chosen:
            published = self._served(p).published_alert_offset
            if p in since_offsets:
                if since_offsets[p] > published:
                    raise OutOfRangeError(
                        f"since_offsets[{p}] = {since_offsets[p]} is past the alert log's end ({published})",
                        violations=[FieldViolation(f"since_offsets[{p}]", f"must be at most {published}")],
                    )
                positions[p] = since_offsets[p]
            else:
                positions[p] = 0 if from_beginning else published
        return self._stream(positions, set(account_ids), set(metric_codes), set(threshold_codes))

    async def _stream(
        self, positions: dict[int, int], accounts: set[int], metrics: set[str], thresholds: set[str]
    ) -> AsyncIterator[AlertStreamItem]:
        loop = asyncio.get_running_loop()
        self._count += 1
        self._serial += 1
        serial = self._serial
        self._positions[serial] = positions
        sub = _Subscription(accounts, metrics, thresholds, positions)
        waiter: asyncio.Future[None] | None = None
        try:
            # The first item tells the subscriber where it starts, so it can resume exactly.
            yield AlertStreamItem(None, dict(positions))
            last_sent = loop.time()
            while not self._closed:
                # Registered before the scan: a publish while an item is out with the consumer
                # wakes the wait below at once.
                waiter = loop.create_future()
                self._waiters[waiter] = sub
                sent_any = False
                behind = False  # a partition with more than one batch to read
                for p, position in positions.items():
                    partition = self._served(p)
                    published = partition.published_alert_offset
                    if published <= position:
                        # Nothing new here, as for most partitions at a wake-up (which follows
                        # a publish or a few). Reading their empty ranges (a coroutine, a read and
                        # a list each, 64 partitions) was most of the loop time alerts cost.
                        continue
                    end = min(published, position + _BATCH)
                    behind = behind or end < published
                    alerts = partition.alerts
                    for alert in await alerts.reading(partial(alerts.between, position + 1, end)):
                        positions[p] = alert.offset
                        if (
                            (not accounts or alert.account_id in accounts)
                            and (not metrics or alert.metric_code in metrics)
                            and (not thresholds or alert.threshold_code in thresholds)
                        ):
                            sent_any = True
                            yield AlertStreamItem(alert, {})
                    positions[p] = max(positions[p], end)
                if sent_any:
                    last_sent = loop.time()
                elif not behind:
                    # Everything published is read: a publish during the scan released the
                    # waiter, so the wait below returns at once and the next scan reads it.
                    remaining = self._heartbeat - (loop.time() - last_sent)
                    if remaining <= 0:
                        yield AlertStreamItem(None, dict(positions))
                        last_sent = loop.time()
                    else:
                        timer = loop.call_later(remaining, release, waiter)
                        try:
                            await waiter
                        finally:
                            timer.cancel()
                del self._waiters[waiter]
        finally:
            if waiter is not None:
                self._waiters.pop(waiter, None)
            self._count -= 1
            del self._positions[serial]

    def _served(self, number: int) -> Partition:
        partition = self._partitions.get(number)
        if partition is None:
            raise not_owned(number)
        return partition


@dataclass(eq=False, slots=True)
class _Subscription:
    """A subscription's filters (empty: all) and its live positions, as its stream uses them."""

    accounts: set[int]
    metrics: set[str]
    thresholds: set[str]
    positions: dict[int, int]


def release(waiter: asyncio.Future[None]) -> None:
    """Set ``waiter``'s result unless it is done already (cancelled by its task, or released)."""
    if not waiter.done():
        waiter.set_result(None)
