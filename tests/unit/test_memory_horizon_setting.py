"""``--memory-horizon-seconds``: flag over environment over its 48-hour default, reaching the node
and its partitions as ``memory_horizon_ns``; a negative or NaN horizon is refused at start."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from node.node import NodeConfig
from node.partition import PartitionConfig
from service.config import add_serve_arguments, serve_config_from_args

HOUR_NS = 3_600_000_000_000


def _parse(argv: list[str], env: dict[str, str]) -> float:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return serve_config_from_args(parser.parse_args(argv), env).memory_horizon_seconds


def test_the_horizon_comes_from_the_flag_or_the_environment() -> None:
    assert _parse([], {}) == 172_800.0
    assert _parse([], {"UNIMETER_MEMORY_HORIZON_SECONDS": "3600"}) == 3600.0
    assert _parse(["--memory-horizon-seconds", "0"], {"UNIMETER_MEMORY_HORIZON_SECONDS": "60"}) == 0.0
    assert _parse(["--memory-horizon-seconds", "90.5"], {}) == 90.5


@pytest.mark.parametrize("raw", ["-1", "nan"])
def test_a_negative_or_nan_horizon_is_refused(raw: str) -> None:
    with pytest.raises(SystemExit, match="--memory-horizon-seconds must be 0 \\(off\\) or positive"):
        _parse(["--memory-horizon-seconds", raw], {})


def test_an_unparsable_horizon_in_the_environment_names_the_variable() -> None:
    with pytest.raises(SystemExit, match="UNIMETER_MEMORY_HORIZON_SECONDS='2d'"):
        _parse([], {"UNIMETER_MEMORY_HORIZON_SECONDS": "2d"})


def test_node_and_partition_defaults_are_48_hours_in_nanoseconds(tmp_path: Path) -> None:
    assert NodeConfig(tmp_path).memory_horizon_ns == 48 * HOUR_NS
    assert PartitionConfig().memory_horizon_ns == 48 * HOUR_NS
    with pytest.raises(ValueError, match="memory horizon must be 0 \\(off\\) or positive"):
        NodeConfig(tmp_path, memory_horizon_ns=-1)
