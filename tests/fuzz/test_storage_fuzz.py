"""Fuzzed storage: damaged copies of a real node's segment files and snapshots are opened by a Node.

Bounded for ``make test``; ``make fuzz`` runs the same check far longer.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .storage_fuzz import Reference, build_reference, check_damage


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    import asyncio

    yield asyncio.run(build_reference(tmp_path_factory.mktemp("storage-reference")))


def test_the_reference_logs_span_several_segments(reference: Reference) -> None:
    for p in (0, 1):
        segments = list((reference.variant("final") / "partitions" / f"{p:04d}" / "events").glob("*.seg"))
        assert len(segments) > 1


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=False))
async def test_a_damaged_file_is_recovered_to_exactly_the_records_before_the_damage(
    reference: Reference, tmp_path: Path, rng: random.Random
) -> None:
    await check_damage(reference, rng, tmp_path / f"work-{next(_RUNS)}")


_RUNS = itertools.count()
