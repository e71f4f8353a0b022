"""The node-protocol codec without sockets: type codecs round-trip exactly through msgpack, the frame
decoder is indifferent to how bytes are chunked, and malformed input raises ProtocolError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client import errors, wire
from cluster_client.node_api import AlertStreamItem, ClusterStatus, IngestOutcome, NodeInfo, PartitionInfo
from cluster_client.types import (
    AggType,
    AggValue,
    Alert,
    AlertThreshold,
    DimensionFilter,
    GroupValue,
    Metric,
    OperationType,
    Period,
    PeriodType,
    QueryResult,
    StoredEvent,
)

i64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=12)
str_map = st.dictionaries(text, text, max_size=4)

metrics = st.builds(
    Metric,
    code=text,
    agg_type=st.sampled_from(AggType),
    period_type=st.sampled_from(PeriodType),
    billing_cycle_day=i64,
    fixed_period_seconds=i64,
    time_zone=text,
    carry_over=st.booleans(),
    filters=st.lists(st.builds(DimensionFilter, text, st.lists(text, max_size=3).map(tuple)), max_size=3).map(
        tuple
    ),
    thresholds=st.lists(st.builds(AlertThreshold, text, i64, st.booleans()), max_size=3).map(tuple),
    create_time_unix_nano=i64,
)
agg_values = st.builds(AggValue, i64, i64, i64, i64, i64, i64, i64, i64)
periods = st.builds(Period, i64, i64)
query_results = st.builds(
    QueryResult,
    agg_values,
    periods,
    i64,
    st.lists(st.builds(GroupValue, str_map, agg_values), max_size=3).map(tuple),
)
ingest_outcomes = st.builds(IngestOutcome, st.lists(i64, max_size=20), i64)
stored_events = st.builds(
    StoredEvent, i64, text, i64, i64, str_map, st.sampled_from(OperationType), text, i64, i64
)
alerts = st.builds(Alert, i64, text, text, i64, i64, i64, i64, i64, i64, i64, i64)
cluster_statuses = st.builds(
    ClusterStatus,
    i64,
    text,
    st.lists(st.builds(NodeInfo, text, text, text, st.booleans()), max_size=3).map(tuple),
    st.lists(st.builds(PartitionInfo, i64, text, i64, i64, i64), max_size=3).map(tuple),
)
alert_stream_items = st.builds(
    AlertStreamItem, st.none() | alerts, st.dictionaries(st.integers(0, 4096), i64, max_size=4)
)
rows = st.lists(
    st.tuples(i64, text, i64, i64, st.none() | str_map, st.sampled_from([1, 2]), text), max_size=8
)


def through_msgpack(x: Any) -> Any:
    """What the peer's decoder hands the codecs: arrays as tuples, int map keys allowed."""
    return msgpack.unpackb(msgpack.packb(x), use_list=False, raw=False, strict_map_key=False)


CODECS: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("metric", metrics, wire.metric_to_wire, wire.metric_from_wire),
    ("metrics", st.lists(metrics, max_size=3), wire.metrics_to_wire, wire.metrics_from_wire),
    ("agg_value", agg_values, wire.agg_value_to_wire, wire.agg_value_from_wire),
    ("period", periods, wire.period_to_wire, wire.period_from_wire),
    ("query_result", query_results, wire.query_result_to_wire, wire.query_result_from_wire),
    ("ingest_outcome", ingest_outcomes, wire.ingest_outcome_to_wire, wire.ingest_outcome_from_wire),
    (
        "ingest_outcomes",
        st.lists(ingest_outcomes, max_size=3),
        wire.ingest_outcomes_to_wire,
        wire.ingest_outcomes_from_wire,
    ),
    ("stored_event", stored_events, wire.stored_event_to_wire, wire.stored_event_from_wire),
    (
        "events_page",
        st.tuples(st.lists(stored_events, max_size=3), text),
        wire.events_page_to_wire,
        wire.events_page_from_wire,
    ),
    ("alert", alerts, wire.alert_to_wire, wire.alert_from_wire),
    (
        "alerts_page",
        st.tuples(st.lists(alerts, max_size=3), st.booleans()),
        wire.alerts_page_to_wire,
        wire.alerts_page_from_wire,
    ),
    ("cluster_status", cluster_statuses, wire.cluster_status_to_wire, wire.cluster_status_from_wire),
    (
        "alert_stream_item",
        alert_stream_items,
        wire.alert_stream_item_to_wire,
        wire.alert_stream_item_from_wire,
    ),
]


@pytest.mark.parametrize(("name", "values", "to_wire", "from_wire"), CODECS, ids=[c[0] for c in CODECS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_type_codec_round_trips_exactly_through_msgpack(
    name: str,
    values: st.SearchStrategy[Any],
    to_wire: Callable[[Any], Any],
    from_wire: Callable[[Any], Any],
    data: st.DataObject,
) -> None:
    value = data.draw(values)
    decoded = from_wire(through_msgpack(to_wire(value)))
    assert decoded == value
    # Equality alone would let a list pass for a tuple's field, or an int for an enum.
    assert repr(decoded) == repr(value)


def test_decoded_enums_and_containers_have_their_declared_types() -> None:
    metric = Metric("m", AggType.SUM, PeriodType.WEEK, filters=(DimensionFilter("k", ("a", "b")),))
    got = wire.metric_from_wire(through_msgpack(wire.metric_to_wire(metric)))
    assert type(got.agg_type) is AggType and type(got.period_type) is PeriodType
    assert type(got.filters) is tuple and type(got.filters[0].values) is tuple
    event = StoredEvent(1, "m", 2, 3, {"k": "v"}, OperationType.REMOVE, "e", 4, 5)
    got_event = wire.stored_event_from_wire(through_msgpack(wire.stored_event_to_wire(event)))
    assert type(got_event.operation) is OperationType and type(got_event.properties) is dict
    outcome = wire.ingest_outcome_from_wire(
        through_msgpack(wire.ingest_outcome_to_wire(IngestOutcome([1], 0)))
    )
    assert type(outcome.offsets) is list


@settings(max_examples=100, deadline=None)
@given(batch=rows)
def test_rows_come_back_as_the_same_tuples(batch: list[tuple[Any, ...]]) -> None:
    got = wire.rows_from_wire(through_msgpack(batch))
    assert got == batch
    for row in got:
        assert type(row) is tuple
        assert row[4] is None or type(row[4]) is dict
        assert type(row[1]) is str and type(row[6]) is str


def test_ingest_arguments_round_trip() -> None:
    parts = [
        (3, [(7, "api_calls", 1, 0, None, 1, "e1"), (8, "api_calls", 2, 5, {"region": "eu"}, 2, "")]),
        (5, []),
    ]
    assert wire.decode_ingest_args(through_msgpack([parts, True, "b-1"])) == (parts, True, "b-1")


def test_query_and_subscribe_arguments_round_trip() -> None:
    query = [1, 42, "m", 10, 20, 0, {"region": "eu"}, ["tier"]]
    assert wire.decode_query_args(through_msgpack(query)) == tuple(query)
    subscribe = [[0, 1], {0: 17, 1: 0}, False, [42], ["m"], []]
    assert wire.decode_subscribe_alerts_args(through_msgpack(subscribe)) == tuple(subscribe)
    events = [1, 42, 0, 100, "m", 50, "tok"]
    assert wire.decode_list_events_args(through_msgpack(events)) == tuple(events)
    assert wire.decode_list_alerts_args(through_msgpack([1, 42, -1, 10])) == (1, 42, -1, 10)
    assert wire.decode_query_realtime_args(through_msgpack([1, 42, "m"])) == (1, 42, "m")
    assert wire.decode_code_args(through_msgpack(["m"]), "get_metric") == "m"
    metric = Metric("m", thresholds=(AlertThreshold("t", 5, True),))
    assert wire.decode_create_metric_args(through_msgpack([wire.metric_to_wire(metric)])) == metric


@pytest.mark.parametrize(
    ("decode", "args", "fragment"),
    [
        (wire.decode_ingest_args, [[[1, [(1, "m", True, 0, None, 1, "")]]], False, ""], "rows[0]"),
        (wire.decode_ingest_args, [[[1, [(1, "m", 1, 0, {"k": 1}, 1, "")]]], False, ""], "properties"),
        (wire.decode_ingest_args, [[[1, [(1, "m", 1, 0, None, 1)]]], False, ""], "rows[0]"),
        (wire.decode_ingest_args, [[], 1, ""], "sync"),
        (wire.decode_ingest_args, [[], False], "takes 3 arguments"),
        (wire.decode_query_args, [1, 42, "m", 10, 20, 0, {"a": 1}, []], "filters"),
        (wire.decode_subscribe_alerts_args, [[0], {"0": 1}, False, [], [], []], "since_offsets"),
        (wire.decode_create_metric_args, [["m", 99, 1, 1, 1, "UTC", False, [], [], 0]], "agg_type"),
        (wire.decode_create_metric_args, [["m"]], "expected 10 fields"),
        (wire.decode_list_alerts_args, [1, 42, "x", 10], "after_offset"),
    ],
)
def test_argument_decoders_reject_wrong_types(
    decode: Callable[[Any], Any], args: list[Any], fragment: str
) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        decode(through_msgpack(args))
    assert fragment in info.value.message


ERRORS = [
    errors.InvalidArgumentError(
        "bad batch",
        violations=[errors.FieldViolation("events[7].metric_code", "unknown metric")],
    ),
    errors.NotFoundError("no metric m", reason="METRIC_NOT_FOUND"),
    errors.AlreadyExistsError("exists"),
    errors.OutOfRangeError("past the end"),
    errors.ResourceExhaustedError("slow down", retry_after_seconds=0.25),
    errors.UnavailableError("moving"),
    errors.UnavailableError("moved", reason="PARTITION_NOT_OWNED", owner_hint="127.0.0.1:7002"),
    errors.DeadlineExceededError("late"),
    errors.UnauthenticatedError("who"),
    errors.PermissionDeniedError("no"),
    errors.InternalError("bug"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.reason}")
def test_errors_round_trip_as_the_same_subclass(error: errors.UnimeterError) -> None:
    got = wire.remote_error(through_msgpack(wire.error_to_wire(error)))
    assert type(got) is type(error)
    assert (got.message, got.reason, got.violations, got.retry_after_seconds, got.owner_hint) == (
        error.message,
        error.reason,
        error.violations,
        error.retry_after_seconds,
        error.owner_hint,
    )


def test_a_malformed_error_payload_becomes_an_internal_error() -> None:
    assert type(wire.remote_error(5)) is errors.InternalError
    assert type(wire.remote_error(("INVALID_ARGUMENT", "m", "R", 7, None))) is errors.InternalError


# Frames ------------------------------------------------------------------------------------------

SAMPLE_FRAMES = [
    wire.encode_hello({"node_id": "n1", "max_frame_bytes": 1024}),
    wire.encode_request(1, "ingest", [[[3, [(7, "m", 1, 0, {"k": "v"}, 1, "e")]]], True, "b"]),
    wire.encode_response(1, True, [[[5], 0]]),
    wire.encode_error(2, errors.NotFoundError("gone")),
    wire.encode_push(3, [None, {0: 5}]),
    wire.encode_cancel(3),
    wire.encode_request(4, "cluster_status", []),
]
EXPECTED_BODIES = [
    (wire.HELLO, (1, 0), {"node_id": "n1", "max_frame_bytes": 1024}),
    (wire.REQUEST, 1, "ingest", (((3, ((7, "m", 1, 0, {"k": "v"}, 1, "e"),)),), True, "b")),
    (wire.RESPONSE, 1, True, (((5,), 0),)),
    (wire.RESPONSE, 2, False, ("NOT_FOUND", "gone", "NOT_FOUND", (), None, None)),
    (wire.PUSH, 3, (None, {0: 5})),
    (wire.CANCEL, 3),
    (wire.REQUEST, 4, "cluster_status", ()),
]


def test_decoder_returns_every_body_of_one_chunk() -> None:
    decoder = wire.FrameDecoder()
    assert decoder.feed(b"".join(SAMPLE_FRAMES)) == EXPECTED_BODIES
    assert decoder.buffered == 0


def test_decoder_fed_byte_by_byte() -> None:
    decoder = wire.FrameDecoder()
    got: list[wire.Body] = []
    for byte in b"".join(SAMPLE_FRAMES):
        got.extend(decoder.feed(bytes([byte])))
    assert got == EXPECTED_BODIES
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_decoder_is_indifferent_to_chunking(data: st.DataObject) -> None:
    indexes = data.draw(st.lists(st.integers(0, len(SAMPLE_FRAMES) - 1), max_size=20))
    stream = b"".join(SAMPLE_FRAMES[i] for i in indexes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = wire.FrameDecoder()
    got: list[wire.Body] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[start:cut]
        # Feed the kinds of buffer a transport may hand over.
        got.extend(decoder.feed(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(chunk)))
        start = cut
    assert got == [EXPECTED_BODIES[i] for i in indexes]
    assert decoder.buffered == 0


def test_oversize_length_is_refused_before_the_body_arrives() -> None:
    decoder = wire.FrameDecoder(max_frame_bytes=1000)
    assert decoder.feed((1000).to_bytes(4, "big")) == []  # exactly the limit is fine
    decoder = wire.FrameDecoder(max_frame_bytes=1000)
    with pytest.raises(wire.ProtocolError) as info:
        decoder.feed((1001).to_bytes(4, "big"))
    assert info.value.reason == "FRAME_TOO_LARGE"
    with pytest.raises(wire.ProtocolError):
        wire.FrameDecoder().feed(b"\xff\xff\xff\xff")


def frame_of(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xc1", "not valid msgpack"),  # a reserved, never-valid msgpack byte
        (msgpack.packb([0, 1, "m", []]) + b"\x00", "not valid msgpack"),  # trailing bytes
        (b"\x94\x00\x01\xa1\xff\x90", "not valid msgpack"),  # a str that is not UTF-8
        (b"", "not valid msgpack"),
        (msgpack.packb(5), "not a non-empty array"),
        (msgpack.packb({"kind": 0}), "not a non-empty array"),
        (msgpack.packb([]), "not a non-empty array"),
        (msgpack.packb([9, 1]), "unknown frame kind"),
        (msgpack.packb([True, 1, "m", []]), "unknown frame kind"),
        (msgpack.packb([0, True, "m", []]), "request must be"),
        (msgpack.packb([0, 0, "m", []]), "request must be"),
        (msgpack.packb([0, 1, 7, []]), "request must be"),
        (msgpack.packb([0, 1, "m", {}]), "request must be"),
        (msgpack.packb([1, 1, 1, None]), "response must be"),
        (msgpack.packb([2, "s", None]), "push must be"),
        (msgpack.packb([3, 1, {}]), "hello must be"),
        (msgpack.packb([3, [1, 0], []]), "hello must be"),
        (msgpack.packb([4]), "stream-cancel must be"),
    ],
)
def test_garbage_frames_raise_protocol_error(payload: bytes, fragment: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.FrameDecoder().feed(frame_of(payload))
    assert fragment in info.value.message


def test_a_malformed_request_keeps_its_id_for_the_answer() -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.FrameDecoder().feed(frame_of(msgpack.packb([0, 77, "m"])))
    assert info.value.request_id == 77
    assert isinstance(info.value, errors.InvalidArgumentError)


def test_hello_of_an_unknown_major_version_is_refused() -> None:
    (body,) = wire.FrameDecoder().feed(wire.encode_hello({}, version=(2, 0)))
    with pytest.raises(wire.ProtocolError) as info:
        wire.check_hello(body)
    assert info.value.reason == "UNSUPPORTED_PROTOCOL_VERSION"
    assert "2.0" in info.value.message
    (body,) = wire.FrameDecoder().feed(wire.encode_hello({"x": 1}, version=(1, 9)))
    assert wire.check_hello(body) == ((1, 9), {"x": 1})


def test_first_frame_must_be_a_hello() -> None:
    (body,) = wire.FrameDecoder().feed(wire.encode_request(1, "cluster_status", []))
    with pytest.raises(wire.ProtocolError) as info:
        wire.check_hello(body)
    assert info.value.reason == "HELLO_REQUIRED"
