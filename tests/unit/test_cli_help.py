"""``--help`` of every subcommand and ``--version``: a description, and defaults that say something."""

from __future__ import annotations

import argparse
import importlib.metadata
import re

import pytest

from service import cli


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of ``parser``, depth first."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += command_paths(sub, (*prefix, name))
    return out


PATHS = command_paths(cli._parser())


def help_of(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main([*path, "--help"]) == 0
    return capsys.readouterr().out


def test_every_command_is_covered() -> None:
    assert [" ".join(p) for p in PATHS] == [
        "",
        "serve",
        "metrics",
        "metrics create",
        "metrics get",
        "metrics list",
        "metrics delete",
        "ingest",
        "query",
        "events",
        "alerts",
        "alerts list",
        "alerts tail",
        "import",
        "status",
    ]


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "unimeter" for p in PATHS])
def test_help_has_a_description_and_no_meaningless_default(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(path, capsys)
    # argparse prints: usage (possibly wrapped), a blank line, the description, a blank line, sections.
    blocks = text.split("\n\n")
    assert blocks[0].startswith("usage: unimeter")
    description = " ".join(blocks[1].split())
    assert re.fullmatch(r"[A-Z].*\.", description), description
    flat = " ".join(text.split())
    assert "None" not in flat
    assert not re.search(r"default(:? |:)\)", flat)  # a default that printed as nothing


def test_serve_help_gives_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    flat = " ".join(help_of(("serve",), capsys).split())
    assert "default: 64 for a new data directory; an existing one keeps its own)" in flat
    assert "(env UNIMETER_DATA_DIR; default: ./data)" in flat
    assert "(env UNIMETER_NODE_ADDR; default: off)" in flat
    assert "(env UNIMETER_FLUSH_INTERVAL_MS; default: 10)" in flat
    assert "(env UNIMETER_API_KEYS; default: none; without any key the gRPC API is open)" in flat
    assert "(env UNIMETER_TLS_CERT; default: none: plain TCP)" in flat


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"unimeter {importlib.metadata.version('unimeter')}\n"
