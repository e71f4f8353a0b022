"""The engines and backends the tests run on, in one list.

:data:`ENGINES` are the ingest engines this machine can run: ``python`` always, ``native`` when
the extension is built (``make`` requires it wherever cargo exists, by setting
``UNIMETER_REQUIRE_NATIVE=1``). The crash loop (``tests.reliability.crash_loop``) and the
clock-jump tests run once per entry of :data:`TARGETS`. An entry says how to run that combination
two ways: the extra ``unimeter serve`` flags that select it (for the tests that run real
processes) and the factory of an in-process node (for the tests that drive a node directly).
Adding an engine or a backend to the net is adding one line here. The native engine decodes,
validates and splits ingest requests in the server and runs the partitions' dedup index, keys,
per-event ingest loop, event index and aggregate cells (``node/partition_engine.py``), so its
in-process node is a node with ``engine="native"``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from node.node import Node, NodeConfig

__all__ = ["ENGINES", "TARGETS", "Target", "over_targets", "target_named"]


def _engines() -> tuple[str, ...]:
    if importlib.util.find_spec("unimeter_native") is not None:
        return ("python", "native")
    if os.environ.get("UNIMETER_REQUIRE_NATIVE") == "1":
        raise RuntimeError("UNIMETER_REQUIRE_NATIVE=1 but the native extension is not built: run `make venv`")
    return ("python",)


ENGINES = _engines()


@dataclass(frozen=True)
class Target:
    """One (engine, backend) combination and how to run it."""

    engine: str
    backend: str
    serve_args: tuple[str, ...] = ()
    """Flags added to ``unimeter serve`` to run this combination."""
    make_node: Callable[[NodeConfig], Node] = Node
    """Builds an in-process node of this combination."""

    @property
    def name(self) -> str:
        """``engine-backend``: the test id and the crash loop's ``--target`` value."""
        return f"{self.engine}-{self.backend}"


def _node_on(engine: str) -> Callable[[NodeConfig], Node]:
    def make_node(config: NodeConfig) -> Node:
        return Node(replace(config, engine=engine))

    return make_node


# The engine is always named: a serve without --engine runs native where it is installed.
TARGETS: tuple[Target, ...] = tuple(
    Target(engine, "embedded", ("--engine", engine), _node_on(engine)) for engine in ENGINES
)

over_targets = pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name)
"""Decorator: run a test once per target, with the ``target`` argument."""


def target_named(name: str) -> Target:
    """The target called ``name`` (``engine-backend``); ValueError naming the known ones."""
    for target in TARGETS:
        if target.name == name:
            return target
    raise ValueError(f"unknown target {name!r}; known: {', '.join(t.name for t in TARGETS)}")
