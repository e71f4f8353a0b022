"""Fuzz inputs and the check for the native Ingest decoder: both engines must agree on any bytes.

The reference is the Python engine's own path: protobuf parses the bytes, ``convert.py`` turns
them into rows, ``partition_batch`` validates and splits them. Inputs are random bytes and damaged
copies of valid requests drawn with a plain ``random.Random`` (cheap enough for ``make fuzz``'s
long loop; the bounded hypothesis tests in tests/unit/test_native_decoder.py draw richer ones).
Importing this module needs the extension: callers check ``native_decoder_built()`` first.
"""

from __future__ import annotations

import importlib.util
import random

from google.protobuf.message import DecodeError

from cluster_client.client import partition_batch
from cluster_client.errors import InvalidArgumentError
from cluster_client.partitioning import partition_of
from cluster_client.types import AggType, DimensionFilter, Metric
from cluster_client.validation import normalize_metric
from service.convert import ingest_rows_from_proto
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import types_pb2 as t

from .mutations import damage, random_bytes

__all__ = [
    "METRICS",
    "check_native_decoder",
    "engine_outcome",
    "native_decoder_built",
    "native_outcome",
    "python_outcome",
]

REGION = DimensionFilter("region", ("eu", "us", "ünï"))
METRICS = {
    m.code: normalize_metric(m)
    for m in (
        Metric("calls", AggType.COUNT),
        Metric("bytes", AggType.SUM, filters=(REGION, DimensionFilter("tier", ("free", "pro")))),
        Metric("peak", AggType.MAX),
        Metric("last", AggType.LATEST, filters=(REGION,)),
        Metric("seats", AggType.COUNT_UNIQUE),
    )
}
"""The registry both engines validate against."""


def native_decoder_built() -> bool:
    """Whether the extension is importable here."""
    return importlib.util.find_spec("unimeter_native") is not None


def python_outcome(data: bytes, partitions: int) -> object:
    """What the Python engine makes of ``data``: malformed, rejected, or the split batch."""
    try:
        request = ing.IngestRequest.FromString(data)
    except DecodeError:
        return "malformed"
    n = len(request.events)
    try:
        rows, sync = ingest_rows_from_proto(request)
        by_partition = partition_batch(rows, METRICS.get, lambda a: partition_of(a, partitions))
    except InvalidArgumentError as exc:
        return (n, False, None, (exc.message, [(v.field, v.description) for v in exc.violations]))
    return (n, sync, list(by_partition.items()), None)


def native_outcome(data: bytes, partitions: int) -> object:
    """What the native engine makes of ``data``, in the shape of :func:`python_outcome`."""
    import unimeter_native

    try:
        n, sync, by_partition, rejection = unimeter_native.decode_ingest(data, METRICS.get, partitions)
    except unimeter_native.MalformedRequest:
        return "malformed"
    if by_partition is None:
        return (n, sync, None, rejection)
    # Each partition's events come as a native batch: compared as the rows it stands for.
    parts = [(p, (batch.rows(), indexes)) for p, (batch, indexes) in by_partition.items()]
    return (n, sync, parts, rejection)


def engine_outcome(data: bytes, partitions: int) -> object:
    """What the native engine as the server runs it makes of ``data``: the native decoder's outcome,
    or, for bytes it refuses, protobuf's (service/ingest_engine.py hands those to protobuf, which
    has the final word on what is a message)."""
    native = native_outcome(data, partitions)
    return python_outcome(data, partitions) if native == "malformed" else native


def _event(rng: random.Random) -> t.Event:
    """A mostly valid event; about one in four has one field a validator refuses."""
    fields: dict[str, object] = {
        "account_id": rng.choice((1, 42, rng.randrange(1, 1 << 64))),
        "metric_code": rng.choice(list(METRICS)),
        "value": rng.choice((0, 5, rng.randrange(1 << 63))),
        "time_unix_nano": rng.choice((0, rng.randrange(1 << 63))),
        "properties": {k: rng.choice(("eu", "us", "free", "pro")) for k in rng.sample(["region", "tier"], 1)},
        "operation": rng.choice((0, 1, 2)),
        "event_id": rng.choice(("", "e1", "x" * 128)),
    }
    if rng.random() < 0.25:
        field, bad = rng.choice(
            (
                ("account_id", 0),
                ("metric_code", rng.choice(("", "nope"))),
                ("value", (1 << 64) - 1),
                ("time_unix_nano", -1),
                ("properties", {"region": "mars"}),
                ("operation", 7),
                ("event_id", "x" * 129),
            )
        )
        fields[field] = bad
    return t.Event(**fields)


def _request(rng: random.Random) -> bytes:
    events = [_event(rng) for _ in range(rng.choice((1, 2, 4, 12)))]
    return ing.IngestRequest(events=events, delivery=rng.choice((0, 1, 2))).SerializeToString()


def check_native_decoder(rng: random.Random) -> None:
    """Random bytes, or a damaged valid request: both engines give the same outcome."""
    data = random_bytes(rng, 200) if rng.random() < 0.3 else damage(rng, _request(rng))[1]
    partitions = rng.choice((1, 8, 64))
    native, python = engine_outcome(data, partitions), python_outcome(data, partitions)
    assert native == python, (data, native, python)
