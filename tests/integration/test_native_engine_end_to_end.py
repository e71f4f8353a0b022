"""The same workload through a server on each ingest engine gives the same answers: offsets,
duplicate counts, errors (status, reason, violations), query answers and event pages; malformed
bodies are INVALID_ARGUMENT on both and the server keeps serving. A data directory written on one
engine is recovered and served alike by the other.

The workload is random but seeded: every aggregation type, dimensions and group-by, corrections,
duplicates by id and by content, SYNC batches, and invalid batches mixed in. Collected only where
the native extension is built (tests/conftest.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from service.ingest_engine import OFF_LOOP_BYTES
from service.server import UnimeterServer
from tests.conftest import Api, open_api, serve_config
from tests.grpc_errors import details
from tests.integration.helpers import DAY, SEC, T0, create_metric
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

pytestmark = pytest.mark.timeout(60)

ACCOUNTS = [1, 2, 3, 42, 1 << 40, (1 << 64) - 1]
METRICS = {
    "calls": t.AGG_TYPE_COUNT,
    "bytes": t.AGG_TYPE_SUM,
    "peak": t.AGG_TYPE_MAX,
    "last": t.AGG_TYPE_LATEST,
    "seats": t.AGG_TYPE_COUNT_UNIQUE,
}
REGION = t.DimensionFilter(key="region", values=["eu", "us"])
ONLY_PROTOBUF_READS = (
    b"\n!\x08\x87\x92\xe3\xc9\xc3\x92\xa3\x84\x18\x12\x00seats\x18\x05*\n\n\x04tier\x12\x02eu0\x01\x10\x02"
)
"""An event whose empty metric code is followed by an unknown group upb skips and the native
decoder refuses (found by ``make fuzz``)."""


def random_event(rng: random.Random, spoil: bool) -> t.Event:
    """A valid event, or (``spoil``) one that may break any rule."""
    code = rng.choice([*METRICS, "nope"] if spoil else list(METRICS))
    removable = (
        METRICS[code] in (t.AGG_TYPE_COUNT, t.AGG_TYPE_SUM, t.AGG_TYPE_COUNT_UNIQUE) if not spoil else True
    )
    remove = removable and rng.random() < 0.15
    properties = (
        {"region": rng.choice(["eu", "us", "mars"] if spoil else ["eu", "us"])} if rng.random() < 0.5 else {}
    )
    if rng.random() < 0.2:
        properties["note"] = rng.choice(["a", "b", "x" * 300] if spoil else ["a", "b"])
    return t.Event(
        account_id=rng.choice([*ACCOUNTS, 0] if spoil else ACCOUNTS),
        metric_code=code,
        value=rng.choice([1, 2, 5, 1000, rng.randrange(1 << 20)]),
        time_unix_nano=T0 + rng.randrange(40) * DAY // 4 + rng.randrange(3) * SEC,
        properties=properties,
        operation=t.OPERATION_TYPE_REMOVE if remove else rng.choice([0, t.OPERATION_TYPE_ADD]),  # type: ignore[arg-type]
        event_id=rng.choice(["", "", f"id-{rng.randrange(30)}"]),
    )


def workload(seed: int) -> list[ing.IngestRequest]:
    rng = random.Random(seed)
    batches: list[ing.IngestRequest] = []
    sent: list[t.Event] = []
    for i in range(40):
        spoil = rng.random() < 0.3
        # Every eighth batch is large: the native engine decodes it on its worker thread.
        size = rng.randrange(400, 600) if i % 8 == 3 else rng.randrange(1, 30)
        events = [random_event(rng, spoil) for _ in range(size)]
        if sent and rng.random() < 0.3:
            events += rng.sample(sent, min(len(sent), 3))  # resent: duplicates by id or by content
        delivery = t.DELIVERY_MODE_SYNC if rng.random() < 0.2 else t.DELIVERY_MODE_UNSPECIFIED
        batches.append(ing.IngestRequest(events=events, delivery=delivery))
        if not spoil:
            sent += events
    return batches


def large_valid_request(seed: int) -> ing.IngestRequest:
    """A request of valid events, large enough to be decoded off the loop (never stored: the
    test sends it spoilt)."""
    rng = random.Random(-seed)
    request = ing.IngestRequest(events=[random_event(rng, False) for _ in range(500)])
    assert request.ByteSize() >= OFF_LOOP_BYTES
    return request


async def answers(api: Api) -> list[object]:
    """Every query answer and event page of the workload's accounts."""
    seen: list[object] = []
    for account in ACCOUNTS:
        for code in METRICS:
            req = qs.QueryRequest(
                account_id=account,
                metric_code=code,
                period=t.Period(start_unix_nano=T0, end_unix_nano=T0 + 14 * DAY),
                group_by=["region"],
            )
            seen.append(("query", account, code, await api.query.Query(req, timeout=5)))
        token = ""
        while True:
            page = await api.query.ListEvents(
                qs.ListEventsRequest(
                    account_id=account,
                    start_unix_nano=T0,
                    end_unix_nano=T0 + 30 * DAY,
                    page_size=7,
                    page_token=token,
                ),
                timeout=5,
            )
            seen.append(("events", account, list(page.events)))
            token = page.next_page_token
            if not token:
                break
    return seen


async def transcript(data_dir: Path, engine: str, seed: int) -> list[object]:
    """Everything a client sees of the workload on a fresh server running ``engine``."""
    server = UnimeterServer(serve_config(data_dir, engine=engine))
    await server.start()
    api = await open_api(server)
    seen: list[object] = []
    try:
        for code, agg in METRICS.items():
            await create_metric(api, code, agg, filters=[REGION], fixed_period_seconds=7 * DAY // SEC)
        for request in workload(seed):
            try:
                r = await api.ingest.Ingest(request, timeout=10)
                seen.append(("ok", r.n_stored, r.n_duplicates, list(r.offsets)))
            except grpc.aio.AioRpcError as err:
                seen.append(("error", err.code(), err.details(), details(err)))
        raw = api.channel.unary_unary("/unimeter.v1.IngestService/Ingest")
        large = large_valid_request(seed).SerializeToString()
        for body in (b"\x0a\x05\x12", b"\xff\xff", b"\x0a\x02\x12\x01", large[:-3]):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(body, timeout=10)
            # The message ends with the parser's own words for the cause, which differ.
            message = err.value.details().split(" (")[0]
            seen.append(("raw", err.value.code(), message, details(err.value)))
        # Bytes protobuf reads but the native decoder refuses (an unknown group it cannot follow):
        # the native engine hands them to protobuf, so the answer is the same validation error.
        for body in (ONLY_PROTOBUF_READS, large + ONLY_PROTOBUF_READS):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(body, timeout=10)
            seen.append(("odd", err.value.code(), details(err.value)))
        seen += await answers(api)
    finally:
        await api.channel.close()
        await server.stop(grace=1.0)
    return seen


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_same_workload_gives_the_same_answers_on_both_engines(tmp_path: Path, seed: int) -> None:
    python = await transcript(tmp_path / "python", "python", seed)
    native = await transcript(tmp_path / "native", "native", seed)
    assert native == python
    kinds = [entry[0] for entry in python]  # type: ignore[index]
    # The workload exercised what it is meant to: stored batches, refused ones, malformed bodies,
    # and bodies large enough to be decoded off the loop.
    assert kinds.count("ok") > 5 and kinds.count("error") > 5 and kinds.count("raw") == 4
    large = [r for r in workload(seed) if r.ByteSize() >= OFF_LOOP_BYTES]
    assert len(large) >= 4 and any(r.delivery == t.DELIVERY_MODE_SYNC for r in workload(seed))
    malformed = [entry for entry in python if entry[0] == "raw"]  # type: ignore[index]
    assert {(e[1], e[2], e[3][0]) for e in malformed} == {  # type: ignore[index]
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed request: the body is not a valid unimeter.v1.IngestRequest message",
            "MALFORMED_REQUEST",
        )
    }
    odd = [e for e in python if e[0] == "odd"]  # type: ignore[index]
    n_large = len(large_valid_request(seed).events)
    assert odd == [
        (
            "odd",
            grpc.StatusCode.INVALID_ARGUMENT,
            ("INVALID_ARGUMENT", [(f"events[{n}].metric_code", "must not be empty")], None),
        )
        for n in (0, n_large)
    ]
    stored = [e for e in python if e[0] == "ok"]  # type: ignore[index]
    assert sum(e[1] for e in stored) > 100 and sum(e[2] for e in stored) > 0  # type: ignore[index, misc]


@pytest.mark.parametrize(("writer", "reader"), [("native", "python"), ("python", "native")])
async def test_a_data_directory_written_on_one_engine_is_served_alike_by_the_other(
    tmp_path: Path, writer: str, reader: str
) -> None:
    written = await transcript(tmp_path / "data", writer, 3)
    stored = next(i for i, entry in enumerate(written) if entry[0] == "ok")  # type: ignore[index]
    resent = workload(3)[stored]
    server = UnimeterServer(serve_config(tmp_path / "data", engine=reader))
    await server.start()
    api = await open_api(server)
    try:
        recovered = await answers(api)
        # ...and it goes on deduplicating what the other engine stored.
        again = await api.ingest.Ingest(resent, timeout=10)
    finally:
        await api.channel.close()
        await server.stop(grace=1.0)
    assert recovered == [e for e in written if e[0] in ("query", "events")]  # type: ignore[index]
    assert (again.n_stored, again.n_duplicates) == (0, len(resent.events))
    assert list(again.offsets) == written[stored][3]  # type: ignore[index]


async def test_a_metric_created_again_counts_a_large_batch_anew(tmp_path: Path) -> None:
    """The decode worker computes a large batch's dedup keys under the generations it last saw;
    after the metric is deleted and created again the batch is validated against the new one,
    so those keys are computed again: the same events, resent, are new events of the new metric
    (and a resend under one generation stays a duplicate)."""
    server = UnimeterServer(serve_config(tmp_path / "data", engine="native"))
    await server.start()
    api = await open_api(server)
    request = ing.IngestRequest(
        events=[
            t.Event(account_id=1 + i % 7, metric_code="calls", time_unix_nano=T0 + i, event_id=f"id-{i:040d}")
            for i in range(400)
        ]
    )
    assert request.ByteSize() >= OFF_LOOP_BYTES
    try:
        answers = []
        for _ in range(2):
            await create_metric(api, "calls", t.AGG_TYPE_COUNT)
            for _ in range(2):
                r = await api.ingest.Ingest(request, timeout=10)
                answers.append((r.n_stored, r.n_duplicates))
            await api.metrics.DeleteMetric(ms.DeleteMetricRequest(code="calls"), timeout=5)
    finally:
        await api.channel.close()
        await server.stop(grace=1.0)
    assert answers == [(400, 0), (0, 400), (400, 0), (0, 400)]
