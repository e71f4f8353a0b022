"""Fuzz inputs and checks for the node protocol's codec (``cluster_client.wire``), with no sockets.

Inputs are valid frames of every kind and every served method (the seed corpus), damaged copies of
them, several frames in one stream with one damaged, frames that declare oversize lengths (up to
4 GiB), bodies declaring huge msgpack containers, random msgpack values in a valid frame, and
plain random bytes. The check feeds them to a ``FrameDecoder`` in random chunks and runs every
decoded body through the decoder that would read it (a request's argument decoder, a response's
result decoder, the hello check): each must give a value or a ``ProtocolError``, never another
exception, and the decoder may never hold more bytes than it was fed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack

from cluster_client import wire
from cluster_client.errors import UnimeterError
from cluster_client.types import (
    AggType,
    AggValue,
    Alert,
    AlertThreshold,
    DimensionFilter,
    Metric,
    OperationType,
    Period,
    PeriodType,
    QueryResult,
    StoredEvent,
)
from cluster_client.wire import FrameDecoder, ProtocolError

from .mutations import damage, random_bytes

__all__ = ["ARG_DECODERS", "RESULT_DECODERS", "SEED_FRAMES", "check_frames", "frame_input"]

ARG_DECODERS: dict[str, Callable[[Any], object]] = {
    "cluster_status": lambda a: wire.decode_no_args(a, "cluster_status"),
    "list_metrics": lambda a: wire.decode_no_args(a, "list_metrics"),
    "create_metric": wire.decode_create_metric_args,
    "get_metric": lambda a: wire.decode_code_args(a, "get_metric"),
    "delete_metric": lambda a: wire.decode_code_args(a, "delete_metric"),
    "ingest": wire.decode_ingest_args,
    "query_realtime": wire.decode_query_realtime_args,
    "query": wire.decode_query_args,
    "list_events": wire.decode_list_events_args,
    "list_alerts": wire.decode_list_alerts_args,
    "subscribe_alerts": wire.decode_subscribe_alerts_args,
}
"""The node's argument decoder of every method it serves (a test keeps it equal to SERVED_METHODS)."""

RESULT_DECODERS: tuple[Callable[[Any], object], ...] = (
    wire.metric_from_wire,
    wire.metrics_from_wire,
    wire.ingest_outcomes_from_wire,
    wire.query_result_from_wire,
    wire.events_page_from_wire,
    wire.alerts_page_from_wire,
    wire.cluster_status_from_wire,
    wire.alert_stream_item_from_wire,
)
"""What a client runs on a node's answers: a malicious or broken node is a peer too."""

_METRIC = Metric(
    "api.calls",
    AggType.SUM,
    PeriodType.CALENDAR,
    filters=(DimensionFilter("region", ("eu", "us")),),
    thresholds=(AlertThreshold("t1", 1000, True),),
    create_time_unix_nano=1_772_323_200_000_000_000,
)
_ROWS = [(7, "api.calls", 5, 1_772_323_200_000_000_000, {"region": "eu"}, 1, "evt-1"),
         (8, "api.calls", -3, 1_772_323_200_000_000_001, None, 2, "")]  # fmt: skip
_AGG = AggValue(10, 2, 10, 7, 3, 1_772_323_200_000_000_000, 2, 1)
_ALERT = Alert(7, "api.calls", "t1", 1000, 1, 1004, 1, 2, 3, 0, 12)
_EVENT = StoredEvent(7, "api.calls", 5, 1, {"region": "eu"}, OperationType(1), "evt-1", 3, 0)

_REQUEST_ARGS: dict[str, list[Any]] = {
    "cluster_status": [],
    "list_metrics": [],
    "create_metric": [wire.metric_to_wire(_METRIC)],
    "get_metric": ["api.calls"],
    "delete_metric": ["api.calls"],
    "ingest": [[[0, _ROWS], [3, _ROWS[:1]]], True, "batch-1"],
    "query_realtime": [0, 7, "api.calls"],
    "query": [0, 7, "api.calls", 0, 10**18, 0, {"region": "eu"}, ["region"]],
    "list_events": [0, 7, 0, 10**18, "api.calls", 100, ""],
    "list_alerts": [0, 7, -1, 100],
    "subscribe_alerts": [[0, 1], {0: 5}, False, [7], ["api.calls"], ["t1"]],
}

_RESULTS: list[Any] = [
    wire.metric_to_wire(_METRIC),
    wire.metrics_to_wire([_METRIC]),
    [[[0, 1], 1]],
    wire.query_result_to_wire(QueryResult(_AGG, Period(0, 10), 4, ())),
    wire.events_page_to_wire(([_EVENT], "tok")),
    wire.alerts_page_to_wire(([_ALERT], True)),
    [8, "embedded", [["n1", "127.0.0.1:1", "127.0.0.1:2", True]], [[0, "n1", 3, 1]]],
    [wire.alert_to_wire(_ALERT), {0: 12}],
]

SEED_FRAMES: list[bytes] = [
    *(wire.encode_request(i + 1, m, a) for i, (m, a) in enumerate(_REQUEST_ARGS.items())),
    *(wire.encode_response(i + 1, True, r) for i, r in enumerate(_RESULTS)),
    wire.encode_error(3, ProtocolError("bad")),
    wire.encode_hello({"server": "unimeter-node", "max_frame_bytes": 1 << 20}),
    wire.encode_hello({"nonce": b"\1" * 32, "auth": "hmac-sha256", "proof": b"\2" * 32}),
    wire.encode_push(5, [wire.alert_to_wire(_ALERT), {0: 12}]),
    wire.encode_cancel(5),
]
"""One valid frame of every kind, every request method and every answer type."""


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice((0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)))
    if kind == 1:
        return rng.choice(("", "api.calls", "x" * rng.randrange(300), "\u00e9\u4e2d"))
    if kind == 2:
        return rng.choice((True, False, None))
    if kind == 3:
        return rng.randbytes(rng.randrange(40))
    if kind == 4:
        return rng.random() * 1e6
    if kind == 5:
        return rng.choice(list(_REQUEST_ARGS))
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {_random_value(rng, 3): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_body(rng: random.Random) -> list[Any]:
    """A body whose kind and shape are right often enough to reach the argument and result decoders."""
    kind = rng.choice((0, 0, 0, 1, 1, 2, 3, 4, rng.randrange(-3, 10)))
    if kind == wire.REQUEST:
        method = rng.choice(list(_REQUEST_ARGS))
        args = list(_REQUEST_ARGS[method])
        if args and rng.random() < 0.7:
            args[rng.randrange(len(args))] = _random_value(rng)
        else:
            args = [_random_value(rng) for _ in range(rng.randrange(9))]
        return [kind, rng.choice((1, 2**32, rng.randrange(1, 100))), method, args]
    if kind == wire.RESPONSE:
        return [kind, rng.randrange(100), rng.random() < 0.8, _random_value(rng)]
    return [kind, *(_random_value(rng) for _ in range(rng.randrange(4)))]


def frame_input(rng: random.Random) -> bytes:
    """One fuzz input: a byte stream as a (broken) peer might send it."""
    choice = rng.randrange(8)
    if choice == 0:
        return random_bytes(rng)
    if choice == 1:
        return damage(rng, rng.choice(SEED_FRAMES))[1]
    if choice == 2:
        frames = [rng.choice(SEED_FRAMES) for _ in range(rng.randrange(2, 5))]
        i = rng.randrange(len(frames))
        frames[i] = damage(rng, frames[i])[1]
        return b"".join(frames)
    if choice == 3:
        # A length over any limit, up to 4 GiB, with a little of the body: must be refused, not
        # allocated or waited for.
        size = rng.choice((wire.DEFAULT_MAX_FRAME_BYTES + 1, 2**31, 2**32 - 1, rng.randrange(2**32)))
        return size.to_bytes(4, "big") + rng.randbytes(rng.randrange(16))
    if choice == 4:
        # A small frame whose msgpack body declares a container of 2**32 - 1 items.
        header = rng.choice((b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\x94\x00\x01\xa3abc\xdd"))
        body = header + b"\xff\xff\xff\xff" + rng.randbytes(rng.randrange(8))
        return len(body).to_bytes(4, "big") + body
    if choice in (5, 6):
        return wire.encode_frame(_random_body(rng))
    return rng.choice(SEED_FRAMES)


def _check_body(body: wire.Body) -> None:
    kind = body[0]
    if kind == wire.REQUEST:
        decode = ARG_DECODERS.get(body[2])
        if decode is not None:
            _value_or_protocol_error(decode, body[3])
    elif kind == wire.RESPONSE:
        if body[2]:
            for decode in RESULT_DECODERS:
                _value_or_protocol_error(decode, body[3])
        else:
            assert isinstance(wire.remote_error(body[3]), UnimeterError)
    elif kind == wire.PUSH:
        _value_or_protocol_error(wire.alert_stream_item_from_wire, body[2])
    elif kind == wire.HELLO:
        _value_or_protocol_error(wire.check_hello, body)


def _value_or_protocol_error(decode: Callable[[Any], object], value: Any) -> None:
    try:
        decode(value)
    except ProtocolError as exc:
        assert exc.message, "a protocol error must say what is wrong"


def check_frames(rng: random.Random, data: bytes) -> int:
    """Feed ``data`` in random chunks to a decoder (the node's or the handshake's frame limit) and
    decode every body it yields; returns how many bodies were decoded. Fails on any exception other
    than ProtocolError, and if the decoder ever holds more than it was fed."""
    limit = rng.choice((wire.DEFAULT_MAX_FRAME_BYTES, 64 * 1024, 64))
    decoder = FrameDecoder(limit)
    fed = decoded = 0
    pos = 0
    try:
        while pos < len(data):
            step = rng.choice((1, 3, 7, len(data)))
            chunk = data[pos : pos + step]
            pos += len(chunk)
            fed += len(chunk)
            bodies = decoder.feed(chunk)
            assert decoder.buffered <= fed, "the decoder holds bytes it was never given"
            assert decoder.buffered < limit + 4, "the decoder buffers past its frame limit"
            for body in bodies:
                _check_body(body)
                decoded += 1
    except ProtocolError as exc:
        assert exc.message
        assert exc.to_wire()  # the error the node would send back must itself encode
        msgpack.packb(exc.to_wire())
    return decoded
