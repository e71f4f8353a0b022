"""The cluster's metric registry: one replicated JetStream KV bucket that every node reads and writes.

A metric is one key (``metric/<code>``, with ``.`` and ``:`` escaped as ``=2E`` and ``=3A``, which KV
keys do not allow as such) holding the metric's wire form; creation is a KV create (a publish that
expects the key's last revision to be none, so of two nodes creating one code at once exactly one
wins, the other gets ALREADY_EXISTS), deletion a delete marker published only if the key is still
at the revision read. Generations come from one counter key, ``generation``, advanced by
compare-and-set to ``max(now, last + 1)`` before each creation, so they increase strictly across the
whole cluster as they do in one node's file registry. Each node keeps a copy current with a watch
of the bucket and tells its listener of every change; ``refresh`` waits until the watch has seen the
bucket's last revision at the time of the call, which is how a metric created through one node is
known to every node as soon as its creation returned. Not here: what a metric means
(``cluster_client.validation``) or what a node does when one changes (``node.node``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time

import msgpack
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cluster_client.errors import AlreadyExistsError, UnavailableError
from cluster_client.types import Metric
from cluster_client.validation import normalize_metric
from cluster_client.wire import metric_from_wire, metric_to_wire

from ..clock import SYSTEM_CLOCK, Clock
from ..metric_registry import MetricListener, metric_not_found
from .kv_bucket import NOT_STORED, open_bucket, watch_bucket

__all__ = ["KvMetricRegistry", "metric_key"]

log = logging.getLogger(__name__)

_METRIC_PREFIX = "metric/"
_GENERATION_KEY = "generation"
_ESCAPES = {".": "=2E", ":": "=3A"}
_RETRY_SECONDS = 1.0
_WATCH_PATIENCE = 1.0
"""Seconds a refresh waits for the watch before it watches again."""


def metric_key(code: str) -> str:
    """The KV key of metric ``code``."""
    for char, escaped in _ESCAPES.items():
        code = code.replace(char, escaped)
    return _METRIC_PREFIX + code


def _code_of(key: str) -> str:
    code = key[len(_METRIC_PREFIX) :]
    for char, escaped in _ESCAPES.items():
        code = code.replace(escaped, char)
    return code


def _unavailable(exc: BaseException) -> UnavailableError:
    return UnavailableError(
        f"the metric registry (JetStream KV) did not answer: {type(exc).__name__}: {exc}",
        reason="REGISTRY_UNAVAILABLE",
        retry_after_seconds=_RETRY_SECONDS,
    )


def _is_wrong_last_sequence(exc: nats.js.errors.APIError) -> bool:
    return isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or exc.err_code in (10071, 10164)


async def _pause(attempt: int) -> None:
    """A short wait before writing again, growing with the attempt and jittered, so that writers
    that collided do not collide again at once."""
    await asyncio.sleep(random.uniform(0.5, 1.0) * min(0.001 * 2**attempt, 0.05))


async def _again_unless_late(exc: BaseException, attempt: int, deadline: float) -> None:
    """Before reading or writing again what nobody answered (``NOT_STORED``: not stored, so safe
    to repeat), :func:`_pause`; past ``deadline``, raise ``exc`` (the caller's UNAVAILABLE)."""
    if time.monotonic() >= deadline:
        raise exc
    await _pause(attempt)


class KvMetricRegistry:
    """Metric definitions by code in KV bucket ``bucket``, shared by every node of the cluster."""

    def __init__(
        self, js: JetStreamContext, kv: KeyValue, bucket: str, timeout: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.on_change: MetricListener | None = None
        self._clock = clock
        self._js = js
        self._kv = kv
        self._stream = f"KV_{bucket}"
        self._timeout = timeout
        self._metrics: dict[str, Metric] = {}
        self._seen_revision = 0
        """The highest bucket revision the watch has applied."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._watcher: KeyValue.KeyWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        bucket: str,
        replicas: int = 1,
        timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> KvMetricRegistry:
        """Open (creating it if needed) the bucket, start watching it, and catch up with it."""
        kv = await open_bucket(
            js,
            api.KeyValueConfig(
                bucket=bucket,
                description="Unimeter metric registry",
                history=1,
                storage=api.StorageType.FILE,
                replicas=replicas,
            ),
        )
        registry = cls(js, kv, bucket, timeout, clock)
        await registry._start_watch()
        await registry.refresh()
        return registry

    async def close(self) -> None:
        """Stop watching the bucket."""
        await self._stop_watch()
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UnavailableError("the metric registry is closed", reason="NODE_CLOSING"))
        self._waiters.clear()

    # ------------------------------------------------------------------ reads (local copy)

    def get(self, code: str) -> Metric | None:
        """The metric named ``code`` as the watch has seen it, or None."""
        return self._metrics.get(code)

    def list(self) -> list[Metric]:
        """Every metric as the watch has seen them, ordered by code."""
        return [self._metrics[code] for code in sorted(self._metrics)]

    async def refresh(self) -> None:
        """Wait until the watch has applied every change the bucket held when this was called."""
        try:
            info = await self._js.stream_info(self._stream)
        except (TimeoutError, nats.errors.Error) as exc:
            raise _unavailable(exc) from exc
        if info.state.messages:
            await self._seen(int(info.state.last_seq))

    # ------------------------------------------------------------------ writes (compare-and-set)

    async def create(self, metric: Metric) -> Metric:
        """Validate and store a new metric with the next cluster-wide generation."""
        normalized = normalize_metric(metric)
        key = metric_key(normalized.code)
        try:
            if self._metrics.get(normalized.code) is None:
                await self.refresh()
            if normalized.code in self._metrics:
                raise _exists(normalized.code)
            stored = dataclasses.replace(normalized, create_time_unix_nano=await self._next_generation())
            revision = await self._create(key, msgpack.packb(metric_to_wire(stored)), normalized.code)
        except (TimeoutError, nats.errors.Error) as exc:
            raise _unavailable(exc) from exc
        await self._seen(revision)
        return stored

    async def _create(self, key: str, value: bytes, code: str) -> int:
        """KV create of ``key``: its revision, or ALREADY_EXISTS. The servers also refuse a create
        while another write to the key is still being replicated, and then there is no value to
        read yet (the client raises KeyNotFoundError): wait a little and try again. A create
        nobody answered (the bucket between leaders) was not stored: it is tried again too, until
        the deadline."""
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            try:
                return await self._kv.create(key, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise _exists(code) from None
            except nats.js.errors.KeyNotFoundError:
                await self._back_off(attempt, deadline, f"metric {code!r}")
            except NOT_STORED as exc:
                await _again_unless_late(exc, attempt, deadline)
            attempt += 1

    async def delete(self, code: str) -> Metric:
        """Remove a metric if it is still the one read (else read again); returns what was removed."""
        key = metric_key(code)
        try:
            deadline = time.monotonic() + self._timeout
            attempt = 0
            while True:  # until success, or the deadline
                try:
                    try:
                        entry = await self._kv.get(key)
                    except nats.js.errors.KeyNotFoundError:
                        raise metric_not_found(code) from None
                    await self._kv.delete(key, last=entry.revision)
                except nats.js.errors.APIError as exc:
                    if _is_wrong_last_sequence(exc):
                        await self._back_off(attempt, deadline, f"metric {code!r}")
                        attempt += 1
                        continue  # deleted or re-created meanwhile: look again
                    raise
                except NOT_STORED as exc:  # nothing deleted: look again
                    await _again_unless_late(exc, attempt, deadline)
                    attempt += 1
                    continue
                await self.refresh()
                return metric_from_wire(msgpack.unpackb(entry.value))
        except (TimeoutError, nats.errors.Error) as exc:
            raise _unavailable(exc) from exc

    @staticmethod
    async def _back_off(attempt: int, deadline: float, what: str) -> None:
        """Wait a little (growing, with jitter) before the next compare-and-set; UNAVAILABLE once
        the deadline has passed. A lost race is not the only cause: the server also refuses a
        compare-and-set while another write to the key is still being replicated, so retrying at
        once only collides again."""
        if time.monotonic() >= deadline:
            raise UnavailableError(
                f"{what} changed under every compare-and-set attempt", retry_after_seconds=_RETRY_SECONDS
            )
        await _pause(attempt)

    async def _next_generation(self) -> int:
        """Advance the counter by compare-and-set to ``max(now, last + 1)`` and return it."""
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:  # until success, or the deadline
            try:
                try:
                    entry = await self._kv.get(_GENERATION_KEY)
                    last, revision = int(entry.value or b"0"), entry.revision
                except nats.js.errors.KeyNotFoundError:
                    last, revision = 0, 0
                generation = max(self._clock.now_ns(), last + 1)
                await self._kv.update(_GENERATION_KEY, str(generation).encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                await self._back_off(attempt, deadline, "the generation counter")
                attempt += 1
                continue  # another node took one: take the next
            except NOT_STORED as exc:  # nothing taken: read it again
                await _again_unless_late(exc, attempt, deadline)
                attempt += 1
                continue
            return generation

    # ------------------------------------------------------------------ the watch

    async def _seen(self, revision: int) -> None:
        """Wait (bounded) until the watch has applied bucket revision ``revision``. A watch that
        has not got there within a second is started again (the servers may have lost its
        consumer, e.g. a server restarted): a new watch replays the last value of every key."""
        if self._seen_revision >= revision:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, waiter))
        deadline = time.monotonic() + self._timeout
        try:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the caller's
                # cancellation when the waited-for result arrives in the same loop turn.
                async with asyncio.timeout(min(_WATCH_PATIENCE, self._timeout)):
                    await asyncio.shield(waiter)
            except TimeoutError:
                log.warning("metric registry: the watch is behind revision %d; watching again", revision)
                await self._stop_watch()
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await self._start_watch()
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await asyncio.shield(waiter)
        except (TimeoutError, nats.errors.Error) as exc:
            raise UnavailableError(
                f"the metric registry's watch did not reach revision {revision} within "
                f"{self._timeout:.0f}s (JetStream unreachable?)",
                reason="REGISTRY_UNAVAILABLE",
                retry_after_seconds=_RETRY_SECONDS,
            ) from exc
        finally:
            self._waiters = [(r, w) for r, w in self._waiters if w is not waiter]

    async def _start_watch(self) -> None:
        watcher = self._watcher = await watch_bucket(self._kv)
        self._watch_task = asyncio.create_task(self._watch(watcher), name=f"unimeter-watch-{self._stream}")

    async def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._watcher is not None:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            self._watcher = None

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # "no more initial values": nothing to apply
                continue
            try:
                self._apply(entry)
            except Exception:
                # A value this version cannot read must not stop the watch that keeps every
                # other metric current; the node answers for that code as if it did not exist.
                log.exception("metric registry: cannot apply %s at revision %d", entry.key, entry.revision)
            self._seen_revision = max(self._seen_revision, entry.revision)
            for revision, waiter in self._waiters:
                if revision <= self._seen_revision and not waiter.done():
                    waiter.set_result(None)

    def _apply(self, entry: KeyValue.Entry) -> None:
        if not entry.key.startswith(_METRIC_PREFIX):
            return  # the generation counter
        code = _code_of(entry.key)
        if entry.operation in (KV_DEL, KV_PURGE):
            if self._metrics.pop(code, None) is not None:
                self._tell(code, None)
            return
        metric = metric_from_wire(msgpack.unpackb(entry.value))
        if self._metrics.get(code) != metric:
            self._metrics[code] = metric
            self._tell(code, metric)

    def _tell(self, code: str, metric: Metric | None) -> None:
        if self.on_change is not None:
            self.on_change(code, metric)


def _exists(code: str) -> AlreadyExistsError:
    return AlreadyExistsError(f"metric {code!r} already exists", reason="METRIC_EXISTS")
