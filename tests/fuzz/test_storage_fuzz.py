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

from .storage_fuzz import Reference, build_reference, check_damage, check_damaged_copy


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


async def test_a_bit_flip_anywhere_in_a_snapshot_never_changes_an_answer(
    reference: Reference, tmp_path: Path
) -> None:
    snapshot = Path("partitions") / "0000" / "snapshot.msgpack"
    data = (reference.variant("final") / snapshot).read_bytes()
    for i, position in enumerate(range(0, len(data), max(1, len(data) // 24))):
        flipped = bytearray(data)
        flipped[position] ^= 0x04
        await check_damaged_copy(
            reference, "final", snapshot, bytes(flipped), tmp_path / f"flip-{i}", f"flip at {position}"
        )


@pytest.mark.parametrize("variant", ["final", "stale"])
async def test_alerts_cut_from_the_alert_log_are_regenerated_with_their_offsets(
    reference: Reference, tmp_path: Path, variant: str
) -> None:
    alerts = next((reference.variant(variant) / "partitions" / "0000" / "alerts").glob("*.seg"))
    target = alerts.relative_to(reference.variant(variant))
    half = alerts.read_bytes()[: alerts.stat().st_size // 2]
    await check_damaged_copy(reference, variant, target, half, tmp_path / "work", "alerts cut in half")


_RUNS = itertools.count()
