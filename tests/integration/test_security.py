"""Security and bad input against real servers on 127.0.0.1: API keys and scopes, malformed
metadata, TLS, the node protocol's cluster secret, size and in-flight limits, idle connections.
Every refusal is a clear status with ErrorInfo, resources stay bounded, and a well-behaved client
keeps working throughout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import node.segment_log
import service.http_endpoint
from cluster_client import Event, Metric, errors, wire
from cluster_client.client import Client
from cluster_client.node_auth import NONCE_BYTES, client_proof, new_nonce
from cluster_client.node_connection import NodeConnection
from cluster_client.remote_node import RemoteNode
from service.api_keys import hash_key
from service.config import add_serve_arguments, serve_config_from_args
from service.logging_setup import configure_logging
from service.server import UnimeterServer
from tests.conftest import Api, open_api, serve_config
from tests.grpc_errors import details
from tests.integration.helpers import T0, create_metric, ev, ingest, realtime
from tests.integration.ops_helpers import http_get, sample, scrape
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import cluster_service_pb2 as cs
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import metrics_service_pb2_grpc
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

pytestmark = pytest.mark.timeout(60)

INGEST_KEY, READ_KEY, ADMIN_KEY, BOTH_KEY = "umk_ingest-only", "umk_read-only", "umk_admin", "umk_both"
SECRET = "correct horse battery staple"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Api]:
    """A server that requires API keys: two from a JSON file, two from the environment-style string."""
    key_file = tmp_path / "keys.json"
    key_file.write_text(
        json.dumps(
            {
                "keys": [
                    {"name": "ingester", "sha256": hash_key(INGEST_KEY), "scopes": ["ingest"]},
                    {"name": "reader", "sha256": hash_key(READ_KEY), "scopes": ["read"]},
                ]
            }
        )
    )
    env_keys = f"ops:{hash_key(ADMIN_KEY)}:admin; both:{hash_key(BOTH_KEY)}:ingest,read"
    server = UnimeterServer(
        serve_config(tmp_path / "data", http_addr="127.0.0.1:0", api_keys_file=key_file, api_keys=env_keys)
    )
    await server.start()
    stubs = await open_api(server)
    try:
        yield stubs
    finally:
        await stubs.channel.close()
        await server.stop(grace=1.0)


async def refused(call: Any) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorInfo reason, message) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), details(err.value)[0], err.value.details() or ""


# ------------------------------------------------------------------------------------------ API keys


async def test_calls_without_a_known_key_are_unauthenticated(keyed: Api) -> None:
    req = ms.ListMetricsRequest()
    code, reason, message = await refused(keyed.metrics.ListMetrics(req, timeout=5))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert "authorization: Bearer" in message
    code, reason, message = await refused(
        keyed.metrics.ListMetrics(req, metadata=bearer("umk_guess"), timeout=5)
    )
    assert (code, reason, message) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", "unknown API key")
    # The hash is what is configured; presenting the hash itself is not the key.
    code, reason, _ = await refused(
        keyed.metrics.ListMetrics(req, metadata=bearer(hash_key(READ_KEY)), timeout=5)
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    assert (await keyed.metrics.ListMetrics(req, metadata=bearer(READ_KEY), timeout=5)).metrics == []


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", f"Basic {READ_KEY}"),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer"),),
        (("authorization", READ_KEY),),
        (("authorization", f"Bearer {READ_KEY} extra"),),
        (("authorization", f"Bearer {READ_KEY}"), ("authorization", f"Bearer {READ_KEY}")),
    ],
    ids=["basic-scheme", "empty-bearer", "no-token", "no-scheme", "two-tokens", "two-headers"],
)
async def test_malformed_authorization_is_unauthenticated_with_a_clear_message(
    keyed: Api, metadata: Sequence[tuple[str, str]]
) -> None:
    code, reason, message = await refused(
        keyed.metrics.ListMetrics(ms.ListMetricsRequest(), metadata=tuple(metadata), timeout=5)
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "AUTHORIZATION_MALFORMED")
    assert message.startswith("malformed authorization")
    assert READ_KEY not in message  # a key sent the wrong way is never echoed back


async def test_each_rpc_needs_its_scope_and_admin_implies_all(keyed: Api) -> None:
    async def outcome(key: str, call: Any) -> str:
        try:
            await call(key)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                assert details(err)[0] == "API_KEY_SCOPE_MISSING"
                return "denied"
            return "allowed"  # refused for another reason: it got past the key check
        return "allowed"

    metric = t.Metric(code="calls")

    def create(key: str) -> Any:
        return keyed.metrics.CreateMetric(
            ms.CreateMetricRequest(metric=metric), metadata=bearer(key), timeout=5
        )

    def delete(key: str) -> Any:
        return keyed.metrics.DeleteMetric(
            ms.DeleteMetricRequest(code="nope"), metadata=bearer(key), timeout=5
        )

    def do_ingest(key: str) -> Any:
        req = ing.IngestRequest(events=[ev(1, "calls")])
        return keyed.ingest.Ingest(req, metadata=bearer(key), timeout=5)

    def query(key: str) -> Any:
        req = qs.QueryRealtimeRequest(account_id=1, metric_code="calls")
        return keyed.query.QueryRealtime(req, metadata=bearer(key), timeout=5)

    def status(key: str) -> Any:
        return keyed.cluster.GetClusterStatus(cs.GetClusterStatusRequest(), metadata=bearer(key), timeout=5)

    def alerts(key: str) -> Any:
        req = als.ListAlertsRequest(account_id=1)
        return keyed.alerts.ListAlerts(req, metadata=bearer(key), timeout=5)

    assert await outcome(ADMIN_KEY, create) == "allowed"
    table = {
        INGEST_KEY: {"create": "denied", "delete": "denied", "ingest": "allowed", "query": "denied"},
        READ_KEY: {"create": "denied", "delete": "denied", "ingest": "denied", "query": "allowed"},
        BOTH_KEY: {"create": "denied", "delete": "denied", "ingest": "allowed", "query": "allowed"},
        ADMIN_KEY: {"create": "allowed", "delete": "allowed", "ingest": "allowed", "query": "allowed"},
    }
    calls = {"create": create, "delete": delete, "ingest": do_ingest, "query": query}
    for key, expected in table.items():
        got = {name: await outcome(key, call) for name, call in calls.items()}
        assert got == expected, key
    for key in (READ_KEY, ADMIN_KEY):
        assert await outcome(key, status) == "allowed" and await outcome(key, alerts) == "allowed"
    assert await outcome(INGEST_KEY, status) == "denied"
    _, _, message = await refused(query(INGEST_KEY))
    assert (
        message
        == "API key 'ingester' lacks the 'read' scope that /unimeter.v1.QueryService/QueryRealtime needs"
    )
    m = await scrape(keyed.server.http_port)
    assert (sample(m, "unimeter_grpc_auth_failures_total", reason="API_KEY_SCOPE_MISSING") or 0) >= 8


async def test_alert_stream_needs_a_read_key(keyed: Api) -> None:
    stream = keyed.alerts.AlertSubscribe(als.AlertSubscribeRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details(err.value)[0] == "API_KEY_MISSING"
    stream = keyed.alerts.AlertSubscribe(als.AlertSubscribeRequest(), metadata=bearer(INGEST_KEY), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stream = keyed.alerts.AlertSubscribe(als.AlertSubscribeRequest(), metadata=bearer(READ_KEY), timeout=5)
    first = await stream.read()
    assert isinstance(first, als.AlertSubscribeResponse) and first.HasField("heartbeat")
    stream.cancel()


async def test_health_and_reflection_need_no_key(keyed: Api) -> None:
    health = health_pb2_grpc.HealthStub(keyed.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(keyed.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "unimeter.v1.IngestService" in names


async def test_a_flood_of_bad_credentials_does_not_disturb_a_good_client(keyed: Api) -> None:
    await create_metric_with_key(keyed, "calls")
    bad_channel = grpc.aio.insecure_channel(f"127.0.0.1:{keyed.server.grpc_port}")
    bad = ms.ListMetricsRequest()
    bad_stub = metrics_service_pb2_grpc.MetricsServiceStub(bad_channel)
    try:

        async def attacker() -> int:
            refusals = 0
            for i in range(200):
                try:
                    await bad_stub.ListMetrics(bad, metadata=bearer(f"umk_guess{i}"), timeout=5)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                    refusals += 1
            return refusals

        async def good_client() -> int:
            stored = 0
            for i in range(50):
                req = ing.IngestRequest(events=[ev(1, "calls", time=T0 + i)])
                stored += (await keyed.ingest.Ingest(req, metadata=bearer(INGEST_KEY), timeout=5)).n_stored
            return stored

        refusals, stored = await asyncio.gather(attacker(), good_client())
        assert (refusals, stored) == (200, 50)
    finally:
        await bad_channel.close()
    m = await scrape(keyed.server.http_port)
    assert sample(m, "unimeter_grpc_auth_failures_total", reason="API_KEY_INVALID") == 200
    assert (
        sample(
            m,
            "unimeter_grpc_requests_total",
            service="unimeter.v1.MetricsService",
            method="ListMetrics",
            code="UNAUTHENTICATED",
        )
        == 200
    )


async def create_metric_with_key(api: Api, code: str) -> None:
    req = ms.CreateMetricRequest(metric=t.Metric(code=code))
    await api.metrics.CreateMetric(req, metadata=bearer(ADMIN_KEY), timeout=5)


def test_api_keys_come_from_flags_or_environment() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    env = {"UNIMETER_API_KEYS": f"a:{hash_key('k')}:read", "UNIMETER_LOG_FORMAT": "text"}
    config = serve_config_from_args(parser.parse_args(["--api-keys-file", "/etc/keys"]), env)
    assert config.api_keys == env["UNIMETER_API_KEYS"]
    assert config.api_keys_file == Path("/etc/keys")
    assert config.log_format == "text"
    with pytest.raises(SystemExit, match="TLS needs both"):
        serve_config_from_args(parser.parse_args(["--tls-cert", "c.pem"]), {})
    with pytest.raises(SystemExit, match="log format"):
        serve_config_from_args(parser.parse_args(["--log-format", "xml"]), {})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ops:umk_plaintext_key:admin\n", "SHA-256"),
        (f"ops:{hash_key('k')}:superuser\n", "scopes"),
        (f"ops:{hash_key('k')}\n", "expected name:sha256hex:scopes"),
        (f"a:{hash_key('k')}:read\nb:{hash_key('k')}:read\n", "same hash"),
        ("# only a comment\n", "none is defined"),
        ('{"keys": [{"name": "x"}', "not valid JSON"),
    ],
)
async def test_misconfigured_keys_stop_the_server_before_it_listens(
    tmp_path: Path, content: str, message: str
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(content)
    server = UnimeterServer(serve_config(tmp_path / "data", api_keys_file=key_file))
    with pytest.raises(ValueError, match=message):
        await server.start()
    assert server.grpc_port == 0 and server.node is None


# ------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost and 127.0.0.1 (the venv has no
    ``cryptography`` package, so the system's openssl makes it)."""
    return make_cert(tmp_path_factory.mktemp("tls"))


def make_cert(directory: Path) -> tuple[Path, Path]:
    """(cert, key) PEM files of a new self-signed EC certificate for localhost and 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_grpc_and_node_protocol_over_tls_with_the_cluster_secret(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    config = serve_config(
        tmp_path / "data", node_addr="127.0.0.1:0", tls_cert=cert, tls_key=key, cluster_secret=SECRET
    )
    server = UnimeterServer(config)
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.grpc_port}", creds) as channel:
            stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
            await stub.CreateMetric(ms.CreateMetricRequest(metric=t.Metric(code="calls")), timeout=5)
        # Plain text to the TLS port never gets an answer.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListMetrics(ms.ListMetricsRequest(), timeout=2)
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

        node_addr = f"127.0.0.1:{server.node_port}"
        async with await Client.connect([node_addr], tls_ca=cert, cluster_secret=SECRET) as client:
            assert [m.code for m in await client.metrics.list()] == ["calls"]
        with pytest.raises(errors.UnavailableError):
            await RemoteNode(node_addr, connect_timeout=2, cluster_secret=SECRET).cluster_status()
        # A CA that did not sign the node's certificate is refused.
        other_cert, _ = await asyncio.to_thread(make_cert, tmp_path / "other")
        with pytest.raises(errors.UnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            async with await Client.connect([node_addr], tls_ca=other_cert, cluster_secret=SECRET):
                pass
    finally:
        await server.stop(grace=1.0)


async def test_unusable_tls_files_stop_the_server(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    server = UnimeterServer(serve_config(tmp_path / "data", tls_cert=cert, tls_key=cert))
    with pytest.raises(ValueError, match="not a usable pair"):
        await server.start()


# ------------------------------------------------------------------------------- cluster secret


@pytest.fixture
async def secret_node(tmp_path: Path) -> AsyncIterator[UnimeterServer]:
    """A server whose node protocol requires SECRET, with a short handshake timeout."""
    config = serve_config(
        tmp_path / "data",
        node_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        cluster_secret=SECRET,
        handshake_timeout_seconds=0.5,
    )
    server = UnimeterServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


class RawPeer:
    """A node-protocol client written by hand, to misbehave on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = wire.FrameDecoder()
        self.pending: list[tuple[Any, ...]] = []

    @classmethod
    async def open(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, frame: bytes) -> None:
        self.writer.write(frame)

    async def frame(self) -> tuple[Any, ...]:
        async with asyncio.timeout(5):
            while not self.pending:
                data = await self.reader.read(65536)
                assert data, "connection closed before a frame arrived"
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    async def closed(self) -> bool:
        """True once the node has closed the connection (EOF) within 5 s."""
        async with asyncio.timeout(5):
            while await self.reader.read(65536):
                pass
        return True

    async def hello(self, client_nonce: bytes) -> dict[str, Any]:
        self.send(wire.encode_hello({"client": "raw", "nonce": client_nonce}))
        body = await self.frame()
        assert body[0] == wire.HELLO
        info: dict[str, Any] = body[2]
        return info

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):  # the node may have closed first
            await self.writer.wait_closed()

    async def __aenter__(self) -> RawPeer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def error_of(body: tuple[Any, ...]) -> errors.UnimeterError:
    assert body[0] == wire.RESPONSE and body[2] is False
    return wire.remote_error(body[3])


async def test_right_secret_connects_and_missing_or_wrong_secret_is_unauthenticated(
    secret_node: UnimeterServer,
) -> None:
    addr = f"127.0.0.1:{secret_node.node_port}"
    async with await Client.connect([addr], cluster_secret=SECRET) as client:
        assert client.partitions == 8
    with pytest.raises(errors.UnauthenticatedError) as err:
        await RemoteNode(addr).cluster_status()
    assert err.value.reason == "CLUSTER_SECRET_REQUIRED"
    with pytest.raises(errors.UnauthenticatedError) as err:
        await RemoteNode(addr, cluster_secret="wrong").cluster_status()
    assert err.value.reason == "CLUSTER_SECRET_MISMATCH"
    with pytest.raises(errors.UnavailableError, match="requires the cluster secret"):
        await Client.connect([addr])


async def test_a_wrong_or_replayed_proof_gets_unauthenticated_and_is_disconnected(
    secret_node: UnimeterServer,
) -> None:
    port = secret_node.node_port
    async with await RawPeer.open(port) as honest:
        # A peer that knows the secret: its proof is accepted and it is served.
        client_nonce = new_nonce()
        info = await honest.hello(client_nonce)
        assert info["auth"] == "hmac-sha256" and len(info["nonce"]) == NONCE_BYTES
        proof = client_proof(SECRET.encode(), info["nonce"], client_nonce)
        honest.send(wire.encode_request(1, "authenticate", [proof]))
        assert await honest.frame() == (wire.RESPONSE, 1, True, None)
        honest.send(wire.encode_request(2, "list_metrics", []))
        assert (await honest.frame())[:3] == (wire.RESPONSE, 2, True)

        # The same proof on a new connection (same client nonce, new node nonce) is worthless.
        async with await RawPeer.open(port) as replay:
            info2 = await replay.hello(client_nonce)
            assert info2["nonce"] != info["nonce"]
            replay.send(wire.encode_request(1, "authenticate", [proof]))
            refusal = error_of(await replay.frame())
            assert isinstance(refusal, errors.UnauthenticatedError)
            assert refusal.reason == "CLUSTER_SECRET_MISMATCH"
            assert await replay.closed()

        # A proof of the wrong type fails the same way.
        async with await RawPeer.open(port) as garbage:
            await garbage.hello(new_nonce())
            garbage.send(wire.encode_request(1, "authenticate", ["not bytes"]))
            assert isinstance(error_of(await garbage.frame()), errors.UnauthenticatedError)
            assert await garbage.closed()

        # The honest connection is untouched by the others' failures.
        honest.send(wire.encode_request(3, "list_metrics", []))
        assert (await honest.frame())[:3] == (wire.RESPONSE, 3, True)
    m = await scrape(secret_node.http_port)
    assert sample(m, "unimeter_node_protocol_handshake_failures_total", reason="CLUSTER_SECRET_MISMATCH") == 2


async def test_requests_before_the_proof_are_refused(secret_node: UnimeterServer) -> None:
    async with await RawPeer.open(secret_node.node_port) as peer:
        await peer.hello(new_nonce())
        peer.send(wire.encode_request(5, "list_metrics", []))
        refusal = error_of(await peer.frame())
        assert isinstance(refusal, errors.UnauthenticatedError)
        assert refusal.reason == "CLUSTER_SECRET_REQUIRED"
        assert await peer.closed()


async def test_a_client_with_a_secret_refuses_a_node_without_one(tmp_path: Path) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", node_addr="127.0.0.1:0"))
    await server.start()
    try:
        with pytest.raises(errors.UnauthenticatedError) as err:
            await NodeConnection.connect("127.0.0.1", server.node_port, cluster_secret=SECRET)
        assert err.value.reason == "NODE_NOT_AUTHENTICATED"
    finally:
        await server.stop(grace=1.0)


# ------------------------------------------------------------------------------------------ limits


async def test_an_oversize_request_is_resource_exhausted_and_others_carry_on(api: Api) -> None:
    await create_metric(api, "calls")
    huge = ev(1, "calls", properties={"blob": "x" * (18 << 20)})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.ingest.Ingest(ing.IngestRequest(events=[huge]), timeout=20)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.value.details() or "")
    assert (await ingest(api, ev(1, "calls"))).n_stored == 1
    assert (await realtime(api, 1, "calls")).value.count == 1


async def test_ingest_past_the_inflight_limit_is_resource_exhausted_with_retry_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = UnimeterServer(
        serve_config(tmp_path / "data", http_addr="127.0.0.1:0", max_inflight_ingest_events=10)
    )
    await server.start()
    api = await open_api(server)
    gate = threading.Event()
    real_fsync = node.segment_log._fsync

    def stalled_fsync(fd: int) -> None:
        gate.wait(10)  # a disk that has stopped answering
        real_fsync(fd)

    try:
        await create_metric(api, "calls")
        # A lone batch larger than the limit is still admitted: nothing else is in flight.
        assert (await ingest(api, *[ev(1, "calls") for _ in range(50)], sync=True)).n_stored == 50
        monkeypatch.setattr(node.segment_log, "_fsync", stalled_fsync)
        stuck_batch = [ev(2, "calls") for _ in range(8)]
        stuck = asyncio.create_task(ingest(api, *stuck_batch, sync=True))
        async with asyncio.timeout(5):
            while server.stats.inflight_ingest_events != 8:
                await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ingest(api, *[ev(3, "calls") for _ in range(5)])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, _, retry = details(err.value)
        assert reason == "INGEST_OVERLOADED" and retry is not None and 0 < retry <= 1
        # Small enough batches still fit, and reads never wait on the disk.
        assert (await ingest(api, ev(4, "calls"), ev(4, "calls"))).n_stored == 2
        assert (await realtime(api, 1, "calls")).value.count == 50
        gate.set()
        assert (await asyncio.wait_for(stuck, 10)).n_stored == 8
        assert (await ingest(api, *[ev(3, "calls") for _ in range(5)])).n_stored == 5
        m = await scrape(server.http_port)
        assert sample(m, "unimeter_ingest_rejected_batches_total", reason="INGEST_OVERLOADED") == 1
        assert sample(m, "unimeter_ingest_rejected_events_total", reason="INGEST_OVERLOADED") == 5
        assert sample(m, "unimeter_ingest_inflight_events") == 0
    finally:
        gate.set()
        await api.channel.close()
        await server.stop(grace=1.0)


async def test_ingest_is_refused_while_the_disk_is_below_its_free_space_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/semantics.md: a node whose disk is nearly full answers RESOURCE_EXHAUSTED with a retry delay and
    never accepts what it cannot store; reads go on, and ingest resumes once space is back."""
    free = [100 << 20]  # below the default floor of 256 MiB
    real_statvfs = os.statvfs

    def statvfs(path: Any) -> Any:
        real = real_statvfs(path)
        if Path(path) != tmp_path / "data":
            return real
        return type("StatVfs", (), {"f_bavail": free[0] // real.f_frsize, "f_frsize": real.f_frsize})()

    monkeypatch.setattr(os, "statvfs", statvfs)
    server = UnimeterServer(serve_config(tmp_path / "data", http_addr="127.0.0.1:0"))
    await server.start()
    api = await open_api(server)
    try:
        await create_metric(api, "calls")  # metadata is tiny: allowed
        for sync in (False, True):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ingest(api, ev(1, "calls"), sync=sync)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reason, _, retry = details(err.value)
            assert reason == "DISK_FULL" and retry == 5
            assert "104857600 bytes free" in (err.value.details() or "")
        assert (await realtime(api, 1, "calls")).value.count == 0  # nothing stored, reads served
        m = await scrape(server.http_port)
        assert sample(m, "unimeter_disk_free_bytes") == 100 << 20
        assert sample(m, "unimeter_disk_free_bytes_floor") == 256 << 20
        assert sample(m, "unimeter_ingest_rejected_batches_total", reason="DISK_FULL") == 2
        free[0] = 10 << 30
        await asyncio.sleep(0.15)  # the next ingest rechecks (at most every 100 ms)
        assert (await ingest(api, ev(1, "calls"), sync=True)).n_stored == 1
        assert (await realtime(api, 1, "calls")).value.count == 1
    finally:
        await api.channel.close()
        await server.stop(grace=1.0)


async def test_idle_connections_are_closed_and_never_block_a_good_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.http_endpoint, "_READ_TIMEOUT", 0.5)
    config = serve_config(
        tmp_path / "data", node_addr="127.0.0.1:0", http_addr="127.0.0.1:0", handshake_timeout_seconds=0.5
    )
    server = UnimeterServer(config)
    await server.start()
    api = await open_api(server)
    idle: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await create_metric(api, "calls")
        started = time.monotonic()
        for port, kind in (
            (server.grpc_port, "grpc"),
            (server.node_port, "node"),
            (server.http_port, "http"),
        ):
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                idle.append((kind, reader, writer))
        # While they sit there, a good client is served as usual.
        for _ in range(20):
            assert (await ingest(api, ev(1, "calls"))).n_stored == 1
        async with await Client.connect([f"127.0.0.1:{server.node_port}"]) as client:
            assert (await client.query_realtime(1, "calls")).value.count == 20
        # Each silent connection is closed by the server soon after the handshake timeout.
        for kind, reader, _ in idle:
            async with asyncio.timeout(5):
                data = await reader.read()
            if kind == "node":
                frames = wire.FrameDecoder().feed(data)
                refusal = error_of(frames[0])
                assert isinstance(refusal, errors.DeadlineExceededError)
                assert refusal.reason == "HANDSHAKE_TIMEOUT"
            elif kind == "http":
                assert data.startswith(b"HTTP/1.1 400")
        assert time.monotonic() - started < 8  # timeout 0.5 s, plus slack for a loaded machine
        async with asyncio.timeout(5):
            while server._protocol is not None and server._protocol.connection_count:
                await asyncio.sleep(0.01)
        assert await http_get(server.http_port, "/healthz") == (200, "ok\n")
        m = await scrape(server.http_port)
        assert sample(m, "unimeter_node_protocol_handshake_failures_total", reason="HANDSHAKE_TIMEOUT") == 20
    finally:
        for _, _, writer in idle:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, _, w in idle), return_exceptions=True)
        await api.channel.close()
        await server.stop(grace=1.0)


async def test_a_stranger_cannot_make_the_node_buffer_a_big_frame(secret_node: UnimeterServer) -> None:
    async with await RawPeer.open(secret_node.node_port) as peer:
        # A frame header announcing 10 MiB before any hello: refused at once, nothing buffered.
        peer.send((10 << 20).to_bytes(4, "big"))
        refusal = error_of(await peer.frame())
        assert refusal.reason == "FRAME_TOO_LARGE"
        assert await peer.closed()
    # After a proper handshake, big frames (here ~1.5 MB) are fine again.
    addr = f"127.0.0.1:{secret_node.node_port}"
    async with await Client.connect([addr], cluster_secret=SECRET) as client:
        await client.metrics.create(Metric(code="calls"))
        batch = [Event(1, "calls", properties={"note": "x" * 250}) for _ in range(5000)]
        assert (await client.ingest(batch)).n_stored == 5000


def test_every_public_rpc_has_a_scope() -> None:
    from service.call_wrapping import REQUIRED_SCOPE
    from unimeter.v1 import (
        alert_service_pb2,
        cluster_service_pb2,
        ingest_service_pb2,
        metrics_service_pb2,
        query_service_pb2,
    )

    paths = {
        f"/{svc.full_name}/{m.name}"
        for module in (
            metrics_service_pb2,
            ingest_service_pb2,
            query_service_pb2,
            alert_service_pb2,
            cluster_service_pb2,
        )
        for svc in module.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert paths == set(REQUIRED_SCOPE)


def test_key_hash_matches_the_documented_shell_recipe() -> None:
    assert hash_key("umk_example") == hashlib.sha256(b"umk_example").hexdigest()
    out = subprocess.run(
        ["sh", "-c", 'printf %s "$0" | sha256sum', "umk_example"], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[0] == hash_key("umk_example")


async def test_log_records_name_the_api_key_a_call_used(keyed: Api) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", buffer)
    try:
        await keyed.metrics.ListMetrics(ms.ListMetricsRequest(), metadata=bearer(READ_KEY), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            req = ing.IngestRequest(events=[ev(1, "x")])
            await keyed.ingest.Ingest(req, metadata=bearer(READ_KEY), timeout=5)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    access = [json.loads(line) for line in buffer.getvalue().splitlines() if '"grpc_code"' in line]
    assert [(r["grpc_method"].rsplit("/", 1)[1], r["grpc_code"], r["api_key"]) for r in access] == [
        ("ListMetrics", "OK", "reader"),
        ("Ingest", "PERMISSION_DENIED", "reader"),
    ]
    assert all(READ_KEY not in line for line in buffer.getvalue().splitlines())
