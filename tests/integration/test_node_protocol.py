"""The node protocol over real TCP on 127.0.0.1: a NodeProtocolServer serving an in-memory NodeApi
written here (the real Node is tested on its own), reached through RemoteNode, NodeConnection, and a
raw socket for clients that misbehave."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cluster_client import errors, wire
from cluster_client.node_api import (
    AlertStreamItem,
    ClusterStatus,
    IngestOutcome,
    NodeApi,
    NodeInfo,
    PartitionInfo,
)
from cluster_client.node_connection import NodeConnection
from cluster_client.remote_node import RemoteNode
from cluster_client.types import (
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
    QueryResult,
    StoredEvent,
)
from node.protocol_server import SERVED_METHODS, NodeProtocolServer

LIMIT = 10.0  # seconds any one test may take


class FakeNode(NodeApi):
    """A NodeApi over in-memory dicts, with switches the tests use to delay, block and fail calls."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.rows: dict[int, list[EventRow]] = defaultdict(list)
        self.alerts: list[Alert] = []
        self.delay = 0.0  # each call sleeps up to this many seconds, so answers come out of order
        self.blocked = asyncio.Event()  # set while a call waits on `release`
        self.release = asyncio.Event()
        self.stream_items: asyncio.Queue[AlertStreamItem | None] = asyncio.Queue()
        self.stream_started = asyncio.Event()
        self.stream_stopped = asyncio.Event()
        self.clock = 1_000

    async def _pause(self) -> None:
        if self.delay:
            await asyncio.sleep(random.uniform(0, self.delay))

    async def cluster_status(self) -> ClusterStatus:
        return ClusterStatus(
            partitions=4,
            backend="embedded",
            nodes=(NodeInfo("n1", "127.0.0.1:1", "127.0.0.1:2", True),),
            partition_infos=tuple(PartitionInfo(p, "n1", len(self.rows[p]), 0) for p in range(4)),
        )

    async def create_metric(self, metric: Metric) -> Metric:
        if not metric.code:
            raise errors.InvalidArgumentError(
                "invalid metric",
                violations=[
                    errors.FieldViolation("metric.code", "must not be empty"),
                    errors.FieldViolation("metric.billing_cycle_day", "must be 1..28"),
                ],
            )
        if metric.code in self.metrics:
            raise errors.AlreadyExistsError(f"metric {metric.code!r} exists", reason="METRIC_EXISTS")
        self.clock += 1
        stored = Metric(**{**_fields(metric), "create_time_unix_nano": self.clock})
        self.metrics[metric.code] = stored
        return stored

    async def get_metric(self, code: str) -> Metric:
        await self._pause()
        if code == "boom":
            raise RuntimeError("the fake node has a bug")
        if code == "block":
            self.blocked.set()
            await self.release.wait()
        if code == "busy":
            raise errors.ResourceExhaustedError("too busy", retry_after_seconds=0.5)
        if code not in self.metrics:
            raise errors.NotFoundError(f"metric {code!r} does not exist", reason="METRIC_NOT_FOUND")
        return self.metrics[code]

    async def list_metrics(self) -> list[Metric]:
        return [self.metrics[c] for c in sorted(self.metrics)]

    async def delete_metric(self, code: str) -> None:
        if self.metrics.pop(code, None) is None:
            raise errors.NotFoundError(f"metric {code!r} does not exist")

    async def ingest(
        self, parts: list[tuple[int, list[EventRow]]], sync: bool, batch_id: str, *, validated: bool = False
    ) -> list[IngestOutcome]:
        await self._pause()
        outcomes = []
        for partition, rows in parts:
            if partition >= 4:
                raise errors.OutOfRangeError(f"partition {partition} does not exist")
            first = len(self.rows[partition])
            self.rows[partition].extend(rows)
            outcomes.append(IngestOutcome(list(range(first, first + len(rows))), 0))
        return outcomes

    def _matching(self, partition: int, account_id: int, metric_code: str) -> list[EventRow]:
        return [r for r in self.rows[partition] if r[0] == account_id and r[1] == metric_code]

    async def query_realtime(self, partition: int, account_id: int, metric_code: str) -> QueryResult:
        rows = self._matching(partition, account_id, metric_code)
        total = sum(r[2] for r in rows)
        return QueryResult(AggValue(value=total, count=len(rows), sum=total), Period(0, 100), len(rows))

    async def query(
        self,
        partition: int,
        account_id: int,
        metric_code: str,
        start: int,
        end: int,
        selector: int,
        filters: dict[str, str],
        group_by: list[str],
    ) -> QueryResult:
        rows = [
            r
            for r in self._matching(partition, account_id, metric_code)
            if start <= r[3] < end and all((r[4] or {}).get(k) == v for k, v in filters.items())
        ]
        groups: dict[tuple[str, ...], int] = defaultdict(int)
        for r in rows:
            groups[tuple((r[4] or {}).get(k, "") for k in group_by)] += r[2]
        total = sum(r[2] for r in rows)
        return QueryResult(
            AggValue(value=total, count=len(rows), sum=total),
            Period(start, end),
            len(self.rows[partition]),
            tuple(
                GroupValue(dict(zip(group_by, key, strict=True)), AggValue(value=v))
                for key, v in groups.items()
            )
            if group_by
            else (),
        )

    async def list_events(
        self,
        partition: int,
        account_id: int,
        start: int,
        end: int,
        metric_code: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[StoredEvent], str]:
        skip = int(page_token or 0)
        events = [
            StoredEvent(r[0], r[1], r[2], r[3], r[4] or {}, OperationType(r[5]), r[6], offset, partition)
            for offset, r in enumerate(self.rows[partition])
            if r[0] == account_id and start <= r[3] < end and (not metric_code or r[1] == metric_code)
        ]
        page = events[skip : skip + page_size]
        return page, str(skip + page_size) if skip + page_size < len(events) else ""

    async def list_alerts(
        self, partition: int, account_id: int, after_offset: int, page_size: int
    ) -> tuple[list[Alert], bool]:
        matching = [a for a in self.alerts if a.partition == partition and a.offset > after_offset]
        return matching[:page_size], len(matching) > page_size

    async def subscribe_alerts(  # an async generator function: calling it returns the iterator
        self,
        partitions: list[int],
        since_offsets: dict[int, int],
        from_beginning: bool,
        account_ids: list[int],
        metric_codes: list[str],
        threshold_codes: list[str],
    ) -> AsyncIterator[AlertStreamItem]:
        if any(p >= 4 for p in partitions):
            raise errors.OutOfRangeError("no such partition", reason="PARTITION_OUT_OF_RANGE")
        self.stream_started.set()
        try:
            yield AlertStreamItem(None, dict(since_offsets))  # first a heartbeat echoing the offsets
            while (item := await self.stream_items.get()) is not None:
                yield item
        finally:
            self.stream_stopped.set()


def _fields(metric: Metric) -> dict[str, Any]:
    return {name: getattr(metric, name) for name in Metric.__dataclass_fields__}


def alert(n: int) -> Alert:
    return Alert(42, "api_calls", "t100", 100, n, 100 * n, 0, 10 + n, 20 + n, 1, n)


@pytest.fixture
async def fake() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def server(fake: FakeNode) -> AsyncIterator[NodeProtocolServer]:
    srv = NodeProtocolServer(fake, host="127.0.0.1", port=0, hello_info={"node_id": "n1"})
    await srv.start()
    yield srv
    await srv.close(grace=0.5)


@pytest.fixture
async def remote(server: NodeProtocolServer) -> AsyncIterator[RemoteNode]:
    node = RemoteNode(f"127.0.0.1:{server.port}", connect_timeout=2.0)
    yield node
    await node.close()


def test_server_and_remote_node_cover_every_node_api_method() -> None:
    api_methods = {
        name for name, _ in inspect.getmembers(NodeApi, inspect.isfunction) if not name.startswith("_")
    }
    assert api_methods == SERVED_METHODS
    assert all(name in vars(RemoteNode) for name in api_methods)


async def test_every_method_answers_through_remote_node_as_the_node_itself(
    fake: FakeNode, remote: RemoteNode
) -> None:
    async with asyncio.timeout(LIMIT):
        metric = Metric(
            "api_calls",
            AggType.SUM,
            filters=(DimensionFilter("region", ("eu", "us")),),
            thresholds=(AlertThreshold("t100", 100, recurring=True),),
        )
        created = await remote.create_metric(metric)
        assert created == fake.metrics["api_calls"] and created.create_time_unix_nano > 0
        assert await remote.get_metric("api_calls") == created
        await remote.create_metric(Metric("storage"))
        assert await remote.list_metrics() == await fake.list_metrics()

        rows: list[EventRow] = [
            (42, "api_calls", 5, 10, {"region": "eu"}, 1, "e1"),
            (42, "api_calls", 7, 20, {"region": "us"}, 1, "e2"),
            (42, "api_calls", 1, 30, None, 2, ""),
        ]
        outcomes = await remote.ingest([(1, rows), (2, rows[:1])], True, "batch-1")
        assert outcomes == [IngestOutcome([0, 1, 2], 0), IngestOutcome([0], 0)]
        assert fake.rows[1] == rows  # the rows arrived as the same tuples

        assert await remote.query_realtime(1, 42, "api_calls") == await fake.query_realtime(
            1, 42, "api_calls"
        )
        query: tuple[int, int, str, int, int, int, dict[str, str], list[str]] = (
            1,
            42,
            "api_calls",
            0,
            100,
            0,
            {},
            ["region"],
        )
        grouped = await remote.query(*query)
        assert grouped == await fake.query(*query) and len(grouped.groups) == 3
        events = (1, 42, 0, 100, "api_calls", 2, "")
        page = await remote.list_events(*events)
        assert page == await fake.list_events(*events) and page[1] == "2"
        fake.alerts = [alert(n) for n in range(1, 4)]
        assert await remote.list_alerts(1, 42, 1, 1) == ([alert(2)], True)
        assert await remote.cluster_status() == await fake.cluster_status()

        await remote.delete_metric("storage")
        assert "storage" not in fake.metrics


async def test_a_hundred_concurrent_calls_on_one_connection_each_get_their_own_answer(
    fake: FakeNode, server: NodeProtocolServer, remote: RemoteNode
) -> None:
    async with asyncio.timeout(LIMIT):
        for i in range(50):
            await remote.create_metric(Metric(f"m{i}"))
        fake.delay = 0.02  # answers come back in a different order than the requests went out

        async def one(i: int) -> None:
            if i % 2:
                assert (await remote.get_metric(f"m{i // 2}")).code == f"m{i // 2}"
            else:
                row: EventRow = (i, "m0", i, 0, None, 1, f"e{i}")
                (outcome,) = await remote.ingest([(i % 4, [row])], False, "")
                assert fake.rows[i % 4][outcome.offsets[0]] == row

        await asyncio.gather(*(one(i) for i in range(100)))
        assert server.connection_count == 1


async def test_remote_errors_arrive_as_their_own_subclass_with_details_intact(remote: RemoteNode) -> None:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(errors.InvalidArgumentError) as invalid:
            await remote.create_metric(Metric(""))
        assert type(invalid.value) is errors.InvalidArgumentError
        assert invalid.value.violations == (
            errors.FieldViolation("metric.code", "must not be empty"),
            errors.FieldViolation("metric.billing_cycle_day", "must be 1..28"),
        )
        with pytest.raises(errors.NotFoundError) as missing:
            await remote.get_metric("nope")
        assert missing.value.reason == "METRIC_NOT_FOUND" and "'nope'" in missing.value.message
        await remote.create_metric(Metric("m"))
        with pytest.raises(errors.AlreadyExistsError):
            await remote.create_metric(Metric("m"))
        with pytest.raises(errors.ResourceExhaustedError) as busy:
            await remote.get_metric("busy")
        assert busy.value.retry_after_seconds == 0.5
        with pytest.raises(errors.OutOfRangeError):
            await remote.ingest([(9, [])], False, "")
        assert (await remote.get_metric("m")).code == "m"  # errors leave the connection in use


async def test_an_unexpected_exception_is_an_internal_error_logged_with_its_traceback(
    remote: RemoteNode, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncio.timeout(LIMIT):
        with (
            caplog.at_level(logging.ERROR, logger="node.protocol_server"),
            pytest.raises(errors.InternalError) as info,
        ):
            await remote.get_metric("boom")
        assert "get_metric" in info.value.message and "bug" not in info.value.message
        (record,) = [r for r in caplog.records if r.name == "node.protocol_server"]
        assert record.exc_info is not None and "the fake node has a bug" in str(record.exc_info[1])
        assert (await remote.cluster_status()).partitions == 4


async def test_alert_stream_delivers_pushed_items_in_order_and_closing_it_stops_the_node_iterator(
    fake: FakeNode, remote: RemoteNode
) -> None:
    async with asyncio.timeout(LIMIT):
        stream = remote.subscribe_alerts([0, 1], {1: 7}, False, [42], [], [])
        assert isinstance(stream, AsyncIterator)
        first = await anext(stream)
        assert first == AlertStreamItem(None, {1: 7})
        sent = [AlertStreamItem(alert(n), {1: n}) for n in range(1, 201)]
        for item in sent:
            fake.stream_items.put_nowait(item)
        got = [await anext(stream) for _ in sent]
        assert got == sent
        assert not fake.stream_stopped.is_set()
        await stream.aclose()  # type: ignore[attr-defined]
        await fake.stream_stopped.wait()


async def test_alert_stream_ends_when_the_node_ends_it_and_raises_its_error(
    fake: FakeNode, remote: RemoteNode
) -> None:
    async with asyncio.timeout(LIMIT):
        fake.stream_items.put_nowait(AlertStreamItem(alert(1), {}))
        fake.stream_items.put_nowait(None)
        items = [item async for item in remote.subscribe_alerts([0], {}, True, [], [], [])]
        assert items == [AlertStreamItem(None, {}), AlertStreamItem(alert(1), {})]
        with pytest.raises(errors.OutOfRangeError) as info:
            async for _ in remote.subscribe_alerts([7], {}, True, [], [], []):
                pass
        assert info.value.reason == "PARTITION_OUT_OF_RANGE"


async def test_stream_cancel_stops_the_node_iterator_and_leaves_the_shared_connection_open(
    fake: FakeNode, server: NodeProtocolServer
) -> None:
    async with asyncio.timeout(LIMIT):
        conn = await NodeConnection.connect("127.0.0.1", server.port)
        try:
            stream = conn.stream("subscribe_alerts", [[0], {}, False, [], [], []])
            assert await anext(stream) == (None, {})
            await stream.aclose()  # sends stream-cancel; the connection stays
            await fake.stream_stopped.wait()
            assert (await conn.call("cluster_status", []))[0] == 4
            assert not conn.closed and server.connection_count == 1
        finally:
            await conn.close()


async def test_a_slow_stream_consumer_gets_every_item_in_order(
    fake: FakeNode, server: NodeProtocolServer
) -> None:
    async with asyncio.timeout(LIMIT):
        # A tiny buffer makes the connection pause and resume reading many times on the way.
        conn = await NodeConnection.connect("127.0.0.1", server.port, max_stream_buffer=4)
        try:
            stream = conn.stream("subscribe_alerts", [[0], {}, False, [], [], []])
            await anext(stream)
            sent = [AlertStreamItem(alert(n), {0: n}) for n in range(2000)]
            for item in sent:
                fake.stream_items.put_nowait(item)
            fake.stream_items.put_nowait(None)
            await asyncio.sleep(0.05)  # let the node run ahead of us
            got = [wire.alert_stream_item_from_wire(raw) async for raw in stream]
            assert got == sent
            assert (await conn.call("cluster_status", []))[0] == 4  # reading resumed
        finally:
            await conn.close()


async def raw_exchange(port: int, payload: bytes, *, hello: bool = True) -> tuple[list[wire.Body], int]:
    """Send ``payload`` on a raw socket (after a hello, unless told not to); read until the server
    closes. Returns the frames received and how many bytes did not form a whole frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = wire.FrameDecoder()
    bodies: list[wire.Body] = []
    try:
        if hello:
            writer.write(wire.encode_hello({}))
            while not bodies:  # like a real client, wait for the server's hello
                bodies += decoder.feed(await reader.read(4096))
        writer.write(payload)
        await writer.drain()
        bodies += decoder.feed(await reader.read())  # returns at EOF only: the server must close
    finally:
        writer.close()
        await writer.wait_closed()
    return bodies, decoder.buffered


BAD_CLIENTS = {
    "garbage bytes": (True, b"\x00\x00\x00\x03\xc1\xc1\xc1", 0, "PROTOCOL_ERROR"),
    "too large length": (True, (1 << 31).to_bytes(4, "big"), 0, "FRAME_TOO_LARGE"),
    "not an array": (True, wire.encode_frame("hi"), 0, "PROTOCOL_ERROR"),
    "unknown method": (True, wire.encode_request(5, "drop_everything", []), 5, "UNKNOWN_METHOD"),
    "getattr bait": (True, wire.encode_request(6, "__init__", []), 6, "UNKNOWN_METHOD"),
    "wrong argument types": (True, wire.encode_request(7, "get_metric", [5]), 7, "PROTOCOL_ERROR"),
    "wrong argument count": (True, wire.encode_request(8, "query_realtime", [1, 2]), 8, "PROTOCOL_ERROR"),
    "missing hello": (False, wire.encode_request(9, "cluster_status", []), 9, "HELLO_REQUIRED"),
    "unknown major version": (
        False,
        wire.encode_hello({}, version=(2, 0)),
        0,
        "UNSUPPORTED_PROTOCOL_VERSION",
    ),
}


@pytest.mark.parametrize(
    ("hello", "payload", "request_id", "reason"), BAD_CLIENTS.values(), ids=BAD_CLIENTS.keys()
)
async def test_a_misbehaving_client_is_answered_and_disconnected_while_others_carry_on(
    server: NodeProtocolServer, hello: bool, payload: bytes, request_id: int, reason: str
) -> None:
    async with asyncio.timeout(LIMIT):
        good = await NodeConnection.connect("127.0.0.1", server.port)
        try:
            assert (await good.call("cluster_status", []))[0] == 4
            bodies, rest = await raw_exchange(server.port, payload, hello=hello)
            assert rest == 0
            *before, last = bodies
            assert [b[0] for b in before] == ([wire.HELLO] if hello else [])
            assert last[:3] == (wire.RESPONSE, request_id, False)
            error = wire.remote_error(last[3])
            assert type(error) is errors.InvalidArgumentError and error.reason == reason
            assert (await good.call("cluster_status", []))[0] == 4
            assert not good.closed and server.connection_count == 1
        finally:
            await good.close()


async def test_closing_the_server_fails_pending_calls_and_streams_with_unavailable(
    fake: FakeNode, server: NodeProtocolServer, remote: RemoteNode
) -> None:
    async with asyncio.timeout(LIMIT):
        stream = remote.subscribe_alerts([0], {}, False, [], [], [])
        await anext(stream)
        pending = asyncio.create_task(remote.get_metric("block"))
        await fake.blocked.wait()
        await server.close(grace=0.1)
        with pytest.raises(errors.UnavailableError):
            await pending
        with pytest.raises(errors.UnavailableError):
            await anext(stream)
        await fake.stream_stopped.wait()
        with pytest.raises(errors.UnavailableError):  # the one fresh connect fails: nobody listens
            await remote.cluster_status()


async def test_remote_node_reconnects_after_the_server_restarts_on_the_same_port(fake: FakeNode) -> None:
    async with asyncio.timeout(LIMIT):
        first = NodeProtocolServer(fake, host="127.0.0.1", port=0)
        await first.start()
        port = first.port
        remote = RemoteNode(f"127.0.0.1:{port}", connect_timeout=2.0)
        try:
            await remote.create_metric(Metric("m"))
            await first.close()
            with pytest.raises(errors.UnavailableError):
                await remote.get_metric("m")
            second = NodeProtocolServer(fake, host="127.0.0.1", port=port)
            await second.start()
            try:
                assert (await remote.get_metric("m")).code == "m"
                assert second.connection_count == 1
            finally:
                await second.close()
        finally:
            await remote.close()


async def test_a_call_past_its_timeout_raises_deadline_exceeded_and_the_connection_survives(
    fake: FakeNode, server: NodeProtocolServer
) -> None:
    async with asyncio.timeout(LIMIT):
        conn = await NodeConnection.connect("127.0.0.1", server.port)
        try:
            with pytest.raises(errors.DeadlineExceededError):
                await conn.call("get_metric", ["block"], timeout=0.05)
            fake.release.set()  # its late answer arrives and is dropped
            assert (await conn.call("cluster_status", []))[0] == 4
            assert conn.in_flight == 0 and not conn.closed
        finally:
            await conn.close()


async def test_call_timeouts_hold_even_when_the_node_stops_reading() -> None:
    done = asyncio.Event()

    async def stuck_node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4 + int.from_bytes(await reader.readexactly(4), "big") - 4)
        writer.write(wire.encode_hello({}))
        await done.wait()  # never reads again: the client's writes back up
        writer.close()
        await writer.wait_closed()

    async with asyncio.timeout(LIMIT):
        srv = await asyncio.start_server(stuck_node, "127.0.0.1", 0)
        try:
            conn = await NodeConnection.connect("127.0.0.1", srv.sockets[0].getsockname()[1])
            try:
                big = b"x" * (1 << 20)
                results = await asyncio.gather(
                    *(conn.call("ingest", [big], timeout=0.3) for _ in range(48)), return_exceptions=True
                )
                assert all(type(r) is errors.DeadlineExceededError for r in results)
            finally:
                await conn.close()
        finally:
            done.set()
            srv.close()
            await srv.wait_closed()


async def test_a_request_over_the_nodes_frame_limit_fails_alone(fake: FakeNode) -> None:
    async with asyncio.timeout(LIMIT):
        async with NodeProtocolServer(fake, host="127.0.0.1", port=0, max_frame_bytes=64 * 1024) as srv:
            remote = RemoteNode(f"127.0.0.1:{srv.port}")
            try:
                big = [(1, "m", 1, 0, {"pad": "x" * 100}, 1, f"e{i}") for i in range(1000)]
                with pytest.raises(errors.InvalidArgumentError) as info:
                    await remote.ingest([(0, big)], False, "")  # type: ignore[list-item]
                assert info.value.reason == "FRAME_TOO_LARGE"
                assert (await remote.ingest([(0, big[:10])], False, ""))[0].offsets == list(range(10))  # type: ignore[list-item]
                assert srv.connection_count == 1
            finally:
                await remote.close()


async def test_a_node_speaking_an_unknown_major_version_is_refused() -> None:
    hung_up = asyncio.Event()

    async def future_node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(wire.encode_hello({}, version=(2, 0)))
        await writer.drain()
        await reader.read()  # the client hangs up on us
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    async with asyncio.timeout(LIMIT):
        srv = await asyncio.start_server(future_node, "127.0.0.1", 0)
        try:
            port = srv.sockets[0].getsockname()[1]
            with pytest.raises(errors.UnavailableError) as info:
                await NodeConnection.connect("127.0.0.1", port, timeout=2.0)
            assert info.value.reason == "UNSUPPORTED_PROTOCOL_VERSION" and "2.0" in info.value.message
            await hung_up.wait()
        finally:
            srv.close()
            await srv.wait_closed()


async def test_calls_on_a_dead_node_share_one_connect_attempt_and_fail_fast() -> None:
    async with asyncio.timeout(LIMIT):
        # A port nobody listens on: bind one, learn it, close it.
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        remote = RemoteNode(f"127.0.0.1:{port}", connect_timeout=1.0)
        try:
            results = await asyncio.gather(
                *(remote.cluster_status() for _ in range(20)), return_exceptions=True
            )
            assert all(type(r) is errors.UnavailableError for r in results)
        finally:
            await remote.close()
