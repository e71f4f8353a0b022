"""Who can reach a node through its node protocol, for every combination of API keys, node-protocol
listener, cluster secret and ``--insecure-node-protocol``: the node protocol takes no API keys, so a
node with keys and a node port but no secret refuses to start unless the insecure flag says the
network is trusted; whatever starts says at start who can reach what, and a node-protocol client
without the secret is refused wherever there is one."""

from __future__ import annotations

import argparse
import itertools
import logging
import subprocess
from pathlib import Path

import pytest

from cluster_client import AggType, Metric, errors
from cluster_client.client import Client
from cluster_client.remote_node import RemoteNode
from service.api_keys import hash_key
from service.config import ServeConfig, add_serve_arguments, serve_config_from_args
from service.server import UnimeterServer
from tests.conftest import serve_config
from tests.process import CLI, ENV, REPO

pytestmark = pytest.mark.timeout(60)

SECRET = "correct horse battery staple"
KEYS = f"ops:{hash_key('umk_admin')}:admin"
T0 = 1_772_323_200 * 1_000_000_000
REFUSAL = (
    "API keys are configured but the node protocol (--node-addr) has no cluster secret, so anyone "
    "reaching it would bypass the keys: set a secret with UNIMETER_CLUSTER_SECRET (or --cluster-secret), "
    "or pass --insecure-node-protocol on a trusted network"
)
OPEN_API = "no API keys configured: the gRPC API is open to anyone who can reach it"
KEYS_REQUIRED = "API keys required: 1 key(s) configured"
SECRET_REQUIRED = "cluster secret required: node-protocol clients must prove it"
OPEN_NODE = "no cluster secret configured: the node protocol is open to anyone who can reach it"
INSECURE = (
    "--insecure-node-protocol: the node protocol on 127.0.0.1:{port} takes every call without an API "
    "key or a cluster secret; anyone who can reach it can create metrics and ingest"
)

COMBINATIONS = list(itertools.product([False, True], repeat=4))


def config(tmp_path: Path, keys: bool, node: bool, secret: bool, insecure: bool) -> ServeConfig:
    return serve_config(
        tmp_path / "data",
        api_keys=KEYS if keys else "",
        node_addr="127.0.0.1:0" if node else "",
        cluster_secret=SECRET if secret else "",
        insecure_node_protocol=insecure,
    )


def expected_log(keys: bool, node: bool, secret: bool, port: int) -> list[tuple[int, str]]:
    """What the server logs at start about access, in order (level, message)."""
    lines = [(logging.INFO, KEYS_REQUIRED if keys else OPEN_API)]
    if node:
        if secret:
            lines.append((logging.INFO, SECRET_REQUIRED))
        elif keys:
            lines.append((logging.WARNING, INSECURE.format(port=port)))
        else:
            lines.append((logging.INFO, OPEN_NODE))
    return lines


@pytest.mark.parametrize(("keys", "node", "secret", "insecure"), COMBINATIONS)
async def test_each_combination_starts_or_is_refused_as_documented(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, keys: bool, node: bool, secret: bool, insecure: bool
) -> None:
    if keys and node and not secret and not insecure:
        with pytest.raises(ValueError) as refused:
            config(tmp_path, keys, node, secret, insecure)
        assert str(refused.value) == REFUSAL
        return
    caplog.set_level(logging.INFO, logger="service.server")
    server = UnimeterServer(config(tmp_path, keys, node, secret, insecure))
    await server.start()
    try:
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "service.server"]
        assert [line for line in logged if not line[1].startswith("recovered ")] == expected_log(
            keys, node, secret, server.node_port
        )
        if not node:
            assert server.node_port == 0
            return
        addr = f"127.0.0.1:{server.node_port}"
        if secret:
            # No secret, no access, keys or not: not even a read.
            with pytest.raises(errors.UnauthenticatedError) as err:
                await RemoteNode(addr, connect_timeout=2).cluster_status()
            assert err.value.reason == "CLUSTER_SECRET_REQUIRED"
            with pytest.raises(errors.UnavailableError, match="requires the cluster secret"):
                await Client.connect([addr])
            async with await Client.connect([addr], cluster_secret=SECRET) as client:
                await client.metrics.create(Metric("calls", AggType.SUM))
        else:
            # Open, as the log said: a stranger creates metrics and ingests (the insecure flag's
            # documented price when keys are configured).
            async with await Client.connect([addr]) as client:
                await client.metrics.create(Metric("calls", AggType.SUM))
                stored = await client.ingest_rows([(7, "calls", 3, T0, None, 1, "e1")], sync=True)
                assert (stored.n_stored, stored.offsets) == (1, [1])
    finally:
        await server.stop(grace=1.0)


def parse(argv: list[str], env: dict[str, str]) -> ServeConfig:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return serve_config_from_args(parser.parse_args(argv), env)


def test_the_insecure_flag_comes_from_the_flag_or_the_environment() -> None:
    base = ["--api-keys", KEYS, "--node-addr", "127.0.0.1:0"]
    with pytest.raises(SystemExit) as refused:
        parse(base, {})
    assert refused.value.code == f"unimeter serve: {REFUSAL}"
    assert parse([*base, "--insecure-node-protocol"], {}).insecure_node_protocol
    for value in ("1", "true", "TRUE", "yes", "on"):
        assert parse(base, {"UNIMETER_INSECURE_NODE_PROTOCOL": value}).insecure_node_protocol
    for value in ("0", "false", "no", "off", ""):
        with pytest.raises(SystemExit, match="has no cluster secret"):
            parse(base, {"UNIMETER_INSECURE_NODE_PROTOCOL": value})
    with pytest.raises(SystemExit) as bad:
        parse(base, {"UNIMETER_INSECURE_NODE_PROTOCOL": "maybe"})
    assert bad.value.code == "UNIMETER_INSECURE_NODE_PROTOCOL='maybe': expected true or false"
    # The secret from the environment is enough, and keys from the environment count as keys.
    assert parse(base, {"UNIMETER_CLUSTER_SECRET": SECRET}).cluster_secret == SECRET
    with pytest.raises(SystemExit, match="has no cluster secret"):
        parse(["--node-addr", "127.0.0.1:0"], {"UNIMETER_API_KEYS": KEYS})


def test_unimeter_serve_refuses_keys_with_an_open_node_protocol_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refused = subprocess.run(
        [*CLI, "serve", "--data-dir", str(data), "--grpc-addr", "127.0.0.1:0", "--node-addr", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        env={**ENV, "UNIMETER_API_KEYS": KEYS},
        cwd=REPO,
        timeout=60,
    )
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", f"unimeter serve: {REFUSAL}\n")
    assert not data.exists()
