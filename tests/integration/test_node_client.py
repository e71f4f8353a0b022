"""The Node.js example (examples/node) against a real ``unimeter serve``: the API from another language.

Node.js 20+ and the example's pinned packages (``make node-deps``) are required: without them this
test fails, so a machine that cannot run the polyglot proof never reports it as passing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster_client.partitioning import partition_of
from service.cli import main
from tests.process import REPO, start_serve

NODE_DIR = REPO / "examples" / "node"
PROGRAM = NODE_DIR / "free_tier.js"


def node_binary() -> str:
    node = shutil.which("node")
    assert node is not None, "node (Node.js 20+) is not on PATH: install it, then run `make node-deps`"
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"Node.js 20+ is required, found {version.strip()}"
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        installed = NODE_DIR / "node_modules" / package / "package.json"
        assert installed.is_file(), f"{package} is not installed in {NODE_DIR}: run `make node-deps`"
    return node


def test_pinned_versions_are_the_installed_ones() -> None:
    node_binary()
    manifest = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for package, version in manifest["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{package} is not pinned exactly: {version}"
        assert lock["packages"][f"node_modules/{package}"]["version"] == version
        installed = json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text())
        assert installed["version"] == version, f"{package}: run `make node-deps`"


def test_node_example_creates_ingests_queries_and_receives_its_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_binary()
    server = start_serve(tmp_path / "data", "--partitions", "8")
    addr = f"127.0.0.1:{server.grpc_port}"
    try:
        result = subprocess.run(
            [node, str(PROGRAM)],
            env={**os.environ, "UNIMETER_ADDR": addr},
            cwd=tmp_path,  # the program finds the protos relative to itself, not to the working directory
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        created = re.fullmatch(
            r"created metric (node_api_calls_[0-9a-z]+): COUNT, threshold free_tier_exceeded at 3", lines[1]
        )
        assert created is not None, lines[1]
        code = created.group(1)
        assert lines == [
            f"server {addr}",
            f"created metric {code}: COUNT, threshold free_tier_exceeded at 3",
            "subscribed to alerts",
            "ingested 4 events: stored 3, duplicates 1",
            "query (current period): value 3, count 3",
            f"alert: account 42 crossed free_tier_exceeded (3) with value 3, partition {partition_of(42, 8)} "
            "offset 1",
            "ok",
        ]
        # What Node stored reads back the same from Python: three events, one alert.
        capsys.readouterr()
        assert main(["--addr", addr, "query", "--account", "42", "--metric", code, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["value"]["count"] == 3
        assert main(["--addr", addr, "alerts", "list", "--account", "42", "--json"]) == 0
        alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(a["metric_code"], a["threshold_code"], a["offset"]) for a in alerts] == [
            (code, "free_tier_exceeded", 1)
        ]
    finally:
        server.terminate()


def test_node_example_exits_1_with_a_message_when_the_server_is_unreachable(tmp_path: Path) -> None:
    node = node_binary()
    result = subprocess.run(
        [node, str(PROGRAM)],
        env={**os.environ, "UNIMETER_ADDR": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: CreateMetric: UNAVAILABLE: ")
