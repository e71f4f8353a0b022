"""mix64 and partition_of against the test vectors of docs/semantics.md (tests/vectors/semantics.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster_client.partitioning import mix64, partition_of

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "semantics.json"
CASES = json.loads(VECTORS.read_text())["mix64"]


@pytest.mark.parametrize("case", CASES, ids=[str(c["account_id"]) for c in CASES])
def test_mix64_and_partition_match_the_vectors(case: dict[str, int]) -> None:
    assert mix64(case["account_id"]) == case["mix64"]
    assert partition_of(case["account_id"], 64) == case["partition_of_64"]
    assert partition_of(case["account_id"], 256) == case["partition_of_256"]
