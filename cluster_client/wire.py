"""The node protocol's codec: frames, bodies and the msgpack form of every shared type, with no I/O.

A frame is ``u32 big-endian length | msgpack body``; a body is an array whose first element says its
kind: request ``[0, request_id, method, args]``, response ``[1, request_id, ok, result_or_error]``,
push ``[2, stream_id, payload]``, hello ``[3, [major, minor], info]`` (sent first by both sides) and
stream-cancel ``[4, request_id]``. Request id 0 is reserved: a response with id 0 is a
connection-level error sent just before the peer closes. A request's ``args`` are the ``NodeApi``
method's parameters in signature order, each in the wire form given by the type codecs below; the
``decode_*_args`` functions check them on the node's side. Everything here is a plain function of
bytes and values, tested without sockets; ``node_connection`` and ``node.protocol_server`` own the
sockets. It is not a general RPC layer: it knows exactly the NodeApi methods and their types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, TypeVar

import msgpack

from .errors import InternalError, InvalidArgumentError, UnimeterError, error_from_wire
from .node_api import AlertStreamItem, ClusterStatus, IngestOutcome, NodeInfo, PartitionInfo
from .types import (
    AggType,
    AggValue,
    Alert,
    AlertThreshold,
    DimensionFilter,
    EventRow,
    GroupValue,
    Metric,
    OperationType,
    Period,
    PeriodType,
    QueryResult,
    StoredEvent,
)

__all__ = [
    "CANCEL",
    "DEFAULT_MAX_FRAME_BYTES",
    "HELLO",
    "PROTOCOL_VERSION",
    "PUSH",
    "REQUEST",
    "RESPONSE",
    "SUPPORTED_MAJOR_VERSIONS",
    "Args",
    "Body",
    "FrameDecoder",
    "ProtocolError",
    "agg_value_from_wire",
    "agg_value_to_wire",
    "alert_from_wire",
    "alert_stream_item_from_wire",
    "alert_stream_item_to_wire",
    "alert_to_wire",
    "alerts_page_from_wire",
    "alerts_page_to_wire",
    "check_hello",
    "cluster_status_from_wire",
    "cluster_status_to_wire",
    "decode_code_args",
    "decode_create_metric_args",
    "decode_ingest_args",
    "decode_list_alerts_args",
    "decode_list_events_args",
    "decode_no_args",
    "decode_query_args",
    "decode_query_realtime_args",
    "decode_subscribe_alerts_args",
    "encode_cancel",
    "encode_error",
    "encode_frame",
    "encode_hello",
    "encode_push",
    "encode_request",
    "encode_response",
    "error_to_wire",
    "events_page_from_wire",
    "events_page_to_wire",
    "ingest_outcome_from_wire",
    "ingest_outcome_to_wire",
    "ingest_outcomes_from_wire",
    "ingest_outcomes_to_wire",
    "metric_from_wire",
    "metric_to_wire",
    "metrics_from_wire",
    "metrics_to_wire",
    "period_from_wire",
    "period_to_wire",
    "query_result_from_wire",
    "query_result_to_wire",
    "remote_error",
    "rows_from_wire",
    "stored_event_from_wire",
    "stored_event_to_wire",
]

REQUEST = 0
RESPONSE = 1
PUSH = 2
HELLO = 3
CANCEL = 4

PROTOCOL_VERSION: tuple[int, int] = (1, 0)
"""``(major, minor)`` this code speaks. A minor bump only adds; a major bump breaks."""

SUPPORTED_MAJOR_VERSIONS = frozenset({1})

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

Body = tuple[Any, ...]
"""A decoded, shape-checked body: a tuple whose first element is one of the kinds above."""

_E = TypeVar("_E", bound=IntEnum)
_T = TypeVar("_T")


class ProtocolError(InvalidArgumentError):
    """The peer broke the node protocol (bad frame, wrong shape, bad argument types, bad version).

    ``request_id`` is set when the offending frame was a request whose id could be read, so the
    answer can name it. It subclasses InvalidArgumentError so that ``to_wire`` sends it as one.
    """

    default_reason = "PROTOCOL_ERROR"

    def __init__(self, message: str, *, reason: str | None = None, request_id: int | None = None) -> None:
        super().__init__(message, reason=reason)
        self.request_id = request_id


# --------------------------------------------------------------------------------------------------
# Frames and bodies
# --------------------------------------------------------------------------------------------------


def encode_frame(body: Sequence[Any]) -> bytes:
    """One frame: the big-endian length of the msgpack ``body``, then the body."""
    payload: bytes = msgpack.packb(body)
    return len(payload).to_bytes(4, "big") + payload


def encode_request(request_id: int, method: str, args: Sequence[Any]) -> bytes:
    """A request frame; ``args`` in the method's signature order, already in wire form."""
    return encode_frame((REQUEST, request_id, method, args))


def encode_response(request_id: int, ok: bool, result_or_error: Any) -> bytes:
    """A response frame: ``ok`` with a wire-form result, or not ``ok`` with ``error_to_wire``'s list."""
    return encode_frame((RESPONSE, request_id, ok, result_or_error))


def encode_error(request_id: int, error: UnimeterError) -> bytes:
    """A failed response carrying ``error``; request id 0 makes it a connection-level error."""
    return encode_frame((RESPONSE, request_id, False, error.to_wire()))


def encode_push(stream_id: int, payload: Any) -> bytes:
    """A server-initiated stream item for the stream opened by request ``stream_id``."""
    return encode_frame((PUSH, stream_id, payload))


def encode_hello(info: dict[str, Any], version: tuple[int, int] = PROTOCOL_VERSION) -> bytes:
    """The first frame each side sends."""
    return encode_frame((HELLO, version, info))


def encode_cancel(request_id: int) -> bytes:
    """Ask the node to stop the stream opened by ``request_id``."""
    return encode_frame((CANCEL, request_id))


def check_hello(body: Body) -> tuple[tuple[int, int], dict[str, Any]]:
    """The peer's ``(version, info)`` from its hello body, or ProtocolError if it is not one we speak."""
    if body[0] != HELLO:
        raise ProtocolError("expected a hello frame first", reason="HELLO_REQUIRED")
    version: tuple[int, int] = body[1]
    if version[0] not in SUPPORTED_MAJOR_VERSIONS:
        raise ProtocolError(
            f"unsupported node protocol version {version[0]}.{version[1]}; this side speaks "
            f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]} (majors {sorted(SUPPORTED_MAJOR_VERSIONS)})",
            reason="UNSUPPORTED_PROTOCOL_VERSION",
        )
    return version, body[2]


def _is_int(x: object) -> bool:
    # bool is an int subclass; a msgpack true where an id belongs is a malformed frame.
    return type(x) is int


def _check_body(body: object) -> Body:
    if type(body) is not tuple or not body:
        raise ProtocolError("frame body is not a non-empty array")
    kind = body[0]
    n = len(body)
    if kind == REQUEST and _is_int(kind):
        rid = body[1] if n > 1 and _is_int(body[1]) and body[1] > 0 else None
        if n != 4 or rid is None or type(body[2]) is not str or type(body[3]) is not tuple:
            raise ProtocolError(
                "request must be [0, request_id > 0, method: str, args: array]", request_id=rid
            )
    elif kind == RESPONSE and _is_int(kind):
        if n != 4 or not _is_int(body[1]) or type(body[2]) is not bool:
            raise ProtocolError("response must be [1, request_id, ok: bool, result_or_error]")
    elif kind == PUSH and _is_int(kind):
        if n != 3 or not _is_int(body[1]):
            raise ProtocolError("push must be [2, stream_id, payload]")
    elif kind == HELLO and _is_int(kind):
        version = body[1] if n > 1 else None
        if (
            n != 3
            or type(version) is not tuple
            or len(version) != 2
            or not (_is_int(version[0]) and _is_int(version[1]))
            or type(body[2]) is not dict
        ):
            raise ProtocolError("hello must be [3, [major, minor], info: map]", reason="HELLO_REQUIRED")
    elif kind == CANCEL and _is_int(kind):
        if n != 2 or not _is_int(body[1]):
            raise ProtocolError("stream-cancel must be [4, request_id]")
    else:
        raise ProtocolError(f"unknown frame kind {kind!r}")
    return body


def _unpack(data: memoryview) -> object:
    try:
        # use_list=False: arrays become tuples, so EventRows arrive as the tuples the node wants
        # with no per-row conversion. strict_map_key=False: since_offsets and alert-stream offsets
        # are maps keyed by partition number.
        return msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise ProtocolError(f"frame body is not valid msgpack: {type(exc).__name__}: {exc}") from None


class FrameDecoder:
    """Incremental frame decoder: ``feed`` bytes as they arrive, get back every complete body.

    Raises ProtocolError on a frame longer than ``max_frame_bytes`` (as soon as its length is read),
    a body that is not valid msgpack, or one that is not a well-formed body array. After an error
    the byte stream is unusable; bodies decoded from the same ``feed`` before the bad frame are not
    returned, since the connection is about to be closed and could not answer them.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Body]:
        """Add ``data``; return the bodies of every frame it completes, in order."""
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            # Common case on a busy connection: the chunk holds whole frames; decode it in place
            # rather than copying it into the buffer first.
            src = data
        out: list[Body] = []
        pos = 0
        end_of_data = len(src)
        limit = self.max_frame_bytes
        with memoryview(src) as view:
            while end_of_data - pos >= 4:
                size = int.from_bytes(view[pos : pos + 4], "big")
                if size > limit:
                    raise ProtocolError(
                        f"frame of {size} bytes exceeds the limit of {limit} bytes", reason="FRAME_TOO_LARGE"
                    )
                end = pos + 4 + size
                if end > end_of_data:
                    break
                out.append(_check_body(_unpack(view[pos + 4 : end])))
                pos = end
            rest = view[pos:].tobytes() if src is not buf and pos < end_of_data else b""
        if src is buf:
            del buf[:pos]
        elif rest:
            self._buf = bytearray(rest)
        return out


# --------------------------------------------------------------------------------------------------
# Checked conversions: every decoder below rejects a wrong type with a ProtocolError naming the field.
# --------------------------------------------------------------------------------------------------


def _bad(what: str, expected: str, got: object) -> ProtocolError:
    return ProtocolError(f"{what}: expected {expected}, got {type(got).__name__}")


def _int(x: object, what: str) -> int:
    if type(x) is not int:
        raise _bad(what, "int", x)
    return x


def _str(x: object, what: str) -> str:
    if type(x) is not str:
        raise _bad(what, "str", x)
    return x


def _bool(x: object, what: str) -> bool:
    if type(x) is not bool:
        raise _bad(what, "bool", x)
    return x


def _seq(x: object, what: str) -> Sequence[Any]:
    if not isinstance(x, (tuple, list)):
        raise _bad(what, "array", x)
    return x


def _fields(x: object, n: int, what: str) -> Sequence[Any]:
    s = _seq(x, what)
    if len(s) != n:
        raise ProtocolError(f"{what}: expected {n} fields, got {len(s)}")
    return s


def _enum(cls: type[_E], x: object, what: str) -> _E:
    try:
        return cls(_int(x, what))
    except ValueError:
        raise ProtocolError(f"{what}: {x} is not a {cls.__name__}") from None


def _int_list(x: object, what: str) -> list[int]:
    s = _seq(x, what)
    for v in s:
        if type(v) is not int:
            raise _bad(f"{what}[]", "int", v)
    return list(s)


def _str_list(x: object, what: str) -> list[str]:
    s = _seq(x, what)
    for v in s:
        if type(v) is not str:
            raise _bad(f"{what}[]", "str", v)
    return list(s)


def _str_map(x: object, what: str) -> dict[str, str]:
    if type(x) is not dict:
        raise _bad(what, "map", x)
    for k, v in x.items():
        if type(k) is not str or type(v) is not str:
            raise ProtocolError(f"{what}: keys and values must be str")
    return x


def _int_map(x: object, what: str) -> dict[int, int]:
    if type(x) is not dict:
        raise _bad(what, "map", x)
    for k, v in x.items():
        if type(k) is not int or type(v) is not int:
            raise ProtocolError(f"{what}: keys and values must be int")
    return x


def _list_of(x: object, decode: Callable[[object], _T], what: str) -> list[_T]:
    return [decode(item) for item in _seq(x, what)]


# --------------------------------------------------------------------------------------------------
# Type codecs: X_to_wire gives msgpack-native lists, X_from_wire checks and rebuilds X.
# --------------------------------------------------------------------------------------------------


def metric_to_wire(m: Metric) -> list[Any]:
    """``[code, agg_type, period_type, billing_cycle_day, fixed_period_seconds, time_zone,
    carry_over, [[key, [values]]], [[code, value, recurring]], create_time_unix_nano]``."""
    return [
        m.code,
        int(m.agg_type),
        int(m.period_type),
        m.billing_cycle_day,
        m.fixed_period_seconds,
        m.time_zone,
        m.carry_over,
        [[f.key, list(f.values)] for f in m.filters],
        [[t.code, t.value, t.recurring] for t in m.thresholds],
        m.create_time_unix_nano,
    ]


def _filter_from_wire(x: object) -> DimensionFilter:
    key, values = _fields(x, 2, "metric.filters[]")
    return DimensionFilter(
        _str(key, "metric.filters[].key"), tuple(_str_list(values, "metric.filters[].values"))
    )


def _threshold_from_wire(x: object) -> AlertThreshold:
    code, value, recurring = _fields(x, 3, "metric.thresholds[]")
    return AlertThreshold(
        _str(code, "metric.thresholds[].code"),
        _int(value, "metric.thresholds[].value"),
        _bool(recurring, "metric.thresholds[].recurring"),
    )


def metric_from_wire(x: object) -> Metric:
    """The Metric that :func:`metric_to_wire` encoded."""
    f = _fields(x, 10, "metric")
    return Metric(
        code=_str(f[0], "metric.code"),
        agg_type=_enum(AggType, f[1], "metric.agg_type"),
        period_type=_enum(PeriodType, f[2], "metric.period_type"),
        billing_cycle_day=_int(f[3], "metric.billing_cycle_day"),
        fixed_period_seconds=_int(f[4], "metric.fixed_period_seconds"),
        time_zone=_str(f[5], "metric.time_zone"),
        carry_over=_bool(f[6], "metric.carry_over"),
        filters=tuple(_list_of(f[7], _filter_from_wire, "metric.filters")),
        thresholds=tuple(_list_of(f[8], _threshold_from_wire, "metric.thresholds")),
        create_time_unix_nano=_int(f[9], "metric.create_time_unix_nano"),
    )


def metrics_to_wire(metrics: Sequence[Metric]) -> list[Any]:
    """A list of metrics."""
    return [metric_to_wire(m) for m in metrics]


def metrics_from_wire(x: object) -> list[Metric]:
    """The list :func:`metrics_to_wire` encoded."""
    return _list_of(x, metric_from_wire, "metrics")


def agg_value_to_wire(v: AggValue) -> list[int]:
    """``[value, count, sum, max, last_value, last_event_time_unix_nano, unique_count, alert_flags]``."""
    return [
        v.value,
        v.count,
        v.sum,
        v.max,
        v.last_value,
        v.last_event_time_unix_nano,
        v.unique_count,
        v.alert_flags,
    ]


def agg_value_from_wire(x: object) -> AggValue:
    """The AggValue :func:`agg_value_to_wire` encoded."""
    f = _fields(x, 8, "agg_value")
    for v in f:
        if type(v) is not int:
            raise _bad("agg_value[]", "int", v)
    return AggValue(*f)


def period_to_wire(p: Period) -> list[int]:
    """``[start, end]``."""
    return [p.start, p.end]


def period_from_wire(x: object) -> Period:
    """The Period :func:`period_to_wire` encoded."""
    start, end = _fields(x, 2, "period")
    return Period(_int(start, "period.start"), _int(end, "period.end"))


def query_result_to_wire(r: QueryResult) -> list[Any]:
    """``[agg_value, period, as_of_offset, [[key_map, agg_value]]]``."""
    return [
        agg_value_to_wire(r.value),
        period_to_wire(r.period),
        r.as_of_offset,
        [[g.key, agg_value_to_wire(g.value)] for g in r.groups],
    ]


def _group_from_wire(x: object) -> GroupValue:
    key, value = _fields(x, 2, "query_result.groups[]")
    return GroupValue(_str_map(key, "query_result.groups[].key"), agg_value_from_wire(value))


def query_result_from_wire(x: object) -> QueryResult:
    """The QueryResult :func:`query_result_to_wire` encoded."""
    value, period, as_of, groups = _fields(x, 4, "query_result")
    return QueryResult(
        value=agg_value_from_wire(value),
        period=period_from_wire(period),
        as_of_offset=_int(as_of, "query_result.as_of_offset"),
        groups=tuple(_list_of(groups, _group_from_wire, "query_result.groups")),
    )


def ingest_outcome_to_wire(o: IngestOutcome) -> list[Any]:
    """``[[offsets], n_duplicates]``."""
    return [list(o.offsets), o.n_duplicates]


def ingest_outcome_from_wire(x: object) -> IngestOutcome:
    """The IngestOutcome :func:`ingest_outcome_to_wire` encoded."""
    offsets, n_dup = _fields(x, 2, "ingest_outcome")
    return IngestOutcome(
        _int_list(offsets, "ingest_outcome.offsets"), _int(n_dup, "ingest_outcome.n_duplicates")
    )


def ingest_outcomes_to_wire(outcomes: Sequence[IngestOutcome]) -> list[Any]:
    """``ingest``'s answer: one outcome per part, in request order."""
    return [[list(o.offsets), o.n_duplicates] for o in outcomes]


def ingest_outcomes_from_wire(x: object) -> list[IngestOutcome]:
    """The list :func:`ingest_outcomes_to_wire` encoded."""
    return _list_of(x, ingest_outcome_from_wire, "ingest_outcomes")


def stored_event_to_wire(e: StoredEvent) -> list[Any]:
    """``[account_id, metric_code, value, time_unix_nano, properties, operation, event_id, offset,
    partition]``."""
    return [
        e.account_id,
        e.metric_code,
        e.value,
        e.time_unix_nano,
        e.properties,
        int(e.operation),
        e.event_id,
        e.offset,
        e.partition,
    ]


def stored_event_from_wire(x: object) -> StoredEvent:
    """The StoredEvent :func:`stored_event_to_wire` encoded."""
    f = _fields(x, 9, "stored_event")
    return StoredEvent(
        account_id=_int(f[0], "stored_event.account_id"),
        metric_code=_str(f[1], "stored_event.metric_code"),
        value=_int(f[2], "stored_event.value"),
        time_unix_nano=_int(f[3], "stored_event.time_unix_nano"),
        properties=_str_map(f[4], "stored_event.properties"),
        operation=_enum(OperationType, f[5], "stored_event.operation"),
        event_id=_str(f[6], "stored_event.event_id"),
        offset=_int(f[7], "stored_event.offset"),
        partition=_int(f[8], "stored_event.partition"),
    )


def events_page_to_wire(page: tuple[Sequence[StoredEvent], str]) -> list[Any]:
    """``list_events``' answer: ``[[stored_event], next_page_token]``."""
    events, token = page
    return [[stored_event_to_wire(e) for e in events], token]


def events_page_from_wire(x: object) -> tuple[list[StoredEvent], str]:
    """The page :func:`events_page_to_wire` encoded."""
    events, token = _fields(x, 2, "events_page")
    return _list_of(events, stored_event_from_wire, "events_page.events"), _str(token, "events_page.token")


def alert_to_wire(a: Alert) -> list[Any]:
    """The Alert's fields in declaration order."""
    return [
        a.account_id,
        a.metric_code,
        a.threshold_code,
        a.threshold_value,
        a.multiple,
        a.value_at_cross,
        a.period_start_unix_nano,
        a.event_time_unix_nano,
        a.record_time_unix_nano,
        a.partition,
        a.offset,
    ]


_ALERT_TYPES = (int, str, str, int, int, int, int, int, int, int, int)


def alert_from_wire(x: object) -> Alert:
    """The Alert :func:`alert_to_wire` encoded."""
    f = _fields(x, 11, "alert")
    if tuple(map(type, f)) != _ALERT_TYPES:
        raise ProtocolError("alert: fields must be [int, str, str, then 8 ints]")
    return Alert(*f)


def alerts_page_to_wire(page: tuple[Sequence[Alert], bool]) -> list[Any]:
    """``list_alerts``' answer: ``[[alert], more]``."""
    alerts, more = page
    return [[alert_to_wire(a) for a in alerts], more]


def alerts_page_from_wire(x: object) -> tuple[list[Alert], bool]:
    """The page :func:`alerts_page_to_wire` encoded."""
    alerts, more = _fields(x, 2, "alerts_page")
    return _list_of(alerts, alert_from_wire, "alerts_page.alerts"), _bool(more, "alerts_page.more")


def cluster_status_to_wire(s: ClusterStatus) -> list[Any]:
    """``[partitions, backend, [[node_id, node_addr, grpc_addr, alive]],
    [[partition, owner_node_id, last_offset, last_alert_offset, lease_epoch, lag]]]`` (``lag`` is
    absent from older peers: read as 0)."""
    return [
        s.partitions,
        s.backend,
        [[n.node_id, n.node_addr, n.grpc_addr, n.alive] for n in s.nodes],
        [
            [p.partition, p.owner_node_id, p.last_offset, p.last_alert_offset, p.lease_epoch, p.lag]
            for p in s.partition_infos
        ],
    ]


def _node_info_from_wire(x: object) -> NodeInfo:
    node_id, node_addr, grpc_addr, alive = _fields(x, 4, "cluster_status.nodes[]")
    return NodeInfo(
        _str(node_id, "cluster_status.nodes[].node_id"),
        _str(node_addr, "cluster_status.nodes[].node_addr"),
        _str(grpc_addr, "cluster_status.nodes[].grpc_addr"),
        _bool(alive, "cluster_status.nodes[].alive"),
    )


def _partition_info_from_wire(x: object) -> PartitionInfo:
    what = "cluster_status.partition_infos[]"
    fields = _seq(x, what)
    partition, owner, last, last_alert, epoch, *rest = _fields(x, 6 if len(fields) == 6 else 5, what)
    return PartitionInfo(
        _int(partition, f"{what}.partition"),
        _str(owner, f"{what}.owner_node_id"),
        _int(last, f"{what}.last_offset"),
        _int(last_alert, f"{what}.last_alert_offset"),
        _int(epoch, f"{what}.lease_epoch"),
        _int(rest[0], f"{what}.lag") if rest else 0,
    )


def cluster_status_from_wire(x: object) -> ClusterStatus:
    """The ClusterStatus :func:`cluster_status_to_wire` encoded."""
    partitions, backend, nodes, infos = _fields(x, 4, "cluster_status")
    return ClusterStatus(
        partitions=_int(partitions, "cluster_status.partitions"),
        backend=_str(backend, "cluster_status.backend"),
        nodes=tuple(_list_of(nodes, _node_info_from_wire, "cluster_status.nodes")),
        partition_infos=tuple(_list_of(infos, _partition_info_from_wire, "cluster_status.partition_infos")),
    )


def alert_stream_item_to_wire(item: AlertStreamItem) -> list[Any]:
    """``[alert or nil, {partition: offset}]``."""
    return [None if item.alert is None else alert_to_wire(item.alert), item.offsets]


def alert_stream_item_from_wire(x: object) -> AlertStreamItem:
    """The AlertStreamItem :func:`alert_stream_item_to_wire` encoded."""
    alert, offsets = _fields(x, 2, "alert_stream_item")
    return AlertStreamItem(
        None if alert is None else alert_from_wire(alert), _int_map(offsets, "alert_stream_item.offsets")
    )


_ROW_SIGNATURES = frozenset(
    {
        (int, str, int, int, dict, int, str),
        (int, str, int, int, type(None), int, str),
    }
)


def rows_from_wire(x: object) -> list[EventRow]:
    """Check a batch of EventRows as msgpack decoded them (tuples, thanks to ``use_list=False``).

    Rows are sent as they are (msgpack packs tuples as arrays), so there is no ``rows_to_wire``.
    One type-signature lookup per row keeps the check cheap on the ingest path.
    """
    rows = _seq(x, "rows")
    sigs = _ROW_SIGNATURES
    for i, row in enumerate(rows):
        if type(row) is not tuple or tuple(map(type, row)) not in sigs:
            raise ProtocolError(
                f"rows[{i}]: expected (account_id: int, metric_code: str, value: int, time_unix_nano: int, "
                "properties: map|nil, operation: int, event_id: str)"
            )
        props = row[4]
        if props is not None:
            for k, v in props.items():
                if type(k) is not str or type(v) is not str:
                    raise ProtocolError(f"rows[{i}].properties: keys and values must be str")
    return rows if isinstance(rows, list) else list(rows)


def error_to_wire(error: UnimeterError) -> list[object]:
    """The error as the protocol carries it (``UnimeterError.to_wire``)."""
    return error.to_wire()


def remote_error(x: object) -> UnimeterError:
    """The UnimeterError a failed response carries, as the same subclass; a malformed one becomes
    an InternalError rather than escaping as some other exception."""
    try:
        return error_from_wire(list(_seq(x, "error")))
    except Exception as exc:
        return InternalError(f"malformed error from node: {exc}")


# --------------------------------------------------------------------------------------------------
# Request arguments, checked on the node's side. The client sends the NodeApi method's parameters in
# signature order, converted with the type codecs above (a Metric as metric_to_wire, rows as is).
# --------------------------------------------------------------------------------------------------

Args = Sequence[Any]
"""A request's decoded ``args`` array."""


def _arity(args: Args, n: int, method: str) -> None:
    if len(args) != n:
        raise ProtocolError(f"{method} takes {n} arguments, got {len(args)}")


def decode_no_args(args: Args, method: str) -> None:
    """``cluster_status()``, ``list_metrics()``."""
    _arity(args, 0, method)


def decode_create_metric_args(args: Args) -> Metric:
    """``create_metric(metric)``."""
    _arity(args, 1, "create_metric")
    return metric_from_wire(args[0])


def decode_code_args(args: Args, method: str) -> str:
    """``get_metric(code)``, ``delete_metric(code)``."""
    _arity(args, 1, method)
    return _str(args[0], "code")


def _ingest_part_from_wire(x: object) -> tuple[int, list[EventRow]]:
    partition, rows = _fields(x, 2, "parts[]")
    return _int(partition, "parts[].partition"), rows_from_wire(rows)


def decode_ingest_args(args: Args) -> tuple[list[tuple[int, list[EventRow]]], bool, str]:
    """``ingest(parts, sync, batch_id)``; ``parts`` is ``[[partition, [row]]]``, rows as is."""
    _arity(args, 3, "ingest")
    return (
        _list_of(args[0], _ingest_part_from_wire, "parts"),
        _bool(args[1], "sync"),
        _str(args[2], "batch_id"),
    )


def decode_query_realtime_args(args: Args) -> tuple[int, int, str]:
    """``query_realtime(partition, account_id, metric_code)``."""
    _arity(args, 3, "query_realtime")
    return _int(args[0], "partition"), _int(args[1], "account_id"), _str(args[2], "metric_code")


def decode_query_args(args: Args) -> tuple[int, int, str, int, int, int, dict[str, str], list[str]]:
    """``query(partition, account_id, metric_code, start, end, selector, filters, group_by)``."""
    _arity(args, 8, "query")
    return (
        _int(args[0], "partition"),
        _int(args[1], "account_id"),
        _str(args[2], "metric_code"),
        _int(args[3], "start"),
        _int(args[4], "end"),
        _int(args[5], "selector"),
        _str_map(args[6], "filters"),
        _str_list(args[7], "group_by"),
    )


def decode_list_events_args(args: Args) -> tuple[int, int, int, int, str, int, str]:
    """``list_events(partition, account_id, start, end, metric_code, page_size, page_token)``."""
    _arity(args, 7, "list_events")
    return (
        _int(args[0], "partition"),
        _int(args[1], "account_id"),
        _int(args[2], "start"),
        _int(args[3], "end"),
        _str(args[4], "metric_code"),
        _int(args[5], "page_size"),
        _str(args[6], "page_token"),
    )


def decode_list_alerts_args(args: Args) -> tuple[int, int, int, int]:
    """``list_alerts(partition, account_id, after_offset, page_size)``."""
    _arity(args, 4, "list_alerts")
    return (
        _int(args[0], "partition"),
        _int(args[1], "account_id"),
        _int(args[2], "after_offset"),
        _int(args[3], "page_size"),
    )


def decode_subscribe_alerts_args(
    args: Args,
) -> tuple[list[int], dict[int, int], bool, list[int], list[str], list[str]]:
    """``subscribe_alerts(partitions, since_offsets, from_beginning, account_ids, metric_codes,
    threshold_codes)``."""
    _arity(args, 6, "subscribe_alerts")
    return (
        _int_list(args[0], "partitions"),
        _int_map(args[1], "since_offsets"),
        _bool(args[2], "from_beginning"),
        _int_list(args[3], "account_ids"),
        _str_list(args[4], "metric_codes"),
        _str_list(args[5], "threshold_codes"),
    )
