"""The engines and backends the reliability net runs on, in one list.

The crash loop (``tests.reliability.crash_loop``) and the clock-jump tests run once per entry of
:data:`TARGETS`. An entry says how to run that combination two ways: the extra ``unimeter serve``
flags that select it (for the tests that run real processes) and the factory of an in-process node
(for the tests that drive a node directly). Adding an engine or a backend to the net is adding one
line here, e.g. ``Target("native", "embedded", ("--engine", "native"), NativeNode)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from node.node import Node, NodeConfig

__all__ = ["TARGETS", "Target", "over_targets", "target_named"]


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


TARGETS: tuple[Target, ...] = (Target("python", "embedded"),)

over_targets = pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name)
"""Decorator: run a test once per target, with the ``target`` argument."""


def target_named(name: str) -> Target:
    """The target called ``name`` (``engine-backend``); ValueError naming the known ones."""
    for target in TARGETS:
        if target.name == name:
            return target
    raise ValueError(f"unknown target {name!r}; known: {', '.join(t.name for t in TARGETS)}")
