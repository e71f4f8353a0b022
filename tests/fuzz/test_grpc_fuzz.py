"""Fuzzed gRPC surface: random well-typed and ill-typed requests to every RPC of a real server.

Bounded for ``make test``; ``make fuzz`` runs the same check far longer. No call may be answered
INTERNAL or UNKNOWN, the server must keep answering, and nothing may log a traceback.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.grpc_errors import details, fields
from unimeter.v1 import ingest_service_pb2, ingest_service_pb2_grpc, types_pb2

from .grpc_fuzz import METHODS, GrpcUnderFuzz, random_message


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[GrpcUnderFuzz]:
    async with GrpcUnderFuzz(tmp_path / "data") as server:
        yield server


def test_every_rpc_of_every_service_is_fuzzed() -> None:
    paths = {m.path for m in METHODS}
    assert len(paths) == 12
    assert "/unimeter.v1.AlertService/AlertSubscribe" in paths
    assert "/grpc.health.v1.Health/Check" in paths


def test_random_messages_set_every_field_sometimes() -> None:
    rng = random.Random(1)
    for method in METHODS:
        seen: set[str] = set()
        for _ in range(200):
            seen.update(f.name for f, _ in random_message(rng, method.request).ListFields())
        assert seen == {f.name for f in method.request.DESCRIPTOR.fields}, method.path


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.randoms(use_true_random=False))
async def test_no_well_typed_request_is_answered_internal_and_the_server_keeps_serving(
    target: GrpcUnderFuzz, caplog: pytest.LogCaptureFixture, rng: random.Random
) -> None:
    await _check(target, caplog, rng, well_typed=True)


@FUZZ
@given(st.randoms(use_true_random=False))
async def test_an_ill_typed_body_is_invalid_argument_without_a_traceback(
    target: GrpcUnderFuzz, caplog: pytest.LogCaptureFixture, rng: random.Random
) -> None:
    await _check(target, caplog, rng, well_typed=False)


async def _check(
    target: GrpcUnderFuzz, caplog: pytest.LogCaptureFixture, rng: random.Random, *, well_typed: bool
) -> None:
    caplog.set_level(logging.INFO)
    await target.check_call(rng, well_typed=well_typed)
    await target.check_still_serving()
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, caplog.text


async def test_a_batch_of_ten_thousand_bad_events_with_huge_values_is_answered_invalid_argument(
    target: GrpcUnderFuzz,
) -> None:
    # Every event quotes its bad value in its violation: the answer must still fit a client's
    # metadata limit (it was RESOURCE_EXHAUSTED "metadata size exceeds hard limit" before).
    assert target.channel is not None
    stub = ingest_service_pb2_grpc.IngestServiceStub(target.channel)
    events = [types_pb2.Event(account_id=0, metric_code="m" * 1000) for _ in range(10_000)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Ingest(ingest_service_pb2.IngestRequest(events=events), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    named = fields(raised.value)
    assert named[0].startswith("events[0].")
    assert 1 < len(named) < 10_000
    assert "more violation(s) not listed" in details(raised.value)[1][-1][1]
    assert len(raised.value.details()) < 400
