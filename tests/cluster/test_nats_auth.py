"""Connecting to a NATS server that requires TLS and authentication: user and password, an NKey
seed file; a wrong password is refused naming the URL, and no secret reaches a message or a log."""

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
from tests.integration.test_security import make_cert
from tools.nats_cluster import NatsCluster

PASSWORD = "pw-0f3c9a-never-logged"


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


def _settings(cluster: NatsCluster, stream: str) -> JetStreamSettings:
    return JetStreamSettings(
        stream=stream, replicas=1, partitions=1, monitor_urls=tuple(cluster.monitor_urls)
    )


async def test_password_and_nkey_over_tls(secured: tuple[NatsCluster, Path, Path], stream_name: str) -> None:
    cluster, ca, seed_file = secured
    urls = tuple(u.replace("nats://", "tls://") for u in cluster.urls)
    for options in (
        NatsOptions(urls, user="meter", password=PASSWORD, tls_ca=ca),
        NatsOptions(urls, nkey_seed_file=seed_file, tls_ca=ca),
    ):
        backend = await open_jetstream_backend(options, _settings(cluster, stream_name))
        log = backend.open_partition(0).events
        position = log.append(b"secured")
        await log.wait_durable(position + 1)
        await backend.disconnect()
        assert PASSWORD not in repr(options)


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
