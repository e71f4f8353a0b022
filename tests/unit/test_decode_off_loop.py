"""Large Ingest bodies decoded by the native engine's worker thread (``DecodeJobs``,
``unimeter_native.DecodeWorker``) against the same bodies decoded in place.

A body of ``OFF_LOOP_BYTES`` and up makes the engine's deserializer answer a coroutine; awaited,
it gives what ``decode_ingest`` gives for the same bytes: the event count, the delivery, every
partition's events and request indexes, and the same rejection for a request that breaks the
rules, also for randomly damaged bodies. Bytes that are not a request fall back to protobuf, a
panic of the worker is an INTERNAL answer for that call alone, and closing the engine hands every
waiting decode its outcome. The end-to-end equivalence through a server is in
tests/integration/test_native_engine_end_to_end.py. Collected only where the extension is built
(tests/conftest.py)."""

from __future__ import annotations

import asyncio
from types import CoroutineType
from typing import Any

import pytest
import unimeter_native
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client import AggType, Metric
from cluster_client.errors import InternalError
from service.ingest_engine import OFF_LOOP_BYTES, DecodeJobs, NativeIngestEngine
from unimeter.v1 import ingest_service_pb2, types_pb2

pytestmark = pytest.mark.timeout(30)

T = 1_772_323_200 * 10**9
METRICS = {"calls": Metric("calls", AggType.COUNT), "bytes": Metric("bytes", AggType.SUM)}


class _Client:
    """What the engine reads of the client core: its partition count and metric lookup."""

    partitions = 16

    def ingest_metric_lookup(self) -> Any:
        return METRICS.get


def _body(n: int, *, bad_account_at: int | None = None) -> bytes:
    events = [
        types_pb2.Event(
            account_id=0 if i == bad_account_at else 1 + i % 37,
            metric_code="calls" if i % 3 else "bytes",
            value=i,
            time_unix_nano=T + i,
            event_id=f"event-{i:06d}-{'x' * 20}",
        )
        for i in range(n)
    ]
    return ingest_service_pb2.IngestRequest(events=events).SerializeToString()


def _parts(answer: tuple[int, bool, Any, Any]) -> tuple[object, ...]:
    n, sync, by_partition, rejection = answer
    parts = None if by_partition is None else [(p, b.rows(), list(i)) for p, (b, i) in by_partition.items()]
    return n, sync, parts, rejection


async def _decoded(engine: NativeIngestEngine, body: bytes) -> Any:
    pending = engine.decode(body, _Client())  # type: ignore[arg-type]
    assert type(pending) is CoroutineType
    return await pending


async def test_a_large_body_decodes_off_the_loop_to_the_same_answer() -> None:
    engine = NativeIngestEngine(unimeter_native)
    try:
        for body in (_body(600), _body(600, bad_account_at=457)):
            assert len(body) >= OFF_LOOP_BYTES
            decoded = await _decoded(engine, body)
            expected = unimeter_native.decode_ingest(body, METRICS.get, _Client.partitions)
            assert _parts(decoded._outcome) == _parts(expected)
            assert decoded.n_events == 600
        small = _body(3)
        assert type(engine.decode(small, _Client())) is not CoroutineType  # type: ignore[arg-type]
    finally:
        engine.close()


async def test_a_large_body_the_native_decoder_refuses_goes_to_protobuf() -> None:
    engine = NativeIngestEngine(unimeter_native)
    try:
        with pytest.raises(Exception, match="Error parsing message"):
            await _decoded(engine, _body(600)[:-3])
    finally:
        engine.close()


class _PanickingJobs(DecodeJobs):
    def decode(self, data: bytes, partitions: int) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(unimeter_native.NativePanic("native engine panicked: a bug"))
        return future


async def test_a_panic_of_the_worker_fails_that_call_as_internal() -> None:
    engine = NativeIngestEngine(unimeter_native)
    engine._jobs = _PanickingJobs(unimeter_native.DecodeWorker())
    try:
        decoded = await _decoded(engine, _body(600))
        with pytest.raises(InternalError, match="a bug"):
            await decoded.store(None)
    finally:
        engine.close()


async def test_closing_hands_every_waiting_decode_its_outcome() -> None:
    jobs = DecodeJobs(unimeter_native.DecodeWorker())
    body = _body(600)
    waiting = [jobs.decode(body, 8) for _ in range(20)]
    jobs.close()
    assert all(future.done() for future in waiting)
    answers = [future.result().answer(METRICS.get) for future in waiting]
    assert all(_parts(a) == _parts(answers[0]) for a in answers)
    with pytest.raises(RuntimeError, match="taken once"):
        waiting[0].result().answer(METRICS.get)
    with pytest.raises(OSError, match="stopped"):
        jobs._worker.submit(21, body, 8)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_mutated_large_body_gets_the_same_outcome_on_the_worker(data: st.DataObject) -> None:
    """Random damage to a large body (bytes changed, cut, inserted): the worker says malformed
    exactly when ``decode_ingest`` does, and otherwise gives the same answer."""
    body = bytearray(_BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        match data.draw(st.sampled_from(["set", "cut", "insert"])):
            case "set":
                body[at] = data.draw(st.integers(0, 255))
            case "cut":
                del body[at : at + data.draw(st.integers(1, 40))]
            case _:
                body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    raw = bytes(body)
    try:
        expected: object = _parts(unimeter_native.decode_ingest(raw, METRICS.get, 16))
    except unimeter_native.MalformedRequest:
        expected = "malformed"

    async def on_the_worker() -> object:
        jobs = DecodeJobs(unimeter_native.DecodeWorker())
        try:
            outcome = await jobs.decode(raw, 16)
        finally:
            jobs.close()
        if isinstance(outcome, unimeter_native.MalformedRequest):
            return "malformed"
        return _parts(outcome.answer(METRICS.get))

    assert asyncio.run(on_the_worker()) == expected


_BODY = _body(400)
