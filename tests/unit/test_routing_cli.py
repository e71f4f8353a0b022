"""The CLI given several node addresses (``--addr h1:p1,h2:p2``) uses the first that answers."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from service.cli import main
from service.commands.errors import ExitCode
from tests.conftest import Api


def closed_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 30)
    out, err = capsys.readouterr()
    return code, out, err


async def test_a_dead_first_address_is_passed_over_for_a_live_one(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    addrs = f"127.0.0.1:{closed_port()}, 127.0.0.1:{api.server.grpc_port}"
    code, out, err = await run(capsys, "--addr", addrs, "--timeout", "10", "status", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["partitions"] == 8


async def test_an_addr_naming_no_address_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await run(capsys, "--addr", " , ", "status")
    assert code == ExitCode.BAD_INPUT
    assert err == "error: --addr names no address: give host:port (or several, separated by commas)\n"
