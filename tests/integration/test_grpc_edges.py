"""The gRPC surface at its edges, through a real server on 127.0.0.1: request bodies that do not
decode, methods a handler does not implement, and the health service's List."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from cluster_client.errors import FieldViolation, InvalidArgumentError
from service.api_keys import hash_key
from service.call_wrapping import CallWrapping, WrappingServer
from service.server import UnimeterServer
from service.service_stats import ServiceStats
from tests.conftest import Api, open_api, serve_config
from tests.grpc_errors import details
from tests.integration.helpers import T0, create_metric, ev, ingest
from tests.integration.ops_helpers import sample, scrape_when
from unimeter.v1 import cluster_service_pb2, cluster_service_pb2_grpc

pytestmark = pytest.mark.timeout(60)

UNIMETER_SERVICES = (
    "unimeter.v1.MetricsService",
    "unimeter.v1.IngestService",
    "unimeter.v1.QueryService",
    "unimeter.v1.AlertService",
    "unimeter.v1.ClusterService",
)
HEALTH = "grpc.health.v1.Health"
GARBAGE = b"\xff\xff\xff\xff"  # a tag whose varint never ends: no message decodes from it


def request_methods() -> list[tuple[str, bool, list[bytes]]]:
    """(path, server-streaming, bodies that do not decode) of every method with a single request
    message the server serves. Besides ``GARBAGE``, a request with a string field gets one whose
    value is not UTF-8, which only a full parse notices."""
    pool = descriptor_pool.Default()
    out = []
    for name in (*UNIMETER_SERVICES, HEALTH):
        for m in pool.FindServiceByName(name).methods:
            assert not m.client_streaming
            bodies = [GARBAGE]
            strings = [f for f in m.input_type.fields if f.type == f.TYPE_STRING and f.number < 16]
            if strings:
                bodies.append(bytes([strings[0].number << 3 | 2, 2, 0xFF, 0xFE]))
            out.append((f"/{name}/{m.name}", m.server_streaming, bodies))
    return out


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.fixture
async def ops(tmp_path: Path) -> Api:
    server = UnimeterServer(serve_config(tmp_path / "data", http_addr="127.0.0.1:0"))
    await server.start()
    stubs = await open_api(server)
    try:
        yield stubs  # type: ignore[misc]
    finally:
        await stubs.channel.close()
        await server.stop(grace=1.0)


async def call_raw(
    channel: grpc.aio.Channel, path: str, streaming: bool, body: bytes
) -> grpc.aio.AioRpcError:
    """Send ``body`` as the request of ``path`` unchanged; the error the call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        if streaming:
            async for _ in channel.unary_stream(path)(body, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(body, timeout=10)
    return failed.value


async def test_a_body_that_does_not_decode_is_invalid_argument_on_every_method(
    ops: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    methods = request_methods()
    assert len(methods) == 14  # 11 Unimeter RPCs + health Check, List and Watch
    rounds = 3
    for _ in range(rounds):
        for path, streaming, bodies in methods:
            for body in bodies:
                err = await call_raw(ops.channel, path, streaming, body)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, path
                assert details(err)[0] == "MALFORMED_REQUEST"
                assert err.details().startswith("malformed request: the body is not a valid ")
    err = await call_raw(ops.channel, "/unimeter.v1.IngestService/Ingest", False, GARBAGE)
    assert "not a valid unimeter.v1.IngestRequest message" in err.details()

    expected = {
        tuple(path.lstrip("/").split("/")): len(bodies) * rounds + (1 if path.endswith("/Ingest") else 0)
        for path, _, bodies in methods
    }
    m = await scrape_when(
        ops.server.http_port,
        lambda m: all(
            sample(m, "unimeter_grpc_requests_total", code="INVALID_ARGUMENT", service=s, method=n) == c
            for (s, n), c in expected.items()
        ),
    )
    for (service, method), calls in expected.items():
        labels = {"service": service, "method": method}
        assert sample(m, "unimeter_grpc_malformed_requests_total", **labels) == calls
        assert sample(m, "unimeter_grpc_requests_total", code="INVALID_ARGUMENT", **labels) == calls

    # One warning line for all the calls (the rest fall in its 10 s interval), and no traceback.
    assert tracebacks(caplog) == []
    warnings = [r for r in caplog.records if r.name == "service.call_wrapping"]
    assert len(warnings) == 1
    assert re.fullmatch(
        r"/[\w.]+/\w+ answered INVALID_ARGUMENT: "
        r"malformed request: the body is not a valid [\w.]+ message \(.*\)",
        warnings[0].getMessage(),
    )
    assert "\n" not in warnings[0].getMessage()

    # The server keeps serving valid calls.
    await create_metric(ops, "calls")
    assert list((await ingest(ops, ev(7, "calls", time=T0))).offsets) == [1]


async def test_a_malformed_message_in_a_request_stream_is_invalid_argument(
    ops: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    call = ops.channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(
        iter([GARBAGE]), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in call:
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(failed.value)[0] == "MALFORMED_REQUEST"
    assert tracebacks(caplog) == []
    # A well-formed reflection request still works.
    good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    answers = [
        reflection_pb2.ServerReflectionResponse.FromString(raw)
        async for raw in ops.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        )(iter([good]), timeout=10)
    ]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {*UNIMETER_SERVICES, HEALTH} <= names


async def test_health_list_names_every_served_service_and_its_status(ops: Api) -> None:
    stub = health_pb2_grpc.HealthStub(ops.channel)
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": serving,
        **{name: serving for name in UNIMETER_SERVICES},
    }
    m = await scrape_when(
        ops.server.http_port,
        lambda m: sample(m, "unimeter_grpc_requests_total", service=HEALTH, method="List", code="OK") == 1,
    )
    assert sample(m, "unimeter_grpc_requests_total", service=HEALTH, method="List", code="OK") == 1


class UnfinishedCluster(cluster_service_pb2_grpc.ClusterServiceServicer):  # type: ignore[misc]
    """A servicer whose methods raise, as generated base classes and unfinished handlers do."""

    async def GetClusterStatus(
        self, request: cluster_service_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> cluster_service_pb2.GetClusterStatusResponse:
        raise InvalidArgumentError("bad", violations=[FieldViolation("x", "is bad")])


@pytest.mark.parametrize("servicer", [cluster_service_pb2_grpc.ClusterServiceServicer(), UnfinishedCluster()])
async def test_an_exception_escaping_any_handler_gets_its_mapped_status_and_no_traceback(
    servicer: cluster_service_pb2_grpc.ClusterServiceServicer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stats = ServiceStats()
    server = WrappingServer(grpc.aio.server(), CallWrapping(stats))
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    path = "/unimeter.v1.ClusterService/GetClusterStatus"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.GetClusterStatus(cluster_service_pb2.GetClusterStatusRequest(), timeout=10)
                if isinstance(servicer, UnfinishedCluster):
                    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert details(failed.value)[:2] == ("INVALID_ARGUMENT", [("x", "is bad")])
                else:
                    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
                    assert details(failed.value)[0] == "UNIMPLEMENTED"
                    assert failed.value.details() == f"{path} is not implemented by this server"
    finally:
        await server.stop(None)
    code = "INVALID_ARGUMENT" if isinstance(servicer, UnfinishedCluster) else "UNIMPLEMENTED"
    assert dict(stats.methods[path].codes) == {code: 3}
    assert tracebacks(caplog) == []
    assert [r.levelno for r in caplog.records if r.name.startswith(("service", "grpc"))] in (
        [],
        [logging.INFO],
    )


async def test_every_method_is_served_from_one_generic_handler_and_none_is_registered_with_grpc() -> None:
    """grpc.aio waits on one pending request per registered method for every call it accepts, so
    the wrapping server registers none: the generated registrations, and a generic handler added
    on its own, are all served (wrapped: their calls counted) from its one generic handler."""
    inner = grpc.aio.server()
    registered: list[str] = []
    given: list[object] = []
    real_generic = inner.add_generic_rpc_handlers
    inner.add_registered_method_handlers = lambda name, handlers: registered.append(name)

    def record_generic(handlers: tuple[object, ...]) -> None:
        given.extend(handlers)
        real_generic(handlers)

    inner.add_generic_rpc_handlers = record_generic
    stats = ServiceStats()
    server = WrappingServer(inner, CallWrapping(stats))
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(UnfinishedCluster(), server)
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)  # bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Echo": echo}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    status_path = "/unimeter.v1.ClusterService/GetClusterStatus"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await cluster_service_pb2_grpc.ClusterServiceStub(channel).GetClusterStatus(
                    cluster_service_pb2.GetClusterStatusRequest(), timeout=10
                )
            assert details(failed.value)[:2] == ("INVALID_ARGUMENT", [("x", "is bad")])
            assert await channel.unary_unary("/test.Echo/Echo")(b"ping", timeout=10) == b"ping"
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary("/test.Echo/Nope")(b"ping", timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
    assert registered == []
    assert len(given) == 1
    assert dict(stats.methods[status_path].codes) == {"INVALID_ARGUMENT": 1}
    assert dict(stats.methods["/test.Echo/Echo"].codes) == {"OK": 1}
    assert "/test.Echo/Nope" not in stats.methods


async def test_with_api_keys_a_malformed_body_is_refused_by_the_key_check_first(tmp_path: Path) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", api_keys=f"ops:{hash_key('k')}:admin"))
    await server.start()
    path = "/unimeter.v1.IngestService/Ingest"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(path)(GARBAGE, timeout=10)
            assert (refused.value.code(), details(refused.value)[0]) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "API_KEY_MISSING",
            )
            with pytest.raises(grpc.aio.AioRpcError) as malformed:
                await channel.unary_unary(path)(
                    GARBAGE, timeout=10, metadata=(("authorization", "Bearer k"),)
                )
            assert (malformed.value.code(), details(malformed.value)[0]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "MALFORMED_REQUEST",
            )
    finally:
        await server.stop(grace=1.0)
    assert server.stats.methods[path].malformed == 1
    assert dict(server.stats.methods[path].codes) == {"UNAUTHENTICATED": 1, "INVALID_ARGUMENT": 1}


async def test_calls_of_one_method_each_echo_their_own_request_id_refused_or_not(tmp_path: Path) -> None:
    """A method's wrapping is built once, at registration, and serves every call: each call
    still echoes its own request id and is counted under its own code, with refusals and
    admitted calls alternating."""
    server = UnimeterServer(serve_config(tmp_path / "data", api_keys=f"ops:{hash_key('k')}:admin"))
    await server.start()
    path = "/unimeter.v1.ClusterService/GetClusterStatus"
    key = (("authorization", "Bearer k"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
            request = cluster_service_pb2.GetClusterStatusRequest()
            for n in range(6):
                request_id = (("x-request-id", f"call-{n}"),)
                if n % 3 == 2:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.GetClusterStatus(request, metadata=request_id, timeout=10)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    trailing = tuple(refused.value.trailing_metadata())
                else:
                    call = stub.GetClusterStatus(request, metadata=request_id + key, timeout=10)
                    assert (await call).partitions == 8  # serve_config's partitions
                    trailing = tuple(await call.trailing_metadata())
                assert dict(trailing)["x-request-id"] == f"call-{n}"
    finally:
        await server.stop(grace=1.0)
    assert dict(server.stats.methods[path].codes) == {"OK": 4, "UNAUTHENTICATED": 2}
