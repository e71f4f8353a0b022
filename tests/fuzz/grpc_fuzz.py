"""Fuzzing the public gRPC surface: every RPC of every service, well-typed and ill-typed requests.

``GrpcUnderFuzz`` runs a real in-process ``UnimeterServer`` on 127.0.0.1 port 0, with a metric and
an account whose numbers are known. Each input calls one RPC (the unimeter services and the health
check) with either a well-typed request (every field of the method's request message drawn at
random, message fields and repeated fields recursively: empty, huge and non-ASCII strings, zero,
extreme and random ints, enum numbers nobody defined) or an ill-typed body (random bytes, a damaged
valid request, another method's request) sent raw. The check: the status is one a bad request may
get (never INTERNAL, UNKNOWN, UNAVAILABLE, ...); an INVALID_ARGUMENT for a well-typed request
names the offending field; a body that does not decode as the method's message is INVALID_ARGUMENT;
and the known numbers still come back. Logged tracebacks are the test's business (caplog, or
``node_server_fuzz.TracebackCounter`` in the long run).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import descriptor as pbd
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2

from service.config import ServeConfig
from service.server import UnimeterServer
from tests.grpc_errors import fields
from unimeter.v1 import (
    alert_service_pb2,
    cluster_service_pb2,
    ingest_service_pb2,
    metrics_service_pb2,
    query_service_pb2,
    types_pb2,
)

from .mutations import damage, random_bytes

__all__ = ["METHODS", "GrpcUnderFuzz", "Method", "random_message"]

ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
"""What a request a client got wrong may be answered; INTERNAL, UNKNOWN and the rest never."""

CHECK_METRIC = "fuzz.check"
CHECK_ACCOUNT = 4_000_000_001
KNOWN_METRIC = "api.calls"
"""A metric that exists, so that random requests naming it get past the metric lookup."""

_CALL_TIMEOUT = 30.0
_STRINGS = ("", KNOWN_METRIC, "region", "eu", "x", "\u00e9\u4e2d\U0001f600", "a" * 300, "bad code!", "\x00")
_INTS = (0, 1, -1, 2, 59, 60, 1000, 10_001, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)
_NOW_NS = time.time_ns()


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: its path, request message class and whether it streams answers."""

    path: str
    request: type[Message]
    streaming: bool


def _methods() -> list[Method]:
    out = []
    for module in (alert_service_pb2, cluster_service_pb2, ingest_service_pb2, metrics_service_pb2,
                   query_service_pb2, health_pb2):  # fmt: skip
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                if m.client_streaming or (module is health_pb2 and m.name != "Check"):
                    continue  # Health.Watch streams forever by design; nothing else streams requests
                request = getattr(module, m.input_type.name)
                out.append(Method(f"/{service.full_name}/{m.name}", request, m.server_streaming))
    return out


METHODS = _methods()
"""Every unary-request RPC of every unimeter service, and the health check."""

_INT_TYPES = {
    pbd.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    pbd.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _random_int(rng: random.Random, lo: int, hi: int) -> int:
    pick = rng.randrange(4)
    if pick == 0:
        return rng.randint(lo, hi)
    if pick == 1:  # a plausible timestamp, so time ranges are sometimes valid
        return min(hi, max(lo, _NOW_NS + rng.randrange(-(10**15), 10**15)))
    if pick == 2:
        return min(hi, max(lo, rng.randrange(-5, 100)))
    return min(hi, max(lo, rng.choice(_INTS)))


def _random_scalar(rng: random.Random, field: pbd.FieldDescriptor) -> Any:
    t = field.type
    if t in _INT_TYPES:
        return _random_int(rng, *_INT_TYPES[t])
    if t == pbd.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return rng.choice((*known, *known, rng.randint(-(2**31), 2**31 - 1), max(known) + 1))
    if t == pbd.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == pbd.FieldDescriptor.TYPE_STRING:
        pick = rng.randrange(5)
        if pick == 0:
            return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))
        if pick == 1:
            return "h" * rng.choice((129, 1025, 70_000))  # huge
        return rng.choice(_STRINGS)
    if t == pbd.FieldDescriptor.TYPE_BYTES:
        return random_bytes(rng, 64)
    if t in (pbd.FieldDescriptor.TYPE_DOUBLE, pbd.FieldDescriptor.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 1e300, float("nan"), rng.random()))
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def random_message(rng: random.Random, cls: type[Message], depth: int = 0) -> Message:
    """A ``cls`` with each field set at random (or left unset), recursively to a small depth."""
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        if rng.random() < 0.25:
            continue  # unset: the default, which is often the interesting case
        is_message = field.type == pbd.FieldDescriptor.TYPE_MESSAGE
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, value_f = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            target = getattr(msg, field.name)
            for _ in range(rng.randrange(4)):
                target[_random_scalar(rng, key_f)] = _random_scalar(rng, value_f)
        elif field.is_repeated:
            n = rng.choice((0, 1, 2, 3, 40)) if depth < 2 else rng.randrange(2)
            target = getattr(msg, field.name)
            for _ in range(n):
                if is_message:
                    target.append(random_message(rng, _message_class(field), depth + 1))
                else:
                    target.append(_random_scalar(rng, field))
        elif is_message:
            if depth < 3:
                getattr(msg, field.name).CopyFrom(random_message(rng, _message_class(field), depth + 1))
        else:
            setattr(msg, field.name, _random_scalar(rng, field))
    return msg


def _message_class(field: pbd.FieldDescriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(field.message_type)


def _ill_typed_body(rng: random.Random, method: Method) -> bytes:
    pick = rng.randrange(3)
    if pick == 0:
        return random_bytes(rng, 512)
    if pick == 1:
        valid = random_message(rng, method.request).SerializeToString() or b"\x08\x01"
        return damage(rng, valid)[1]
    other = rng.choice(METHODS)
    return random_message(rng, other.request).SerializeToString()


def _decodes(cls: type[Message], body: bytes) -> bool:
    try:
        cls.FromString(body)
    except DecodeError:
        return False
    return True


class GrpcUnderFuzz:
    """A real in-process server with known numbers, and raw callers of every method."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self.server: UnimeterServer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.codes: dict[str, int] = {}
        """How many answers of each status code the fuzzing got (to show it reached the handlers)."""

    async def __aenter__(self) -> GrpcUnderFuzz:
        config = ServeConfig(data_dir=self._data_dir, grpc_addr="127.0.0.1:0", partitions=4,
                             flush_interval_ms=5.0, min_free_disk_mb=0.0)  # fmt: skip
        self.server = UnimeterServer(config)
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.grpc_port}")
        for code in (CHECK_METRIC, KNOWN_METRIC):
            metric = types_pb2.Metric(code=code, agg_type=types_pb2.AGG_TYPE_SUM)
            await self._unary("/unimeter.v1.MetricsService/CreateMetric")(
                metrics_service_pb2.CreateMetricRequest(metric=metric).SerializeToString(), timeout=10
            )
        events = [
            types_pb2.Event(account_id=CHECK_ACCOUNT, metric_code=CHECK_METRIC, value=v,
                            time_unix_nano=_NOW_NS + v, event_id=f"c{v}")
            for v in range(1, 11)
        ]  # fmt: skip
        request = ingest_service_pb2.IngestRequest(events=events, delivery=types_pb2.DELIVERY_MODE_SYNC)
        await self._unary("/unimeter.v1.IngestService/Ingest")(request.SerializeToString(), timeout=10)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.server is not None:
            await self.server.stop(grace=1.0)

    def _unary(self, path: str) -> Any:
        assert self.channel is not None
        return self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)

    async def _call(self, method: Method, body: bytes) -> tuple[grpc.StatusCode, grpc.aio.AioRpcError | None]:
        assert self.channel is not None
        try:
            if not method.streaming:
                await self._unary(method.path)(body, timeout=_CALL_TIMEOUT)
                return grpc.StatusCode.OK, None
            call = self.channel.unary_stream(
                method.path, request_serializer=None, response_deserializer=None
            )(body, timeout=_CALL_TIMEOUT)
            try:
                async with asyncio.timeout(_CALL_TIMEOUT):
                    await call.read()  # the first message (a subscription's opening heartbeat) or the error
            finally:
                call.cancel()
            return grpc.StatusCode.OK, None
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc

    async def check_call(self, rng: random.Random, *, well_typed: bool) -> None:
        """One fuzz input (see the module docstring) and its checks."""
        method = rng.choice(METHODS)
        body = (random_message(rng, method.request).SerializeToString() if well_typed
                else _ill_typed_body(rng, method))  # fmt: skip
        code, error = await self._call(method, body)
        self.codes[code.name] = self.codes.get(code.name, 0) + 1
        what = f"{method.path} with {'a well-typed' if well_typed else 'an ill-typed'} body {body[:200]!r}"
        detail = "" if error is None else f": {error.details()}"
        assert code in ALLOWED, f"{what} was answered {code.name}{detail}"
        if not _decodes(method.request, body):
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what} does not decode, answered {code.name}"
        elif code == grpc.StatusCode.INVALID_ARGUMENT and method.request is not health_pb2.HealthCheckRequest:
            assert error is not None
            assert any(fields(error)), f"{what}: INVALID_ARGUMENT names no field{detail}"

    async def check_still_serving(self) -> None:
        """The known account's numbers come back exactly."""
        request = query_service_pb2.QueryRealtimeRequest(account_id=CHECK_ACCOUNT, metric_code=CHECK_METRIC)
        raw = await self._unary("/unimeter.v1.QueryService/QueryRealtime")(
            request.SerializeToString(), timeout=10
        )
        answer = query_service_pb2.QueryRealtimeResponse.FromString(raw)
        assert (answer.value.sum, answer.value.count) == (55, 10)
