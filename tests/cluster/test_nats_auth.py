"""Connecting to a NATS server that requires authentication: user and password or an NKey seed file
over TLS, a token, a ``.creds`` file (operator mode); a wrong secret is refused naming the URL, and
no secret reaches a message or a log."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest

from node.jetstream.backend import JetStreamSettings, open_jetstream_backend
from node.jetstream.connection import NatsOptions
from node.jetstream.errors import NatsUnavailable
from tests.cluster.nats_jwt import mint_operator_setup
from tests.integration.test_security import make_cert
from tools.nats_cluster import NatsCluster

PASSWORD = "pw-0f3c9a-never-logged"
TOKEN = "tok-5d1e77-never-logged"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsCluster, Path, Path]]:
    """One TLS server with a password user and an NKey user; (cluster, CA certificate, seed file)."""
    root = tmp_path_factory.mktemp("nats-secured")
    cert, key = make_cert(root / "tls")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    seed_file = root / "user.nk"
    seed_file.write_bytes(seed)
    extra = (
        f"tls {{\n  cert_file: {str(cert)!r}\n  key_file: {str(key)!r}\n}}\n"
        f'authorization {{\n  users = [\n    {{user: "meter", password: "{PASSWORD}"}}\n'
        f'    {{nkey: "{public}"}}\n  ]\n}}\n'
    )
    cluster = NatsCluster(root, 1, extra_config=extra)
    cluster.start()
    try:
        yield cluster, cert, seed_file
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One server that admits clients presenting ``TOKEN``."""
    cluster = NatsCluster(
        tmp_path_factory.mktemp("nats-token"), 1, extra_config=f'authorization {{\n  token: "{TOKEN}"\n}}\n'
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def operator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsCluster, Path]]:
    """One server in operator mode (JWT accounts), and a user's ``.creds`` file it accepts."""
    root = tmp_path_factory.mktemp("nats-operator")
    setup = mint_operator_setup()
    creds = root / "unimeter.creds"
    creds.write_text(setup.creds)
    cluster = NatsCluster(root, 1, extra_config=setup.server_config)
    cluster.start()
    try:
        yield cluster, creds
    finally:
        cluster.stop()


def _settings(cluster: NatsCluster, stream: str) -> JetStreamSettings:
    return JetStreamSettings(
        stream=stream, replicas=1, partitions=1, monitor_urls=tuple(cluster.monitor_urls)
    )


async def _append_durably(options: NatsOptions, cluster: NatsCluster, stream: str) -> None:
    """Open the backend with ``options`` and make one record durable through it."""
    backend = await open_jetstream_backend(options, _settings(cluster, stream))
    try:
        log = backend.open_partition(0).events
        position = log.append(b"secured")
        await log.wait_durable(position + 1)
        assert log.durable_position == position + 1
    finally:
        await backend.disconnect()


async def test_password_and_nkey_over_tls(secured: tuple[NatsCluster, Path, Path], stream_name: str) -> None:
    cluster, ca, seed_file = secured
    urls = tuple(u.replace("nats://", "tls://") for u in cluster.urls)
    for options in (
        NatsOptions(urls, user="meter", password=PASSWORD, tls_ca=ca),
        NatsOptions(urls, nkey_seed_file=seed_file, tls_ca=ca),
    ):
        await _append_durably(options, cluster, stream_name)
        assert PASSWORD not in repr(options)


async def test_a_token(token_server: NatsCluster, stream_name: str) -> None:
    options = NatsOptions(tuple(token_server.urls), token=TOKEN)
    await _append_durably(options, token_server, stream_name)
    assert TOKEN not in repr(options)


async def test_a_credentials_file_in_operator_mode(
    operator_server: tuple[NatsCluster, Path], stream_name: str
) -> None:
    cluster, creds = operator_server
    await _append_durably(NatsOptions(tuple(cluster.urls), credentials_file=creds), cluster, stream_name)


async def test_a_wrong_password_is_refused_without_the_secret(
    secured: tuple[NatsCluster, Path, Path], stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, ca, _ = secured
    urls = tuple(u.replace("nats://", "tls://") for u in cluster.urls)
    wrong = f"{PASSWORD}-wrong"
    with caplog.at_level(logging.DEBUG), pytest.raises(NatsUnavailable) as refused:
        await open_jetstream_backend(
            NatsOptions(urls, user="meter", password=wrong, tls_ca=ca, connect_timeout=2),
            _settings(cluster, stream_name),
        )
    assert str(refused.value).startswith(f"cannot connect to NATS at {urls[0]}")
    assert wrong not in str(refused.value)
    assert all(wrong not in r.getMessage() for r in caplog.records)


async def test_a_wrong_token_is_refused_without_the_secret(
    token_server: NatsCluster, stream_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    urls = tuple(token_server.urls)
    wrong = f"{TOKEN}-wrong"
    with caplog.at_level(logging.DEBUG), pytest.raises(NatsUnavailable) as refused:
        await open_jetstream_backend(
            NatsOptions(urls, token=wrong, connect_timeout=2), _settings(token_server, stream_name)
        )
    assert str(refused.value).startswith(f"cannot connect to NATS at {urls[0]}")
    assert wrong not in str(refused.value)
    assert all(wrong not in r.getMessage() for r in caplog.records)
